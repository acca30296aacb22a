"""Datasets as lists of ``Problem``: the synthetic reference tasks, local JSONL or hub benchmarks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, NonNegativeInt, PositiveInt

from ttc.answers import gsm8k_gold
from ttc.tasks import arith, synth_code
from ttc.types import Problem

REPO_ROOT = Path(__file__).resolve().parent.parent

# name -> (local file under the data dir, hub id, hub config, hub split)
BENCHMARKS: dict[str, tuple[str, str, str | None, str]] = {
    "gsm8k": ("gsm8k/test.jsonl", "openai/gsm8k", "main", "test"),
    "math500": ("math500/test.jsonl", "HuggingFaceH4/MATH-500", None, "test"),
    "aime24": ("aime24/test.jsonl", "HuggingFaceH4/aime_2024", None, "train"),
    "amc23": ("amc23/test.jsonl", "math-ai/amc23", None, "test"),
    "mbpp": ("mbpp/mbpp.jsonl", "google-research-datasets/mbpp", "full", "test"),
}
DATASETS = ("arith", "synth_code", "humaneval", *BENCHMARKS)

# The generators' own bounds, declared so that a bad value fails with the config's other errors.
AtLeastTwo = Annotated[int, Field(ge=2)]


def data_dir() -> Path:
    """Where local benchmark files live: $TTC_DATA_DIR, else ``../shared/data`` beside the repo."""
    env = os.environ.get("TTC_DATA_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def arith_problems(
    limit: PositiveInt = 100,
    seed: NonNegativeInt = 0,
    steps: PositiveInt = 4,
    max_operand: AtLeastTwo = 99,
    direct: bool = False,
) -> list[Problem]:
    return [
        Problem(
            id=f"arith-s{steps}-{seed}-{i}",
            prompt=p.prompt(direct),
            answer=str(p.answer),
            answer_format="reference",
            meta={"difficulty": steps, "expression": p.expression, "preformatted": True},
        )
        for i, p in enumerate(arith.generate(limit, steps, seed, max_operand))
    ]


def synth_code_problems(
    limit: PositiveInt = 100, seed: NonNegativeInt = 0, max_const: AtLeastTwo = 19
) -> list[Problem]:
    return [
        Problem(
            id=f"code-{seed}-{i}",
            prompt=p.prompt(),
            answer=p.program,
            kind="code",
            answer_format="program",
            tests=p.test_code(hidden=True),
            visible_tests=p.test_code(hidden=False),
            entry_point="f",
            meta={"difficulty": max_const, "preformatted": True},
        )
        for i, p in enumerate(synth_code.generate(limit, seed, max_const))
    ]


class DatasetError(ValueError):
    """Rows that cannot be read as the dataset: the message names the file and what is wrong."""


def load_rows(
    name: str, path: str | None = None, split: str | None = None, fields: tuple[str | tuple[str, ...], ...] = ()
) -> list[dict[str, Any]]:
    """Rows from a local JSONL file through ``datasets``, or from the hub by name (``split``:
    the hub split, where the local file holds every split's rows). Every row must hold each of
    ``fields`` (a tuple: one of its names)."""
    import datasets

    local, hub_id, hub_config, hub_split = BENCHMARKS[name]
    split = split or hub_split
    file = Path(path) if path else data_dir() / local
    if file.exists():
        source = str(file)
        if file.stat().st_size == 0:
            raise DatasetError(f"dataset {name}: {file} is empty")
        try:
            rows = list(datasets.load_dataset("json", data_files=source, split="train"))
        except Exception as exc:  # the json builder's own error, several layers down
            raise DatasetError(f"dataset {name}: cannot read {file} as JSON lines ({type(exc).__name__})") from None
    elif path:
        raise FileNotFoundError(f"dataset.path: no such file {file}")
    else:
        source = hub_id
        try:
            rows = list(datasets.load_dataset(hub_id, hub_config, split=split))
        except Exception as exc:
            raise FileNotFoundError(
                f"dataset {name}: {file} not found and the hub ({hub_id}) is unreachable; "
                f"set dataset.path or TTC_DATA_DIR ({type(exc).__name__})"
            ) from None
    for i, row in enumerate(rows):
        for want in fields:
            names = (want,) if isinstance(want, str) else want
            if all(row.get(n) is None for n in names):
                raise DatasetError(
                    f"dataset {name}: row {i} of {source} has no {' or '.join(names)} field (it has {', '.join(row)})"
                )
    return rows


def math_problems(name: str, path: str | None = None) -> list[Problem]:
    out = []
    for i, row in enumerate(load_rows(name, path, fields=(("question", "problem"), "answer"))):
        question = row.get("question") or row.get("problem")
        if name == "gsm8k":
            answer, fmt = gsm8k_gold(row["answer"]), "gsm8k"
        else:
            answer, fmt = str(row["answer"]), "boxed"
        pid = str(row.get("unique_id") or row.get("id") or i)
        meta = {k: row[k] for k in ("level", "subject") if k in row}
        meta["difficulty"] = row.get("level", name)
        out.append(Problem(id=f"{name}-{pid}", prompt=question, answer=answer, answer_format=fmt, meta=meta))
    return out


def load(
    name: str,
    limit: PositiveInt | None = None,
    seed: NonNegativeInt = 0,
    path: str | None = None,
    shuffle: bool = False,
    **params: Any,
) -> list[Problem]:
    """Problems of dataset ``name``; ``limit`` keeps the first ones (in file order,
    or a seeded shuffle when ``shuffle=True``)."""
    if name == "arith":
        return arith_problems(limit=limit or 100, seed=seed, **params)
    if name == "synth_code":
        return synth_code_problems(limit=limit or 100, seed=seed, **params)
    if name == "mbpp":
        from verifiers.code import mbpp_problems

        problems = mbpp_problems(path, **params)
    elif params:
        raise ValueError(f"dataset {name} takes no parameters {sorted(params)}")
    elif name == "humaneval":
        from verifiers.code import humaneval_problems

        problems = humaneval_problems()
    elif name in BENCHMARKS:
        problems = math_problems(name, path)
    else:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if shuffle:
        import random

        random.Random(seed).shuffle(problems)
    return problems[:limit] if limit else problems


def mbpp(
    limit: PositiveInt | None = None,
    seed: NonNegativeInt = 0,
    path: str | None = None,
    shuffle: bool = False,
    split: Literal["prompt", "test", "validation", "train"] = "test",
    n_visible: PositiveInt = 1,
) -> list[Problem]:
    """MBPP's ``split`` (by task id, as the benchmark defines them); the prompt shows the first
    ``n_visible`` of a task's asserts."""
    return load("mbpp", limit, seed, path, shuffle, split=split, n_visible=n_visible)
