import pytest

from opsft.methods.answers import answer_matches, final_answer


@pytest.mark.parametrize("text, answer", [
    ("so it is \\boxed{\\frac{1}{2}} in the end", "\\frac{1}{2}"),
    ("first \\boxed{3} then \\boxed{4}", "4"),
    ("nested: \\boxed{\\frac{\\sqrt{2}}{2}} done", "\\frac{\\sqrt{2}}{2}"),
    ("He earns 2340 per month.\n#### 28080", "28080"),
    ("#### 1,000,000\nThat is all.", "1,000,000"),
    ("The total is 12 apples and 7 pears, so 19", "19"),
    ("It costs $12.50 in total.", "12.50"),
    ("the temperature fell to -7 degrees", "-7"),
    ("no answer here", None),
    ("", None),
    ("unclosed \\boxed{12", "12"),
    ("<answer>blue cat</answer> and then 4", "blue cat"),
])
def test_final_answer(text, answer):
    assert final_answer(text) == answer


@pytest.mark.parametrize("text, reference, expected", [
    # equivalent fractions and decimals
    ("\\boxed{0.5}", "1/2", True),
    ("so x = \\boxed{\\frac{1}{2}}", "0.5", True),
    ("\\boxed{\\frac{3}{6}}", "1/2", True),
    ("\\boxed{\\dfrac{1}{3}}", "1/3", True),
    ("The answer is 2/4.", "0.5", True),
    ("\\boxed{\\dfrac{1}{3}}", "0.33", False),
    # nested braces inside \boxed{}
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", True),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}", True),
    # thousands separators
    ("#### 28,080", "28080", True),
    ("the total is 1,234 apples", "1234", True),
    ("#### 1,000,000", "1000000", True),
    # negative numbers
    ("the answer is -3", "-3", True),
    ("#### -7", "-7", True),
    ("the result is -3.0", "-3", True),
    ("#### 7", "-7", False),
    # units
    ("\\boxed{5 \\text{ cm}}", "5", True),
    ("The answer is 18 dollars", "18", True),
    ("It costs $12.50 in total.", "12.5", True),
    # wrong, or no answer at all
    ("#### 44", "45", False),
    ("nothing", "1", False),
    ("", "0", False),
    ("\\boxed{}", "0", False),
])
def test_answer_matches_by_equivalence(text, reference, expected):
    assert answer_matches(text, reference) is expected


def test_task_scorer_takes_precedence():
    assert answer_matches("#### 7", "ignored", task_scorer=lambda a: 1.0 if a == "7" else 0.0)
    assert not answer_matches("#### 8", "ignored", task_scorer=lambda a: 1.0 if a == "7" else 0.0)
