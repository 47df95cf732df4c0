"""The GPU check: one command a maintainer runs on one GPU (sized for an H100, about 8 minutes) that proves the GPU
path and measures it. Nothing is fetched: the model is built from a config (a Qwen2-shaped model of ~109M
parameters, vocabulary 152,064, tied embeddings; the dry run's vocabulary is 2,048) and the packages the GPU image
lacks come as wheels prepared beforehand (benchmarks/gpu_wheels.sh).

Parts, each in its own process (a failing part is reported, the others still run):
  tests     the tests marked `gpu` (conftest.DEVICES): phi, greedy sampling, Hinted Decoding and `opsft train`
            in bf16 on the GPU against float64 / fp32 / slow references, with the tolerances stated in the tests
  scorer    DDT scorer against the naive full-logits computation at vocabulary 152,064: time and peak GPU memory,
            bf16 and fp32 (opsft: the backbone, then TRL's chunked LM head on completion positions only)
  losses    a training step (forward, the family's weights, backward, AdamW) of every loss against SFT's, bf16
  peer      one SFT step three ways, each in a fresh process: opsft (its default head on CUDA: TRL's fused one),
            TRL's SFTTrainer, plain transformers
            (benchmarks/bench_peer_step.py on the built model), bf16
  decoding  Hinted Decoding and opsft's sampling against `model.generate` (greedy, fixed length), bf16

    python benchmarks/gpu_check.py --out runs/gpu-check          # on the GPU; writes gpu_check.json and .md
    python benchmarks/gpu_check.py --dry-run --out /tmp/check    # the same plumbing on the CPU at toy sizes

The dry run (a test runs it in CI, tests/test_gpu_check.py) runs every part on the CPU with a one-layer model,
so that the check cannot rot between GPU runs; its numbers mean nothing. Ratios, not absolute times, are what
docs/benchmarks.md records, with the card's name.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PARTS = ("tests", "scorer", "losses", "peer", "decoding")
LOSSES = ("sft", "dft", "idft", "iwsft", "eaft", "asft", "asft_token")
SIZES = {  # GPU: the ~109M model and real batch sizes; dry run: toy sizes, the same code
    "gpu": dict(vocab=152064, hidden=576, layers=6, heads=9, kv_heads=3, intermediate=1536, score_batch=8,
                score_length=1024, train_batch=8, train_length=512, decode_batch=16, prompt_length=64, new_tokens=128,
                repeats=5, peer_examples=8, timeout=240),
    "dry": dict(vocab=2048, hidden=64, layers=1, heads=2, kv_heads=1, intermediate=128, score_batch=2, score_length=64,
                train_batch=2, train_length=32, decode_batch=2, prompt_length=8, new_tokens=8, repeats=1,
                peer_examples=2, timeout=300),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/gpu-check", help="where gpu_check.json and gpu_check.md go")
    parser.add_argument("--dry-run", action="store_true", help="the CPU at toy sizes: checks the plumbing only")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"a subset of {','.join(PARTS)}")
    parser.add_argument("--part", help=argparse.SUPPRESS)  # one part, in this process
    args = parser.parse_args()
    device = "cpu" if args.dry_run else "cuda"
    sizes = SIZES["dry" if args.dry_run else "gpu"]
    if args.part:
        print(json.dumps(PART_FUNCTIONS[args.part](device, sizes, Path(args.out))))
        return
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; use --dry-run to check the plumbing on the CPU")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"environment": environment(device), "dry_run": args.dry_run, "sizes": sizes, "parts": {}}
    for part in args.parts.split(","):
        started = time.perf_counter()
        print(f"gpu_check: {part} ...", flush=True)
        run = subprocess.run([sys.executable, __file__, "--part", part, "--out", str(out)]
                             + (["--dry-run"] if args.dry_run else []), capture_output=True, text=True,
                             timeout=sizes["timeout"] * (3 if part == "peer" else 1), cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": python_path()})
        seconds = round(time.perf_counter() - started, 1)
        if run.returncode == 0:
            report["parts"][part] = {**json.loads(run.stdout.strip().splitlines()[-1]), "seconds": seconds}
        else:
            report["parts"][part] = {"failed": run.returncode, "seconds": seconds,
                                     "output": (run.stdout[-2000:] + run.stderr[-4000:])}
        print(f"gpu_check: {part}: {'failed' if run.returncode else 'done'} in {seconds} s", flush=True)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    if any("failed" in r for r in report["parts"].values()):
        sys.exit(1)


def python_path() -> str:
    """opsft's sources, the tests' helpers and these benchmarks, before whatever PYTHONPATH held (the wheels)."""
    return os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), str(HERE), os.environ.get("PYTHONPATH", "")])


def environment(device: str) -> dict:
    import torch
    import transformers

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__}
    for name in ("trl", "accelerate", "peft", "triton"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    card = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    return {"device": device, "card": card, **versions}


# ---- the model ---------------------------------------------------------------------------------------------------

def build_model(sizes: dict, device: str, dtype):
    """The Qwen2-shaped model of the check, from a config (seeded), on `device` in `dtype`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=sizes["vocab"], hidden_size=sizes["hidden"], num_hidden_layers=sizes["layers"],
                         num_attention_heads=sizes["heads"], num_key_value_heads=sizes["kv_heads"],
                         intermediate_size=sizes["intermediate"], tie_word_embeddings=True,
                         max_position_embeddings=4096, initializer_range=0.02)
    return Qwen2ForCausalLM(config).to(device, dtype).eval()


