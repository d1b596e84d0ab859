"""What every benchmark here shares: the machine description, the printed table and the JSON file."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    import faiss
    import numpy
    import ray
    import torch

    import rayif

    info = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
            for path in ("/proc/cpuinfo", "/proc/meminfo") if Path(path).exists()
            for line in Path(path).read_text().splitlines() if ":" in line}
    return {"date": time.strftime("%Y-%m-%d"), "cpu": info.get("model name", platform.processor()),
            "cpus": os.cpu_count(), "memory_gib": round(int(info.get("MemTotal", "0 kB").split()[0]) / 2**20, 1),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
            "python": sys.version.split()[0], "platform": platform.platform(), "rayif": rayif.__version__,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "ray": ray.__version__,
            "faiss": faiss.__version__, "numpy": numpy.__version__}


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def high_water_mib() -> float:
    """This process's peak resident set size, MiB, from its own address space (``VmHWM``): unlike
    ``ru_maxrss``, which a spawned child inherits from its parent's size at fork, it starts at the exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return peak_rss_mib()


def rss_mib(pid: int | str = "self") -> float | None:
    """A process's resident set size now, MiB (``None`` once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def ray_processes() -> dict[str, str]:
    """``{pid: what}`` of this machine's Ray worker processes. Ray titles them ``ray::Class.method`` (rayif's
    replicas are ``_Worker``, the index pipeline's feature actors ``MapWorker(...)``, idle ones ``IDLE``)."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                title = Path(f"/proc/{d}/cmdline").read_bytes()[:96].split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if title.startswith("ray::"):
                out[d] = title[5:].split(".")[0].split("(")[0].split(" ")[0]
    return out


class Memory(threading.Thread):
    """Peak resident memory while a block runs, MiB, sampled every ``period`` s: this process (``driver``), each
    busy Ray worker process by its title (``workers``), and this process plus every Ray worker (``total``)."""

    def __init__(self, period: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.period, self.before = period, rss_mib() or 0.0
        self.driver, self.total, self._workers, self._done = self.before, self.before, {}, threading.Event()

    def __enter__(self) -> Memory:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        self.join()

    def run(self) -> None:
        while not self._done.wait(self.period):
            own, total = rss_mib() or 0.0, 0.0
            for pid, what in ray_processes().items():
                rss = rss_mib(pid) or 0.0
                total += rss
                if what != "IDLE":
                    self._workers[pid] = (what, max(self._workers.get(pid, (what, 0.0))[1], rss))
            self.driver, self.total = max(self.driver, own), max(self.total, own + total)

    @property
    def workers(self) -> dict[str, list[float]]:
        """Each busy worker's peak, grouped by what Ray titles it, largest first."""
        by: dict[str, list[float]] = {}
        for what, peak in self._workers.values():
            by.setdefault(what, []).append(round(peak, 1))
        return {k: sorted(v, reverse=True) for k, v in by.items()}


def print_table(title: str, rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """``columns``: (key, header, format spec); a missing value prints as ``-``."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append([("-" if r.get(k) is None else format(r[k], f)) for k, _, f in columns])
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    print(f"\n{title}")
    for j, line in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def write_json(name: str, payload: dict, out: str | None = None) -> Path:
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **payload}, indent=1))
    print(f"\nwrote {path}")
    return path
