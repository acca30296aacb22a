"""A prefix cache for the transformers backend, kept across requests as vLLM's is.

A sequence's KV is stored in blocks of ``block_size`` tokens, each block keyed by its
own tokens and the block before it (a trie with exact keys: no hash can collide). A
later sequence that starts with the same full blocks reads them instead of recomputing
them, wherever in the search tree it sits. Once the cache holds ``capacity`` tokens, the
least recently used blocks leave, the tips of chains before the blocks they hang from
(as vLLM frees a request's blocks).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

_ROOT = -1


@dataclass(frozen=True)
class Block:
    """KV of one block of tokens: per layer, a tensor of [kv heads, block size, head dim]."""

    id: int
    keys: tuple[Any, ...]
    values: tuple[Any, ...]


class PrefixCache:
    def __init__(self, block_size: int, capacity: int) -> None:
        self.block_size = block_size
        self.capacity = capacity
        self._blocks: OrderedDict[tuple[int, tuple[int, ...]], Block] = OrderedDict()
        self._next_id = 0

    def __len__(self) -> int:
        """Tokens held."""
        return len(self._blocks) * self.block_size

    def lookup(self, ids: list[int], limit: int) -> list[Block]:
        """The cached full blocks that ``ids`` starts with, covering at most ``limit`` tokens."""
        found: list[Block] = []
        keys: list[tuple[int, tuple[int, ...]]] = []
        parent, b = _ROOT, self.block_size
        for start in range(0, min(limit, len(ids)) - b + 1, b):
            key = (parent, tuple(ids[start : start + b]))
            block = self._blocks.get(key)
            if block is None:
                break
            found.append(block)
            keys.append(key)
            parent = block.id
        self._touch(keys)
        return found

    def store(self, ids: list[int], first: int, keys: list[Any], values: list[Any]) -> None:
        """Add the full blocks of ``ids`` from token ``first`` (a block boundary) on, whose
        KV ``keys[layer]`` / ``values[layer]`` hold along their second dimension, from
        ``first`` on. The blocks before ``first`` must still be cached: the new ones hang
        from them."""
        if self.capacity < self.block_size:
            return
        chain: list[tuple[int, tuple[int, ...]]] = []
        parent, b = _ROOT, self.block_size
        for start in range(0, len(ids) - b + 1, b):
            key = (parent, tuple(ids[start : start + b]))
            block = self._blocks.get(key)
            if block is None:
                if start < first or start - first + b > keys[0].shape[1]:
                    break  # a block before ``first`` has left; or past the tokens whose KV exists
                part = slice(start - first, start - first + b)
                # Copies, so that the batch's cache tensors are not kept alive by views of them.
                block = Block(
                    self._next_id, tuple(k[:, part].clone() for k in keys), tuple(v[:, part].clone() for v in values)
                )
                self._next_id += 1
                self._blocks[key] = block
            chain.append(key)
            parent = block.id
        self._touch(chain)
        while len(self) > self.capacity:
            self._blocks.popitem(last=False)

    def _touch(self, chain: list[tuple[int, tuple[int, ...]]]) -> None:
        # A chain's tip first, its root last: the least recently used end of the cache is
        # always some chain's tip, so a block leaves before the blocks it hangs from.
        for key in reversed(chain):
            self._blocks.move_to_end(key)
