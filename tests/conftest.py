"""Shared fixtures (small digits models trained once per session, one local Ray) and the test tiers.

Tiers, by marker (``pyproject.toml`` declares them): ``ray`` (a test that needs the Ray cluster: added here to
every test that uses ``ray_local``), ``subprocess``, ``retrain``, ``zoo`` and ``machine`` (changes this machine:
system packages, a login). Each of them also makes a test ``slow``; the fast tier, ``pytest -m "not slow"``, runs
the rest in-process.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import ray
import scipy.stats as st

from rayif import digits


@pytest.fixture(scope="session")
def logistic():
    """Multinomial logistic regression with L2 = 1e-2 on 1000 digits (convex): ``(task, split)``."""
    split = digits.load_digits_split(n_train=1000, n_test=200, seed=0)
    return digits.digits_task("logistic", split, weight_decay=1e-2)


@pytest.fixture(scope="session")
def mlp():
    """64 -> 32 (tanh) -> 10 MLP with weight decay 1e-3 on 1000 digits (not convex): ``(task, split)``."""
    split = digits.load_digits_split(n_train=1000, n_test=200, seed=0)
    return digits.digits_task("mlp", split, weight_decay=1e-3)


SLOW = ("ray", "subprocess", "retrain", "zoo", "machine")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "ray_local" in item.fixturenames:
            item.add_marker(pytest.mark.ray)
        if any(item.get_closest_marker(name) for name in SLOW):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _fast_tier_starts_no_ray(request):
    """A test outside the ``ray`` tier that starts Ray would make the fast tier slow: fail it, naming the fix."""
    before = ray.is_initialized()
    yield
    if not before and ray.is_initialized() and not request.node.get_closest_marker("ray"):
        ray.shutdown()
        pytest.fail("this test started Ray: use the ray_local fixture (or mark it ray) so the fast tier stays fast")


def correlations(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean Pearson / Spearman over rows, and the mean overlap of the top-10 (largest) sets."""
    p = [st.pearsonr(x, y)[0] for x, y in zip(a, b, strict=True)]
    s = [st.spearmanr(x, y)[0] for x, y in zip(a, b, strict=True)]
    top = [len(set(np.argsort(-x)[:10]) & set(np.argsort(-y)[:10])) for x, y in zip(a, b, strict=True)]
    return {"pearson": float(np.mean(p)), "spearman": float(np.mean(s)), "min_top10": int(min(top))}


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the session: 2 CPUs and 4 fake GPUs (this machine has none)."""
    # Ray starts workers at nice 15: beside any busy process on a CI machine they get ~1% of a core and a
    # test of seconds takes many minutes. The tests check behaviour, not priority: run them at the driver's.
    os.environ.setdefault("RAY_worker_niceness", "0")
    if not ray.is_initialized():
        ray.init(num_cpus=2, num_gpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()

