"""matplotlib, off-screen, for the PNGs rayif writes (the ``plot`` extra)."""

from __future__ import annotations

from pathlib import Path

from .errors import RayifError


def pyplot(what: str):
    """``matplotlib.pyplot`` on the Agg backend, or a RayifError that names the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise RayifError(f"{what} needs matplotlib: pip install 'rayif[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | Path) -> Path:
    """Lay out, write ``fig`` to ``path`` (parent folders made) and free it; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
