"""Decoding throughput: Hinted Decoding against (a) the slow reference and (b) `model.generate` of the
plain stream alone, and plain sampling (`opsft.engine.generation.sample`, what eval, prefs and drift use)
against `model.generate`, on the same 16 gsm_symbolic problems.

Generated tokens per second of the shared continuation, greedy, every row writing exactly
--new-tokens tokens (no EOS, repetition or answer stop) so that all three do the same work.
The reference decodes one example at a time, so its rate does not depend on the batch: it is
measured on the first --reference-examples examples only (it is slow by design).

    python benchmarks/bench_hinted_decoding.py        # tiny model and SmolLM2, ~10 minutes
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

sys.path.insert(0, "tests")


def setup(model_name: str):
    from opsft.engine.realignment import HINT_TEMPLATE, hinted_prompt
    from opsft.inputs.data import load_examples
    from opsft.inputs.models import load_model
    from opsft.inputs.rendering import prompt_ids

    if model_name == "tiny":
        from conftest import make_model, make_tokenizer

        tokenizer = make_tokenizer()
        model = make_model(len(tokenizer))
    else:
        model, tokenizer = load_model(model_name, device="cpu")
    examples = load_examples("gym:gsm_symbolic?size=16&seed=0").examples
    hinted = [prompt_ids(hinted_prompt(e, HINT_TEMPLATE), tokenizer) for e in examples]
    plain = [prompt_ids(e.prompt, tokenizer) for e in examples]
    return model, tokenizer, hinted, plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,smollm2-135m")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--reference-examples", type=int, default=2)
    args = parser.parse_args()

    from reference_hinted import reference_decode

    from opsft.engine.generation import SamplingConfig, sample
    from opsft.engine.hinted_decoding import hinted_decode
    from opsft.methods.hinted import HintedDecodingConfig

    config = HintedDecodingConfig(temperature=0.0, max_new_tokens=args.new_tokens, answer_marker=None,
                                  repeat_window=0)
    print("| model | decoder | tokens | time | tokens/s |\n|---|---|---|---|---|")
    for name in args.models.split(","):
        model, tokenizer, hinted, plain = setup(name)
        started = time.perf_counter()
        ours = hinted_decode(model, hinted, plain, config, eos_token_ids=set())
        ours_rate = sum(len(r.tokens) for r in ours) / (time.perf_counter() - started)

        k = args.reference_examples
        started = time.perf_counter()
        for h, q in zip(hinted[:k], plain[:k]):
            reference_decode(model, h, q, config, tokenizer, eos=frozenset())
        reference_rate = k * args.new_tokens / (time.perf_counter() - started)

        width = max(len(p) for p in plain)
        batch = torch.full((len(plain), width), tokenizer.pad_token_id or 0)
        mask = torch.zeros(len(plain), width, dtype=torch.long)
        for row, p in enumerate(plain):
            batch[row, width - len(p):], mask[row, width - len(p):] = torch.tensor(p), 1
        started = time.perf_counter()
        with torch.no_grad():
            generated = model.generate(batch, attention_mask=mask, do_sample=False, max_new_tokens=args.new_tokens,
                                       min_new_tokens=args.new_tokens, pad_token_id=tokenizer.pad_token_id or 0)
        generate_rate = (generated.shape[1] - width) * len(plain) / (time.perf_counter() - started)

        started = time.perf_counter()
        plain_ours = sample(model, plain, SamplingConfig(max_new_tokens=args.new_tokens), eos_token_ids=set(),
                            pad_token_id=tokenizer.pad_token_id or 0)
        sample_rate = sum(len(r.tokens) for r in plain_ours) / (time.perf_counter() - started)

        n = len(hinted) * args.new_tokens
        print(f"| {name} | opsft hinted_decode (batch 16, 2 streams) | {n} | {n / ours_rate:.1f} s | {ours_rate:.1f} |")
        print(f"| {name} | slow reference (1 example, no cache) | {k * args.new_tokens} | "
              f"{k * args.new_tokens / reference_rate:.1f} s | {reference_rate:.1f} |")
        print(f"| {name} | model.generate, plain stream only (batch 16) | {n} | {n / generate_rate:.1f} s | "
              f"{generate_rate:.1f} |")
        print(f"| {name} | **opsft / reference** | | | **{ours_rate / reference_rate:.1f}x** |")
        print(f"| {name} | **opsft / generate** | | | **{ours_rate / generate_rate:.2f}x** |")
        print(f"| {name} | opsft sample, plain stream (batch 16) | {n} | {n / sample_rate:.1f} s | {sample_rate:.1f} |")
        print(f"| {name} | **opsft sample / generate** | | | **{sample_rate / generate_rate:.2f}x** |")


if __name__ == "__main__":
    main()
