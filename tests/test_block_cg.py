"""Block CG, its mixed-precision refinement and the row shards of its products, on explicit matrices."""

from __future__ import annotations

import pytest
import torch

from rayif import CGConfig
from rayif.errors import ConvergenceError, IndefiniteError
from rayif.ihvp.cg import KrylovSpace, block_cg, refined_cg
from rayif.sharded import product_shards


def _spd(p: int, cond: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64))
    return (q * torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), p, dtype=torch.float64)) @ q.T


def _rhs(p: int, m: int, seed: int = 1) -> torch.Tensor:
    b = torch.randn(m, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    b[1] = b[0]  # a repeated test point: the block is rank-deficient and the repeat must be dropped, not divide by 0
    b[2] = 0  # a zero gradient: solved at once
    b[3] = 2 * b[4] - b[5]
    return b


def _relative_residuals(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (b - x @ a).norm(dim=1) / b.norm(dim=1).clamp_min(1e-300)


@pytest.mark.parametrize("tol", [1e-3, 1e-8])
def test_block_cg_solves_every_column_of_a_rank_deficient_block(tol):
    a, b = _spd(120, 1e4), _rhs(120, 30)
    x, stats = block_cg(lambda v: v @ a, lambda r: r, b, CGConfig(tol=tol, mixed_precision=False))
    assert float(_relative_residuals(a, b, x).nan_to_num(0).max()) <= tol
    assert torch.equal(x[2], torch.zeros(120, dtype=torch.float64))
    torch.testing.assert_close(x[1], x[0], rtol=1e-9, atol=0)  # the same column, the same answer
    assert stats.iterations < 120  # a Krylov method, not p steps of Gram-Schmidt


def test_the_block_needs_fewer_passes_than_one_column_alone():
    """What the block is for: the columns share their Krylov space, so the block finishes in fewer passes
    than a single column's CG (a block of one) needs."""
    a, b = _spd(200, 1e3), _rhs(200, 40)
    _, one = block_cg(lambda v: v @ a, lambda r: r, b[4:5], CGConfig(tol=1e-6, mixed_precision=False))
    _, block = block_cg(lambda v: v @ a, lambda r: r, b, CGConfig(tol=1e-6, mixed_precision=False))
    assert block.iterations < 0.6 * one.iterations, (block, one)


def test_block_cg_names_the_damping_on_an_indefinite_matrix():
    a = _spd(50, 10.0)
    a[0, 0] = -1.0
    with pytest.raises(IndefiniteError, match="damping"):
        block_cg(lambda v: v @ a, lambda r: r, _rhs(50, 8), CGConfig())


def test_block_cg_names_its_knobs_at_the_cap():
    a, b = _spd(200, 1e6), _rhs(200, 8)
    with pytest.raises(ConvergenceError, match="max_iter"):
        block_cg(lambda v: v @ a, lambda r: r, b, CGConfig(tol=1e-10, max_iter=3))


def test_float32_products_refined_reach_a_float64_tolerance():
    """float32 products leave the answer off by about their rounding times the condition number, however
    small CG's own residual gets; the float64 residual passes of refinement carry it to the tolerance."""
    a, b = _spd(150, 1e3), _rhs(150, 12)
    low = lambda v: (v.float() @ a.float()).double()  # noqa: E731
    x, stats = refined_cg(lambda v: v @ a, low, lambda r: r, b, CGConfig(tol=1e-10))
    assert float(_relative_residuals(a, b, x).nan_to_num(0).max()) <= 1e-10

    # without refinement CG's recursive residual reaches the tolerance too, but the true one does not
    unrefined, _ = block_cg(low, lambda r: r, b, CGConfig(tol=1e-10, max_iter=300))
    assert float(_relative_residuals(a, b, unrefined).nan_to_num(0).max()) > 1e-8
    assert stats.iterations > 0 and stats.solves == 1


def test_a_recycled_space_cuts_the_later_solves_passes():
    """The first solve's directions start the next from its Galerkin answer and stay conjugate to its new
    ones: fewer passes for the same tolerance, on other right-hand sides."""
    a = _spd(300, 1e4)
    cfg = CGConfig(tol=1e-6, mixed_precision=False)
    space = KrylovSpace(1024, 300)
    refined_cg(lambda v: v @ a, None, lambda r: r, _rhs(300, 20, seed=1), cfg, space)
    assert space.w is not None and not space.recording
    b = _rhs(300, 20, seed=2)
    x, later = refined_cg(lambda v: v @ a, None, lambda r: r, b, cfg, space)
    _, alone = block_cg(lambda v: v @ a, lambda r: r, b, cfg)
    assert float(_relative_residuals(a, b, x).nan_to_num(0).max()) <= 1e-6
    assert later.iterations < 0.5 * alone.iterations, (later, alone)
    low = lambda v: (v.float() @ a.float()).double()  # noqa: E731
    x, _ = refined_cg(lambda v: v @ a, low, lambda r: r, b, cfg, space)  # and under mixed precision
    assert float(_relative_residuals(a, b, x).nan_to_num(0).max()) <= 1e-6
    # a space spanning most but not all of R^p: float32 rounding leaves the residual a part in its span that
    # deflated directions cannot reduce; CG must remove it (it stalled at 7e-5 here before)
    partial = KrylovSpace(280, 300)
    refined_cg(lambda v: v @ a, None, lambda r: r, _rhs(300, 20, seed=1), cfg, partial)
    assert 200 < len(partial.w) < 300
    x, _ = refined_cg(lambda v: v @ a, low, lambda r: r, b, cfg, partial)
    assert float(_relative_residuals(a, b, x).nan_to_num(0).max()) <= 1e-6


def test_product_shards_cover_the_rows_in_whole_chunks():
    for n, chunk, count in [(1000, 64, 16), (10, 256, 16), (100_000, 256, 16), (4097, 4096, 3)]:
        shards = product_shards(n, chunk, count)
        assert len(shards) <= count and shards[0][0] == 0 and shards[-1][1] == n
        assert all(s[1] == t[0] for s, t in zip(shards, shards[1:], strict=False))
        assert all((b - a) % chunk == 0 for a, b in shards[:-1])
