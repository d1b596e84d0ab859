"""auto's definiteness probe: Lanczos' smallest Ritz value, an upper bound on the smallest eigenvalue."""

from __future__ import annotations

import torch

from rayif.ihvp.lanczos import smallest_eigenvalue

P, DAMPING, STEPS = 400, 1e-3, 20


def _curvature(negative: float) -> torch.Tensor:
    """A curvature like a network's: eigenvalues over 1e-5..10, denser at the small end, and one ``negative``."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(P, P, generator=gen, dtype=torch.float64))
    spectrum = torch.cat([torch.tensor([negative], dtype=torch.float64),
                          torch.logspace(-3, 1, P - 1, dtype=torch.float64) ** 1.5 / 10**0.5])
    return (q * spectrum) @ q.T


def test_the_probe_finds_a_clearly_negative_eigenvalue_from_any_start():
    c = _curvature(-0.5)
    for seed in range(5):
        got = smallest_eigenvalue(lambda v: v @ c, P, STEPS, seed, torch.float64)
        assert -0.5 - 1e-12 <= got < -0.49, (seed, got)  # an upper bound, and tight


def test_the_probe_never_calls_a_definite_curvature_indefinite_in_float32():
    c = _curvature(2e-4).float()
    for seed in range(5):
        got = smallest_eigenvalue(lambda v: v @ c, P, STEPS, seed, torch.float32)
        assert got + DAMPING > 0 and got >= 0, (seed, got)
