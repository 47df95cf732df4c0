"""Training-step cost of each loss against plain SFT, and IDFT's LM head against the authors' formulation.

Part "methods": a real `SFTTrainer.training_step` (forward with TRL's fused LM head, the family's
weights, backward) plus an AdamW step, per method, on the tiny test model and on SmolLM2-135M (full
fine-tuning, fp32). Each method runs in a fresh process: peak extra memory is the rise of the peak
resident set during the timed steps over what the process held after a warm-up step (weights,
gradients, optimizer state), i.e. what the step itself allocates.

Part "head": the LM head alone at vocabulary 152,064, forward and backward of the IDFT loss: TRL's
fused kernel as SFTTrainer uses it (32768-column tiles) vs the authors' formulation, which builds the
full logits and probabilities, p ** gamma and the entropy over the vocabulary.

    python benchmarks/bench_train_step.py                 # both parts, ~15 minutes, ~12 GB
    python benchmarks/bench_train_step.py --part head     # ~2 minutes
    python benchmarks/bench_train_step.py --part methods --methods sft,dft,asft,asft_token   # some losses

asft builds the trainer's frozen copy of the initial model (its reference) before the warm-up step, so its
weights are not in the step's extra memory; its reference forward and the tiled KL are. asft_token and iwsft read
their reference log-probs from the batch, as `opsft train` precomputes them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# Blocks above 16 KiB are mmapped and returned to the system when freed, so the peak resident set of a
# child tracks the peak of live tensors instead of the C allocator's retained free lists.
CHILD_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "16384"}

METHODS = ["sft", "dft", "idft", "iwsft", "sftq", "eaft", "asft", "asft_token"]


def _status(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _reset_peak() -> int:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")


def methods_child(model_name: str, method: str, steps: int) -> dict:
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from opsft.engine.sft_config import SFTConfig
    from opsft.engine.sft_trainer import FamilyCollator, SFTTrainer, build_train_dataset
    from opsft.inputs.data import load_examples
    from opsft.inputs.models import load_model
    from opsft.inputs.rendering import tokenize_dataset

    if model_name == "tiny":
        sys.path.insert(0, "tests")
        from conftest import make_model, make_tokenizer

        tokenizer = make_tokenizer()
        model, batch_size = make_model(len(tokenizer), init=0.02).train(), 8
    else:
        model, tokenizer = load_model(model_name, device="cpu")
        model.train()
        batch_size = 4
    torch.manual_seed(0)
    examples = load_examples(f"gym:gsm_symbolic?size={batch_size}&seed=0").examples
    tokenized, _ = tokenize_dataset(examples, tokenizer, max_length=512)
    ref = {t.index: [-1.0] * (len(t.input_ids) - t.completion_start) for t in tokenized}
    quality = {t.index: 1.0 + t.index % 3 for t in tokenized}
    dataset = build_train_dataset(tokenized, ref_log_probs=ref, quality=quality)
    collator = FamilyCollator(DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id))
    args = SFTConfig(output_dir="/tmp/opsft-bench", report_to=[], use_cpu=True, bf16=False, max_steps=100,
                     per_device_train_batch_size=batch_size, disable_tqdm=True, loss_type=method,
                     logits_memory_mb=0)  # TRL's fused head, whatever the device: what the losses add
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=dataset)
    trainer.state.max_steps = 100
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop in a real run
    batch = collator([dataset[i] for i in range(len(dataset))])
    num_items = (batch["labels"][:, 1:] != -100).sum()
    optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=1e-5)

    def step():
        trainer.training_step(trainer.model, dict(batch), num_items)
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)

    step()  # warm-up: gradients and optimizer state exist from here on
    before, times = _reset_peak(), []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    tokens = int((batch["labels"] != -100).sum())
    return {"seconds": statistics.median(times), "peak_extra_bytes": _status("VmHWM") - before,
            "completion_tokens": tokens, "tokens": int(batch["attention_mask"].sum())}


def head_child(method: str, tokens: int) -> dict:
    import torch
    import torch.nn.functional as F
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    from opsft.methods.losses import LossConfig, idft_gamma, token_weights, weighted_nll

    torch.manual_seed(0)
    vocab, hidden_size = 152064, 896
    hidden = torch.randn(tokens, hidden_size, requires_grad=True)
    weight = (torch.randn(vocab, hidden_size) * 0.02).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,))
    mask = torch.ones(1, tokens, dtype=torch.bool)

    def authors():
        logits = hidden @ weight.T  # [N, V]
        probs = F.softmax(logits, dim=-1)
        log_probs = F.log_softmax(logits, dim=-1)
        entropy = -(probs * log_probs).sum(-1)
        token_log_p = log_probs.gather(-1, targets[:, None])[:, 0]
        gamma = idft_gamma((token_log_p + entropy).detach(), 1.0)
        target_p = probs.gather(-1, targets[:, None])[:, 0]
        loss = (-(target_p.detach() ** gamma) * token_log_p).mean()
        loss.backward()

    def fused():
        log_probs, entropy, *_ = ChunkedLogProbFunction.apply(hidden, weight, None, targets, 1.0,
                                                              _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0, ("entropy",))
        terms = token_weights(LossConfig("idft"), log_probs[None], entropy[None], mask)
        weighted_nll(log_probs[None], terms.weights, tokens).backward()

    run = authors if method == "authors" else fused
    run()
    hidden.grad = weight.grad = None
    before = _reset_peak()
    started = time.perf_counter()
    run()
    return {"seconds": time.perf_counter() - started, "peak_extra_bytes": _status("VmHWM") - before}


def spawn(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=CHILD_ENV, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["methods", "head", "all"], default="all")
    parser.add_argument("--models", default="tiny,smollm2-135m")
    parser.add_argument("--methods", default=",".join(METHODS), help="losses of part methods (sft always runs)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--head-tokens", type=int, default=2048)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        result = methods_child(rest[0], rest[1], int(rest[2])) if kind == "methods" else head_child(rest[0],
                                                                                                     int(rest[1]))
        return print(json.dumps(result))
    if args.part in ("methods", "all"):
        for model in args.models.split(","):
            methods = ["sft"] + [m for m in args.methods.split(",") if m != "sft"]
            rows = {m: spawn("methods", model, m, str(args.steps)) for m in methods}
            sft = rows["sft"]
            print(f"\n{model}: batch of {sft['tokens']} tokens ({sft['completion_tokens']} completion), fp32, "
                  f"median of {args.steps} steps\n")
            print("| loss | step time | peak extra memory | time / SFT | memory / SFT |")
            print("|---|---|---|---|---|")
            for method, r in rows.items():
                print(f"| {method} | {r['seconds']:.3f} s | {r['peak_extra_bytes'] / 2**20:,.0f} MiB | "
                      f"{r['seconds'] / sft['seconds']:.3f}x | {r['peak_extra_bytes'] / sft['peak_extra_bytes']:.3f} |")
    if args.part in ("head", "all"):
        rows = {m: spawn("head", m, str(args.head_tokens)) for m in ("authors", "fused")}
        a, f = rows["authors"], rows["fused"]
        print(f"\nIDFT LM head, forward + backward, {args.head_tokens} tokens, vocabulary 152,064, fp32\n")
        print("| formulation | time | peak extra memory |")
        print("|---|---|---|")
        print(f"| authors' (full logits and probabilities) | {a['seconds']:.2f} s | "
              f"{a['peak_extra_bytes'] / 2**20:,.0f} MiB |")
        print(f"| opsft (TRL fused head, as in training) | {f['seconds']:.2f} s | {f['peak_extra_bytes'] / 2**20:,.0f} MiB |")
        print(f"| **authors / opsft** | **{a['seconds'] / f['seconds']:.2f}x** | "
              f"**{a['peak_extra_bytes'] / f['peak_extra_bytes']:.1f}x** |")


if __name__ == "__main__":
    main()
