"""Monte Carlo tree search over reasoning steps.

    repeat simulations / parallel times:
        select `parallel` leaves by PUCT (or UCT), adding virtual loss along each path
            so the next selection in the same wave goes elsewhere
            (PUCT's prior of a child: the policy's probability of its step, softmax over siblings)
        expand every selected leaf: k next steps in one request (n=k), one child per distinct step
        evaluate each child: PRM value of its step, and/or a rollout to a final answer
        backpropagate the values along each path; remove the virtual loss
    answer: the finished chain with the best value (or a value-weighted vote)

Every wave of every query's tree goes to the engine in one batch.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import NonNegativeFloat, PositiveInt

from strategies.base import Answer, Strategy
from strategies.beam_search import pick
from strategies.tree import Node, expand, rollout, root, score
from ttc.context import QueryContext
from verifiers.base import Verifier


class MCTS(Strategy):
    name = "mcts"
    default_verifier = "prm"

    def __init__(
        self,
        simulations: PositiveInt = 16,
        branching: PositiveInt = 4,
        max_depth: PositiveInt = 12,
        c_explore: NonNegativeFloat = 1.0,
        selection: Literal["puct", "uct"] = "puct",
        evaluation: Literal["prm", "rollout", "both"] = "prm",
        parallel: PositiveInt = 2,
        virtual_loss: NonNegativeFloat = 1.0,
        select: Literal["best", "weighted"] = "best",
        temperature: NonNegativeFloat = 1.0,
        max_step_tokens: PositiveInt = 48,
        verifier: Verifier | None = None,
    ) -> None:
        self.simulations, self.k, self.max_depth = simulations, branching, max_depth
        self.c, self.selection, self.evaluation = c_explore, selection, evaluation
        self.parallel, self.vloss, self.select = parallel, virtual_loss, select
        self.temperature, self.max_step_tokens = temperature, max_step_tokens
        self.verifier = verifier

    @staticmethod
    def needs_verifier(args: dict) -> bool:
        return True

    # -- the four phases ----------------------------------------------------------------
    def _ucb(self, n_parent: float, child: Node, prior: float) -> float:
        q = child.value_sum / child.visits if child.visits else 0.0
        if self.selection == "uct":
            if not child.visits:
                return math.inf
            return q + self.c * math.sqrt(math.log(max(n_parent, 1.0)) / child.visits)
        return q + self.c * prior * math.sqrt(max(n_parent, 1.0)) / (1 + child.visits)

    def select_leaf(self, node: Node) -> Node:
        """Descend by PUCT/UCT to a node without children, applying virtual loss."""
        path = [node]
        while node.children and not node.done:
            priors = _softmax([c.logprob for c in node.children])
            # N(s) = sum_b N(s, b), as PUCT and UCT count it: each child starts with the one
            # visit of its own evaluation, which its parent's count does not hold.
            visits = sum(c.visits for c in node.children)
            node = max(zip(node.children, priors, strict=True), key=lambda cp: self._ucb(visits, *cp))[0]
            path.append(node)
        for n in path:  # virtual loss: count a pessimistic visit until the real one lands
            n.visits += self.vloss
            n.value_sum -= self.vloss
        return node

    async def evaluate(self, ctx: QueryContext, nodes: list[Node], finished: list[Node]) -> list[float]:
        """Value of each new child: its PRM step score, a rollout's final score, or their mean."""
        assert self.verifier is not None
        values = [0.0] * len(nodes)
        if self.evaluation in ("prm", "both"):
            await score(ctx, self.verifier, nodes)
            values = [n.score for n in nodes]
        if self.evaluation in ("rollout", "both"):
            open_ = [n for n in nodes if not n.done]
            ends = await rollout(ctx, open_, temperature=self.temperature) if open_ else []
            # A child that has already finished is its own rollout; "both" has scored it above.
            unscored = (ends + [n for n in nodes if n.done]) if self.evaluation == "rollout" else ends
            await score(ctx, self.verifier, unscored)
            finished += ends
            outcome = iter(ends)
            for i, n in enumerate(nodes):
                v = n.score if n.done else next(outcome).score
                values[i] = v if self.evaluation == "rollout" else (values[i] + v) / 2
        return values

    def backpropagate(self, leaf: Node, value: float | None) -> None:
        """Remove the virtual loss on the path; add the real visit and value if any."""
        node: Node | None = leaf
        while node is not None:
            node.visits -= self.vloss
            node.value_sum += self.vloss
            if value is not None:
                node.visits += 1
                node.value_sum += value
            node = node.parent

    # -- search -------------------------------------------------------------------------
    async def solve(self, ctx: QueryContext) -> Answer:
        _, finished = await self.search(ctx)
        return pick(ctx, finished, self.select)

    async def search(self, ctx: QueryContext) -> tuple[Node, list[Node]]:
        """The tree and the finished chains, each valued by its mean backed-up value."""
        tree = root(ctx)
        finished: list[Node] = []
        # PUCT's priors are the children's log-probabilities, which engines return only when asked.
        opts = dict(
            temperature=self.temperature,
            max_step_tokens=self.max_step_tokens,
            max_depth=self.max_depth,
            logprobs=self.selection == "puct",
            # A step sampled twice is one state. As two children, they would split its
            # visits, and which twin a wave picked (virtual loss sends the next selection
            # to the twin) would turn on float noise in their log-probabilities, which
            # changes with the batch: the search would differ with the concurrency.
            distinct=True,
        )
        sims = 0
        while sims < self.simulations:
            wave = min(self.parallel, self.simulations - sims)
            picked = [self.select_leaf(tree) for _ in range(wave)]
            leaves = list(dict.fromkeys(picked))  # the same leaf may be picked twice
            expandable = [leaf for leaf in leaves if not leaf.done]
            kids_per_leaf = await expand(ctx, expandable, self.k, **opts)
            kids = [kid for ks in kids_per_leaf for kid in ks]
            values = await self.evaluate(ctx, kids, finished)
            finished += [kid for kid in kids if kid.done]
            value_of = dict(zip(map(id, kids), values, strict=True))
            for leaf in leaves:
                new = [value_of[id(c)] for c in leaf.children if id(c) in value_of]
                for c in leaf.children:
                    if id(c) in value_of:
                        c.visits, c.value_sum = 1.0, value_of[id(c)]
                # The leaf's value is the mean of its new children's; a finished leaf
                # is re-valued by its own score, so a good answer gathers visits.
                self.backpropagate(leaf, sum(new) / len(new) if new else leaf.score)
                for _ in range(picked.count(leaf) - 1):
                    self.backpropagate(leaf, None)
            sims += len(leaves)  # a leaf picked twice in a wave is one simulation
            ctx.log("mcts_wave", sims=sims, leaves=len(leaves), finished=len(finished))
            if not expandable and all(leaf.done for leaf in leaves) and _fully_done(tree):
                break
        if not finished:  # budget spent before any chain ended: finish the most visited path
            best = _most_visited_leaf(tree)
            finished = await rollout(ctx, [best], temperature=0.0)
            await score(ctx, self.verifier, finished)  # type: ignore[arg-type]
        for n in finished:
            n.score = n.value_sum / n.visits if n.visits else n.score
        return tree, finished


def _softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    s = sum(e)
    return [v / s for v in e]


def _fully_done(node: Node) -> bool:
    return node.done or (bool(node.children) and all(_fully_done(c) for c in node.children))


def _most_visited_leaf(node: Node) -> Node:
    while node.children:
        node = max(node.children, key=lambda c: c.visits)
    return node
