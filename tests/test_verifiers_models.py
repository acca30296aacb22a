"""Model-based verifiers: ORM, LLM judge, classifier PRM, and what their calls cost.

The ORM and judge run on stand-in engines and on the real vLLM engine with the
shipped reference models. The classifier PRM is adapter-tested only: a fake
pooling ``LLM`` returns outputs shaped like vLLM 0.32's, no real PRM runs here.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from strategies import BestOfN
from tests.fakes import ScriptedBackend
from ttc.backends.base import Backend, BackendError
from ttc.build import ModelSpec, RunSpec, build_verifier, check_config
from ttc.context import QueryContext
from ttc.datasets import arith_problems
from ttc.reference.tokenizer import build_tokenizer
from ttc.runner import run_queries, summarize
from ttc.types import (
    Completion,
    GenRequest,
    GenResult,
    KVGeometry,
    Problem,
    ScoreRequest,
    ScoreResult,
)
from verifiers.judge import JudgeVerifier, fill, parse_score
from verifiers.math import equivalent
from verifiers.orm import ORMVerifier
from verifiers.prm import PRMVerifier

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Q:37+45*2-18=?\n"
PROBLEM = Problem(id="p", prompt=PROMPT, answer="146", answer_format="reference")
RIGHT = "37+45=82\n82*2=164\n164-18=146\nA:146\n"
WRONG_END = "37+45=82\n82*2=164\n164-18=146\nA:164\n"


async def grade(problem: Problem, answer: Any) -> bool:
    return equivalent(problem.answer, answer.answer)


class JudgeStub(Backend):
    """A stand-in judge: it approves a solution whose final answer is in the prompt's
    ``gold`` set, as text ("Score: 9/10") or as P(Yes)."""

    name = "judge-stub"

    def __init__(self, gold: set[str]) -> None:
        self.tokenizer = build_tokenizer()
        self.kv = KVGeometry(num_layers=2, num_kv_heads=1, head_dim=4)
        self.block_size = 1
        self.gold = gold
        self.prompts: list[str] = []

    def _approves(self, ids: list[int]) -> bool:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        self.prompts.append(text)
        return any(f"A:{g}\n" in text for g in self.gold)

    async def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        out = []
        for r in requests:
            ids = self.encode(r.prompt)
            text = "Each step checks out.\nScore: 9/10" if self._approves(ids) else "The last line is off.\nScore: 2/10"
            toks = self.encode_continuation(text)
            out.append(
                GenResult(
                    prompt_token_ids=ids,
                    completions=[Completion(token_ids=toks, text=text)],
                    batch_id=1,
                    engine_seconds=0.02,
                )
            )
        return out

    async def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        out = []
        for r in requests:
            ids, cont = self.encode(r.prompt), self.encode_continuation(r.continuation)
            p_yes = 0.8 if self._approves(ids) else 0.1
            p = p_yes if r.continuation == "Yes" else 1 - p_yes
            # Spread over the continuation's tokens to check the judge sums them.
            lps = [math.log(p) / len(cont)] * len(cont)
            out.append(ScoreResult(token_logprobs=lps, prompt_token_ids=ids + cont, batch_id=2, engine_seconds=0.005))
        return out


def ctx_for(problem: Problem, backend: Backend) -> QueryContext:
    return QueryContext(problem, backend, prompt=problem.prompt)


# -- judge: prompt and score parsing ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("Looks fine.\nScore: 7/10", 0.7),
        ("score = 3", 0.3),
        ("**Score:** 4 / 5", 0.8),
        ("Score: 9/10 at first, but on reflection Score: 2/10", 0.2),
        ("I would give it 8", 0.8),
        ("Score: 14/10", 1.0),
        ("Score: -3", 0.0),
        ("No idea.", None),
        ("The answer 146 is wrong because ...", None),
    ],
)
def test_judge_reads_a_score_and_clamps_it(text: str, want: float | None) -> None:
    got = parse_score(text, max_score=10)
    assert got == (None if want is None else pytest.approx(want))


def test_rubric_fields_fill_once_and_leave_other_braces() -> None:
    out = fill(
        "Q: {question}\nA: {completion} /{max_score}",
        question="f(x) = \\boxed{1}",
        completion="{question}",
        max_score="10",
    )
    assert out == "Q: f(x) = \\boxed{1}\nA: {question} /10"


def test_judge_uses_the_chat_template_when_its_tokenizer_has_one() -> None:
    stub = JudgeStub(gold={"146"})
    judge = JudgeVerifier(stub, template="{question}|{answer}")
    assert judge.prompt(PROBLEM, RIGHT) == PROMPT + "|146"
    stub.tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    assert judge.prompt(PROBLEM, RIGHT) == f"<user>{PROMPT}|146<assistant>"
    assert JudgeVerifier(stub, template="{answer}", chat=False).prompt(PROBLEM, RIGHT) == "146"


# -- judge and ORM on stand-ins ---------------------------------------------------------


def test_judge_generate_mode_scores_and_returns_its_text_as_feedback() -> None:
    stub = JudgeStub(gold={"146"})
    judge = JudgeVerifier(stub, mode="generate")
    ctx = ctx_for(PROBLEM, ScriptedBackend())
    good, bad = asyncio.run(judge.verify_many(PROBLEM, [RIGHT, WRONG_END], ctx))
    assert (good.score, bad.score) == (pytest.approx(0.9), pytest.approx(0.2))
    assert bad.feedback == "The last line is off.\nScore: 2/10" and bad.status == "judged"
    assert "Score: N/10" in stub.prompts[0] and RIGHT in stub.prompts[0]
    assert ctx.ledger.usage("policy").requests == 0 and ctx.ledger.usage("verifier").requests == 2


def test_judge_logprob_mode_normalises_yes_against_no() -> None:
    judge = JudgeVerifier(JudgeStub(gold={"146"}), mode="logprob")
    good, bad = asyncio.run(judge.verify_many(PROBLEM, [RIGHT, WRONG_END], None))
    assert good.score == pytest.approx(0.8 / (0.8 + 0.2))
    assert bad.score == pytest.approx(0.1 / (0.1 + 0.9))
    assert good.feedback == ""


def test_unparsed_judgement_scores_zero() -> None:
    stub = JudgeStub(gold=set())

    async def mute(requests: list[GenRequest]) -> list[GenResult]:
        ids = stub.encode(requests[0].prompt)
        return [GenResult(prompt_token_ids=ids, completions=[Completion(token_ids=[7], text="hmm")])]

    stub.generate = mute  # type: ignore[method-assign]
    v = asyncio.run(JudgeVerifier(stub, mode="generate").verify(PROBLEM, RIGHT))
    assert (v.score, v.status, v.feedback) == (0.0, "unparsed", "hmm")


def test_orm_judges_the_whole_chain_once() -> None:
    b = ScriptedBackend()
    orm = ORMVerifier(b)
    ctx = ctx_for(PROBLEM, b)
    good, bad = asyncio.run(orm.verify_many(PROBLEM, [RIGHT, WRONG_END], ctx))
    assert good.score == pytest.approx(0.9) and bad.score == pytest.approx(0.1)
    assert good.step_scores is None
    assert ctx.ledger.usage("verifier").requests == 2  # one judgement per candidate, not per step
    # The text so far is judged as if final: a right first step scores high.
    assert asyncio.run(orm.score_partial(PROBLEM, ["37+45=82\n"], ctx)) == pytest.approx(0.9)
    assert asyncio.run(orm.score_partial(PROBLEM, ["37+45=83\n"], ctx)) == pytest.approx(0.1)


def test_reward_models_judge_the_prompt_the_policy_was_given() -> None:
    """A run may format the problem (a chat template, a few-shot header): the PRM and the ORM
    judge the steps after the prompt the policy saw, the query context's, not the raw text."""
    b = ScriptedBackend()
    raw = PROBLEM.model_copy(update={"prompt": "What is 37+45*2-18?"})
    ctx = QueryContext(raw, b, prompt=PROMPT)
    for v in (PRMVerifier(b), ORMVerifier(b)):
        good, bad = asyncio.run(v.verify_many(raw, [RIGHT, WRONG_END], ctx))
        assert (good.score, bad.score) == (pytest.approx(0.9), pytest.approx(0.1))
        assert asyncio.run(v.score_partials(raw, [["37+45=82\n"], ["37+45=83\n"]], ctx)) == pytest.approx([0.9, 0.1])


