"""Tiny program synthesis from input/output examples: the reference code task.

``C:f(1)=5 f(2)=8 f(3)=11`` asks for ``def f(x): return 3*x+2``. A program is
judged on hidden inputs; the visible examples are there for strategies that
filter candidates before choosing.
"""

from __future__ import annotations

import ast
import random
from collections.abc import Callable
from dataclasses import dataclass

VISIBLE_X = (1, 2, 3)
HIDDEN_X = (0, 4, 5, 7, 10)

# Each family draws its constants from rng and returns the canonical expression.
_FAMILIES: dict[str, Callable[[random.Random, int], str]] = {
    "linear": lambda r, k: f"{r.randint(2, k)}*x+{r.randint(1, 2 * k)}",
    "linear_neg": lambda r, k: f"{r.randint(2, k)}*x-{r.randint(1, 2 * k)}",
    "square": lambda r, k: f"x*x+{r.randint(1, 2 * k)}",
    "scaled_shift": lambda r, k: f"{r.randint(2, k)}*(x+{r.randint(1, k)})",
    "square_linear": lambda r, k: f"x*x+{r.randint(2, k)}*x",
}


@dataclass(frozen=True)
class CodeProblem:
    expression: str

    @property
    def program(self) -> str:
        return f"def f(x): return {self.expression}"

    def io(self, xs: tuple[int, ...]) -> list[tuple[int, int]]:
        fn = compile_arithmetic(self.program)
        assert fn is not None
        return [(x, fn(x)) for x in xs]

    @property
    def visible(self) -> list[tuple[int, int]]:
        return self.io(VISIBLE_X)

    @property
    def hidden(self) -> list[tuple[int, int]]:
        return self.io(HIDDEN_X)

    def prompt(self) -> str:
        return "C:" + " ".join(f"f({x})={y}" for x, y in self.visible) + "\n"

    def solution(self) -> str:
        return self.program + "\n"

    def test_code(self, hidden: bool = True) -> str:
        """Assertions for the sandboxed code verifier."""
        cases = self.hidden if hidden else self.visible
        return "\n".join(f"assert f({x}) == {y}" for x, y in cases)


_ALLOWED = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Name, ast.Load,
    ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod, ast.USub, ast.UAdd,
)


def compile_arithmetic(program: str) -> Callable[[int], int] | None:
    """Evaluate ``def f(x): return <arithmetic in x>`` without executing code.

    Only integer arithmetic on ``x`` is accepted; anything else returns None, and
    general programs go to the sandboxed code verifier instead.
    """
    program = program.strip().splitlines()[0] if program.strip() else ""
    prefix = "def f(x): return "
    if not program.startswith(prefix):
        return None
    try:
        tree = ast.parse(program[len(prefix):], mode="eval")
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            return None
        if isinstance(node, ast.Name) and node.id != "x":
            return None
        if isinstance(node, ast.Constant) and not isinstance(node.value, int):
            return None
    code = compile(tree, "<program>", "eval")

    def fn(x: int) -> int:
        return eval(code, {"__builtins__": {}}, {"x": x})

    return fn


def passes(program: str, cases: list[tuple[int, int]]) -> bool:
    fn = compile_arithmetic(program)
    if fn is None:
        return False
    try:
        return all(fn(x) == y for x, y in cases)
    except (ZeroDivisionError, OverflowError):
        return False


def extract_program(completion: str) -> str:
    for line in completion.splitlines():
        if line.strip().startswith("def "):
            return line.strip()
    return completion.strip()


def generate(n: int, seed: int, max_const: int = 19) -> list[CodeProblem]:
    rng = random.Random(f"synth_code:{max_const}:{seed}")
    names = sorted(_FAMILIES)
    return [CodeProblem(_FAMILIES[rng.choice(names)](rng, max_const)) for _ in range(n)]
