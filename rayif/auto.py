"""What ``solver="auto"`` decides, and may still change once it meets the user's model.

By size first (:meth:`rayif.config.AutoConfig.choose`); then, once the data is known good, by what the model
is: a loss that reads more than one output has no Gauss-Newton split and no Kronecker factors (no
preconditioner); a Hessian that is indefinite at the requested damping (a network not at a minimum) answers
no question, so ``auto`` answers with the GGN; a CG that cannot converge where the explicit matrix fits
gives way to the exact solve. Every change is logged and appended to the record the results carry
(``rayif.solver_choice``). A solver the user named is never changed: its errors are raised as they are.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from .config import AutoConfig, CGConfig, ExactConfig, SolverConfig, solver_name
from .errors import ConvergenceError, IndefiniteError, RayifError

log = logging.getLogger("rayif")


class Choice:
    """The solver a job runs and how it was chosen.

    Args:
        requested: what the user asked for (an ``AutoConfig`` or a named solver's config).
        num_train, num_params, num_vectors: ``n``, ``p`` and the right-hand sides (test points) of the job.
        chain: the model is a chain of linear layers (:mod:`rayif.ihvp.chain`): its explicit matrix is cheap.
    """

    def __init__(self, requested: SolverConfig, num_train: int, num_params: int, num_vectors: int,
                 chain: bool = False):
        self.requested, self.n, self.p = requested, num_train, num_params
        self.chain = chain and getattr(requested, "chain", False)
        self.ggn_problem: str | None = None  # why the loss has no single model output, once checked
        if not isinstance(requested, AutoConfig):
            self.solver = requested
            self.record = {"requested": solver_name(requested), "chosen": solver_name(requested),
                           "reason": "requested", "curvature": requested.curvature}
            return
        self.solver, reason = requested.choose(num_train, num_params, num_vectors, chain)
        log.info("rayif: solver='auto' chose %s: %s", solver_name(self.solver), reason)
        self.record = {"requested": "auto", "chosen": solver_name(self.solver), "reason": reason,
                       "curvature": self.solver.curvature}

    def _note(self, why: str) -> None:
        self.record["reason"] += f"; {why}"
        log.info("rayif: solver='auto': %s", why)

    def check(self, probe: dict) -> None:
        """Apply what the replica's probe found (``Replica.probe``): ``ggn``, why the loss cannot be split at
        one output (or ``None``), and ``smallest``, the Hessian's smallest eigenvalue by Lanczos (or ``None``)."""
        self.ggn_problem, low = probe["ggn"], probe["smallest"]
        self.record["smallest_hessian_eigenvalue"] = low
        if self.ggn_problem is not None and getattr(self.solver, "preconditioner", None) is not None:
            self.solver = replace(self.solver, preconditioner=None)
            self._note(f"no preconditioner: {self.ggn_problem}")
        if low is not None and low + self.solver.damping <= 0:
            self.fall_back(IndefiniteError(f"the Hessian + {self.solver.damping}*I is indefinite here (smallest "
                                           f"eigenvalue {low:.3g} or below, by Lanczos)"), written=False)

    def fall_back(self, error: RayifError, written: bool) -> None:
        """Change the solver after ``error`` where ``auto`` may (see the module), else re-raise ``error``.
        ``written``: results computed with the current solver are already on disk (then nothing changes)."""
        auto = self.requested
        if not isinstance(auto, AutoConfig) or written:
            raise error
        if isinstance(error, ConvergenceError):
            if self.p > auto.max_params or (self.n * self.p > auto.exact_budget and not self.chain):
                raise error
            tol = self.solver.tol if isinstance(self.solver, CGConfig) else ExactConfig.tol
            self.solver = ExactConfig(self.solver.damping, self.solver.curvature, auto.max_params, True, tol,
                                      auto.chain)
            self.record["chosen"] = "exact"
            log.warning("rayif: %s: solver='auto' solves exactly instead (p=%d, n=%d)", error, self.p, self.n)
            self._note(f"CG did not converge: exact (p={self.p})")
            return
        if self.solver.curvature != "hessian":
            raise error
        if self.ggn_problem is not None:
            raise IndefiniteError(f"{error}; solver='auto' would answer with curvature='ggn', but {self.ggn_problem}. "
                                  "Raise AutoConfig.damping above the smallest eigenvalue's magnitude") from error
        self.solver = replace(self.solver, curvature="ggn")
        self.record.update(chosen=solver_name(self.solver), curvature="ggn")
        log.warning("rayif: %s: solver='auto' answers with the Gauss-Newton curvature (curvature='ggn'), whose "
                    "damped influence approximates the proximal Bregman response function (Bae et al. 2022) for a "
                    "network that is not at a minimum. Pass curvature='ggn' to ask for it, or curvature='hessian' "
                    "with a larger damping to keep the Hessian", error)
        self._note(f"{error}: curvature='ggn'")
