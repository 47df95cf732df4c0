"""Generation-based accuracy (SPEC §5): sample k answers per problem, check each, summarise.

With c_i correct answers out of n samples of problem i (N problems):

    avg@n      = (1/N) sum_i c_i / n                          (greedy accuracy when n = 1, temperature 0)
    pass@k     = (1/N) sum_i [1 - C(n - c_i, k) / C(n, k)]      (unbiased, k <= n; Chen et al. 2021)

95 % intervals: Wilson's score interval when every problem contributes a 0/1 outcome (greedy accuracy,
pass@n with k = n); otherwise the normal interval of the mean of the per-problem values,
mean ± 1.96 · sd / sqrt(N), clipped to [0, 1] (problems are the independent unit, not samples).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

from tqdm.auto import tqdm

from ..inputs.data import Example, LoadedData, load_examples
from ..inputs.models import model_argument
from ..inputs.rendering import fitting_prompts, prompt_ids, text_of, use_prompt_format
from ..methods.answers import answer_matches, final_answer
from ..runtime.errors import OpsftError, nothing_left
from ..runtime.resumable import MemoryLog, ShardedLog
from .generation import SamplingConfig, decoded_text, eos_token_ids, row_seed, sample

Z95 = 1.959963984540054  # the two-sided 95 % normal quantile


def avg_at_k(correct: Sequence[Sequence[bool]]) -> float:
    """Mean over problems of the fraction of its samples that are correct."""
    return sum(sum(c) / len(c) for c in correct) / len(correct)


def pass_at_k_one(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n (got k={k}, n={n})")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_at_k(correct: Sequence[Sequence[bool]], k: int) -> float:
    return sum(pass_at_k_one(len(c), sum(c), k) for c in correct) / len(correct)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (0.0 if successes == 0 else centre - half, 1.0 if successes == n else centre + half)


def mean_interval(values: Sequence[float], z: float = Z95) -> tuple[float, float]:
    """Normal interval of the mean of per-problem values in [0, 1], clipped to [0, 1]."""
    n = len(values)
    if n < 2:
        return (float("nan"), float("nan"))
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return (max(0.0, mean - z * sd / math.sqrt(n)), min(1.0, mean + z * sd / math.sqrt(n)))


def macro_mean_interval(values: dict[str, Sequence[float]], z: float = Z95) -> tuple[float, float]:
    """Macro average over sets of per-problem values, with its 95 % half-width over problems.

    Per set s with n_s problems: m_s = mean(v), se_s = std(v) / sqrt(n_s). Over S sets: mean_s m_s,
    half-width = z * sqrt(sum_s se_s^2) / S. Only the spread over problems, not over training seeds.
    """
    means, variances = [], []
    for v in values.values():
        n = len(v)
        mean = sum(v) / n
        means.append(mean)
        variances.append(sum((x - mean) ** 2 for x in v) / (n - 1) / n if n > 1 else float("nan"))
    return sum(means) / len(means), z * math.sqrt(sum(variances)) / len(means)


def paired_difference(a: dict[str, Sequence[float]], b: dict[str, Sequence[float]], z: float = Z95
                      ) -> tuple[float, float]:
    """Difference of macro accuracies A - B over the same problems, with its 95 % half-width: the macro mean
    interval of the per-problem differences d_i = a_i - b_i (paired by problem)."""
    return macro_mean_interval({name: [x - y for x, y in zip(values, b[name], strict=True)]
                                for name, values in a.items()}, z)


def accuracy_summary(correct: Sequence[Sequence[bool]]) -> dict:
    """avg@n and pass@n (n samples per problem) with their 95 % intervals, and pass@1..n."""
    n_problems, n = len(correct), len(correct[0])
    if any(len(c) != n for c in correct):
        raise ValueError("every problem needs the same number of samples")
    per_problem = [sum(c) / n for c in correct]
    solved = sum(any(c) for c in correct)
    avg_ci = wilson_interval(round(sum(per_problem)), n_problems) if n == 1 else mean_interval(per_problem)
    return {
        "problems": n_problems, "samples_per_problem": n,
        "accuracy": avg_at_k(correct), "accuracy_ci95": list(avg_ci),
        f"pass@{n}": solved / n_problems, f"pass@{n}_ci95": list(wilson_interval(solved, n_problems)),
        "pass_at": {str(k): pass_at_k(correct, k) for k in range(1, n + 1)},
    }


def completion_text(example: Example) -> str:
    return text_of(example.completion)


def reference_answer(example: Example) -> str:
    """The example's reference final answer: its answer column, else extracted from its solution."""
    if example.answer is not None:
        return example.answer
    text = completion_text(example)
    return final_answer(text) or text


