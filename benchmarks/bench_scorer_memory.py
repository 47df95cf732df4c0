"""The DDT scorer against the naive full-softmax computation, at vocabulary 152,064 (Qwen2.5's).

naive: model(...).logits for the whole batch ([B, L, V] in fp32), log_softmax, gather, entropy.
opsft: opsft.score_token_ids (the backbone, then TRL's tiled LM head on completion positions only).

Each method runs in its own fresh process; peak extra memory is the rise of the process's peak
resident set (VmHWM, reset before the run) over what it held before (model and inputs), so the two
numbers compare like with like. Time is the median of --repeats runs. Results are ratios opsft/naive.

    python benchmarks/bench_scorer_memory.py            # ~3 minutes and ~11 GB of RAM on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

VOCAB, HIDDEN = 152064, 896


def build(batch: int, length: int, prompt: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=1,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, VOCAB, (batch, length))
    return model, ids, [(row.tolist(), prompt) for row in ids]


def naive_phi(model, ids, prompt):
    import torch

    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, prompt - 1:-1]  # [B, T, V], fp32
        log_p = torch.log_softmax(logits, dim=-1)
        chosen = log_p.gather(-1, ids[:, prompt:, None])[..., 0]
        entropy = -(log_p.exp() * log_p).sum(-1)
        return (chosen + entropy).double().cpu().numpy()


def _status(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def child(method: str, batch: int, length: int, prompt: int, repeats: int) -> None:
    import numpy as np

    from opsft.engine.scoring import score_token_ids

    model, ids, sequences = build(batch, length, prompt)
    run = (lambda: naive_phi(model, ids, prompt)) if method == "naive" else (
        lambda: np.stack(score_token_ids(model, sequences, batch_size=batch)))
    run()  # warm-up (allocator, thread pools)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set to the current one
    before, times = _status("VmRSS"), []
    for _ in range(repeats):
        started = time.perf_counter()
        phi = run()
        times.append(time.perf_counter() - started)
    print(json.dumps({"peak_extra_bytes": _status("VmHWM") - before, "seconds": statistics.median(times),
                      "phi_checksum": float(phi.sum()), "phi_first": phi.reshape(-1)[:64].tolist()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens per sequence (not scored)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", choices=["naive", "opsft"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = [str(args.batch), str(args.length), str(args.prompt), str(args.repeats)]
    if args.child:
        return child(args.child, *map(int, shape))
    results = {}
    for method in ("naive", "opsft"):
        out = subprocess.run([sys.executable, __file__, "--child", method, "--batch", shape[0], "--length", shape[1],
                              "--prompt", shape[2], "--repeats", shape[3]], capture_output=True, text=True,
                             check=True).stdout
        results[method] = json.loads(out.strip().splitlines()[-1])
    naive, ours = results["naive"], results["opsft"]
    diff = max(abs(a - b) for a, b in zip(naive["phi_first"], ours["phi_first"]))
    tokens = args.batch * (args.length - args.prompt)
    print(f"vocabulary {VOCAB}, batch {args.batch} x {args.length} tokens ({tokens} completion tokens scored), fp32\n")
    print("| method | peak extra memory | time (median) |")
    print("|---|---|---|")
    for name in ("naive", "opsft"):
        r = results[name]
        print(f"| {name} | {r['peak_extra_bytes'] / 2**20:,.0f} MiB | {r['seconds']:.2f} s |")
    print(f"| **opsft / naive** | **{ours['peak_extra_bytes'] / naive['peak_extra_bytes']:.3f}** | "
          f"**{ours['seconds'] / naive['seconds']:.2f}x** |")
    print(f"\nmax |phi difference| over the first 64 tokens: {diff:.2e}")


if __name__ == "__main__":
    main()
