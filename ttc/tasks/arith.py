"""Left-to-right arithmetic chains: the reference math task.

A problem ``Q:37+45*2-18=?`` is evaluated strictly left to right. Its chain of
thought writes one intermediate result per line and ends in ``A:<number>``::

    Q:37+45*2-18=?
    37+45=82
    82*2=164
    164-18=146
    A:146

The direct-answer form asks the same problem with ``D:`` and an ``A:`` cue, so
thinking and not thinking can be compared on identical problems.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

STEP_DELIMITER = "\n"
ANSWER_PREFIX = "A:"
_TOKEN = re.compile(r"\d+|[+\-*]")


@dataclass(frozen=True)
class ArithProblem:
    operands: tuple[int, ...]
    ops: tuple[str, ...]

    @property
    def expression(self) -> str:
        parts = [str(self.operands[0])]
        for op, x in zip(self.ops, self.operands[1:], strict=True):
            parts += [op, str(x)]
        return "".join(parts)

    @property
    def values(self) -> list[int]:
        """Running values: the first operand, then the value after each step."""
        vals = [self.operands[0]]
        for op, x in zip(self.ops, self.operands[1:], strict=True):
            vals.append(_apply(vals[-1], op, x))
        return vals

    @property
    def answer(self) -> int:
        return self.values[-1]

    def prompt(self, direct: bool = False) -> str:
        return f"D:{self.expression}=?\nA:" if direct else f"Q:{self.expression}=?\n"

    def step_lines(self) -> list[str]:
        vals = self.values
        lines = [
            f"{vals[i]}{op}{x}={vals[i + 1]}"
            for i, (op, x) in enumerate(zip(self.ops, self.operands[1:], strict=True))
        ]
        return [*lines, f"{ANSWER_PREFIX}{self.answer}"]

    def solution(self, direct: bool = False) -> str:
        """The reference completion (what follows the prompt), newline-terminated."""
        if direct:
            return f"{self.answer}\n"
        return "".join(line + STEP_DELIMITER for line in self.step_lines())

    def step_labels(self, completion: str) -> list[bool]:
        """Exact check of each written step: a step is good only if it and every
        step before it match the reference chain. One label per non-empty line."""
        expected = self.step_lines()
        labels: list[bool] = []
        ok = True
        for i, line in enumerate(split_steps(completion)):
            ok = ok and i < len(expected) and line == expected[i]
            labels.append(ok)
        return labels


def _apply(v: int, op: str, x: int) -> int:
    if op == "+":
        return v + x
    if op == "-":
        return v - x
    return v * x


def parse_expression(expr: str) -> ArithProblem:
    toks = _TOKEN.findall(expr)
    if len(toks) % 2 == 0 or not toks:
        raise ValueError(f"not an arithmetic chain: {expr!r}")
    return ArithProblem(tuple(int(t) for t in toks[::2]), tuple(toks[1::2]))


def split_steps(completion: str) -> list[str]:
    return [s.strip() for s in completion.split(STEP_DELIMITER) if s.strip()]


def extract_answer(completion: str) -> str | None:
    """The number after the last ``A:``, or None if the chain never answered."""
    m = re.findall(r"A:\s*(-?\d+)", completion)
    return m[-1] if m else None


def sample_problem(
    rng: random.Random, steps: int, max_operand: int = 99, max_value: int = 999
) -> ArithProblem:
    """Draw one chain whose running value stays within [0, max_value]."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if max_operand < 2:
        raise ValueError("max_operand must be >= 2")
    v = rng.randint(1, max_operand)
    operands, ops = [v], []
    for _ in range(steps):
        choices = []
        if v + 1 <= max_value:
            choices.append("+")
        if v >= 1:
            choices.append("-")
        if 2 * v <= max_value:
            choices.append("*")
        op = rng.choice(choices)
        if op == "+":
            x = rng.randint(1, min(max_operand, max_value - v))
        elif op == "-":
            x = rng.randint(1, min(max_operand, v))
        else:
            x = rng.randint(2, min(9, max_value // max(v, 1)))
        v = _apply(v, op, x)
        operands.append(x)
        ops.append(op)
    return ArithProblem(tuple(operands), tuple(ops))


def generate(
    n: int, steps: int, seed: int, max_operand: int = 99, max_value: int = 999
) -> list[ArithProblem]:
    """A reproducible split: the same (n, steps, seed, ranges) gives the same problems."""
    rng = random.Random(f"arith:{steps}:{max_operand}:{max_value}:{seed}")
    return [sample_problem(rng, steps, max_operand, max_value) for _ in range(n)]
