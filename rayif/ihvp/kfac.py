"""Kronecker-factored Gauss-Newton curvature (K-FAC, EK-FAC) and its damped inverse.

For an ``nn.Linear`` with input ``a`` and output ``s`` (an ``nn.Conv2d``: its unfolded input patches and
its output channels, each spatial position a token), example i's pseudo-gradients of the weight are
``g_ik a_i^T`` with ``g_ik = J_s^T L_i e_k``, where ``H_i = L_i L_i^T`` is the Hessian of its loss in the
model's outputs: summed over k they give exactly the GGN's block ``E[sum_k vec(g a^T) vec(g a^T)^T]``.
K-FAC approximates that block by ``S (x) A`` (``S = E[sum_k g g^T]``, ``A = E[a a^T]``); EK-FAC keeps the
eigenvectors of ``S`` and ``A`` and refits the eigenvalues per example (George et al. 2018). Every other
selected parameter gets the GGN's diagonal. The output Hessian is factored exactly (no label sampling); past
32 output values per example (a language model's tokens x vocabulary) its root's columns are mixed into 32
by a Gaussian of fixed seed, which keeps the fit's expectation and bounds its backward passes. The fit is
deterministic either way.

Fitting is two map-reduce passes over training chunks (:func:`covariance_sums`, then :func:`eigen_sums`),
which the runner shards over its workers and sums in a fixed order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..data import Examples
from ..errors import RayifError
from ..functional import differentiable_kernels, layer_calls
from ..grads import Objective, require_finite

_MAX_OUTPUTS = 1024  # output values per example whose loss Hessian is factored (C x C each)
_COLUMNS = 32  # backward passes per chunk at most: output Hessians of more columns are sketched to this many
FORMAT = 1


@dataclass(frozen=True)
class Block:
    """One ``nn.Linear`` or ``nn.Conv2d`` whose weight is selected: its slices of the flat parameter vector
    (``d_in``: input features, or input channels x kernel size for a convolution)."""

    module: str
    weight: tuple[int, int]
    bias: tuple[int, int] | None
    d_out: int
    d_in: int

    @property
    def d_in1(self) -> int:
        """Input width, plus one column for the bias when it is selected."""
        return self.d_in + (self.bias is not None)


def layout(objective: Objective) -> tuple[list[Block], Tensor]:
    """The Kronecker blocks of the selected parameters, and the flat indices of the rest (diagonal)."""
    offsets, start = {}, 0
    for name, numel in zip(objective.names, objective.numels, strict=True):
        offsets[name] = (start, start + numel)
        start += numel
    blocks, covered = [], set()
    for name, module in objective.model.named_modules():
        w, b = f"{name}.weight" if name else "weight", f"{name}.bias" if name else "bias"
        if _kronecker(module) and w in offsets:
            bias = offsets.get(b) if module.bias is not None else None
            d_out = module.weight.shape[0]
            blocks.append(Block(name, offsets[w], bias, d_out, module.weight.numel() // d_out))
            covered |= {w} | ({b} if bias is not None else set())
    rest = [torch.arange(*offsets[n]) for n in objective.names if n not in covered]
    diag = torch.cat(rest) if rest else torch.zeros(0, dtype=torch.long)
    return blocks, diag


def _pseudo_gradients(objective: Objective, examples: Examples, blocks: list[Block], diag: Tensor) -> Iterator:
    """Per output-Hessian column k: ``(acts, grads, diag_grads)`` over the chunk.

    ``acts[l]``: ``[b, T, d_in1]`` inputs of block l (bias column appended); ``grads[l]``: ``[b, T, d_out]``
    pseudo-gradients of its output; ``diag_grads``: ``[b, len(diag)]`` per-example pseudo-gradients of the
    other parameters (``None`` when there are none).
    """
    ex = examples.to(objective.device)
    objective.output_spec(ex.batch)  # before the hooks: its own forward must not be captured
    modules = dict(objective.model.named_modules())
    theta = objective.theta.detach().requires_grad_(True)
    with layer_calls([modules[blk.module] for blk in blocks]) as calls, torch.enable_grad():
        out = objective.outputs(theta, ex.batch)
    captured = {blk.module: c for blk, c in zip(blocks, calls, strict=True)}
    b = out.shape[0]
    flat = out.reshape(b, -1)
    if flat.shape[1] > _MAX_OUTPUTS:
        raise RayifError(f"K-FAC/EK-FAC factors the loss's Hessian in the model's outputs per example; this model "
                         f"has {flat.shape[1]} output values per example (at most {_MAX_OUTPUTS}): use "
                         "preconditioner=None")
    factors = _output_hessian_roots(objective, out.detach(), ex.batch, examples)  # [b, C, C], columns k
    if factors.shape[2] > _COLUMNS:
        # each column costs a backward pass through the model: past _COLUMNS, S seeded Gaussian mixtures of
        # them (E[L W W^T L^T] = L L^T), the fit's expectation unchanged and still the same bits on every worker
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(factors.shape[2], _COLUMNS, generator=gen, dtype=torch.float64) / _COLUMNS**0.5
        factors = factors @ w.to(factors.device, factors.dtype)
    acts = []
    for blk in blocks:
        mod = modules[blk.module]
        a = torch.cat([_inputs(mod, x, b) for x, _ in captured[blk.module]], dim=1).detach()
        if blk.bias is not None:
            a = torch.cat([a, a.new_ones(*a.shape[:2], 1)], dim=2)
        acts.append(a)
    outs = [s for blk in blocks for _, s in captured[blk.module]]
    per_block = [len(captured[blk.module]) for blk in blocks]
    for k in range(factors.shape[2]):
        c = factors[:, :, k].reshape(out.shape)
        got = torch.autograd.grad(out, outs, grad_outputs=c, retain_graph=True, allow_unused=True) if outs else ()
        grads, i = [], 0
        for blk, count in zip(blocks, per_block, strict=True):
            parts = [torch.zeros_like(outs[i + j]) if got[i + j] is None else got[i + j] for j in range(count)]
            grads.append(torch.cat([_outputs(modules[blk.module], g, b) for g in parts], dim=1))
            i += count
        yield acts, grads, _diag_pseudo(objective, ex.batch, c, diag) if len(diag) else None


def _kronecker(module: nn.Module) -> bool:
    """Layers with a Kronecker block: Linear, and Conv2d whose patches ``F.unfold`` reproduces."""
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


def _inputs(module: nn.Module, x: Tensor, b: int) -> Tensor:
    """``[b, T, d_in]``: a Linear's inputs (leading dims as tokens) or a Conv2d's unfolded patches."""
    if isinstance(module, nn.Conv2d):
        patches = torch.nn.functional.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
        return patches.transpose(1, 2)  # [b, positions, in_channels * kh * kw], the weight's column order
    return x.reshape(b, -1, module.weight.shape[1])


def _outputs(module: nn.Module, s: Tensor, b: int) -> Tensor:
    """``[b, T, d_out]``: a layer's output (or its gradient), channels last for a Conv2d."""
    if isinstance(module, nn.Conv2d):
        return s.flatten(2).transpose(1, 2)
    return s.reshape(b, -1, module.weight.shape[0])


