"""The installed dislotrack's version: what made a file (sidecars, model cards, summaries)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """The installed dislotrack's version, or ``"unknown"`` in a source tree without install."""
    try:
        return version("dislotrack")
    except PackageNotFoundError:
        return "unknown"