def token_ids(sizes: dict, batch: int, length: int, seed: int = 0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, sizes["vocab"], (batch, length), generator=generator)


class Meter:
    """Median time of `repeats` calls after one warm-up, and the peak memory the calls add (GPU: the allocator's
    peak over what was allocated before; CPU: not measured)."""

    def __init__(self, device: str, repeats: int):
        self.device, self.repeats = device, repeats

    def __call__(self, work) -> dict:
        import torch

        cuda = self.device == "cuda"
        work()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        times = []
        for _ in range(self.repeats):
            started = time.perf_counter()
            work()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        peak = torch.cuda.max_memory_allocated() - before if cuda else None
        return {"seconds": statistics.median(times), "peak_extra_bytes": peak}


# ---- parts -------------------------------------------------------------------------------------------------------

def part_tests(device: str, sizes: dict, out: Path) -> dict:
    """pytest -m gpu: the accelerator cases of the tests. The dry run only collects them: their CPU cases are the
    same tests, and the suite runs those."""
    env = {**os.environ, "OPSFT_TEST_DEVICE": device}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfEs", "-m", "gpu", "-p", "no:cacheprovider",
                          "tests"] + (["--collect-only"] if device == "cpu" else []), capture_output=True, text=True,
                         env=env, cwd=ROOT)
    (out / "pytest.txt").write_text(run.stdout + run.stderr)  # the whole output, beside the report
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-500:]
    if run.returncode != 0:
        raise SystemExit(f"gpu tests failed (whole output: {out / 'pytest.txt'}):\n{run.stdout[-4000:]}\n"
                         f"{run.stderr[-2000:]}")
    return {"pytest": summary}


