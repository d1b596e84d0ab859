"""What a solve cost: recorded per work unit, summed by the runner into the results' metadata."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SolveStats:
    """``iterations``: passes (CG) or recursion steps (LiSSA, summed over repetitions); ``capped``: solves
    that stopped at their cap (``depth`` / ``max_iter``) before their tolerance; ``solves``: how many."""

    iterations: int = 0
    capped: int = 0
    solves: int = 0

    def __add__(self, other: SolveStats) -> SolveStats:
        return SolveStats(self.iterations + other.iterations, self.capped + other.capped, self.solves + other.solves)

    @classmethod
    def one(cls, iterations: int, capped: bool) -> SolveStats:
        return cls(iterations, int(capped), 1)