def _output_hessian_roots(objective: Objective, out: Tensor, batch, examples: Examples) -> Tensor:
    """``[b, C, C]`` with ``L_i L_i^T`` the Hessian of example i's loss in its ``C`` output values."""
    b = out.shape[0]
    c = out[0].numel()
    # reverse over reverse, one output coordinate at a time: a user's custom autograd.Function may lack the
    # forward-mode rule a jvp would need, and C is small
    with torch.enable_grad(), differentiable_kernels():
        o = out.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(objective.output_losses(o, batch).sum(), o, create_graph=True)
        flat = g.reshape(b, c)
        cols = []
        for k in range(c):
            (col,) = torch.autograd.grad(flat[:, k].sum(), o, retain_graph=k < c - 1, allow_unused=True)
            cols.append(torch.zeros_like(o) if col is None else col)
    h = torch.stack(cols).reshape(c, b, c).permute(1, 0, 2).double()  # [b, k, C]
    if not bool(torch.isfinite(h).all()):
        objective.train_grads(examples)  # names the examples when their gradients are the cause
        require_finite(h, examples.ids, "training loss Hessian in the model outputs")
    h = (h + h.transpose(1, 2)) / 2
    evals, evecs = torch.linalg.eigh(h)
    return (evecs * evals.clamp_min(0).sqrt()[:, None, :]).to(out.dtype)


def _diag_pseudo(objective: Objective, batch, c: Tensor, diag: Tensor) -> Tensor:
    """``[b, len(diag)]`` per-example gradients of ``c_i . outputs_i`` in the non-Kronecker parameters (whole
    parameters, in selection order, as :func:`layout` lists their indices)."""
    starts = [0, *torch.tensor(objective.numels).cumsum(0).tolist()[:-1]]
    in_diag = set(diag.tolist())
    names = [n for n, start in zip(objective.names, starts, strict=True) if start in in_diag]

    def fn(model, both):
        rows, ci = both
        return (objective.outputs_of(model, rows) * ci).reshape(ci.shape[0], -1).sum(1)

    objective.grad_path(batch)
    return objective.per_example.flat(fn, (batch, c), names)


