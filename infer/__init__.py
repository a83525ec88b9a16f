"""Analysis of real movies: readers, the pipeline behind ``dislotrack infer``, outputs.

The notebook API is importable from here (loaded on first use, so that the command line
starts without importing torch):

>>> from dislotrack.infer import analyze, track_detections  # doctest: +SKIP
>>> from dislotrack.infer import infer_one, write_tables  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

#: Names re-exported, by the module that defines them.
_EXPORTS = {"AnalysisResult": "result", "AnalysisWarning": "warning_log", "analyze": "pipeline",
            "track_detections": "tracking", "write_tables": "outputs", "infer_one": "run"}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """The API's names, imported on first use (PEP 562)."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"dislotrack.infer.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
