import pytest

from opsft.answers import answer_matches, final_answer


@pytest.mark.parametrize("text, answer", [
    ("so it is \\boxed{\\frac{1}{2}} in the end", "\\frac{1}{2}"),
    ("first \\boxed{3} then \\boxed{4}", "4"),
    ("He earns 2340 per month.\n#### 28080", "28080"),
    ("The total is 12 apples and 7 pears, so 19", "19"),
    ("no answer here", None),
    ("unclosed \\boxed{12", "12"),
])
def test_final_answer(text, answer):
    assert final_answer(text) == answer


@pytest.mark.parametrize("text, reference, expected", [
    ("#### 28,080", "28080", True),
    ("\\boxed{0.5}", "1/2", True),
    ("the answer is -3", "-3", True),
    ("#### 44", "45", False),
    ("nothing", "1", False),
])
def test_answer_matches_by_equivalence(text, reference, expected):
    assert answer_matches(text, reference) is expected


def test_task_scorer_takes_precedence():
    assert answer_matches("#### 7", "ignored", task_scorer=lambda a: 1.0 if a == "7" else 0.0)
    assert not answer_matches("#### 8", "ignored", task_scorer=lambda a: 1.0 if a == "7" else 0.0)
