"""FastIF's measurements reproduced on this machine, with rayif's own improvements beside FastIF's recipe.

    .venv/bin/python -m benchmarks.fastif            # everything: benchmarks/RESULTS.md, about 25 min on 2 cores
    .venv/bin/python -m benchmarks.fastif --quick --out /tmp/fastif    # what CI runs: the same, small, ~3 min

Sections (each a module here): ``speed`` (Tables 1 and 2), ``recall`` (Fig. 3a), ``s_test`` (Fig. 3b),
``retrain`` (Fig. 3c), ``scale`` (a million rows). It writes ``RESULTS.md``, ``RESULTS.json`` and ``img/*.png``
under ``--out`` (default ``benchmarks/``), and prints each table. Timings are reported, never asserted; the
``checks`` (agreement with exact at the thresholds the ground-truth tests use, completeness) are, and a failed
check exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from rayif.scaling import ensure_ray

from . import recall, report, retrain, s_test, scale, speed
from .workload import Problem, Settings

SECTIONS = ("speed", "recall", "s_test", "retrain", "scale")
HERE = Path(__file__).resolve().parents[1]


def run(settings: Settings, out: Path, sections: tuple[str, ...] = SECTIONS, log=print) -> dict[str, Any]:
    """Run the sections, write RESULTS.md / RESULTS.json / img/ under ``out``; returns the results."""
    ensure_ray()
    t_all = time.perf_counter()
    results: dict[str, Any] = {"settings": settings.__dict__, "machine": report.machine(),
                               "command": "python -m benchmarks.fastif" + (" --quick" if settings.quick else ""),
                               "sections": list(sections), "seconds": {}}
    problems: dict[str, Problem] = {}

    def problem(kind: str) -> Problem:
        if kind not in problems:
            t0 = time.perf_counter()
            iters = settings.mlp_retrain_iters if kind == "mlp" else 500
            problems[kind] = Problem.build(kind, settings, retrain_iters=iters)
            results.setdefault("problems", {})[kind] = {"k": problems[kind].k, "scales": problems[kind].scales,
                                                        "seconds": problems[kind].seconds}
            log(f"[fastif] digits {kind}: set up in {time.perf_counter() - t0:.0f} s")
        return problems[kind]

    steps = {
        "speed": lambda: speed.run(problem("mlp"), settings),
        "recall": lambda: recall.run(problem("mlp"), settings),
        "s_test": lambda: s_test.run(problem("mlp"), settings),
        "retrain": lambda: {"logistic": retrain.run(problem("logistic"), settings, settings.retrain_points),
                            "mlp": retrain.run(problem("mlp"), settings, settings.retrain_points_mlp)},
        "scale": lambda: scale.run(settings),
    }
    for name in sections:
        t0 = time.perf_counter()
        results[name] = steps[name]()
        results["seconds"][name] = time.perf_counter() - t0
        log(f"[fastif] {name}: {results['seconds'][name]:.0f} s")
    results["seconds"]["total"] = time.perf_counter() - t_all
    results["checks"] = report.checks(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "RESULTS.json").write_text(json.dumps(results, indent=1, default=float))
    report.write(results, out)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fastif", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, a few minutes: what CI runs")
    ap.add_argument("--out", type=Path, default=HERE, help="folder for RESULTS.md, RESULTS.json and img/ "
                                                             "(default: benchmarks/)")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--from-json", action="store_true", help="rewrite RESULTS.md and img/ from --out's "
                                                               "RESULTS.json without measuring again")
    args = ap.parse_args(argv)
    if args.from_json:
        results = json.loads((args.out / "RESULTS.json").read_text())
        report.write(results, args.out)
        print(f"wrote {args.out / 'RESULTS.md'} from {args.out / 'RESULTS.json'}")
        return 0
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("CI", "true")  # no progress bars between the printed tables
    settings = Settings.quick_mode() if args.quick else Settings.full()
    results = run(settings, args.out, tuple(args.sections))
    print((args.out / "RESULTS.md").read_text())
    failed = [c for c in results["checks"] if not c["passed"]]
    for c in failed:
        print(f"CHECK FAILED: {c['name']}: {c['value']:.4g} (needs {c['needs']})", file=sys.stderr)
    print(f"wrote {args.out / 'RESULTS.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
