"""Warnings that an analysis logs, collected into its result instead of printed bare.

dislotrack's modules log what the user should know (``logging``, ``dislotrack.*``
loggers). While `analyze` or `track_detections` runs, `collected_warnings` gathers
those records; the wrappers here attach them to the result (and summary.json) and
issue each as an `AnalysisWarning` at the caller, so notebooks show them too.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dislotrack.infer.interface import unexpected_keywords

if TYPE_CHECKING:
    from dislotrack.infer.result import AnalysisResult
    from dislotrack.infer.tracking import TrackedTables

logger = logging.getLogger(__name__)

#: ``logger.warning(..., extra={LEADS: True})``: listed first among the collected warnings.
LEADS = "dislotrack_leads"


@contextlib.contextmanager
def collected_warnings() -> Iterator[list[str]]:
    """Collect the warnings dislotrack logs (``dislotrack.*`` loggers) meanwhile.

    They go into the analysis result (and summary.json) instead of being printed
    bare: with a handler on the ``dislotrack`` logger, Python's last-resort stderr
    output stays silent (handlers the user configured still see them). Records
    logged with ``extra={LEADS: True}`` go before the others: a doubt about the
    calibration explains the warnings that follow from it.

    Yields
    ------
    list of str
        The messages, filled as they are logged.
    """
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, LEADS, False):
                messages.insert(sum(m in leading for m in messages), record.getMessage())
                leading.add(record.getMessage())
            else:
                messages.append(record.getMessage())

    leading: set[str] = set()

    handler = _Collect(level=logging.WARNING)
    log = logging.getLogger("dislotrack")
    log.addHandler(handler)
    _COLLECTORS.append(handler)
    try:
        yield messages
    finally:
        log.removeHandler(handler)
        _COLLECTORS.remove(handler)


#: The `collected_warnings` handlers now active (an analysis inside another collects once).
_COLLECTORS: list[logging.Handler] = []


def relog_unseen(messages: list[str]) -> None:
    """After a failure (no result to carry them), log the collected warnings again where
    nobody saw them: where logging is configured, its handlers already had each once."""
    if logger.hasHandlers():
        return
    for message in dict.fromkeys(messages):  # Python's last resort prints them
        logger.warning(message)


def named(input_path: str | Path, message: str) -> str:
    """``message`` led by the input's name, as issued in notebooks (Python shows a warning
    text once per caller line: a loop over files would hide the later files' warnings),
    unless it names the input already.

    >>> named("/data/a.tif", "frame 3 is blank")
    'a.tif: frame 3 is blank'
    >>> named("/data/a.tif", "a.tif: frame 1 has NaN pixels")
    'a.tif: frame 1 has NaN pixels'
    """
    lead = f"{Path(input_path).name}: "
    return message if message.startswith(lead) else lead + message


class AnalysisWarning(UserWarning):
    """What `analyze` warns about (`AnalysisResult.warnings`), also issued as Python warnings
    so that notebooks show them; ``dislotrack infer`` prints them itself instead."""


def keeping_logged_warnings(fn: Callable[..., AnalysisResult]) -> Callable[..., AnalysisResult]:
    """``fn``'s result with the warnings logged while it ran added (once each), each also
    issued as an `AnalysisWarning` at the caller."""

    known = inspect.signature(fn).parameters

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> AnalysisResult:
        unexpected_keywords(fn.__name__, kwargs, known)  # with the nearest name, unlike Python
        try:
            with collected_warnings() as logged:
                res = fn(*args, **kwargs)
        except BaseException:
            relog_unseen(logged)
            raise
        res.warnings += [m for m in dict.fromkeys(logged) if m not in res.warnings]
        for message in res.warnings:
            warnings.warn(named(res.input_path, message), AnalysisWarning, stacklevel=2)
        return res

    return wrapper


def keeping_tracking_warnings(fn: Callable[..., TrackedTables]) -> Callable[..., TrackedTables]:
    """``fn``'s tables with the warnings logged while it ran; called on its own (not inside
    `analyze`, which reports them itself), each is also issued as an `AnalysisWarning`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> TrackedTables:
        outermost = not _COLLECTORS
        try:
            with collected_warnings() as logged:
                out = fn(*args, **kwargs)
        except BaseException:
            if outermost:
                relog_unseen(logged)
            raise
        out.warnings = list(dict.fromkeys(logged))
        if outermost:
            for message in out.warnings:
                warnings.warn(message, AnalysisWarning, stacklevel=2)
        return out

    return wrapper
