"""The ``rayif`` command line: one line and exit code 2 for a user mistake (``-v`` shows the traceback)."""

from __future__ import annotations

import argparse
import logging
import sys

from . import jobs, users

SOLVERS = ["auto", "exact", "cg", "lissa", "ekfac"]
SOLVER_HELP = ("auto (default): exact for small models, else EK-FAC-preconditioned CG or LiSSA; all at the same "
               "damping (1e-3) and curvature (hessian)")
KINDS = ["flat", "ivf_flat", "ivf_pq"]
SOURCES = ["features", "sketch"]


def _data(p: argparse.ArgumentParser, *, train: bool = True, test: bool = False, required: bool = True) -> None:
    p.add_argument("--task", required=required, help="module:callable returning a rayif.Task (zero arguments)")
    if train:
        p.add_argument("--train", required=required, help="training parquet file or folder")
    if test:
        p.add_argument("--test", required=required, help="test parquet file or folder")
    p.add_argument("--input-column", default="x")
    p.add_argument("--target-column", default="y")
    p.add_argument("--id-column", default="id", help="integer id column (default: row positions if absent)")


def _solver(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--solver", choices=SOLVERS, default=default, help=SOLVER_HELP)
    p.add_argument("--solver-option", action="append", default=[], metavar="KEY=JSON",
                   help="a solver config field, e.g. damping=0.005, curvature=\"ggn\", tol=0.001 (repeatable)")
    p.add_argument("--seed", type=int, default=0)


def _scaling(p: argparse.ArgumentParser, workers: int = 2) -> None:
    p.add_argument("--workers", type=int, default=workers,
                   help="Ray worker actors, one model replica each (0: run in this process without Ray)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (falls back to CPU, and says so)")
    p.add_argument("--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")


class _Renamed(argparse.Action):
    """A 0.7 spelling of a flag: still accepted (hidden from --help) until 0.10, with a warning naming the new one."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"rayif: warning: {option_string} is deprecated and goes in 0.10: use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _index_options(p: argparse.ArgumentParser, *, sources: bool = False) -> None:
    """The names every command gives the index's options (``IndexConfig``'s ``source`` and ``kind``)."""
    if sources:  # several indexes compared (rayif recall)
        p.add_argument("--candidates", default="features,sketch",
                       help="comma-separated candidate sources compared: features, sketch")
        p.add_argument("--sources", dest="candidates", action=_Renamed, new="--candidates")
    else:
        p.add_argument("--candidates", choices=SOURCES, default="features",
                       help="the index's source (IndexConfig.source): the k nearest in feature space (FastIF), or "
                            "the k/2 + k/2 of largest and smallest influence by gradient sketch")
        p.add_argument("--source", dest="candidates", choices=SOURCES, action=_Renamed, new="--candidates")
    p.add_argument("--index-kind", choices=KINDS, default="flat", help="the FAISS index type (IndexConfig.kind)")
    p.add_argument("--kind", dest="index_kind", choices=KINDS, action=_Renamed, new="--index-kind")
    p.add_argument("--sketch-dim", type=int, default=256, help="dimension of a gradient sketch (--candidates sketch)")


def _candidates(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=int, default=None, help="candidates per test point (builds or reuses an index)")
    _index_options(p)
    p.add_argument("--index-dir", default=None, help="where the FAISS index is kept and reused")


def parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    root = argparse.ArgumentParser(prog="rayif", description="Influence functions, the FastIF way, on Ray.")
    root.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = root.add_subparsers(dest="command", required=True)
    cmds: dict[str, argparse.ArgumentParser] = {}

    def command(name: str, run, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--config", default=None, metavar="FILE.toml",
                       help=f"options from a TOML file (top level, or a [{name}] table); flags override it")
        p.set_defaults(run=run)
        cmds[name] = p
        return p

    demo = command("demo", jobs.demo, "train a small MLP on scikit-learn's digits and explain a few predictions")
    demo.add_argument("--test-points", type=int, default=3, help="how many test points to explain")
    demo.add_argument("--top", type=int, default=5, help="harmful and helpful examples shown per test point")
    demo.add_argument("--train-size", type=int, default=1000, help="training examples (of 1797 digits)")
    _solver(demo)
    _scaling(demo)
    demo.add_argument("--out", default="rayif-out", help="folder the parquet result goes to")

    ex = command("explain", jobs.explain, "explain test points of your own model and parquet data")
    _data(ex, test=True)
    ex.add_argument("--out", default="rayif-out", help="folder for influence.parquet and batches/ (a rerun resumes)")
    ex.add_argument("--top", type=int, default=10)
    _solver(ex)
    ex.add_argument("--group", action="store_true", help="one s_test for the mean test loss (group influence)")
    _candidates(ex)
    _scaling(ex)
    ex.add_argument("--test-batch-size", type=int, default=256)

    _user_commands(command)

    ix = command("index", jobs.index, "build (or reuse) the FAISS index of a training set: features or gradient "
                                      "sketches")
    _data(ix)
    ix.add_argument("--out", required=True, help="index directory (index.faiss, meta.json)")
    _index_options(ix)
    ix.add_argument("--seed", type=int, default=0)
    ix.add_argument("--rebuild", action="store_true", help="replace an index built otherwise")
    ix.add_argument("--gpu", action="store_true")
    ix.add_argument("--address", default=None, help="Ray cluster (default: RAY_ADDRESS, else a local Ray)")

    rc = command("recall", jobs.recall, "recall of the truly most harmful and helpful training points among "
                                        "feature-kNN and gradient-sketch candidates (FastIF Fig. 3a), digits MLP: "
                                        "table and PNG")
    rc.add_argument("--test-points", type=int, default=50)
    rc.add_argument("--top", type=int, default=10, help="the true top-m harmful to look for")
    rc.add_argument("--ks", default="10,25,50,100,200,300,500,750,1000", help="comma-separated k values")
    _index_options(rc, sources=True)
    _solver(rc, default="exact")
    rc.add_argument("--out", default="rayif-out")
    return root, cmds


def _user_commands(command) -> None:
    """The commands of rayif.cli.users: self-influence, validate, show."""
    si = command("self-influence", users.self_influence, "self-influence of every training example (or a sample) "
                                                         "into parquet: large values flag likely mislabels")
    _data(si)
    si.add_argument("--out", default="rayif-out", help="folder for self_influence.parquet")
    si.add_argument("--sample", type=int, default=None, help="only this many training examples, drawn with --seed")
    si.add_argument("--show", type=int, default=10, help="largest values printed")
    si.add_argument("--chunk-size", type=int, default=256, help="training rows per work unit")
    _solver(si)
    _scaling(si)

    va = command("validate", users.validate, "check fast settings on your model: correlation with full influence, "
                                            "candidate recall, leave-one-out and LDS by retraining; JSON and PNG")
    _data(va, test=True, required=False)
    va.add_argument("--digits", choices=["logistic", "mlp"], default=None,
                    help="the embedded digits problem (task, data and retraining) instead of --task/--train/--test")
    va.add_argument("--retrain", default=None, metavar="MODULE:CALLABLE",
                    help="retrain(keep_ids) -> Task or nn.Module, for leave-one-out and LDS (skipped without it)")
    va.add_argument("--out", default="rayif-out/validate", help="folder for validate.json and the PNGs")
    va.add_argument("--test-points", type=int, default=20, help="test points sampled for the comparisons")
    va.add_argument("--top", type=int, default=10, help="top sets compared")
    va.add_argument("--loo-test-points", type=int, default=3)
    va.add_argument("--loo-train-points", type=int, default=40, help="models retrained without one point")
    va.add_argument("--lds-subsets", type=int, default=32, help="models retrained on random subsets (0: no LDS)")
    va.add_argument("--lds-fraction", type=float, default=0.5)
    _solver(va)
    _candidates(va)
    _scaling(va, workers=0)

    sh = command("show", users.show, "the top harmful and helpful training rows of one test point in a results "
                                     "folder or file")
    sh.add_argument("results", help="rayif explain's --out folder, a batches folder or an influence .parquet")
    sh.add_argument("--test-id", type=int, required=True)
    sh.add_argument("--top", type=int, default=10)
    sh.add_argument("--train", default=None, help="training parquet, to print --show-columns of each row")
    sh.add_argument("--show-columns", default="y", help="comma-separated training columns printed with --train")
    sh.add_argument("--id-column", default="id")


def _command_of(argv: list[str], cmds: dict[str, argparse.ArgumentParser]) -> str | None:
    return next((a for a in argv if a in cmds), None)


class RayNotices(logging.Filter):
    """Drops Ray's notices that say nothing to a rayif user and read as a failure on a run that worked. Exact
    messages only: Ray's real errors (a missing or invalid token, a lost node) still show."""

    NOTICES = ("Token authentication is enabled for this Ray cluster.",)  # the local Ray the CLI starts has it on

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith(n) for n in self.NOTICES)


def quiet_ray() -> None:
    """Install :class:`RayNotices` on the handlers of Ray's logger (it does not propagate to the root)."""
    import ray  # noqa: F401 - its import sets up the "ray" logger's handler

    for handler in logging.getLogger("ray").handlers:
        if not any(isinstance(f, RayNotices) for f in handler.filters):
            handler.addFilter(RayNotices())


def main(argv: list[str] | None = None) -> int:
    from ..errors import RayifError
    from .config_file import apply

    argv = sys.argv[1:] if argv is None else list(argv)
    root, cmds = parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("-v", "--verbose", action="store_true")
    early, _ = pre.parse_known_args(argv)
    try:
        command = _command_of(argv, cmds)
        if early.config and command:
            apply(early.config, command, cmds[command], cmds)
    except RayifError as e:
        print(f"rayif: error: {e}", file=sys.stderr)
        return 2
    args = root.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_ray()
    try:
        return args.run(args)
    except RayifError as e:  # a user mistake: one line, exit 2 (as argparse does); -v shows the traceback
        if args.verbose:
            logging.getLogger("rayif").exception("rayif failed")
        print(f"rayif: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
