"""What opsft.PhiCallback costs a training run: TRL's own SFTTrainer trained for --steps steps with and without the
callback (it scores a probe batch of --probe rows every logging step), in the same process, rounds alternating;
and what opsft.SFTTrainer's own phi/... metrics cost its step (two reductions of tensors the step already has).

    python benchmarks/bench_phi_callback.py --model tiny
    python benchmarks/bench_phi_callback.py --model smollm2-135m      # the real model, on this CPU: minutes

Full fine-tuning in fp32, batch --batch gsm_symbolic problems (conversational prompt/completion, seed 0), logging
every --logging-steps steps, AdamW at 1e-5. Each round times trainer.train() (the run, model loading excluded) for
both variants; the table gives the median over rounds and the overhead (with / without - 1). The probe batch is then
timed alone (median of 5) against the step, which gives the overhead with less noise than the difference of two runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny, or a model opsft loads (e.g. smollm2-135m)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--probe", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch
    import trl
    from datasets import Dataset

    from opsft import PhiCallback, load_examples, load_model
    from opsft.engine.trl_setup import checkpointing_option
    from opsft.methods.ddt import phi_metrics

    torch.manual_seed(0)
    if args.model == "tiny":
        sys.path.insert(0, "tests")
        from conftest import make_model, make_tokenizer

        tokenizer = make_tokenizer()

        def fresh():
            return make_model(len(tokenizer), init=0.02)
    else:
        def fresh():
            return load_model(args.model, device="cpu")[0]

        tokenizer = load_model(args.model, device="cpu")[1]
    examples = load_examples(f"gym:gsm_symbolic?size={args.batch * args.steps}&seed=0").examples
    rows = Dataset.from_list([{"prompt": e.prompt, "completion": e.completion} for e in examples])
    seconds = {"without": [], "with PhiCallback": []}
    for _ in range(args.rounds):
        for variant in seconds:
            with tempfile.TemporaryDirectory() as out:
                config = trl.SFTConfig(output_dir=out, report_to="none", use_cpu=True, bf16=False,
                                       max_steps=args.steps, per_device_train_batch_size=args.batch,
                                       logging_steps=args.logging_steps, learning_rate=1e-5,
                                       lr_scheduler_type="constant", save_strategy="no", disable_tqdm=True,
                                       max_length=1024, **{checkpointing_option(trl.SFTConfig): False})
                trainer = trl.SFTTrainer(model=fresh(), args=config, processing_class=tokenizer, train_dataset=rows)
                if variant != "without":
                    callback = PhiCallback(trainer, probe_size=args.probe)
                    trainer.add_callback(callback)
                started = time.perf_counter()
                trainer.train()
                seconds[variant].append(time.perf_counter() - started)
    base, with_callback = (statistics.median(v) for v in seconds.values())
    # opsft.SFTTrainer's own metrics: phi_metrics on a step's [batch, length] tensors, against the step
    length = max(len(trainer.train_dataset[i]["input_ids"]) for i in range(args.batch))
    log_probs, entropy = -torch.rand(args.batch, length), torch.rand(args.batch, length)
    mask = torch.ones(args.batch, length)
    started = time.perf_counter()
    for _ in range(1000):
        phi_metrics(log_probs, entropy, mask)
    metrics_seconds = (time.perf_counter() - started) / 1000
    step = base / args.steps
    # the probe alone, on the trained model of the last round: less noisy than the difference of two whole runs
    probe_seconds = []
    for _ in range(5):
        started = time.perf_counter()
        callback.probe_totals()
        probe_seconds.append(time.perf_counter() - started)
    probe = statistics.median(probe_seconds)
    print(f"probe batch alone: {probe:.3f} s (median of 5) = {probe / step:.1%} of a {step:.3f} s step; scored every "
          f"{args.logging_steps} steps: {probe / step / args.logging_steps:+.2%} a step")
    print(f"| model | run of {args.steps} steps (batch {args.batch}), without | with PhiCallback (probe {args.probe}, "
          f"every {args.logging_steps} steps) | overhead | opsft.SFTTrainer's phi metrics per step |")
    print("|---|---|---|---|---|")
    print(f"| {args.model} | {base:.2f} s | {with_callback:.2f} s | {with_callback / base - 1:+.1%} | "
          f"{metrics_seconds * 1e3:.3f} ms = {metrics_seconds / step:.2%} of a {step:.3f} s step |")
    print(f"rounds: {seconds}", file=sys.stderr)


if __name__ == "__main__":
    main()