def covariance_sums(objective: Objective, examples: Examples) -> dict:
    """First pass over a chunk: sums of ``A``, ``S`` per block and of the diagonal, and the row count."""
    blocks, diag = layout(objective)
    a_sum = [torch.zeros(blk.d_in1, blk.d_in1, dtype=torch.float64) for blk in blocks]
    s_sum = [torch.zeros(blk.d_out, blk.d_out, dtype=torch.float64) for blk in blocks]
    d_sum = torch.zeros(len(diag), dtype=torch.float64)
    first = True
    for acts, grads, dg in _pseudo_gradients(objective, examples, blocks, diag):
        for i, (a, g) in enumerate(zip(acts, grads, strict=True)):
            if first:  # each example's tokens weigh 1/T together
                a_sum[i] += (torch.einsum("bti,btj->ij", a, a) / a.shape[1]).double().cpu()
            s_sum[i] += torch.einsum("bto,btq->oq", g, g).double().cpu()
        if dg is not None:
            d_sum += (dg * dg).sum(0).double().cpu()
        first = False
    return {"a": a_sum, "s": s_sum, "diag": d_sum, "n": len(examples)}


def eigen_sums(objective: Objective, examples: Examples, qa: list[Tensor], qs: list[Tensor]) -> list[Tensor]:
    """Second pass (EK-FAC) over a chunk: per block, the sum of squared pseudo-gradients in the eigenbases."""
    blocks, diag = layout(objective)
    out = [torch.zeros(blk.d_out, blk.d_in1, dtype=torch.float64) for blk in blocks]
    qa = [q.to(objective.device, objective.dtype) for q in qa]
    qs = [q.to(objective.device, objective.dtype) for q in qs]
    # a block that sees one token per example (a Linear on flat inputs) has rank-one pseudo-gradients
    # (g q_S)(a q_A)^T, whose squares sum over examples as one matrix product of the squared factors; summed
    # over the output-Hessian columns first, as a does not depend on them. Forming [b, d_out, d_in] per column
    # instead cost ~10x the covariance pass on the mixture MLP (all of it elementwise multiplication).
    squares: list[Tensor | None] = [None] * len(blocks)
    acts = []
    for acts, grads, _ in _pseudo_gradients(objective, examples, blocks, diag[:0]):
        for i, (a, g) in enumerate(zip(acts, grads, strict=True)):
            if a.shape[1] == 1:
                sq = (g[:, 0] @ qs[i]).square()
                squares[i] = sq if squares[i] is None else squares[i] + sq
            else:
                m = torch.einsum("bto,bti->boi", g @ qs[i], a @ qa[i])
                out[i] += (m * m).sum(0).double().cpu()
    for i, sq in enumerate(squares):
        if sq is not None:
            out[i] += (sq.T @ (acts[i][:, 0] @ qa[i]).square()).double().cpu()
    return out


def add_sums(parts: list) -> object:
    """Sum a list of per-chunk results (dicts of tensor lists, or tensor lists) in list order."""
    total = parts[0]
    for p in parts[1:]:
        total = _add(total, p)
    return total


def _add(x, y):
    if isinstance(x, dict):
        return {k: _add(x[k], y[k]) for k in x}
    if isinstance(x, list):
        return [_add(a, b) for a, b in zip(x, y, strict=True)]
    return x + y


