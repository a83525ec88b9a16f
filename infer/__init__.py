"""Analysis of real movies: readers, the pipeline behind ``dislotrack infer``, outputs.

The notebook API is importable from here (loaded on first use, so that the command line
starts without importing torch):

>>> from dislotrack.infer import analyze, track_detections  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

#: Names re-exported from `dislotrack.infer.pipeline`.
_PIPELINE = ("AnalysisResult", "AnalysisWarning", "analyze", "track_detections")

__all__ = list(_PIPELINE)


def __getattr__(name: str) -> Any:
    """The pipeline's names, imported on first use (PEP 562)."""
    if name in _PIPELINE:
        from dislotrack.infer import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PIPELINE])
