"""Partial solutions as nodes of a tree of reasoning steps.

A child is sent to the engine as its parent's token ids plus its own step, so
the engine's prefix cache (vLLM's automatic prefix caching, SGLang's radix
tree) holds every shared prefix once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ttc.answers import extract_answer
from ttc.context import QueryContext
from ttc.types import GenRequest
from verifiers.base import Verifier


@dataclass(eq=False)
class Node:
    ids: list[int]  # prompt + every step so far: what a child extends
    steps: list[str] = field(default_factory=list)
    done: bool = False
    score: float = 0.0  # verifier's judgement of the newest step
    logprob: float = 0.0  # the newest step's log-probability under the policy (0 unless expand asked)
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)
    visits: float = 0.0  # MCTS statistics (float: virtual loss adds and removes)
    value_sum: float = 0.0

    @property
    def text(self) -> str:
        return "".join(self.steps)

    @property
    def depth(self) -> int:
        return len(self.steps)


def root(ctx: QueryContext) -> Node:
    return Node(ids=ctx.encode(ctx.prompt))


def is_final(ctx: QueryContext, text: str, finish_reason: str, delimiter: str) -> bool:
    """A chain is over once it states an answer, or the model ended it (EOS or length)."""
    if extract_answer(ctx.problem, text, committed=True) is not None:
        return True
    return not text.endswith(delimiter) or finish_reason == "length"


async def expand(
    ctx: QueryContext,
    parents: list[Node],
    k: int | list[int],
    *,
    temperature: float = 1.0,
    max_step_tokens: int = 48,
    max_depth: int = 12,
    logprobs: bool = False,
    distinct: bool = False,
) -> list[list[Node]]:
    """Sample ``k`` next steps for every parent (or ``k[i]`` for parent i), all in
    one engine call, one request with ``n=k`` per parent. ``logprobs``: fill each
    child's ``logprob`` (engines report it only when asked). ``distinct``: a step
    sampled twice from one parent is one child (the same text is the same state)."""
    if not parents:
        return []
    delim = ctx.step_delimiter
    ks = k if isinstance(k, list) else [k] * len(parents)
    results = await ctx.generate(
        [
            GenRequest(
                prompt=p.ids, n=n, temperature=temperature, max_tokens=max_step_tokens, stop=[delim], logprobs=logprobs
            )
            for p, n in zip(parents, ks, strict=True)
        ]
    )
    out = []
    for parent, res in zip(parents, results, strict=True):
        kids = []
        for c in res.completions:
            if distinct and any(kid.steps[-1] == c.text for kid in kids):
                continue
            steps = [*parent.steps, c.text]
            kids.append(
                Node(
                    ids=parent.ids + c.token_ids,
                    steps=steps,
                    done=is_final(ctx, "".join(steps), c.finish_reason, delim) or len(steps) >= max_depth,
                    logprob=c.cumulative_logprob or 0.0,
                    parent=parent,
                )
            )
        parent.children.extend(kids)
        out.append(kids)
    return out


async def rollout(
    ctx: QueryContext, nodes: list[Node], *, temperature: float = 1.0, max_tokens: int = 160
) -> list[Node]:
    """Complete each node to a final answer in one sampled continuation."""
    results = await ctx.generate(
        [GenRequest(prompt=n.ids, temperature=temperature, max_tokens=max_tokens) for n in nodes]
    )
    return [
        Node(ids=n.ids + r.completions[0].token_ids, steps=[*n.steps, r.completions[0].text], done=True, parent=n)
        for n, r in zip(nodes, results, strict=True)
    ]


async def score(ctx: QueryContext, verifier: Verifier, nodes: list[Node]) -> None:
    """Set each node's score: the verifier's judgement of its newest step."""
    if not nodes:
        return
    scores = await verifier.score_partials(ctx.problem, [n.steps for n in nodes], ctx)
    for n, s in zip(nodes, scores, strict=True):
        n.score = s
