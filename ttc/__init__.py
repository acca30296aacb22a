"""ttc: test-time compute strategies over real inference engines, with honest accounting.

Backends live in ``ttc.backends`` (imported on demand, so that ``import ttc``
never starts or even imports an engine); strategies in the top-level
``strategies`` package, verifiers in ``verifiers``.
"""

from ttc.context import QueryContext
from ttc.ledger import Ledger
from ttc.types import Completion, GenRequest, GenResult, KVGeometry, Problem, ScoreRequest, ScoreResult, Verdict

__version__ = "0.1.0"
__all__ = [
    "Completion",
    "GenRequest",
    "GenResult",
    "KVGeometry",
    "Ledger",
    "Problem",
    "QueryContext",
    "ScoreRequest",
    "ScoreResult",
    "Verdict",
]
