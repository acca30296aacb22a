from pathlib import Path

import pytest

from ttc import datasets
from ttc.answers import extract_answer

DATA = datasets.data_dir()
needs_data = pytest.mark.skipif(not (DATA / "gsm8k").exists(), reason=f"no local benchmark data at {DATA}")


def test_arith_dataset_is_reproducible_and_has_difficulty() -> None:
    a = datasets.load("arith", limit=5, seed=1, steps=3)
    assert [p.id for p in a] == [p.id for p in datasets.load("arith", limit=5, seed=1, steps=3)]
    assert all(p.meta["difficulty"] == 3 and p.prompt.startswith("Q:") for p in a)
    direct = datasets.arith_problems(limit=5, seed=1, steps=3, direct=True)
    assert [p.answer for p in direct] == [p.answer for p in a]
    assert all(p.prompt.startswith("D:") for p in direct)


def test_synth_code_dataset_carries_hidden_and_visible_tests() -> None:
    (p,) = datasets.load("synth_code", limit=1, seed=0)
    assert p.kind == "code" and "assert f(" in p.tests and "assert f(" in p.visible_tests
    assert p.tests != p.visible_tests


@needs_data
@pytest.mark.parametrize(("name", "count"), [("gsm8k", 1319), ("math500", 500), ("aime24", 30), ("amc23", 40)])
def test_local_math_benchmarks_load(name: str, count: int) -> None:
    probs = datasets.load(name)
    assert len(probs) == count
    assert all(p.prompt and p.answer for p in probs)
    assert len({p.id for p in probs}) == count


@needs_data
def test_gsm8k_gold_is_the_number_after_hashes() -> None:
    p = datasets.load("gsm8k", limit=1)[0]
    assert p.answer == "18" and p.answer_format == "gsm8k"
    assert extract_answer(p, "... so she makes $18.\n#### 18") == "18"


def test_limit_and_seeded_shuffle(tmp_path: Path) -> None:
    f = tmp_path / "g.jsonl"
    f.write_text("".join(f'{{"question": "q{i}", "answer": "x #### {i}"}}\n' for i in range(10)))
    assert [p.answer for p in datasets.load("gsm8k", path=str(f), limit=3)] == ["0", "1", "2"]
    shuffled = [p.answer for p in datasets.load("gsm8k", path=str(f), limit=3, shuffle=True, seed=1)]
    assert shuffled == [p.answer for p in datasets.load("gsm8k", path=str(f), limit=3, shuffle=True, seed=1)]
    assert shuffled != ["0", "1", "2"]


def test_missing_local_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"dataset\.path"):
        datasets.load("math500", path=str(tmp_path / "nope.jsonl"))


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("gsm8k", "", r"gsm8k: .*bad\.jsonl is empty"),
        ("gsm8k", '{"question": "1+1?"}\n', r"gsm8k: row 0 of .*bad\.jsonl has no answer field \(it has question\)"),
        ("math500", '{"problem": "x", "answer": "1"}\n{"answer": "2"}\n', r"row 1 .* has no question or problem field"),
        ("math500", "not json\n", r"math500: cannot read .*bad\.jsonl as JSON lines"),
        ("mbpp", '{"task_id": 11, "text": "t", "code": "c"}\n', r"mbpp: row 0 .* has no test_list field"),
    ],
)
def test_a_file_that_is_not_the_dataset_is_named_with_what_is_wrong(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text(text)
    with pytest.raises(datasets.DatasetError, match=message):
        datasets.load(name, path=str(f))


def test_humaneval_ships_in_its_package() -> None:
    probs = datasets.load("humaneval", limit=3)
    assert len(probs) == 3 and all(p.kind == "code" and p.entry_point for p in probs)


def test_mbpp_splits_come_from_the_hub_by_name_where_no_file_holds_them(tmp_path: Path, monkeypatch) -> None:
    """The shipped file holds all 974 tasks and a split is a task-id range; the hub serves
    each split on its own, so the fallback must ask for the split wanted."""
    import datasets as hf_datasets

    asked: list[tuple] = []
    row = {"text": "Add.", "code": "def add(a, b):\n    return a + b\n", "test_setup_code": "",
           "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"], "challenge_test_list": []}

    def hub(*args, **kwargs):
        asked.append((*args, kwargs.get("split")))
        low = {"test": 11, "validation": 511}[kwargs["split"]]
        return [{**row, "task_id": low + i} for i in range(3)]

    monkeypatch.setenv("TTC_DATA_DIR", str(tmp_path))  # no local file
    monkeypatch.setattr(hf_datasets, "load_dataset", hub)
    val = datasets.mbpp(split="validation", n_visible=2, limit=2)
    assert asked == [("google-research-datasets/mbpp", "full", "validation")]
    assert [p.id for p in val] == ["mbpp/511", "mbpp/512"]
    assert "assert add(0, 0) == 0" in val[0].prompt  # both asserts shown
    assert [p.id for p in datasets.load("mbpp")] == ["mbpp/11", "mbpp/12", "mbpp/13"]
    with pytest.raises(ValueError, match="allowed: prompt, test, validation, train"):
        datasets.load("mbpp", split="dev")
    with pytest.raises(ValueError, match="takes no parameters"):
        datasets.load("gsm8k", split="test")
