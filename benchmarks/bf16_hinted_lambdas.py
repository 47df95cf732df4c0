"""How far bf16 moves Hinted Decoding's mixing weights lambda: the batched, cached decoder and the one-at-a-time
uncached reference (tests/reference_hinted.py) on the tests' tiny model, in bf16 and fp32, on the CPU and on CUDA
where there is one. Each pair is compared position by position up to the first token where the two paths part.
"bf16 teacher-forced" is what tests/test_bf16.py bounds: the reference following the decoder's tokens, the largest
margin (nats) by which a token fell short of the reference's greedy choice and the largest lambda difference, over
the rows; repeated, since GPU kernels need not give the same bits twice.

    python benchmarks/bf16_hinted_lambdas.py [OUT.json]      # from the checkout's root
"""
import copy
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]
from conftest import make_model, make_tokenizer
from reference_hinted import EOS, reference_decode
from test_bf16 import teacher_forced_gaps
from test_hinted import MODES, prompts

from opsft.engine.hinted_decoding import hinted_decode


def gap(a_tokens, a_lambdas, b_tokens, b_lambdas):
    worst, compared = 0.0, 0
    for ta, la, tb, lb in zip(a_tokens, a_lambdas, b_tokens, b_lambdas):
        for i in range(min(len(la), len(lb))):
            worst, compared = max(worst, abs(la[i] - lb[i])), compared + 1
            if i >= len(ta) or i >= len(tb) or ta[i] != tb[i]:
                break
    return {"max_abs": worst, "positions": compared, "same_tokens": a_tokens == b_tokens}

REPEATS = 3
tok = make_tokenizer()
devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
report = {}
for device in devices:
    for mode in ("linear", "piecewise"):
        base = make_model(len(tok), seed=3)
        hinted, plain = prompts(tok)
        runs, models = {}, {}
        for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            model = models[name] = copy.deepcopy(base).to(device, dtype)
            batched = hinted_decode(model, hinted, plain, MODES[mode], eos_token_ids={EOS}, tokenizer=tok)
            refs = [reference_decode(model, h, q, MODES[mode], tok, {EOS}) for h, q in zip(hinted, plain)]
            runs[name + " batched"] = ([r.tokens for r in batched], [list(r.lambdas) for r in batched])
            runs[name + " reference"] = ([r[0] for r in refs], [list(r[3]) for r in refs])
        pairs = [("bf16 batched", "bf16 reference"), ("bf16 reference", "fp32 reference"),
                 ("bf16 batched", "fp32 reference"), ("fp32 batched", "fp32 reference")]
        report[f"{device} {mode}"] = {f"{a} vs {b}": gap(*runs[a], *runs[b]) for a, b in pairs}
        forced = [teacher_forced_gaps(models["bf16"], tok, MODES[mode], MODES[mode]) for _ in range(REPEATS)]
        report[f"{device} {mode}"]["bf16 teacher-forced"] = {
            "max_margin": [max(margin for margin, _ in g) for g in forced],
            "max_lambda_gap": [max(lambda_gap for _, lambda_gap in g) for g in forced], "bounds in the test": 0.1}
text = json.dumps(report, indent=1)
print(text)
if len(sys.argv) > 1:
    open(sys.argv[1], "w").write(text)
