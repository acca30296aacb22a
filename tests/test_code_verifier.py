"""CodeVerifier on the synthetic task, HumanEval and MBPP; program extraction; pass@k."""

from __future__ import annotations

import math
from collections.abc import Iterator
from fractions import Fraction

import pytest

from ttc.datasets import data_dir, synth_code_problems
from ttc.types import Problem
from verifiers.code import (
    CodeVerifier,
    build_program,
    docstring_check,
    extract_code,
    humaneval_problems,
    mbpp_problems,
)
from verifiers.passk import mean_pass_at_k, pass_at_k
from verifiers.sandbox import Sandbox, SandboxError, SandboxLimits

MBPP = data_dir() / "mbpp" / "mbpp.jsonl"  # ../shared/data beside the repo, wherever it is cloned


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxLimits(wall_s=5.0, cpu_s=5.0, memory_mb=512), workers=2) as box:
        yield box


# ---- pass@k ----

def exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


@pytest.mark.parametrize(("n", "c", "k"), [(1, 0, 1), (1, 1, 1), (5, 2, 1), (5, 2, 3), (5, 2, 4), (10, 3, 5),
                                           (20, 0, 7), (20, 20, 7), (37, 5, 10)])
def test_pass_at_k_matches_the_binomial_formula(n: int, c: int, k: int) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(float(exact_pass_at_k(n, c, k)), abs=1e-12)


def test_pass_at_k_is_stable_for_large_n() -> None:
    # C(2000, 200) overflows a float; the product form does not.
    assert pass_at_k(2000, 3, 200) == pytest.approx(float(exact_pass_at_k(2000, 3, 200)), rel=1e-9)
    assert pass_at_k(1000, 1, 100) == pytest.approx(0.1)
    assert pass_at_k(200, 13, 1) == pytest.approx(13 / 200)  # pass@1 is the pass rate


def test_pass_at_k_rejects_nonsense_and_averages() -> None:
    for n, c, k in [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)
    assert mean_pass_at_k([(4, 4), (4, 0)], 2) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mean_pass_at_k([], 1)


# ---- program extraction ----

def test_extract_code_variants() -> None:
    fenced = (
        "Here you go:\n```python\ndef helper():\n    pass\n```\n"
        "and\n```py\ndef add(a, b):\n    return a + b\n```\n"
    )
    assert extract_code(fenced, "add").startswith("def add(a, b):")
    assert extract_code(fenced).startswith("def helper():")
    assert extract_code("def f(x): return 3*x+2\nC:f(1)=5 f(2)=8") == "def f(x): return 3*x+2\n"
    prose = "Sure!\ndef add(a, b):\n    return a + b\n\nThis adds two numbers."
    assert extract_code(prose) == "def add(a, b):\n    return a + b\n\n"
    assert extract_code("x = 1\n") == "x = 1\n"
    assert extract_code("```python\ndef g():\n    return 1\n") == "def g():\n    return 1\n"  # unclosed fence


def test_build_program_for_function_head_prompts() -> None:
    problem = Problem(id="t", prompt='def inc(x):\n    """Add one."""\n', kind="code", entry_point="inc")
    assert build_program(problem, "    return x + 1\n") == problem.prompt + "    return x + 1\n"
    full = "```python\ndef inc(x):\n    return x + 1\n```"
    assert build_program(problem, full).endswith("def inc(x):\n    return x + 1\n")
    mbpp_like = Problem(id="m", prompt="Write inc.", kind="code", entry_point="inc")
    assert build_program(mbpp_like, full) == "def inc(x):\n    return x + 1\n"


def test_docstring_check_reads_both_example_styles() -> None:
    prompt = (
        'def f(x):\n    """\n    >>> f(1)\n    2\n\n'  # a doctest's output runs to the blank line
        '    f(2) ==> 3\n    f(y) => 4\n    f(3) -> true\n    """\n'
    )
    assert docstring_check(prompt, "f") == (
        "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(2) == 3\n"
    )
    assert docstring_check("def f(x):\n    pass\n", "f") == ""


# ---- grading ----

