"""How messages name an option: as the user gave it.

The same checks and warnings serve ``dislotrack infer`` and `analyze`; a message names
``--pixel-size 0.1`` to the one and ``pixel_size_nm=0.1`` to the other. The command line
sets that (`command_line`) for the whole process while a command runs, so messages from
worker threads read the same.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

#: Keywords whose ``dislotrack infer`` flag is not ``--`` + the keyword with dashes.
_FLAGS = {
    "pixel_size_nm": "--pixel-size",
    "frame_interval_s": "--frame-interval",
    "d_spacing_nm": "--d-spacing",
    "max_speed_nm_s": "--max-speed",
    "strain_resolution_nm": "--strain-resolution",
}

_on_command_line = False


def option(name: str, value: object | None = None, *, text: bool = False) -> str:
    """The option ``name`` (a keyword of `analyze` or `infer_one`) as the user passes it.

    Parameters
    ----------
    name : str
        The keyword, e.g. ``"pixel_size_nm"``.
    value : optional
        A value (or placeholder such as ``"NM"``) to show with it.
    text : bool
        ``value`` is a string the user types as such: quoted in Python.

    Examples
    --------
    >>> option("pixel_size_nm", 0.1), option("min_length"), option("detector", "gpa", text=True)
    ('pixel_size_nm=0.1', 'min_length', "detector='gpa'")
    >>> with command_line():
    ...     option("pixel_size_nm", 0.1), option("parquet", True), option("detector", "gpa", text=True)
    ('--pixel-size 0.1', '--parquet', '--detector gpa')
    """
    if _on_command_line:
        flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
        return flag if value is None or value is True else f"{flag} {value}"  # True: a switch
    return name if value is None else f"{name}={value!r}" if text else f"{name}={value}"


@contextmanager
def command_line() -> Iterator[None]:
    """Messages name command-line flags inside this block (``dislotrack`` commands)."""
    global _on_command_line
    before, _on_command_line = _on_command_line, True
    try:
        yield
    finally:
        _on_command_line = before


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the known name nearest a mistyped ``word``, else "".

    Examples
    --------
    >>> did_you_mean("pixel_size", ["pixel_size_nm", "frame_interval_s"])
    ' (did you mean pixel_size_nm?)'
    """
    close = difflib.get_close_matches(word, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def unexpected_keywords(function: str, given: Iterable[str], known: Iterable[str]) -> None:
    """Raises TypeError naming ``function``'s keywords in ``given`` that it does not take,
    with the nearest it does (Python's own message offers none)."""
    known = set(known)
    unknown = sorted(set(given) - known)
    if unknown:
        raise TypeError(f"{function}() got unexpected keyword(s) {', '.join(unknown)}"
                        + did_you_mean(unknown[0], known))
