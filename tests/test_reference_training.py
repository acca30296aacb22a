"""The reference PRM's construction and labels: exact step labels, and layers that
compute exactly the soft minimum of the policy's own log-probabilities."""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from ttc.reference import POLICY_PATH, PRM_PATH
from ttc.reference import prm as construct
from ttc.reference.train import judgement_marks
from ttc.tasks import arith

PROB = arith.parse_expression("37+45*2-18")


def test_a_right_chain_is_right_at_every_newline() -> None:
    text = PROB.solution()
    marks = judgement_marks(PROB, text)
    assert [j for j, _ in marks] == [j for j, c in enumerate(text) if c == "\n"]
    assert all(ok for _, ok in marks)


def test_a_slip_is_bad_from_its_step_on_as_math_shepherd_labels_it() -> None:
    text = "37+45=82\n82*2=146\n146-18=128\nA:128\n"
    assert [ok for _, ok in judgement_marks(PROB, text)] == [True, False, False, False]
    assert [ok for _, ok in judgement_marks(PROB, text)] == PROB.step_labels(text)


@pytest.fixture(scope="module")
def policy() -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    model = AutoModelForCausalLM.from_pretrained(str(POLICY_PATH)).eval()
    return model, AutoTokenizer.from_pretrained(str(POLICY_PATH))


def constant_logsumexp(c: float) -> construct.LogSumExp:
    lse = construct.LogSumExp(len(construct.JUDGED))
    with torch.no_grad():
        for p in lse.parameters():
            p.zero_()
        lse.down.bias.fill_(c)
    return lse


def reference_soft_min(policy: torch.nn.Module, tok: PreTrainedTokenizerFast, ids: torch.Tensor, head: int, c: float
                       ) -> torch.Tensor:
    """What the built layers should compute, from the policy's logits directly:
    key_t = z_{t-1}[x_t] - c over the completion, soft minimum with weights
    exp(-BETA * key_k * cos(theta * (t - k))) (the min layer's rotary factor)."""
    judged = set(tok.convert_tokens_to_ids(construct.JUDGED))
    with torch.no_grad():
        z = policy(ids).logits[0]
    x = ids[0].tolist()
    key = torch.tensor([z[t - 1, x[t]].item() if x[t] in judged else 0.0 for t in range(head, len(x))]) - c
    cfg = policy.config
    theta = cfg.rope_parameters["rope_theta"] ** (-(cfg.head_dim - 2) / cfg.head_dim)  # slowest frequency
    out = []
    for t in range(len(key)):
        k = key[: t + 1]
        w = torch.softmax(-construct.BETA * k * torch.cos(theta * torch.arange(t, -1, -1)), 0)
        out.append((w * k).sum())
    return torch.stack(out)


@pytest.mark.parametrize("repeat", [1, 20])  # 20 chains: ~650 positions, far past the previous-position pattern's
def test_the_built_layers_compute_the_soft_minimum_of_the_policys_log_probabilities(policy, repeat: int) -> None:
    model, tok = policy
    c = 3.0
    prm = construct.build(model, tok, constant_logsumexp(c))
    prompt = PROB.prompt()
    text = "37+45=82\n82*2=146\n146-18=128\nA:128\n" * repeat + "def f(x): return 3*x+2\n~"
    ids = tok(prompt + text, return_tensors="pt").input_ids
    head = len(tok(prompt).input_ids)
    got = construct.margin(prm, tok, [prompt + text])[0, head:]  # a=1, b=0: the soft minimum itself
    want = reference_soft_min(model, tok, ids, head, c)
    # The reference starts at the completion: the prompt, which the policy was
    # never trained to predict, must not enter the minimum (its keys are MASKed).
    assert got == pytest.approx(want, abs=2e-3)


def test_the_built_prm_is_a_plain_llama_that_transformers_loads() -> None:
    prm = AutoModelForCausalLM.from_pretrained(str(PRM_PATH))
    cfg = prm.config
    assert cfg.model_type == "llama" and cfg.attention_bias and not cfg.mlp_bias
    policy_layers = AutoModelForCausalLM.from_pretrained(str(POLICY_PATH)).config.num_hidden_layers
    assert cfg.num_hidden_layers == policy_layers + 3


def test_the_shipped_prm_flags_the_slipped_step_and_every_step_after_it() -> None:
    from ttc.backends.hf import HFBackend
    from verifiers.prm import PRMVerifier

    prm = PRMVerifier(HFBackend(str(PRM_PATH), device="cpu", dtype="float32"))
    prompt = arith.parse_expression("25+88-40").prompt()
    right, slip = (asyncio.run(prm.score_steps(None, prompt, steps)) for steps in
                   (["25+88=113\n", "113-40=73\n", "A:73\n"], ["25+88=123\n", "123-40=83\n", "A:83\n"]))
    assert min(right) > 0.5
    assert all(s < r - 0.3 for s, r in zip(slip, right, strict=True)), (right, slip)
