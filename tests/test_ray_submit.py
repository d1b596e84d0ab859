"""`ray up` / `ray submit` / `ray down` of a local-provider cluster config, reached over SSH to this machine.

The set-up installs openssh-server, rsync and netcat with the system's package manager when they are missing,
starts a private sshd on a free loopback port (its own config, host key and authorized key) and adds a login
that is root under another name, whose home is a temporary folder: Ray's launcher writes its bootstrap files
there and its login shell finds this checkout's virtualenv first, so `ray submit`'s `python` is ours. The
Ray cluster keeps token authentication on, like the real configs. Everything is removed afterwards.

`ray up` and `ray down` run a plain `ray stop` on the head, which kills every Ray process on the machine: here
that would take the test session's own Ray with it. The login's shell therefore scopes `ray stop` to this
cluster's processes (its own temp folder); every other `ray` command is Ray's.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import yaml

from .test_cluster_configs import check_launcher

pytestmark = [pytest.mark.subprocess, pytest.mark.machine]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # this virtualenv's bin: ray, python
USER = "rayifssh"
NEEDED = {"sshd": "/usr/sbin/sshd", "rsync": "rsync", "nc": "nc", "ssh": "ssh", "ssh-keygen": "ssh-keygen"}


def _skip(reason: str) -> None:
    print(f"SKIPPED test_ray_submit: {reason}", file=sys.stderr)  # printed, not only in the summary
    pytest.skip(reason)


def _install() -> None:
    missing = [n for n, path in NEEDED.items() if not shutil.which(path)]
    if not missing:
        return
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("apt-get"):
        _skip(f"{missing} missing and no root apt-get to install openssh-server, rsync and netcat")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "openssh-server", "openssh-client", "rsync", "netcat-openbsd"]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        got = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if got.returncode != 0:
            _skip(f"apt-get could not install openssh-server / rsync / netcat: {got.stderr.strip()[-300:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*cmd: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "RAY_AUTH_MODE": "token", **(env or {})})


@pytest.fixture(scope="module")
def ssh_login():
    """``(folder, port, key)``: an sshd on 127.0.0.1:port that lets ``USER`` (uid 0, home in folder) in by key."""
    _install()
    root = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))  # short: Ray's socket paths live under it
    home, port = root / "home", _free_port()
    home.mkdir()
    key, host_key = root / "key", root / "host_key"
    for k in (key, host_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k)], check=True)
    (root / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    temp = root / "ray"
    profile = textwrap.dedent(f"""\
        export PATH="{BIN}:$PATH"
        export RAY_AUTH_MODE=token
        ray() {{
          if [ "$1" = stop ]; then
            pkill -f -- "{temp}"; for _ in $(seq 60); do pgrep -f -- "{temp}" >/dev/null || return 0; sleep 0.5; done
            pkill -9 -f -- "{temp}"; return 0
          fi
          command ray "$@"
        }}
        """)
    for name in (".bashrc", ".bash_profile", ".profile"):
        (home / name).write_text(profile)
    config = root / "sshd_config"
    config.write_text(textwrap.dedent(f"""\
        Port {port}
        ListenAddress 127.0.0.1
        HostKey {host_key}
        PidFile {root}/sshd.pid
        AuthorizedKeysFile {root}/authorized_keys
        PermitRootLogin prohibit-password
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        UsePAM no
        StrictModes no
        """))
    added = subprocess.run(["useradd", "-o", "-u", "0", "-g", "0", "-M", "-d", str(home), "-s", "/bin/bash", USER],
                           capture_output=True, text=True)
    if added.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        _skip(f"could not add the SSH login {USER}: {added.stderr.strip()}")
    try:
        subprocess.run(["usermod", "-p", "*", USER], check=True)  # no password, but not a locked account
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
        started = subprocess.run(["/usr/sbin/sshd", "-f", str(config), "-E", str(root / "sshd.log")],
                                 capture_output=True, text=True)
        assert started.returncode == 0, started.stderr
        ssh = ["ssh", "-i", str(key), "-p", str(port), "-o", "StrictHostKeyChecking=no", "-o",
               "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", f"{USER}@127.0.0.1"]
        probe = subprocess.run([*ssh, "bash --login -c 'which python'"], capture_output=True, text=True, timeout=60)
        assert probe.returncode == 0 and probe.stdout.strip() == str(BIN / "python"), (
            probe.stdout, probe.stderr, (root / "sshd.log").read_text())
        yield root, port, key, temp
    finally:
        pid = root / "sshd.pid"
        if pid.exists():
            subprocess.run(["kill", pid.read_text().strip()])
        subprocess.run(["userdel", "-f", USER], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_ray_up_submit_down_over_ssh(ray_local, ssh_login):
    import ray

    root, ssh_port, key, temp = ssh_login
    gcs, dash, agent, client = (_free_port() for _ in range(4))
    name = f"rayif-submit-{ssh_port}"
    config = {
        "cluster_name": name,
        "provider": {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []},
        "auth": {"ssh_user": USER, "ssh_private_key": str(key), "ssh_proxy_command": f"nc 127.0.0.1 {ssh_port}"},
        "max_workers": 0,
        "setup_commands": [],
        "head_start_ray_commands": [
            "ray stop",
            "[ -s ~/.ray/auth_token ] || ray get-auth-token --generate",
            f"ray start --head --node-ip-address=127.0.0.1 --port={gcs} --num-cpus=2 --dashboard-host=127.0.0.1 "
            f"--dashboard-port={dash} --dashboard-agent-listen-port={agent} --ray-client-server-port={client} "
            f"--temp-dir={temp} --disable-usage-stats",
        ],
        "worker_start_ray_commands": [],
    }
    check_launcher(config)  # the same schema check as the shipped configs
    path = root / "local.yaml"
    path.write_text(yaml.safe_dump(config))
    out = root / "home" / "explain-out"
    try:
        up = _run(str(BIN / "ray"), "up", "-y", "--no-config-cache", "--disable-usage-stats", str(path),
                  cwd=REPO)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        sub = _run(str(BIN / "ray"), "submit", "--no-config-cache", str(path), "examples/explain_on_ray.py", "--",
                   "--address", f"127.0.0.1:{gcs}", "--workers", "1", "--small", "--top", "3", "--out", str(out),
                   cwd=REPO)
        assert sub.returncode == 0, sub.stdout[-3000:] + sub.stderr[-3000:]
        assert "8 misclassified test points explained" in sub.stdout + sub.stderr
        import rayif

        table = rayif.read_results(out)
        assert table.num_rows == 8 * 2 * 3 and set(table["kind"].to_pylist()) == {"harmful", "helpful"}
    finally:
        down = _run(str(BIN / "ray"), "down", "-y", str(path), cwd=REPO, timeout=300)
        subprocess.run(["pkill", "-f", str(temp)])  # anything `ray stop` left of this cluster only
        for f in Path("/tmp").glob(f"cluster-{name}.*"):
            f.unlink()
    assert down.returncode == 0, down.stderr[-2000:]
    assert ray.get(ray.put("alive")) == "alive"  # the test session's own Ray was left alone