async def test_synth_code_problems(sandbox: Sandbox) -> None:
    problem = synth_code_problems(limit=1, seed=3)[0]
    verifier = CodeVerifier(sandbox)
    right = await verifier.verify(problem, problem.answer + "\nC:f(1)=junk")
    assert (right.score, right.passed, right.status) == (1.0, True, "pass")
    wrong = await verifier.verify(problem, "def f(x): return x")
    assert (wrong.score, wrong.passed, wrong.status) == (0.0, False, "fail")
    assert "assert f(" in wrong.feedback and "AssertionError" in wrong.feedback


async def test_visible_tests_are_graded_separately(sandbox: Sandbox) -> None:
    problem = synth_code_problems(limit=1, seed=3)[0]
    # Memorises the three visible examples and nothing else.
    lookup = "def f(x):\n" + "".join(
        f"    if x == {x}:\n        return {y}\n" for x, y in
        (line.removeprefix("assert f(").split(") == ") for line in problem.visible_tests.splitlines())
    ) + "    return -1\n"
    assert (await CodeVerifier(sandbox, use_visible=True).verify(problem, lookup)).passed
    assert not (await CodeVerifier(sandbox).verify(problem, lookup)).passed


async def test_humaneval_canonical_pass_and_wrong_fail(sandbox: Sandbox) -> None:
    problems = humaneval_problems(limit=4)
    assert [p.id for p in problems] == [f"HumanEval/{i}" for i in range(4)]
    assert all(p.kind == "code" and p.answer_format == "program" for p in problems)
    assert all("def check(" in p.tests and p.entry_point in p.prompt for p in problems)
    verifier = CodeVerifier(sandbox)
    good = await verifier.verify_many(problems[0], [problems[0].answer])
    assert good[0].passed
    results = [await verifier.verify(p, p.answer) for p in problems[1:]]
    assert all(r.passed for r in results), [r.feedback for r in results]
    # The same solution as a fenced full definition.
    p = problems[2]
    fenced = f"Here:\n```python\n{p.prompt}{p.answer}```\n"
    assert (await verifier.verify(p, fenced)).passed
    wrong = await verifier.verify(p, "    return None\n")
    assert wrong.status == "fail" and "candidate" in wrong.feedback
    cheat = await verifier.verify(p, "    return None\nimport sys\nsys.exit(0)\n")
    assert not cheat.passed and cheat.status == "error"
    # The docstring examples grade the canonical solution as passing too.
    assert (await CodeVerifier(sandbox, use_visible=True).verify(problems[0], problems[0].answer)).passed


async def test_a_broken_sandbox_is_an_error_not_a_wrong_answer(sandbox: Sandbox) -> None:
    problem = synth_code_problems(limit=1, seed=3)[0]
    starved = CodeVerifier(sandbox, limits=SandboxLimits(memory_mb=8))  # too small to load Python
    with pytest.raises(SandboxError, match="could not run the program"):
        await starved.verify(problem, problem.answer)
    # The same sandbox still grades a program that runs and fails.
    assert (await CodeVerifier(sandbox).verify(problem, "import os\nos._exit(127)")).status == "error"


@pytest.mark.skipif(not MBPP.exists(), reason="MBPP data not present")
async def test_mbpp_loader_and_grading(sandbox: Sandbox) -> None:
    problems = mbpp_problems(MBPP)
    assert len(problems) == 500 and problems[0].id == "mbpp/11" and problems[-1].id == "mbpp/510"
    assert len(mbpp_problems(MBPP, split="validation")) == 90
    first = mbpp_problems(MBPP, limit=3)
    assert [p.entry_point for p in first] == ["remove_Occ", "sort_matrix", "count_common"]
    p = first[0]
    assert p.visible_tests.strip() in p.prompt and p.tests.count("assert") == 3
    verifier = CodeVerifier(sandbox)
    results = [await verifier.verify(q, f"```python\n{q.answer}\n```") for q in first]
    assert all(r.passed for r in results), [r.feedback for r in results]
    wrong = await verifier.verify(p, "def remove_Occ(s, ch):\n    return s")
    assert wrong.status == "fail" and wrong.score == 0.0