def part_scorer(device: str, sizes: dict, out: Path) -> dict:
    """opsft's scorer against the naive full softmax, bf16 and fp32, at vocabulary 152,064."""
    import numpy as np
    import torch
    from bench_scorer_memory import naive_phi

    from opsft.engine.scoring import score_token_ids

    ids = token_ids(sizes, sizes["score_batch"], sizes["score_length"])
    prompt = sizes["score_length"] // 4
    sequences = [(row.tolist(), prompt) for row in ids]
    meter, result = Meter(device, sizes["repeats"]), {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        model = build_model(sizes, device, dtype)
        naive = meter(lambda: naive_phi(model, ids.to(device), prompt))
        ours = meter(lambda: score_token_ids(model, sequences, batch_size=len(sequences)))
        agreement = float(np.abs(np.concatenate(score_token_ids(model, sequences, batch_size=len(sequences)))
                                 - naive_phi(model, ids.to(device), prompt).ravel()).max())
        result[name] = {"naive": naive, "opsft": ours, "time_ratio": ours["seconds"] / naive["seconds"],
                        "memory_ratio": ours["peak_extra_bytes"] / naive["peak_extra_bytes"]
                        if naive["peak_extra_bytes"] else None, "max_abs_phi_difference": agreement}
    result["tokens_scored"] = sizes["score_batch"] * (sizes["score_length"] - prompt)
    return result


def part_losses(device: str, sizes: dict, out: Path) -> dict:
    """A training step of every loss against SFT's: opsft's SFTTrainer.training_step (fused head, weights,
    backward) plus AdamW, on the same batch, bf16 weights."""
    import torch
    from conftest import make_tokenizer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from opsft.engine.sft_config import SFTConfig
    from opsft.engine.sft_trainer import FamilyCollator, SFTTrainer, build_train_dataset
    from opsft.engine.trl_setup import checkpointing_option
    from opsft.inputs.rendering import TokenizedExample

    tokenizer = make_tokenizer()
    ids, prompt = token_ids(sizes, sizes["train_batch"], sizes["train_length"], seed=1), sizes["train_length"] // 4
    tokenized = [TokenizedExample(index=i, input_ids=row.tolist(), completion_start=prompt, truncated=False)
                 for i, row in enumerate(ids)]
    dataset = build_train_dataset(tokenized, ref_log_probs={t.index: [-1.0] * (sizes["train_length"] - prompt)
                                                            for t in tokenized},
                                  quality={t.index: 1.0 for t in tokenized})
    collator = FamilyCollator(DataCollatorForLanguageModeling(pad_token_id=0))
    batch = {k: v.to(device) if hasattr(v, "to") else v
             for k, v in collator([dataset[i] for i in range(len(dataset))]).items()}
    num_items = (batch["labels"][:, 1:] != -100).sum()
    meter, result = Meter(device, sizes["repeats"]), {}
    for loss in LOSSES:
        model = build_model(sizes, device, torch.bfloat16).train()
        with tempfile.TemporaryDirectory() as scratch:  # the trainer's output_dir (nothing is saved there)
            args = SFTConfig(output_dir=scratch, report_to=[], use_cpu=device == "cpu",
                             bf16=device != "cpu", max_steps=100, per_device_train_batch_size=sizes["train_batch"],
                             disable_tqdm=True, **{checkpointing_option(SFTConfig): False}, loss_type=loss,
                             logits_memory_mb=0)  # the fused head, as on CUDA, also in the dry run
            trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=dataset)
            trainer.state.max_steps = 100
            trainer.current_gradient_accumulation_steps = 1
            optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=1e-5)

            def step():
                trainer.training_step(trainer.model, dict(batch), num_items)
                optimizer.step()
                optimizer.zero_grad(set_to_none=False)

            result[loss] = meter(step)
    for loss in LOSSES:
        result[loss]["x_sft"] = result[loss]["seconds"] / result["sft"]["seconds"]
    result["tokens_per_step"] = int(batch["attention_mask"].sum())
    return result


def part_peer(device: str, sizes: dict, out: Path) -> dict:
    """bench_peer_step.py's three steps on the check's model (saved with the tests' tokenizer), bf16 on the GPU."""
    import torch
    from conftest import make_tokenizer

    with tempfile.TemporaryDirectory() as scratch:  # the saved model, removed afterwards
        directory = Path(scratch) / "model"
        model = build_model(sizes, "cpu", torch.float32)
        model.save_pretrained(directory)
        make_tokenizer().save_pretrained(directory)
        run = subprocess.run([sys.executable, str(HERE / "bench_peer_step.py"), "--model", str(directory),
                              "--examples", str(sizes["peer_examples"]), "--steps", str(sizes["repeats"]), "--device",
                              device, "--variants", "opsft", "--json"], capture_output=True, text=True, cwd=ROOT)
    if run.returncode != 0:
        raise SystemExit(f"bench_peer_step.py failed (exit {run.returncode}):\n{run.stdout[-2000:]}\n"
                         f"{run.stderr[-4000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def part_decoding(device: str, sizes: dict, out: Path) -> dict:
    """Hinted Decoding (two streams) and opsft's sampling against `model.generate` of one stream: tokens per
    second, greedy, every row writing exactly new_tokens tokens, bf16."""
    import torch

    from opsft.engine.generation import SamplingConfig, sample
    from opsft.engine.hinted_decoding import hinted_decode
    from opsft.methods.hinted import HintedDecodingConfig

    model = build_model(sizes, device, torch.bfloat16)
    n, length, new = sizes["decode_batch"], sizes["prompt_length"], sizes["new_tokens"]
    plain = [row.tolist() for row in token_ids(sizes, n, length, seed=2)]
    hinted = [row.tolist() + p for row, p in zip(token_ids(sizes, n, length, seed=3), plain)]
    config = HintedDecodingConfig(temperature=0.0, max_new_tokens=new, answer_marker=None, repeat_window=0)
    meter = Meter(device, sizes["repeats"])
    prompts = torch.tensor(plain, device=device)
    result = {
        "generate": meter(lambda: model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                                                 max_new_tokens=new, min_new_tokens=new, pad_token_id=0)),
        "opsft_sample": meter(lambda: sample(model, plain, SamplingConfig(max_new_tokens=new), eos_token_ids=set(),
                                             pad_token_id=0)),
        "opsft_hinted_decode": meter(lambda: hinted_decode(model, hinted, plain, config, eos_token_ids=set())),
    }
    for name in ("opsft_sample", "opsft_hinted_decode"):
        result[name]["x_generate"] = result[name]["seconds"] / result["generate"]["seconds"]
    result["tokens"] = n * new
    return result


