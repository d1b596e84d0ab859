"""A real two-node Ray cluster on this machine, the main job sent to it with `ray job submit`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rayif.cli import main
from rayif.results import metadata

pytestmark = [pytest.mark.subprocess]

RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ours(marker: str) -> list[int]:
    """Pids of processes whose command line names this test's Ray temp dir or ports."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmd and int(d.name) != os.getpid():
                pids.append(int(d.name))
    return pids


@pytest.fixture
def two_nodes():
    tmp = tempfile.mkdtemp(prefix="rif2n_", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    port, dash, agent_head, agent_worker = (_free_port() for _ in range(4))
    # Every Ray node's job agent listens on 52365 unless told otherwise; the session's own local Ray (the
    # ray_local fixture) holds that port already, and then `ray job submit` finds "No available agent".
    # The session's own ray.init also leaves RAY_* variables behind that would tie these nodes to it
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_AUTH_MODE"] = "disabled"  # a loopback test cluster; the cluster/ configs keep token auth on
    # Ray starts workers (and the job supervisor, whose entrypoint inherits it) at nice 15: beside a busy
    # process they get ~1% of a core and the job outlives any bound (seen: > 400 s beside 3 CPU-bound loops).
    # The test checks placement and results, not priority: run them at the driver's, as ray_local does.
    env["RAY_worker_niceness"] = "0"
    gcs = f"127.0.0.1:{port}"
    try:
        subprocess.run([RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                        "--num-gpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                        f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent_head}", f"--temp-dir={tmp}",
                        "--disable-usage-stats"],
                       check=True, env=env, capture_output=True, timeout=120)
        subprocess.run([RAY, "start", f"--address={gcs}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                        "--num-gpus=0", f"--dashboard-agent-listen-port={agent_worker}", "--disable-usage-stats"],
                       check=True, env=env, capture_output=True, timeout=120)
        yield {"gcs": gcs, "dashboard": f"http://127.0.0.1:{dash}", "env": env}
    finally:
        for marker in (tmp, gcs):  # only this test's processes, never `ray stop` (it stops every Ray here)
            for pid in _ours(marker):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        time.sleep(2)
        for marker in (tmp, gcs):
            for pid in _ours(marker):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(tmp, ignore_errors=True)


def test_job_submitted_to_two_nodes_equals_single_node(two_nodes, ray_local, tmp_path):
    args = ["demo", "--test-points", "2", "--top", "3", "--solver", "exact", "--workers", "2"]
    for _ in range(15):  # the head's job agent comes up some seconds after `ray start` returns
        job = subprocess.run(
            [RAY, "job", "submit", "--address", two_nodes["dashboard"], "--", sys.executable, "-m", "rayif", "-v",
             *args, "--out", str(tmp_path / "cluster")],
            env=two_nodes["env"], capture_output=True, text=True, timeout=900,
        )
        if "No available agent" not in job.stderr + job.stdout:
            break
        time.sleep(2)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert job.stdout.count("ran on node") == 2
    cluster = pq.read_table(tmp_path / "cluster" / "demo.parquet")
    workers = metadata(cluster)["workers"]
    assert len({w["node_id"] for w in workers}) == 2  # one worker on each node

    assert main([*args, "--out", str(tmp_path / "local")]) == 0  # the session's single-node Ray
    local = pq.read_table(tmp_path / "local" / "demo.parquet")
    assert cluster.to_pydict() == local.to_pydict()
