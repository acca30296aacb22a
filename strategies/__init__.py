"""Test-time compute strategies, importable from agent code.

    from strategies import BestOfN, MCTS
    answer = BestOfN(n=16).solve_sync("Q:12+7*3=?\\n", backend)
"""

from strategies.base import Answer, Candidate, Strategy
from strategies.beam_search import BeamSearch
from strategies.best_of_n import BestOfN
from strategies.cot import CoT
from strategies.dvts import DVTS
from strategies.mcts import MCTS
from strategies.particle_filter import ParticleFilter
from strategies.verify_revise import VerifyRevise

__all__ = [
    "DVTS",
    "MCTS",
    "Answer",
    "BeamSearch",
    "BestOfN",
    "Candidate",
    "CoT",
    "ParticleFilter",
    "Strategy",
    "VerifyRevise",
]