# -- cost: every verifier call is verifier work in the query's ledger ---------------------


def stand_in_verifiers(policy: ScriptedBackend, problems: list[Problem]) -> dict[str, Any]:
    gold = {p.answer for p in problems}
    return {
        "prm": PRMVerifier(policy),
        "orm": ORMVerifier(policy),
        "judge-generate": JudgeVerifier(JudgeStub(gold), mode="generate"),
        "judge-logprob": JudgeVerifier(JudgeStub(gold), mode="logprob"),
    }


def assert_verifier_cost_apart(base: list[dict[str, Any]], run: list[dict[str, Any]], price: float) -> None:
    """Verification adds verifier tokens and seconds and leaves the policy's figures alone."""
    by_id = {r["id"]: r for r in base}
    for r in run:
        assert r["error"] is None, r["error"]
        b = by_id[r["id"]]
        assert b["verifier_tokens"] == 0 and b["verifier_gpu_seconds"] == 0
        assert r["verifier_tokens"] > 0 and r["verifier_requests"] > 0
        assert r["verifier_gpu_seconds"] > 0
        assert r["verifier_usd"] == pytest.approx(r["verifier_gpu_seconds"] * price / 3600)
        assert (r["prompt_tokens"], r["generated_tokens"]) == (b["prompt_tokens"], b["generated_tokens"])


