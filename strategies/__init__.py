"""Test-time compute strategies, importable from agent code.

    from strategies import BestOfN
    answer = BestOfN(n=16).solve_sync("Q:12+7*3=?\\n", backend)
"""

from strategies.base import Answer, Candidate, Strategy
from strategies.best_of_n import BestOfN
from strategies.cot import CoT

__all__ = ["Answer", "BestOfN", "Candidate", "CoT", "Strategy"]
