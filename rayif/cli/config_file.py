"""``--config FILE``: a TOML file holds any option that has a flag; flags on the command line override it.

Top-level keys apply to every command that has that option; a ``[explain]`` (``[self-influence]``, ...)
table to that command only, over the top level. Keys are the flag names, with dashes or underscores::

    workers = 4
    seed = 1
    [explain]
    task = "mymodel:task"
    train = "data/train.parquet"
    solver = "lissa"
    solver-option = ["depth=2000", "repetitions=4"]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import RayifError


def _load(path: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    p = Path(path)
    if not p.is_file():
        raise RayifError(f"--config {path}: no such file")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise RayifError(f"--config {path}: not valid TOML ({e})") from None


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """``{flag name without dashes: action}`` of a (sub)command's long options."""
    out = {}
    for a in parser._actions:  # argparse keeps no public list of a parser's options
        for s in a.option_strings:
            if s.startswith("--") and s not in ("--help", "--config"):
                out[s[2:]] = a
    return out


def _check(path: str, where: str, key: str, value: Any, action: argparse.Action) -> Any:
    said = f"--config {path}: {where}{key} = {value!r}"
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise RayifError(f"{said}: expected true or false")
        return value
    if isinstance(action, argparse._AppendAction):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise RayifError(f'{said}: expected a list of strings, e.g. ["depth=2000"]')
        return value
    kind = action.type or str
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok, what = {int: (number and isinstance(value, int), "an integer"),
                float: (number, "a number")}.get(kind, (isinstance(value, str), "a string"))
    if not ok:
        raise RayifError(f"{said}: expected {what}")
    if action.choices is not None and value not in action.choices:
        raise RayifError(f"{said}: expected one of {list(action.choices)}")
    return float(value) if kind is float else value


def apply(path: str, command: str, sub: argparse.ArgumentParser, all_commands: dict[str, argparse.ArgumentParser]
          ) -> None:
    """Make the file's values ``command``'s defaults (so flags override them), after checking each one."""
    data = _load(path)
    mine = _options(sub)
    known = {k for p in all_commands.values() for k in _options(p)}
    values: dict[str, Any] = {}
    sections = [("", {k: v for k, v in data.items() if not isinstance(v, dict)})]
    for name, table in data.items():
        if isinstance(table, dict):
            if name not in all_commands:
                raise RayifError(f"--config {path}: [{name}] is not a command; the commands are "
                                 f"{sorted(all_commands)}")
            if name == command:
                sections.append((f"[{name}] ", table))
    for where, table in sections:
        for raw, value in table.items():
            key = raw.replace("_", "-")
            if key not in mine:
                if where:
                    raise RayifError(f"--config {path}: {where}{raw} is not an option of `rayif {command}`; its "
                                     f"options are {sorted(mine)}")
                if key not in known:  # a top-level key may belong to another command
                    raise RayifError(f"--config {path}: {raw} is not an option of any rayif command")
                continue
            if getattr(mine[key], "new", None):  # a renamed flag (cli._Renamed)
                print(f"rayif: warning: --config {path}: {raw} is deprecated and goes in 0.10: use "
                      f"{mine[key].new.lstrip('-')}", file=sys.stderr)
            values[mine[key].dest] = _check(path, where, raw, value, mine[key])
    for action in sub._actions:
        if action.dest in values:
            action.required = False  # given by the file
    sub.set_defaults(**values)
