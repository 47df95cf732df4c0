#!/usr/bin/env bash
# The built wheel works as an installed package: it installs into a fresh virtual environment outside the checkout
# (from the tested versions in constraints.txt), and there one API example (opsft.SFTTrainer, two IDFT steps on a
# tiny model) and one command (opsft score on the same model) run. `make wheel-check`; CI runs it after the tests.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install -q --upgrade pip
"$py" -m pip wheel -q --no-deps -w "$work/dist" "$root"
"$py" -m pip install -q -c "$root/constraints.txt" "torch==2.13.0"
"$py" -m pip install -q -c "$root/constraints.txt" "$work"/dist/opsft-*.whl
cd "$work"
"$py" - <<'PY'
import json
import pathlib

import opsft
from datasets import Dataset
from opsft.inputs.tiny import build_tiny_model

assert "site-packages" in opsft.__file__, opsft.__file__  # the installed package, not the checkout
texts = [f"What is {a} + {b}? {a + b}" for a in range(10) for b in range(10)]
model = str(build_tiny_model("tiny-model", texts))
rows = [{"prompt": [{"role": "user", "content": f"What is {a} + 2?"}],
         "completion": [{"role": "assistant", "content": f"{a + 2}"}]} for a in range(8)]
args = opsft.SFTConfig(output_dir="idft", loss_type="idft", max_steps=2, per_device_train_batch_size=4,
                       logging_steps=1, report_to="none", use_cpu=True, bf16=False)
trainer = opsft.SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows))
trainer.train()
assert len([h for h in trainer.state.log_history if "loss" in h]) == 2
pathlib.Path("data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
print("wheel check: opsft", opsft.__version__, "from", opsft.__file__, "- SFTTrainer (idft) trained 2 steps")
PY
"$work/venv/bin/opsft" score --model tiny-model --data data.jsonl --out score --no-progress > score.log
test -s score/summary.json
echo "wheel check: opsft score ran from the installed wheel ($(grep -c . score/scored.jsonl) examples scored)"