@dataclass
class KroneckerFactors:
    """Fitted (E)K-FAC curvature of the selected parameters and its damped inverse.

    Attributes:
        kind: ``"ekfac"`` or ``"kfac"``.
        blocks: the Kronecker blocks (one per selected ``nn.Linear`` / ``nn.Conv2d``).
        qa, qs: per block, eigenvectors of ``A`` (``[d_in1, d_in1]``) and ``S`` (``[d_out, d_out]``).
        eig: per block, curvature eigenvalues in that basis ``[d_out, d_in1]`` (``e_S e_A^T`` for K-FAC).
        diag_index, diag: the other parameters' flat indices and GGN diagonal.
        weight_decay: the task's L2 coefficient, whose Hessian ``weight_decay * I`` is added to every block.
        identity: what the factors were fitted for (model fingerprint, training ids, parameter names, kind).
    """

    kind: str
    blocks: list[Block]
    qa: list[Tensor]
    qs: list[Tensor]
    eig: list[Tensor]
    diag_index: Tensor
    diag: Tensor
    weight_decay: float
    identity: dict = field(default_factory=dict)

    def inverse(self, vectors: Tensor, damping: float) -> Tensor:
        """``[m, p] -> [m, p]``: ``(F + (weight_decay + damping) I)^-1`` applied to each row."""
        lam = self.weight_decay + damping
        if lam <= 0:
            raise RayifError("the Kronecker-factored curvature is only positive semi-definite: it needs damping > 0 "
                             "or a task weight decay > 0")
        v, m = vectors, vectors.shape[0]
        out = torch.empty_like(v)
        for blk, qa, qs, eig in zip(self.blocks, self.qa, self.qs, self.eig, strict=True):
            qa, qs = qa.to(v.device, v.dtype), qs.to(v.device, v.dtype)
            w = v[:, blk.weight[0] : blk.weight[1]].reshape(m, blk.d_out, blk.d_in)
            if blk.bias is not None:
                w = torch.cat([w, v[:, blk.bias[0] : blk.bias[1], None]], dim=2)
            z = qs.T @ w @ qa / (eig.to(v.device, v.dtype) + lam)
            x = qs @ z @ qa.T
            out[:, blk.weight[0] : blk.weight[1]] = x[:, :, : blk.d_in].reshape(m, -1)
            if blk.bias is not None:
                out[:, blk.bias[0] : blk.bias[1]] = x[:, :, blk.d_in]
        if len(self.diag_index):
            idx = self.diag_index.to(v.device)
            out[:, idx] = v[:, idx] / (self.diag.to(v.device, v.dtype) + lam)
        return out

    def save(self, path: str | Path) -> None:
        """Write to ``path`` (``torch.save`` of plain tensors and dicts), atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        state = {"format": FORMAT, "kind": self.kind, "blocks": [vars(b) for b in self.blocks], "qa": self.qa,
                 "qs": self.qs, "eig": self.eig, "diag_index": self.diag_index, "diag": self.diag,
                 "weight_decay": self.weight_decay, "identity": self.identity}
        torch.save(state, tmp)
        tmp.rename(path)

    @classmethod
    def load(cls, path: str | Path) -> KroneckerFactors:
        state = torch.load(Path(path), weights_only=True)
        if state.get("format") != FORMAT:
            raise RayifError(f"{path} holds Kronecker factors of format {state.get('format')}, expected {FORMAT}; "
                             "delete it to refit")
        blocks = [Block(b["module"], tuple(b["weight"]), None if b["bias"] is None else tuple(b["bias"]),
                        b["d_out"], b["d_in"]) for b in state["blocks"]]
        return cls(state["kind"], blocks, state["qa"], state["qs"], state["eig"], state["diag_index"],
                   state["diag"], state["weight_decay"], state["identity"])


def preconditioner(factors: KroneckerFactors | None, config) -> Callable[[Tensor], Tensor] | None:
    """``r -> (F + lambda I)^-1 r`` for a config with a ``preconditioner`` and ``damping`` (``None`` without)."""
    if factors is None or getattr(config, "preconditioner", None) is None:
        return None
    return lambda r: factors.inverse(r, config.damping)


def eigenbases(sums: dict) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """``(qa, qs, kfac_eigenvalues)`` from the first pass's sums."""
    n = sums["n"]
    qa, qs, eig = [], [], []
    for a, s in zip(sums["a"], sums["s"], strict=True):
        ea, va = torch.linalg.eigh(a / n)
        es, vs = torch.linalg.eigh(s / n)
        qa.append(va)
        qs.append(vs)
        eig.append(es.clamp_min(0)[:, None] * ea.clamp_min(0)[None, :])
    return qa, qs, eig


def assemble(kind: str, shape: tuple[list[Block], Tensor, float], sums: dict, eigen: list[Tensor] | None,
             identity: dict) -> KroneckerFactors:
    """The factors from both passes' sums (``eigen=None`` for K-FAC); ``shape`` is
    ``(blocks, diag_index, weight_decay)`` (:func:`shape_of`)."""
    blocks, diag, weight_decay = shape
    qa, qs, eig = eigenbases(sums)
    if eigen is not None:
        eig = [e / sums["n"] for e in eigen]
    return KroneckerFactors(kind, blocks, qa, qs, eig, diag, sums["diag"] / sums["n"], weight_decay, identity)


def shape_of(objective: Objective) -> tuple[list[Block], Tensor, float]:
    """What the factors' layout needs from the replica: blocks, diagonal indices, weight decay."""
    blocks, diag = layout(objective)
    return blocks, diag, float(objective.task.weight_decay)
