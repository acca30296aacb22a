import pytest

from ttc.answers import extract_answer, gsm8k_gold, last_boxed
from ttc.types import Problem
from verifiers.math import equivalent


def test_boxed_extraction_balances_braces() -> None:
    assert last_boxed(r"so \boxed{\frac{1}{2}} and finally \boxed{\dfrac{14}{3}}") == r"\dfrac{14}{3}"
    assert last_boxed("no box") is None


def test_extraction_per_format() -> None:
    ref = Problem(id="a", prompt="Q:1+2=?\n", answer="3", answer_format="reference")
    assert extract_answer(ref, "1+2=3\nA:3\n") == "3"
    assert extract_answer(ref, "1+2=3\n") is None
    gsm = Problem(id="g", prompt="", answer="18", answer_format="gsm8k")
    assert extract_answer(gsm, "She makes 9 * 2 = 18 dollars.\n#### 18") == "18"
    assert extract_answer(gsm, "The answer is 1,234.") == "1234"
    assert gsm8k_gold("Janet ... 16 - 3 - 4 = <<16-3-4=9>>9\n#### 9") == "9"


@pytest.mark.parametrize(
    ("fmt", "text", "lenient", "committed"),
    [
        ("gsm8k", "Janet has 16 eggs per day.\n", "16", None),  # a step midway states no answer
        ("gsm8k", "So she makes 18 dollars.\n#### 18", "18", "18"),
        ("gsm8k", "The answer is $1,234.", "1234", "1234"),
        ("gsm8k", "So the answer is .5 of the pie, and 3 slices.", ".5", ".5"),
        ("gsm8k", "We get \\boxed{18}.", "18", "18"),
        ("boxed", "First, the answer is not obvious.\n\n", "not obvious", None),
        ("boxed", "So $x = \\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}", "\\frac{1}{2}"),
        ("program", "def f(x):\n", "def f(x):", None),  # a program ends where the model ends it
        ("reference", "1+2=3\n", None, None),
        ("reference", "1+2=3\nA:3\n", "3", "3"),
    ],
)
def test_a_search_ends_a_chain_only_on_an_answer_it_states(
    fmt: str, text: str, lenient: str | None, committed: str | None
) -> None:
    problem = Problem(id="p", prompt="", answer="0", answer_format=fmt)
    assert extract_answer(problem, text) == lenient  # grading a finished completion
    assert extract_answer(problem, text, committed=True) == committed


@pytest.mark.parametrize(
    ("gold", "pred"),
    [
        (r"\frac{14}{3}", r"\dfrac{14}{3}"),
        (r"\frac{14}{3}", "14/3"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
        ("p - q", "-q + p"),
        (r"\text{(C)}", "C"),
        ("10", "10.0"),
        (r"[-2,7]", r"[-2, 7]"),
        (r"\{1,2\}", r"\{2,1\}"),
        ("0.5", r"\frac{1}{2}"),
        (r"6\sqrt{2}", r"\sqrt{72}"),
        # An escaped dollar is a currency sign, not math mode (MATH-500 gold answers).
        (r"\$32,\!348", "32348"),
        ("5", r"\$5"),
        (r"\$18.90", "18.90"),
    ],
)
def test_equivalent_pairs(gold: str, pred: str) -> None:
    assert equivalent(gold, pred)


@pytest.mark.parametrize(
    ("gold", "pred"),
    [
        (r"\frac{14}{3}", r"\frac{3}{14}"),
        (r"(3, \frac{\pi}{2})", r"(\frac{\pi}{2}, 3)"),
        ("[-2,7]", "(-2,7)"),
        ("10", "100"),
        ("p - q", "q - p"),
        ("5", None),
        (r"\$18.90", "19.80"),
        (r"\$32,\!348", "32349"),
    ],
)
def test_non_equivalent_pairs(gold: str, pred: str | None) -> None:
    assert not equivalent(gold, pred)
