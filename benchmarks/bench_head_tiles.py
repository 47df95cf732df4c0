"""The LM-head kernel alone: naive full softmax vs TRL's chunked kernel at several vocabulary tile widths.

Why opsft's scorer calls `trl.kernels.ChunkedLogProbFunction` with 8192-column tiles rather than the
32768 that `trl.trainer.add_fused_lm_head` uses. Each case runs in a fresh process; peak extra memory is
the rise of the peak resident set (reset before the run) over the inputs.

    python benchmarks/bench_head_tiles.py     # ~1 minute, ~5 GB of RAM
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

TOKENS, HIDDEN, VOCAB = 2048, 896, 152064
CASES = ["naive", "32768", "8192", "4096"]


def _status(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def child(case: str) -> None:
    import torch
    from trl.kernels import ChunkedLogProbFunction

    torch.manual_seed(0)
    hidden, weight = torch.randn(TOKENS, HIDDEN), torch.randn(VOCAB, HIDDEN) * 0.05
    targets = torch.randint(0, VOCAB, (TOKENS,))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before, started = _status("VmRSS"), time.perf_counter()
    with torch.no_grad():
        if case == "naive":
            log_p = torch.log_softmax(hidden @ weight.T, -1)
            log_probs, entropy = log_p.gather(-1, targets[:, None])[:, 0], -(log_p.exp() * log_p).sum(-1)
        else:
            log_probs, entropy, *_ = ChunkedLogProbFunction.apply(hidden, weight, None, targets, 1.0, int(case),
                                                                  None, 1.0, ("entropy",))
    print(json.dumps({"seconds": time.perf_counter() - started, "peak_extra_bytes": _status("VmHWM") - before,
                      "checksum": float((log_probs + entropy).sum())}))


def main() -> None:
    if len(sys.argv) > 1:
        return child(sys.argv[1])
    rows = {c: json.loads(subprocess.run([sys.executable, __file__, c], capture_output=True, text=True,
                                         check=True).stdout.splitlines()[-1]) for c in CASES}
    naive = rows["naive"]
    print(f"{TOKENS} tokens, hidden {HIDDEN}, vocabulary {VOCAB}, fp32\n")
    print("| head | peak extra memory | time | memory / naive | time / naive |")
    print("|---|---|---|---|---|")
    for case, r in rows.items():
        name = "naive full softmax" if case == "naive" else f"TRL kernel, {case}-column tiles"
        print(f"| {name} | {r['peak_extra_bytes'] / 2**20:,.0f} MiB | {r['seconds']:.2f} s | "
              f"{r['peak_extra_bytes'] / naive['peak_extra_bytes']:.3f} | {r['seconds'] / naive['seconds']:.2f}x |")


if __name__ == "__main__":
    main()