def test_every_stand_in_verifier_call_is_accounted_as_verifier_work() -> None:
    problems = arith_problems(limit=4, steps=3, seed=3)
    price = 7.2

    def run(strategy: BestOfN, policy: ScriptedBackend) -> list[dict[str, Any]]:
        return asyncio.run(
            run_queries(problems, strategy, policy, grade, seed=1, usd_per_gpu_hour=price, progress=False)
        )

    base = run(BestOfN(n=4), ScriptedBackend(p_correct=0.6))
    # Stand-in engine time per candidate, and requests per candidate (None: one per step).
    expected = {"prm": (None, None), "orm": (0.001, 1), "judge-generate": (0.02, 1), "judge-logprob": (0.01, 2)}
    for name, (seconds, requests) in expected.items():
        policy = ScriptedBackend(p_correct=0.6)
        verifier = stand_in_verifiers(policy, problems)[name]
        recs = run(BestOfN(n=4, select="verifier", verifier=verifier), policy)
        assert_verifier_cost_apart(base, recs, price)
        if requests is not None:
            assert [r["verifier_requests"] for r in recs] == [4 * requests] * len(recs)
            assert recs[0]["verifier_gpu_seconds"] == pytest.approx(4 * seconds)
        if name == "judge-generate":  # its prompt and its written verdict both count
            assert all(r["verifier_tokens"] > 4 * 200 for r in recs)


# -- classifier PRM: adapter tests against a fake pooling engine ---------------------------

SEP = "<extra_0>"
CHATML = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


class FakePoolingLLM:
    """Stands in for ``vllm.LLM(model, runner="pooling")``: ``encode`` returns
    ``PoolingRequestOutput``s whose ``outputs.data`` holds class probabilities,
    one row per separator (STEP pooling) or per token (``per_token=True``, ALL
    pooling). A step containing "bad" gets P(positive) 0.2, any other 0.9."""

    def __init__(self, per_token: bool = False) -> None:
        tok = build_tokenizer()
        tok.add_tokens([SEP], special_tokens=True)
        tok.chat_template = CHATML
        self.tokenizer, self.per_token = tok, per_token
        self.calls: list[dict[str, Any]] = []
        hf = {"num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_size": 3584}
        self.llm_engine = SimpleNamespace(
            vllm_config=SimpleNamespace(
                model_config=SimpleNamespace(hf_config=hf, dtype="torch.bfloat16"),
                cache_config=SimpleNamespace(block_size=16, cache_dtype="auto"),
                parallel_config=SimpleNamespace(tensor_parallel_size=1, pipeline_parallel_size=1),
            )
        )

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def encode(
        self, prompts: list[Any], pooling_params: Any = None, *, use_tqdm: bool = True, pooling_task: str | None = None
    ) -> list[Any]:
        import torch
        from vllm.outputs import PoolingOutput, PoolingRequestOutput

        self.calls.append({"prompts": prompts, "params": pooling_params, "task": pooling_task})
        sep = self.tokenizer.convert_tokens_to_ids(SEP)
        outs = []
        for i, prompt in enumerate(prompts):
            ids = prompt["prompt_token_ids"]
            rows, step = [], []
            for t in ids:
                if t == sep:
                    p = 0.2 if "bad" in self.tokenizer.decode(step) else 0.9
                    rows.append([1 - p, p])
                    step = []
                else:
                    step.append(t)
                    if self.per_token:
                        rows.append([0.5, 0.5])
            data = torch.tensor(rows)
            outs.append(PoolingRequestOutput(str(i), PoolingOutput(data=data), list(ids), 0, True))
        return outs


def classifier(**kw: Any) -> Any:
    pytest.importorskip("vllm")
    from verifiers.classifier_prm import ClassifierPRM

    return ClassifierPRM(llm=kw.pop("llm", None) or FakePoolingLLM(), **kw)


