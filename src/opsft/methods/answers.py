"""Final answers: where a solution states it, and whether it matches the reference (SPEC §5).

Extraction, in order: the last `<answer>...</answer>` (reasoning-gym's convention), the last
`\\boxed{...}` (nested braces allowed), the text after the last `####`, else the last number. Matching:
the task's own scorer when there is one (reasoning-gym), else math-verify's symbolic equivalence
(fractions vs decimals, thousands separators, ...).
"""

from __future__ import annotations

import re
from collections.abc import Callable

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def final_answer(text: str) -> str | None:
    tagged = _ANSWER_TAG.findall(text)
    if tagged:
        return tagged[-1].strip()
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    if "####" in text:
        answer = text.rsplit("####", 1)[1].strip().splitlines()
        return answer[0].strip() if answer else None
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None  # never closed


def answer_matches(text: str, reference: str, task_scorer: Callable[[str], float] | None = None) -> bool:
    """Does the final answer of `text` equal `reference`?"""
    answer = final_answer(text)
    if answer is None:
        return False
    if task_scorer is not None:
        return task_scorer(answer) >= 1.0
    from math_verify import verify

    return bool(verify(_parse(reference), _parse(answer)))


def _parse(text: str):
    """math-verify's parse; bare LaTeX (``\\dfrac{1}{3}``, ``\\{1,2\\}``) is read as a $...$ formula."""
    from math_verify import parse

    return parse(text) or parse(f"${text}$")
