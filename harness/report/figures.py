"""Saving figures reproducibly: the same data gives byte-identical PNG/SVG files, so regenerating
committed figures (results/, reports) leaves no diff unless a number moved."""
from __future__ import annotations

from pathlib import Path
from typing import IO, Any


def save_figure(fig: Any, target: Path | IO, fmt: str | None = None, **kwargs: Any) -> None:
    """`fig.savefig` without the creation date (PNG/SVG metadata) and with a fixed salt for SVG
    element ids (matplotlib otherwise draws random clip-path ids)."""
    import matplotlib

    fmt = fmt or Path(str(target)).suffix.lstrip(".").lower()
    metadata = {"Date": None} if fmt == "svg" else {"Software": None} if fmt == "png" else None
    from editbench.errors import writing

    with matplotlib.rc_context({"svg.hashsalt": "editbench"}), writing(target if isinstance(target, Path) else "a figure"):
        fig.savefig(target, format=fmt, metadata=metadata, **kwargs)
