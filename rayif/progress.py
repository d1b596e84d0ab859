"""Progress of long work: a tqdm bar on a terminal, INFO log lines elsewhere (CI, files, Ray workers)."""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("rayif")


def wanted(enabled: bool | None) -> bool:
    """``None``: a bar when stderr is a terminal and ``CI`` is unset (a bar in a log file is noise)."""
    if enabled is None:
        return sys.stderr.isatty() and not os.environ.get("CI")
    return enabled


class Progress:
    """``update(n, msg)`` advances by ``n`` units; ``msg`` goes next to the bar or, with no bar, to the log."""

    def __init__(self, total: int | None, desc: str, unit: str, *, enabled: bool | None = None, initial: int = 0):
        self.bar = None
        if wanted(enabled):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True)

    def update(self, n: int = 1, msg: str | None = None) -> None:
        if self.bar is None:
            if msg:
                log.info(msg)
            return
        self.bar.update(n)
        if msg:
            self.bar.set_postfix_str(msg, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