def test_classifier_prm_formats_a_chat_with_a_separator_after_each_step() -> None:
    prm = classifier(system_prompt="Be careful.")
    completion = "Add them: 2+2=4.\n\nSo the answer is \\boxed{4}.\n\n"
    steps = prm.split(completion)
    assert steps == ["Add them: 2+2=4.", "So the answer is \\boxed{4}."]
    text = prm.format("What is 2+2?", steps)
    assert text == (
        "<|system|>\nBe careful.<|end|>\n<|user|>\nWhat is 2+2?<|end|>\n"
        f"<|assistant|>\nAdd them: 2+2=4.{SEP}So the answer is \\boxed{{4}}.{SEP}<|end|>\n"
    )
    ids = prm.encode("What is 2+2?", steps)
    assert ids.count(prm.sep_id) == 2 and ids[0] != prm.tokenizer.bos_token_id
    assert "<|system|>" not in classifier(system_prompt="").format("q", ["s"])
    # A separator inside a step's text must not read as an extra step.
    assert prm.split(f"a{SEP}b\n\nc") == ["ab", "c"]


@pytest.mark.parametrize("per_token", [False, True])
def test_classifier_prm_reads_the_positive_probability_at_each_separator(per_token: bool) -> None:
    llm = FakePoolingLLM(per_token=per_token)
    problem = Problem(id="q", prompt="What is 2+2?")
    completion = "2+2=4\n\nthis step is bad\n\n\\boxed{4}"
    v = asyncio.run(classifier(llm=llm).verify(problem, completion))
    assert v.step_scores == pytest.approx([0.9, 0.2, 0.9])
    assert v.score == pytest.approx(0.2)  # min
    (call,) = llm.calls
    assert call["task"] == "token_classify" and call["params"].use_activation is True
    for how, want in [("last", 0.9), ("prod", 0.9 * 0.2 * 0.9)]:
        assert asyncio.run(classifier(llm=llm, aggregate=how).verify(problem, completion)).score == pytest.approx(want)
    partial = asyncio.run(classifier(llm=llm).score_partial(problem, ["2+2=4\n\n", "this step is bad\n\n"]))
    assert partial == pytest.approx(0.2)


def test_classifier_prm_batches_concurrent_candidates_and_charges_the_ledger() -> None:
    llm = FakePoolingLLM()
    prm = classifier(llm=llm)
    problem = Problem(id="q", prompt="What is 2+2?")
    ctx = ctx_for(problem, ScriptedBackend())
    verdicts = asyncio.run(prm.verify_many(problem, ["a\n\nb", "bad\n\nc", ""], ctx))
    assert [v.step_scores for v in verdicts] == [pytest.approx([0.9, 0.9]), pytest.approx([0.2, 0.9]), []]
    assert verdicts[2].score == 0.0
    assert len(llm.calls) == 1 and len(llm.calls[0]["prompts"]) == 2  # one engine batch; no call for no steps
    used = ctx.ledger.usage("verifier")
    assert used.requests == 2 and used.prompt_tokens == sum(len(p["prompt_token_ids"]) for p in llm.calls[0]["prompts"])
    assert ctx.ledger.usage("policy").requests == 0
    assert (prm.kv.num_layers, prm.kv.num_kv_heads, prm.kv.head_dim, prm.kv.dtype_bytes) == (28, 4, 128, 2)


def test_classifier_prm_rejects_mismatched_outputs_and_unknown_separators() -> None:
    prm = classifier()
    import torch
    from vllm.outputs import PoolingOutput, PoolingRequestOutput

    ids = prm.encode("q", ["a", "b"])
    out = PoolingRequestOutput("0", PoolingOutput(data=torch.tensor([[0.1, 0.9]])), ids, 0, True)
    with pytest.raises(BackendError, match="1 reward rows for 2 step separators"):
        prm.read_scores(out)
    with pytest.raises(ValueError, match="not a token"):
        classifier(step_separator="<nope>")


# -- building: which engine each verifier gets -------------------------------------------------


def spec_for(name: str, **args: Any) -> RunSpec:
    return RunSpec(
        model=ModelSpec(name="m", path="org/policy", prm_path="org/prm", step_delimiter="\n"),  # hub ids
        backend_name="vllm",
        backend_args={},
        strategy_name="best_of_n",
        strategy_args={},
        verifier_name=name,
        verifier_args=args,
        dataset_name="arith",
        dataset_args={},
    )


