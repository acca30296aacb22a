"""The PRM's training set-up: exact dense labels, slipped chains, and a start from the policy."""

from __future__ import annotations

import random

import pytest

from ttc.reference import POLICY_PATH
from ttc.reference.train import judgement_marks, prm_from_policy, slipped_solution
from ttc.tasks import arith

PROB = arith.parse_expression("37+45*2-18")


def marks_str(text: str) -> str:
    return "".join("." if ok else "x" for _, ok in judgement_marks(PROB, text))


def test_a_right_chain_is_right_after_every_character() -> None:
    text = PROB.solution()
    marks = judgement_marks(PROB, text)
    assert [j for j, _ in marks] == list(range(len(text)))
    assert all(ok for _, ok in marks)


def test_a_slip_is_bad_from_its_character_on_and_newlines_carry_math_shepherd_labels() -> None:
    text = "37+45=82\n82*2=146\n146-18=128\nA:128\n"
    assert marks_str(text) == "." * 15 + "x" * (len(text) - 15)
    newline_labels = [ok for j, ok in judgement_marks(PROB, text) if text[j] == "\n"]
    assert newline_labels == PROB.step_labels(text)
    assert marks_str("37+45=82\n82*2=164\n164-18=146\nA:164\n") == "." * 32 + "x" * 3


def test_slipped_solutions_are_labelled_exactly_and_deterministic() -> None:
    assert slipped_solution(random.Random(7)) == slipped_solution(random.Random(7))
    rng = random.Random(3)
    wrong = 0
    for _ in range(200):
        prompt, text, marks = slipped_solution(rng)
        prob = arith.parse_expression(prompt[2:].split("=")[0])
        assert marks == judgement_marks(prob, text)
        answer_right = arith.extract_answer(text) == str(prob.answer)
        assert marks[-1][1] == answer_right  # the final newline judges the whole chain
        wrong += not answer_right
        if not answer_right:  # a slip is continued correctly: the chain stays well-formed
            assert len(arith.split_steps(text)) == len(prob.ops) + 1
    assert 100 < wrong < 160  # about 65% carry one slip


def test_the_prm_starts_as_the_frozen_policy_with_two_fresh_layers() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(POLICY_PATH))
    policy = AutoModelForCausalLM.from_pretrained(str(POLICY_PATH)).eval()
    prm = prm_from_policy(POLICY_PATH, new_layers=2).eval()
    ids = tok("Q:37+45*2-18=?\n37+45=82\n82*2=164\n", return_tensors="pt").input_ids
    with torch.no_grad():
        got, want = prm(ids).logits, policy(ids).logits
    # fresh layers start as the identity and the untied head as the policy's
    assert got == pytest.approx(want, abs=1e-4)
    trunk = policy.config.num_hidden_layers
    trainable = {n.split(".")[2] for n, p in prm.named_parameters() if p.requires_grad and n.startswith("model.layers")}
    assert trainable == {str(trunk), str(trunk + 1)} and not prm.config.tie_word_embeddings
