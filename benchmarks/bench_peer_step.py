"""One SFT training step four ways, each in a fresh process: opsft's (`opsft train --loss sft`: TRL's trainer with
our loss, at its defaults: on a CPU the statistics come from the model's logits, lm_head.py), opsft's through TRL's
fused LM head (`--logits-memory-mb 0`, what it does on CUDA), TRL's own SFTTrainer, and a plain transformers step
(labels -> the model's full-logits cross-entropy). Same model, token batch, optimiser and settings.

    python benchmarks/bench_peer_step.py --model tiny             # a 2-layer Llama built here: seconds
    python benchmarks/bench_peer_step.py --model smollm2-135m     # the real model: minutes on a CPU
    python benchmarks/bench_peer_step.py --model DIR --device cuda  # on a GPU, all three in bf16 (gpu_check.py)

Full fine-tuning in fp32 without activation checkpointing (TRL's SFTConfig defaults to bf16 and checkpointing; both
are turned off for it, as opsft has them on a CPU), AdamW at a constant learning rate of 1e-5, gradient clipping
at 1.0, one micro-batch of --examples gsm_symbolic problems (seed 0), prompts masked out of the loss. Each variant
times --steps optimiser steps after one warm-up step (from just before the forward pass to just after the optimiser
step; data loading excluded) and reports the median; --rounds R repeats the whole sequence of variants R times and
reports the median over rounds (the machine's slow and fast spells then fall on every variant). Prints a markdown
table: seconds per step and the ratios. On a GPU (--device cuda) the weights are bf16 in every variant (opsft --bf16,
TRL bf16, the plain model cast), and each step is timed to a CUDA synchronisation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("opsft", "opsft_fused", "trl", "plain")
DATA = "gym:gsm_symbolic?size={n}&seed=0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny, or a model opsft loads (e.g. smollm2-135m)")
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of all variants, one after another")
    parser.add_argument("--device", default="cpu", help="cpu (fp32) or cuda (bf16)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="which steps (trl and plain always run: they are the baselines)")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line, last")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one variant, in this process
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.model, args.examples, args.steps, args.device)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny(Path(tmp), args.examples) if args.model == "tiny" else args.model
        variants = [v for v in VARIANTS if v in args.variants or v in ("trl", "plain")]
        rounds = []  # each round runs every variant once, in turn, so that a slow spell of the machine hits all
        for _ in range(args.rounds):
            rounds.append({})
            for variant in variants:
                out = subprocess.run([sys.executable, __file__, "--variant", variant, "--model", str(model),
                                      "--examples", str(args.examples), "--steps", str(args.steps), "--device",
                                      args.device],
                                     capture_output=True, text=True)
                if out.returncode != 0:
                    sys.exit(f"bench_peer_step: the {variant} step failed (exit {out.returncode}):\n"
                             f"{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
                rounds[-1][variant] = json.loads(out.stdout.strip().splitlines()[-1])
    tokens = rounds[0]["plain"]["tokens"]
    results = {v: {"seconds": statistics.median(r[v]["seconds"] for r in rounds),
                   "rounds": [r[v]["seconds"] for r in rounds],
                   "x_trl": statistics.median(r[v]["seconds"] / r["trl"]["seconds"] for r in rounds),
                   "x_plain": statistics.median(r[v]["seconds"] / r["plain"]["seconds"] for r in rounds)}
               for v in variants}
    print(f"model {args.model}; {args.examples} examples, {tokens} tokens a step; median of {args.steps} steps in "
          f"each of {args.rounds} round(s); ratios: median over rounds of the round's ratio\n")
    print("| step | s / step | × TRL | × plain | s / step in each round |\n|---|---|---|---|---|")
    for variant in variants:
        r = results[variant]
        print(f"| {variant} | {r['seconds']:.4f} | {r['x_trl']:.2f} | {r['x_plain']:.2f} | "
              f"{', '.join(f'{x:.4f}' for x in r['rounds'])} |")
    if args.json:
        print(json.dumps({**results, "tokens": tokens, "device": args.device}))


def build_tiny(directory: Path, examples: int) -> Path:
    from opsft.inputs.data import load_examples
    from opsft.inputs.tiny import build_tiny_model

    texts = [str(e.prompt) + str(e.completion) for e in load_examples(DATA.format(n=examples)).examples]
    return build_tiny_model(directory / "tiny", texts * 20)


def tokenized(model: str, examples: int, device: str = "cpu"):
    import torch

    from opsft.inputs.data import load_examples
    from opsft.inputs.models import load_model
    from opsft.inputs.rendering import tokenize_dataset

    loaded, tokenizer = load_model(model, device=device, dtype=torch.float32 if device == "cpu" else torch.bfloat16)
    data = load_examples(DATA.format(n=examples))
    rows, _ = tokenize_dataset(data.examples, tokenizer, max_length=1024, skip_invalid=False,
                               source=DATA.format(n=examples))
    return loaded, tokenizer, rows


class StepTimer:
    """A TrainerCallback timing each optimiser step."""

    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer.started = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                synchronize()
                timer.seconds.append(time.perf_counter() - timer.started)

        self.seconds, self.callback = [], Callback()


def synchronize() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def run_variant(variant: str, model: str, examples: int, steps: int, device: str = "cpu") -> dict:
    """One variant's step times, its trainer's files in a temporary directory removed afterwards (a full
    fine-tune of SmolLM2 writes 2 GiB of checkpoint and final model)."""
    with tempfile.TemporaryDirectory() as out:
        return _run_variant(variant, model, examples, steps, device, out)


def _run_variant(variant: str, model: str, examples: int, steps: int, device: str, out: str) -> dict:
    import torch

    torch.manual_seed(0)
    common = dict(max_steps=steps + 1, per_device_train_batch_size=examples, learning_rate=1e-5,
                  lr_scheduler_type="constant", max_grad_norm=1.0, seed=0, logging_steps=1, save_steps=10_000)
    timer, tokens = StepTimer(), None
    if variant in ("opsft", "opsft_fused"):
        from opsft.commands.train import TrainConfig, run_train

        run_train(TrainConfig(model=model, data=DATA.format(n=examples), loss="sft", output_dir=out, progress=False,
                              device=device, bf16=device != "cpu", logits_memory_mb=0 if variant == "opsft_fused"
                              else None, **common), callbacks=[timer.callback])
        seconds = timer.seconds
    elif variant == "trl":
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        from opsft.engine.trl_setup import checkpointing_option

        loaded, tokenizer, rows = tokenized(model, examples, device)
        dataset = Dataset.from_list([{"input_ids": r.input_ids, "completion_mask": [0] * r.completion_start + [1] * (
            len(r.input_ids) - r.completion_start)} for r in rows])
        arguments = SFTConfig(output_dir=out, report_to="none", use_cpu=device == "cpu", disable_tqdm=True,
                              max_length=1024, completion_only_loss=True, bf16=device != "cpu",
                              **{checkpointing_option(SFTConfig): False}, **common)  # as opsft's
        trainer = SFTTrainer(model=loaded, processing_class=tokenizer, train_dataset=dataset,
                             callbacks=[timer.callback], args=arguments)
        trainer.train()
        seconds = timer.seconds
    else:
        loaded, tokenizer, rows = tokenized(model, examples, device)
        width = max(len(r.input_ids) for r in rows)
        input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r.input_ids)
            input_ids[i, :n] = torch.tensor(r.input_ids)
            labels[i, r.completion_start:n] = input_ids[i, r.completion_start:n]
            attention_mask[i, :n] = 1
        tokens = sum(len(r.input_ids) for r in rows)
        optimizer = torch.optim.AdamW(loaded.parameters(), lr=1e-5)
        loaded.train()
        seconds = []
        for _ in range(steps + 1):
            started = time.perf_counter()
            loss = loaded(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                          labels=labels.to(device)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(loaded.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            synchronize()
            seconds.append(time.perf_counter() - started)
    return {"seconds": statistics.median(seconds[1:]), "all": seconds, "tokens": tokens}


if __name__ == "__main__":
    main()