def test_build_gives_model_verifiers_their_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    started: dict[str, ScriptedBackend] = {}

    def engine(name: str, model: str, seed: int, **args: Any) -> ScriptedBackend:
        return started.setdefault(model, ScriptedBackend())

    monkeypatch.setattr("ttc.build.engine", engine)
    prm, kv = build_verifier(
        spec_for("prm", aggregate="min", good_token="<good>", step_tag="", step_delimiter="\n\n"), {}
    )
    assert prm.backend is started["org/prm"] and prm.delim == "\n" and kv == started["org/prm"].kv
    orm, _ = build_verifier(spec_for("orm", model_path=None), {})
    assert orm.backend is started["org/prm"]
    judge, _ = build_verifier(spec_for("judge", mode="generate", model_path=None), {})
    assert judge.backend is started["org/policy"] and judge.mode == "generate"
    other, _ = build_verifier(spec_for("judge", model_path="/judge"), {})
    assert other.backend is started["/judge"]
    math_v, kv = build_verifier(spec_for("math"), {})
    assert kv is None and not hasattr(math_v, "backend")


@pytest.mark.parametrize("name", ["orm", "judge", "classifier_prm"])
def test_verifier_configs_pass_the_config_check(name: str) -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose("config", overrides=["strategy=best_of_n", "strategy.select=verifier", f"verifier={name}"])
    spec = check_config(cfg)
    assert spec.verifier_name == name
    if name == "judge":
        assert (spec.verifier_args["yes"], spec.verifier_args["no"]) == ("Yes", "No")


# -- the real engine -----------------------------------------------------------------------


@pytest.mark.engine
def test_reference_prm_as_orm_ranks_the_whole_chain(prm_engine: Any) -> None:
    orm, prm = ORMVerifier(prm_engine), PRMVerifier(prm_engine)
    good, bad = asyncio.run(orm.verify_many(PROBLEM, [RIGHT, WRONG_END], None))
    # The ORM is the PRM's judgement after the final line...
    for v, text in [(good, RIGHT), (bad, WRONG_END)]:
        last = asyncio.run(prm.score_steps(None, PROMPT, prm.split(text)))[-1]
        assert v.score == pytest.approx(last, abs=1e-4)
    # ...and so it ranks the chain with the wrong final answer below the right one.
    assert good.score > bad.score


@pytest.mark.engine
def test_reference_prm_scores_a_searchs_new_nodes_in_one_call(prm_engine: Any) -> None:
    prm = PRMVerifier(prm_engine)
    partials = [prm.split(RIGHT)[:1], prm.split(RIGHT), prm.split(WRONG_END)]
    ctx = ctx_for(PROBLEM, prm_engine)
    calls: list[int] = []
    score = ctx.score

    async def counting(requests: list[ScoreRequest], *args: Any, **kw: Any) -> list[ScoreResult]:
        calls.append(len(requests))
        return await score(requests, *args, **kw)

    ctx.score = counting  # type: ignore[method-assign]
    together = asyncio.run(prm.score_partials(PROBLEM, partials, ctx))
    assert calls == [3]  # one list of requests for the engine, not one call per node
    assert ctx.ledger.usage("verifier").requests == 3
    one_by_one = [asyncio.run(prm.score_partial(PROBLEM, steps, None)) for steps in partials]
    assert together == pytest.approx(one_by_one, abs=1e-4)
    assert together[1] > 0.5 > together[2]  # the right chain's last step, the wrong answer


@pytest.mark.engine
def test_reference_orm_separates_right_from_wrong(prm_engine: Any) -> None:
    good, bad = asyncio.run(ORMVerifier(prm_engine).verify_many(PROBLEM, [RIGHT, WRONG_END], None))
    assert good.score > 0.5 > bad.score


@pytest.mark.engine
def test_every_real_verifier_call_is_accounted_as_verifier_work(policy_engine: Any, prm_engine: Any) -> None:
    problems = arith_problems(limit=2, steps=2, seed=4)
    price = 3600.0  # one dollar per GPU-second

    def run(strategy: BestOfN) -> list[dict[str, Any]]:
        return asyncio.run(
            run_queries(problems, strategy, policy_engine, grade, seed=5, usd_per_gpu_hour=price, progress=False)
        )

    # Short rubrics: the reference models hold 256 tokens.
    verifiers = [
        PRMVerifier(prm_engine),
        ORMVerifier(prm_engine),
        JudgeVerifier(policy_engine, mode="logprob", template="{question}{completion}ok?"),
        JudgeVerifier(policy_engine, mode="generate", template="{question}{completion}Score:", max_tokens=6),
    ]
    base = run(BestOfN(n=4))
    for v in verifiers:
        recs = run(BestOfN(n=4, select="verifier", verifier=v))
        assert_verifier_cost_apart(base, recs, price)
    assert summarize(base)["verifier_tokens"] == 0
