"""Answer extraction: ``\\boxed{}``, GSM8K's ``####``, the reference ``A:`` line, programs."""

from __future__ import annotations

import re

from ttc.tasks import arith, synth_code
from ttc.types import AnswerFormat, Problem


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> str | None:
    nums = _NUMBER.findall(text)
    return nums[-1].replace(",", "").rstrip(".") if nums else None


def gsm8k_gold(solution: str) -> str:
    """The number after ``####`` in a GSM8K worked solution."""
    return solution.split("####")[-1].strip().replace(",", "")


def guess_answer_format(prompt: str) -> AnswerFormat:
    """The answer format of a bare prompt: the reference tasks' own, else ``boxed``."""
    if prompt.startswith(("Q:", "D:")):
        return "reference"
    if prompt.startswith("C:"):
        return "program"
    return "boxed"


def extract_answer(problem: Problem, completion: str, *, committed: bool = False) -> str | None:
    """The final answer a completion commits to, in the problem's format; None if none.

    Grading a finished completion falls back on what it most likely meant (GSM8K: its last
    number; MATH: the text after "the answer is"; a program: its text). ``committed=True``
    takes only an explicit statement (``A:``, ``\\boxed{}``; GSM8K's ``####`` or "the answer
    is 18"), so that a search can tell a chain that answered from one midway: "Janet has 16
    eggs." states no answer yet. A program ends where the model ends it."""
    fmt = problem.answer_format
    if fmt == "reference":
        return arith.extract_answer(completion)
    if fmt == "program":
        if committed:  # a program ends where the model ends it
            return None
        program = synth_code.extract_program(completion)
        return program or None
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed
    if fmt == "gsm8k":
        if "####" in completion:
            return last_number(completion.split("####")[-1])
        m = re.findall(r"answer is[:\s]*\$?(-?(?:\d[\d,]*)?\.?\d+)", completion, flags=re.I)
        if m:
            return m[-1].replace(",", "")
        return None if committed else last_number(completion)
    if committed:
        return None
    m = re.findall(r"answer is[:\s]*\$?([^\n$]+)", completion, flags=re.I)
    return m[-1].strip().rstrip(".") if m else None