def sample_and_check(model, tokenizer, examples: Sequence[Example], prompts: dict[int, list[int]],
                     sampling: SamplingConfig, *, k: int, seed: int, batch_size: int, log: ShardedLog,
                     progress: bool = True, desc: str = "sampling") -> None:
    """Sample k answers to every example of this process's share not yet in `log` and check each against the
    reference; each batch is appended to the log as one record per example ({index, reference, samples}).
    Each sample draws from its own generator (row_seed), so the shares and batches do not change a sample."""
    eos = eos_token_ids(model, tokenizer)
    todo = log.mine(examples)
    per_batch = max(1, batch_size // k)
    with tqdm(total=len(todo), unit="problem", desc=desc, disable=not progress) as bar:
        for first in range(0, len(todo), per_batch):
            batch = todo[first:first + per_batch]
            rows = [(e, j) for e in batch for j in range(k)]
            decoded = sample(model, [prompts[e.index] for e, _ in rows], sampling, eos_token_ids=eos,
                             pad_token_id=tokenizer.pad_token_id or 0,
                             seeds=[row_seed(seed, e.index, j) for e, j in rows])
            records = []
            for n, example in enumerate(batch):
                reference, samples = reference_answer(example), []
                for d in decoded[n * k:(n + 1) * k]:
                    text = decoded_text(tokenizer, d, eos)
                    samples.append({"text": text, "answer": final_answer(text),
                                    "correct": answer_matches(text, reference, example.verify),
                                    "finish_reason": d.finish_reason, "n_tokens": len(d.tokens)})
                records.append({"index": example.index, "reference": reference, "samples": samples})
            log.append(records)
            bar.update(len(batch))


def greedy_rule(temperature: float, k: int, temperature_name: str, k_name: str) -> tuple[bool, str]:
    return (temperature > 0 or k == 1,
            f"greedy decoding (temperature 0) gives one answer per problem: use {k_name} 1, or "
            f"{temperature_name} > 0 for {k} samples")


def evaluate(model, dataset, *, processing_class=None, prompt_field: str | None = None,
             completion_field: str | None = None, messages_field: str | None = None, answer_field: str | None = None,
             limit: int | None = None, skip_invalid: bool = False, prompt_format: str | None = None, k: int = 1,
             temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 512, max_length: int = 2048,
             repeat_window: int = 0, repeat_count: int = 5, seed: int = 0, batch_size: int = 32,
             device: str | None = None, progress: bool = True):
    """Accuracy of `model` on one evaluation set, as `opsft eval --data` measures it; returns (samples, summary):
    a datasets.Dataset of every problem (row, prompt, reference, and its k samples, each with its text, answer,
    check and finish reason) and the set's summary (accuracy = avg@k with its 95 % interval, pass@k, finish
    reasons, rows read and skipped).

    `model`: a name, path, alias or LoRA adapter directory, or a loaded model with its `processing_class`.
    `dataset`: a datasets.Dataset, a list of rows or a file, in any shape `opsft score` reads. The options are
    opsft eval's, with its defaults: greedy, one answer per problem."""
    from datasets import Dataset

    if k < 1:
        raise OpsftError(f"k must be >= 1 (got {k})")
    holds, message = greedy_rule(temperature, k, "temperature", "k")
    if not holds:
        raise OpsftError(message)
    model, tokenizer, name = model_argument(model, processing_class, device=device, what="opsft.evaluate")
    data = load_examples(dataset, prompt_field=prompt_field, completion_field=completion_field,
                         messages_field=messages_field, answer_field=answer_field, limit=limit,
                         skip_invalid=skip_invalid)
    use_prompt_format(tokenizer, prompt_format, name, any(isinstance(e.prompt, list) for e in data.examples))
    sampling = SamplingConfig(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                              repeat_window=repeat_window, repeat_count=repeat_count)
    records, summary, _ = evaluate_examples(model, tokenizer, data, sampling, k=k, seed=seed, batch_size=batch_size,
                                            max_length=max_length, skip_invalid=skip_invalid, progress=progress)
    prompts = {e.index: e.prompt for e in data.examples}
    return Dataset.from_list([{"row": r["index"] + 1, "prompt": prompts[r["index"]], **r} for r in records]), summary


def evaluate_examples(model, tokenizer, data: LoadedData, sampling: SamplingConfig, *, k: int, seed: int,
                      batch_size: int, max_length: int, skip_invalid: bool, open_log: Callable | None = None,
                      progress: bool = True, desc: str = "evaluating") -> tuple[list[dict] | None, dict | None, list]:
    """(records, summary, skipped) of one evaluation set: k checked samples of every problem whose prompt fits
    max_length with the answer's budget. `open_log(prompts)` gives the log the samples go to (the command's
    resumable ShardedLog; default: kept in memory). records and summary are None in the processes of
    `accelerate launch` other than the main one, which has them all."""
    skipped = list(data.skipped)
    prompts = fitting_prompts(data.examples, lambda e: prompt_ids(e.prompt, tokenizer), sampling.max_new_tokens,
                              max_length, source=data.source, skip_invalid=skip_invalid, skipped=skipped)
    examples = [e for e in data.examples if e.index in prompts]
    if not examples:
        raise nothing_left(data.source, "problem left to evaluate", skipped)
    log = open_log(prompts) if open_log is not None else MemoryLog()
    sample_and_check(model, tokenizer, examples, prompts, sampling, k=k, seed=seed, batch_size=batch_size, log=log,
                     progress=progress, desc=desc)
    records = log.merged()
    if records is None:
        return None, None, skipped
    summary = {**accuracy_summary([[sample["correct"] for sample in r["samples"]] for r in records]),
               "finish_reasons": dict(Counter(sample["finish_reason"] for r in records for sample in r["samples"])),
               "rows_read": len(data.examples) + len(data.skipped),
               "skipped": dict(Counter(e.reason for e in skipped))}
    return records, summary, skipped