PART_FUNCTIONS = {"tests": part_tests, "scorer": part_scorer, "losses": part_losses, "peer": part_peer,
                  "decoding": part_decoding}


def markdown(report: dict) -> str:
    """The check's results as the tables docs/benchmarks.md records."""
    env, parts = report["environment"], report["parts"]
    dry = ", DRY RUN: toy sizes, the numbers mean nothing" if report["dry_run"] else ""
    lines = [f"GPU check on {env['card']} ({env['device']}{dry}); torch {env['torch']}, transformers "
             f"{env['transformers']}, trl {env['trl']}, triton {env['triton']}", ""]

    def gib(value):
        return f"{value / 2 ** 30:.2f} GiB" if value is not None else "—"

    for part, result in parts.items():
        lines.append(f"**{part}** ({result['seconds']} s)")
        if "failed" in result:
            lines += ["", f"FAILED (exit {result['failed']}):", "```", result["output"][-1500:], "```", ""]
            continue
        if part == "tests":
            lines.append(f": {result['pytest']}")
        elif part == "scorer":
            lines += ["", "| dtype | naive s | opsft s | × naive time | naive peak | opsft peak | × naive memory |"
                          " max |Δphi| |", "|---|---|---|---|---|---|---|---|"]
            for dtype in ("bf16", "fp32"):
                r = result[dtype]
                memory = f"{r['memory_ratio']:.3f}" if r["memory_ratio"] is not None else "—"
                lines.append(f"| {dtype} | {r['naive']['seconds']:.4f} | {r['opsft']['seconds']:.4f} | "
                             f"{r['time_ratio']:.2f} | {gib(r['naive']['peak_extra_bytes'])} | "
                             f"{gib(r['opsft']['peak_extra_bytes'])} | {memory} | {r['max_abs_phi_difference']:.2e} |")
        elif part == "losses":
            lines += ["", f"{result['tokens_per_step']} tokens a step", "", "| loss | s / step | × SFT | peak |",
                      "|---|---|---|---|"]
            for loss in LOSSES:
                r = result[loss]
                lines.append(f"| {loss} | {r['seconds']:.4f} | {r['x_sft']:.2f} | {gib(r['peak_extra_bytes'])} |")
        elif part == "peer":
            lines += ["", f"{result['tokens']} tokens a step", "", "| step | s / step | × TRL | × plain |",
                      "|---|---|---|---|"]
            for variant in ("opsft", "trl", "plain"):
                seconds = result[variant]["seconds"]
                lines.append(f"| {variant} | {seconds:.4f} | {seconds / result['trl']['seconds']:.2f} | "
                             f"{seconds / result['plain']['seconds']:.2f} |")
        elif part == "decoding":
            lines += ["", f"{result['tokens']} new tokens", "", "| decoder | s | tokens/s | × generate time |",
                      "|---|---|---|---|"]
            for name in ("generate", "opsft_sample", "opsft_hinted_decode"):
                r = result[name]
                lines.append(f"| {name} | {r['seconds']:.4f} | {result['tokens'] / r['seconds']:.0f} | "
                             f"{r.get('x_generate', 1.0):.2f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
