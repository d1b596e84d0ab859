"""Typed, validated configs for the inverse-HVP estimators.

A config is plain data: the Python API, the CLI and a cluster job all say the same thing with it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Union

from .errors import RayifError


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise RayifError(msg)


DEFAULT_DAMPING = 1e-3
"""The additive ``lambda`` every solver adds to the curvature by default, in the curvature's own units.

Why 1e-3: rayif's curvature is that of the *mean* training loss, whose eigenvalues on trained networks
run from about 1e2 down to 0 (directions the data never moves). An additive lambda bounds the condition
number of ``H + lambda I``, keeps every solver finite on those null directions, and is where LiSSA's and
CG's convergence comes from; 1e-3 is small next to the curvature that carries the ranking (weight decay of
1e-2, or the 1e-2..1 eigenvalues of a trained classifier), so it moves influence little there.
"""

CURVATURES = ("hessian", "ggn")
PRECONDITIONERS = (None, "ekfac", "kfac")


def _check_common(cls: str, damping: float, curvature: str) -> None:
    _check(damping >= 0, f"{cls}.damping must be >= 0, got {damping}")
    _check(curvature in CURVATURES, f"{cls}.curvature must be one of {CURVATURES}, got {curvature!r}")


def _check_preconditioner(cls: str, value: str | None) -> None:
    _check(value in PRECONDITIONERS, f"{cls}.preconditioner must be one of {PRECONDITIONERS}, got {value!r}")


@dataclass(frozen=True)
class ExactConfig:
    """The explicit curvature matrix over the whole training set and a dense solve of ``(C + damping*I) X = V``.

    Ground truth for small models: memory is ``num_params**2`` floats, so models above ``max_params``
    selected parameters are refused.

    Attributes:
        damping: additive lambda >= 0, in the curvature's units (the same question for every solver).
        curvature: ``"hessian"`` (the training loss's Hessian, Koh & Liang) or ``"ggn"`` (Gauss-Newton
            ``J^T H_out J``: positive semi-definite, what K-FAC approximates).
        max_params: largest number of selected parameters accepted (10,000 = 800 MB of float64 matrix).
        mixed_precision: for a float64 model, build the matrix from float32 products (2.1-2.3x cheaper on a
            CPU; ``solver="auto"``'s exact solve does) and factor it in float64, then check every answer with
            one float64 product pass and refine it until its relative residual is below ``tol`` (the
            inverse self-influence applies: on 32 seeded random vectors); a matrix that cannot reach it is
            built again from float64 products. Off: the float64 matrix, the ground truth.
        tol: the relative residual ``||v - (C + damping I) x|| / ||v||`` a mixed-precision answer must reach.
        chain: where the selected parameters form a chain of linear layers and elementwise activations (an
            MLP, an MLP head; :mod:`rayif.ihvp.chain`), build the matrix from per-row factors in the model's
            dtype, about a tenth of the products' arithmetic, and check it against one product pass
            (``mixed_precision`` then has nothing to do). False: always from ``p`` curvature products.
    """

    damping: float = DEFAULT_DAMPING
    curvature: str = "hessian"
    max_params: int = 10_000
    mixed_precision: bool = False
    tol: float = 1e-5
    chain: bool = True

    def __post_init__(self) -> None:
        _check_common("ExactConfig", self.damping, self.curvature)
        _check(self.max_params >= 1, f"ExactConfig.max_params must be >= 1, got {self.max_params}")
        _check(0 < self.tol < 1, f"ExactConfig.tol must be in (0, 1), got {self.tol}")
        _check(isinstance(self.mixed_precision, bool),
               f"ExactConfig.mixed_precision must be true or false, got {self.mixed_precision!r}")
        _check(isinstance(self.chain, bool), f"ExactConfig.chain must be true or false, got {self.chain!r}")


@dataclass(frozen=True)
class CGConfig:
    """Block (preconditioned) conjugate gradients on ``(C + damping*I) X = V`` with full-training-set
    products: the test vectors of a batch share one Krylov space (``rayif.ihvp.cg``), and in a job every
    worker computes part of each product (row shards, summed on the driver in a fixed order).

    Attributes:
        damping: additive lambda >= 0, as :class:`ExactConfig`.
        curvature: ``"hessian"`` or ``"ggn"``, as :class:`ExactConfig`.
        preconditioner: ``"ekfac"`` (eigenvalue-corrected Kronecker factors of the GGN, fitted over the
            training data), ``"kfac"`` or ``None`` (plain CG).
        tol: stop a column when ``||residual|| <= tol * ||v||`` (relative, unitless).
        max_iter: iterations before giving up with an error (each is one pass over the training set).
        mixed_precision: for a float64 model, run the curvature products in float32 (about twice as fast on
            a CPU) and keep the iterates and residuals in float64; each solve then checks its residual with
            one float64 product pass and solves again for what is left until it is below ``tol``
            (iterative refinement), so the answer is the float64 one. No effect on a float32 model.
        recycle: search directions of a job's first CG solve (its first test batch) kept to start each later
            batch from its answer in their span and to keep its own directions conjugate to them (deflated
            CG): later batches need fewer passes (on the 100k mixture, p = 4810, batches of 256 after the
            first need 4 iterations with every direction kept, 9 with 1024, 14 with none). At most ``p``
            directions, and at most 512 MiB of them and their products (``16 * p`` bytes each) on the
            driver; kept only where the job has more than one test batch. 0: off.
    """

    damping: float = DEFAULT_DAMPING
    curvature: str = "hessian"
    preconditioner: str | None = "ekfac"
    tol: float = 1e-3
    max_iter: int = 500
    mixed_precision: bool = True
    recycle: int = 4096

    def __post_init__(self) -> None:
        _check_common("CGConfig", self.damping, self.curvature)
        _check_preconditioner("CGConfig", self.preconditioner)
        _check(0 < self.tol < 1, f"CGConfig.tol must be in (0, 1), got {self.tol}")
        _check(self.max_iter >= 1, f"CGConfig.max_iter must be >= 1, got {self.max_iter}")
        _check(self.recycle >= 0, f"CGConfig.recycle must be >= 0, got {self.recycle}")
        _check(isinstance(self.mixed_precision, bool),
               f"CGConfig.mixed_precision must be true or false, got {self.mixed_precision!r}")


@dataclass(frozen=True)
class LissaConfig:
    """LiSSA: a stochastic (preconditioned) fixed-point recursion for ``x = (C + damping*I)^-1 v``.

    Each step draws ``batch_size`` training examples with replacement and updates
    ``x <- x + P (v - (C_B + damping*I) x) / scale``, where ``C_B`` is the batch curvature and ``P`` the
    preconditioner (the identity without one). Without ``P`` this is FastIF's recursion
    ``h <- v + (1 - damping/scale) h - C_B h / scale`` with ``x = h / scale``: ``damping`` here is the same
    additive lambda as in :class:`ExactConfig`; its unitless factor is ``damping / scale``.

    Stopping: the iterates are averaged in stages of doubling length (``8 * check_every`` steps first; each
    stage forgets the previous one, which is burn-in). A stage ends the repetition when the standard error
    of the influence its average gives 256 sampled training examples, estimated from 8 equal blocks, is
    below ``tol`` times that influence (root mean square, pooled over the unit's test points), so a
    recursion still drifting (or too noisy) keeps going. ``depth`` caps the
    steps; hitting it is logged and recorded in the results' metadata. ``tol=None`` runs exactly ``depth``
    steps and averages the last ``tail_average`` fraction (FastIF's plain last iterate with
    ``tail_average=0``).

    The recursion converges when every eigenvalue of ``P (C_B + damping I)`` lies in ``(0, 2 * scale)``;
    with the Hessian, negative curvature beyond ``damping`` diverges: use ``curvature="ggn"``.

    Attributes:
        depth: most recursion steps per repetition (the paper's J, now a cap).
        batch_size: training examples per curvature-vector product (the paper's B).
        repetitions: independent runs averaged at the end (the paper's T); each has its own seed.
        damping: additive lambda >= 0, as :class:`ExactConfig`.
        curvature: ``"hessian"`` or ``"ggn"``, as :class:`ExactConfig`.
        preconditioner: ``"ekfac"``, ``"kfac"`` or ``None``, as :class:`CGConfig`.
        tol: relative standard error of the influence at which a repetition stops; ``None``: run ``depth``
            steps.
        scale: divides the step; must exceed the largest eigenvalue of ``P C_B``. ``None``: estimate it by
            power iteration (see ``scale_safety``).
        scale_safety: the estimated largest eigenvalue over sampled batches is multiplied by this.
        scale_batches: how many random batches of ``batch_size`` the power iteration looks at.
        tail_average: with ``tol=None``, the fraction of the last steps whose iterates are averaged.
        check_every: steps per averaging block and between divergence checks.
    """

    depth: int = 5000
    batch_size: int = 64
    repetitions: int = 2
    damping: float = DEFAULT_DAMPING
    curvature: str = "hessian"
    preconditioner: str | None = "ekfac"
    tol: float | None = 0.05
    scale: float | None = None
    scale_safety: float = 1.5
    scale_batches: int = 16
    tail_average: float = 0.5
    check_every: int = 10

    def __post_init__(self) -> None:
        _check(self.depth >= 1, f"LissaConfig.depth must be >= 1, got {self.depth}")
        _check(self.batch_size >= 1, f"LissaConfig.batch_size must be >= 1, got {self.batch_size}")
        _check(self.repetitions >= 1, f"LissaConfig.repetitions must be >= 1, got {self.repetitions}")
        _check_common("LissaConfig", self.damping, self.curvature)
        _check_preconditioner("LissaConfig", self.preconditioner)
        _check(self.tol is None or 0 < self.tol < 1, f"LissaConfig.tol must be in (0, 1) or None, got {self.tol}")
        _check(self.scale is None or self.scale > 0, f"LissaConfig.scale must be > 0, got {self.scale}")
        _check(self.scale_safety >= 1, f"LissaConfig.scale_safety must be >= 1, got {self.scale_safety}")
        _check(self.scale_batches >= 1, f"LissaConfig.scale_batches must be >= 1, got {self.scale_batches}")
        _check(0 <= self.tail_average < 1, f"LissaConfig.tail_average must be in [0, 1), got {self.tail_average}")
        _check(self.check_every >= 1, f"LissaConfig.check_every must be >= 1, got {self.check_every}")


@dataclass(frozen=True)
class EKFACConfig:
    """Kronecker-factored curvature on its own: ``s_test = P v`` with ``P`` the (E)K-FAC inverse.

    Each ``nn.Linear`` or ``nn.Conv2d`` whose weight is selected gets a block ``S (x) A`` (output-gradient and input
    covariances of the GGN, fitted over the training data); with ``eigen_correction`` its eigenvalues are
    refitted per example (EK-FAC, George et al. 2018), else K-FAC. Other selected parameters get the GGN's
    diagonal. The task's weight decay and ``damping`` are added to every block. One pass (K-FAC) or two
    (EK-FAC) over the training data, then no further passes: the fastest solver, and the least exact.

    Attributes:
        damping: additive lambda >= 0, as :class:`ExactConfig`.
        eigen_correction: EK-FAC (True) or K-FAC (False).
    """

    damping: float = DEFAULT_DAMPING
    eigen_correction: bool = True

    def __post_init__(self) -> None:
        _check(self.damping >= 0, f"EKFACConfig.damping must be >= 0, got {self.damping}")

    @property
    def curvature(self) -> str:
        return "ggn"

    @property
    def preconditioner(self) -> str:
        return "ekfac" if self.eigen_correction else "kfac"


@dataclass(frozen=True)
class AutoConfig:
    """Let rayif choose (the default): the most exact solver the problem affords, at the same question.

    * ``exact`` when the selected parameters fit (``p <= max_params``), the explicit curvature costs at
      most ``exact_budget`` example-vector products (``n * p``), and at most what CG would spend on the
      job's ``m`` test vectors (about ``30 * m * n``, so ``p <= 30 * m``); and, whatever ``n * p``, when the
      job has so many right-hand sides that CG would cost more even with its Krylov space recycled
      (``p <= 8 * m``): a self-influence job over many rows, thousands of test points. Its matrix is built
      once, with every worker's products, from float32 products for a float64 model, each answer checked
      in float64 to the target's tolerance (:attr:`ExactConfig.mixed_precision`);
    * else EK-FAC-preconditioned CG (``tol=1e-5``: rankings need the small differences) with full-data
      products while the training set has at most ``cg_max_rows`` examples (where the explicit matrix would
      fit, CG gets at most its cost in iterations, and a CG that does not converge in them, as on a BatchNorm
      network whose Kronecker factors precondition badly, is replaced by the exact solve);
    * else EK-FAC-preconditioned LiSSA.

    Before it solves with the Hessian, it checks that ``H + damping I`` is positive definite at this model by
    ``lanczos_steps`` Lanczos iterations of full-data products; the solve checks again (the explicit matrix's
    eigenvalues, CG's curvature along its directions, LiSSA's growth). A network
    trained for a fixed budget is rarely at a minimum; where the Hessian is indefinite, ``auto`` answers with
    the Gauss-Newton curvature, whose damped influence approximates the proximal Bregman response function
    (Bae et al. 2022: what influence measures for a network not trained to convergence), and says so in the
    log. An explicit ``ExactConfig`` / ``CGConfig`` / ``LissaConfig(curvature="hessian")`` keeps its error.
    A loss that reads more than one model output (no GGN, no Kronecker factors) gets CG without a
    preconditioner.

    The choice and the reasons are logged and recorded in the results' metadata (``rayif.solver_choice``).

    Attributes:
        damping: additive lambda >= 0, passed to whichever solver is chosen.
        curvature: ``"hessian"`` or ``"ggn"``, passed on likewise (``"hessian"`` falls back to ``"ggn"`` where
            the Hessian is indefinite, as above).
        max_params: as :class:`ExactConfig`.
        exact_budget: largest ``n * p`` for which the explicit curvature is built.
        cg_max_rows: largest training set for full-data CG.
        lanczos_steps: full-data single-vector products of the definiteness check before solving (0: none;
            the solvers still check while they solve).
        target: where on the cost-quality frontier to stand (``benchmarks/solvers.py`` draws it).
            ``"exact"``: as above. ``"rank"``: CG to ``tol=1e-3`` where ``"exact"`` runs CG to 1e-5, about
            two thirds of its passes, Spearman >= 0.99 with exact on every benchmark workload but not the
            last digits of the ranking. ``"fast"``: EK-FAC alone (two passes to fit, none to solve), the
            Gauss-Newton curvature; Spearman 0.3-0.8 with exact: a first look, not an answer.
        chain: where the model is a chain of linear layers (:attr:`ExactConfig.chain`), solve exactly with its
            cheap explicit matrix whenever it costs less than CG's passes (``p <= 300 m``, ``p <= max_params``,
            any ``n``). False: the rules above, and every explicit matrix from products.
    """

    damping: float = DEFAULT_DAMPING
    curvature: str = "hessian"
    max_params: int = 10_000
    exact_budget: float = 2e7
    cg_max_rows: int = 1_000_000
    lanczos_steps: int = 20
    target: str = "exact"
    chain: bool = True

    def __post_init__(self) -> None:
        _check_common("AutoConfig", self.damping, self.curvature)
        _check(self.target in _TARGETS, f"AutoConfig.target must be one of {list(_TARGETS)}, got {self.target!r}")
        _check(self.max_params >= 1, f"AutoConfig.max_params must be >= 1, got {self.max_params}")
        _check(self.exact_budget >= 0, f"AutoConfig.exact_budget must be >= 0, got {self.exact_budget}")
        _check(self.cg_max_rows >= 0, f"AutoConfig.cg_max_rows must be >= 0, got {self.cg_max_rows}")
        _check(self.lanczos_steps >= 0, f"AutoConfig.lanczos_steps must be >= 0, got {self.lanczos_steps}")
        _check(isinstance(self.chain, bool), f"AutoConfig.chain must be true or false, got {self.chain!r}")

    def choose(self, num_train: int, num_params: int, num_vectors: int | None = None, chain: bool = False
               ) -> tuple[SolverConfig, str]:
        """The solver for ``num_train`` examples, ``num_params`` selected parameters and ``num_vectors``
        right-hand sides (test points, or the rows of a self-influence job; ``None``: unknown), and why.
        The explicit matrix and CG both take their products in float32 for a float64 model, and both check
        their answers with one float64 pass (:attr:`CGConfig.mixed_precision`,
        :attr:`ExactConfig.mixed_precision`), so the rule is the same for either dtype. ``chain``: the model
        is a chain of linear layers (:attr:`ExactConfig.chain`), whose explicit matrix costs about a tenth
        of ``p`` products per row whatever ``n`` is."""
        n, p, m = num_train, num_params, num_vectors
        if self.target == "fast":
            return EKFACConfig(self.damping), "target='fast': EK-FAC alone (the Gauss-Newton curvature)"
        tol = _TARGETS[self.target]
        chain = chain and self.chain
        if chain and p <= self.max_params and (m is None or p <= _CHAIN_PASSES * m):
            return (ExactConfig(self.damping, self.curvature, self.max_params, True, tol, self.chain),
                    f"a chain of linear layers with p={p} <= max_params={self.max_params}: its explicit matrix from "
                    "per-row factors" + ("" if m is None else f" costs less than CG's passes (p <= {_CHAIN_PASSES}*m,"
                                         f" m={m})"))
        # the explicit matrix costs p products per training row whatever m is; CG about _CG_PASSES * m, and
        # on a job of many right-hand sides, with its Krylov space recycled, still _CG_RECYCLED * m
        fits = p <= self.max_params and n * p <= self.exact_budget
        if fits and (m is None or p <= _CG_PASSES * m):
            return (ExactConfig(self.damping, self.curvature, self.max_params, True, tol, self.chain),
                    f"p={p} <= max_params={self.max_params} and n*p={n * p:.3g} <= "
                    f"exact_budget={self.exact_budget:.3g}" + ("" if m is None else f" and p <= {_CG_PASSES}*m={m}"))
        if p <= self.max_params and m is not None and p <= _CG_RECYCLED * m:
            return (ExactConfig(self.damping, self.curvature, self.max_params, True, tol, self.chain),
                    f"p={p} <= max_params={self.max_params} and m={m} right-hand sides: the explicit matrix's p "
                    f"products cost less than CG's ~{_CG_RECYCLED} per vector")
        if fits:
            why = f"p={p} > {_CG_PASSES}*m (m={m} test vectors): CG's passes cost less than the explicit matrix"
        elif p > self.max_params:
            why = f"p={p} > max_params={self.max_params}"
        else:
            why = f"n*p={n * p:.3g} > exact_budget={self.exact_budget:.3g}"
        if n <= self.cg_max_rows:
            if fits:  # CG may spend at most what the explicit matrix costs (p per row), then auto builds it
                cap = min(CGConfig.max_iter, max(_CG_PASSES * 2, p // max(1, m or 1)))
                return (CGConfig(self.damping, self.curvature, tol=tol, max_iter=cap),
                        f"{why}; n={n} <= cg_max_rows={self.cg_max_rows}; at most {cap} iterations, then exact")
            return (CGConfig(self.damping, self.curvature, tol=tol),
                    f"{why}; n={n} <= cg_max_rows={self.cg_max_rows}")
        return (LissaConfig(damping=self.damping, curvature=self.curvature),
                f"{why}; n={n} > cg_max_rows={self.cg_max_rows}")


_CG_PASSES = 30  # passes a preconditioned CG typically needs at its default tol (25-35 measured)
# a chain's explicit matrix (rayif.ihvp.chain) costs about what CG spends on p / _CHAIN_PASSES test vectors: the
# 100k mixture MLP (p = 4810, float64): its matrix ~30 s, CG's 23 passes over 50 vectors 91 s
_CHAIN_PASSES = 300
# products per right-hand side of CG on a job of many, its later test batches started from the first's
# Krylov space (the 100k mixture: 1000 test points in batches of 256, 8.7)
_CG_RECYCLED = 8
# auto's CG tolerance: rankings need the small differences between training points, which a relative residual
# of 1e-3 can leave unresolved (a ViT whose influences are all ~1.0 +- 1e-3: Spearman 0.57 against exact at
# 1e-3, 0.977 at 1e-4, 0.9994 at 1e-5, for 1.5x the time of 1e-3)
_CG_TOL = 1e-5
_TARGETS = {"exact": _CG_TOL, "rank": 1e-3, "fast": None}  # AutoConfig.target -> CG's tolerance


SolverConfig = Union[ExactConfig, CGConfig, LissaConfig, EKFACConfig, AutoConfig]  # noqa: UP007 (a runtime alias)

_BY_NAME = {"exact": ExactConfig, "cg": CGConfig, "lissa": LissaConfig, "ekfac": EKFACConfig, "auto": AutoConfig}


def solver_name(config: SolverConfig) -> str:
    """The short name ('exact', 'cg', 'lissa', 'ekfac', 'auto') of a solver config."""
    for name, cls in _BY_NAME.items():
        if isinstance(config, cls):
            return name
    raise TypeError(f"not a solver config: {config!r}")


def solver_from_dict(d: dict[str, Any]) -> SolverConfig:
    """Build a solver config from ``{"method": "lissa", "depth": 500, ...}`` (CLI / JSON form)."""
    d = dict(d)
    method = d.pop("method", "auto")
    if method not in _BY_NAME:
        raise RayifError(f"unknown solver method {method!r}; choose one of {sorted(_BY_NAME)}")
    cls = _BY_NAME[method]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise RayifError(f"unknown {method} option(s) {sorted(unknown)}; known: {sorted(known)}")
    return cls(**d)


def solver_to_dict(config: SolverConfig) -> dict[str, Any]:
    """Inverse of :func:`solver_from_dict`."""
    return {"method": solver_name(config), **dataclasses.asdict(config)}


@dataclass(frozen=True)
class RunConfig:
    """How one influence job runs, whatever executes it (this process or Ray workers).

    Attributes:
        output_dir: ``explain`` writes one parquet file per test batch here (``batch-NNNNNN.parquet``) and
            a manifest of the job; rerunning on the same folder computes only the missing batches, and a
            folder holding another job (other model, data, solver, seed, candidates) is refused.
        test_batch_size: test points per batch; they share every sampled LiSSA batch and one pass of
            gradients over the candidates.
        chunk_size: training examples per block of per-example gradients (memory: ``chunk_size * p``
            floats per worker at a time). Full-data curvature products of a narrow model run on up to 8x
            larger chunks (:meth:`rayif.grads.Objective.product_rows`).
        solve_block: test vectors per work unit that computes test gradients (and per LiSSA-free solve of
            ``self_influence``): a test batch splits into blocks of this many so every worker has work.
            Fixed, not derived from the worker count, so 1 and N workers give bit-identical results.
        product_shards: row shards of each full-data curvature product of a CG or exact solve: every worker
            computes some, the driver sums them in order (``rayif.sharded``). One solve uses up to this
            many workers; fixed, so 1 and N workers give the same bits (changing it changes the rounding).
        batches_in_flight: test batches whose units are scheduled together. ``None``: enough to give every
            worker a unit (``ceil(workers / units per batch)``), bounded so their ``s_test`` vectors stay
            under ``inflight_mb``.
        inflight_mb: bound on the ``s_test`` vectors of the batches in flight, in MiB.
        grad_cache_mb: per-worker cache of training-gradient chunks reused across test batches, in MiB.
        max_failures: times each worker may die (Ray restarts it; its unfinished units are rerun on the
            replacement, so the result is unchanged). Past it the job stops and says how to resume.
        progress: a progress bar over test batches. ``None``: on when stderr is a terminal and ``CI`` is
            unset; log lines otherwise.
        factors_path: where the Kronecker factors of an EK-FAC / K-FAC preconditioner are kept (a ``.pt``
            file): loaded when they were fitted for this model, training data and kind, fitted and saved
            there otherwise; factors of another model are refused. ``None``: ``output_dir``'s
            ``_rayif_factors.pt`` when there is an output folder, else fitted for this job only.
    """

    output_dir: str | None = None
    test_batch_size: int = 256
    chunk_size: int = 256
    solve_block: int = 64
    product_shards: int = 16
    batches_in_flight: int | None = None
    inflight_mb: float = 1024.0
    grad_cache_mb: float = 512.0
    max_failures: int = 3
    progress: bool | None = None
    factors_path: str | None = None

    def __post_init__(self) -> None:
        for name in ("output_dir", "factors_path"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, str(getattr(self, name)))
        for name in ("test_batch_size", "chunk_size", "solve_block", "product_shards"):
            _check(getattr(self, name) >= 1, f"RunConfig.{name} must be >= 1, got {getattr(self, name)}")
        _check(self.batches_in_flight is None or self.batches_in_flight >= 1,
               f"RunConfig.batches_in_flight must be >= 1 or None, got {self.batches_in_flight}")
        _check(self.inflight_mb > 0, f"RunConfig.inflight_mb must be > 0, got {self.inflight_mb}")
        _check(self.grad_cache_mb >= 0, f"RunConfig.grad_cache_mb must be >= 0, got {self.grad_cache_mb}")
        _check(self.max_failures >= 0, f"RunConfig.max_failures must be >= 0, got {self.max_failures}")
