"""The error that a training setup cannot run as asked, and the one-line messages of
the command line (light: no torch or Lightning, so ``dislotrack infer`` may use them)."""

import difflib
import re
from collections.abc import Sequence


class TrainConfigError(ValueError):
    """A train config or resume that cannot run as written."""


def without_gpu_hint(message: str, flag: str) -> str:
    """``message`` plus, where Lightning found no GPU, the ``flag`` that runs on the CPU.

    Parameters
    ----------
    message : str
        An error of Lightning's accelerator set-up.
    flag : str
        The option that picks the CPU, e.g. ``--trainer.accelerator cpu``.

    Returns
    -------
    str

    Examples
    --------
    >>> without_gpu_hint("No supported gpu backend found!", "--trainer.accelerator cpu")
    'No supported gpu backend found!; on a machine without a GPU pass --trainer.accelerator cpu'
    """
    if "gpu backend" in message.lower() or "cuda" in message.lower():
        return f"{message.rstrip()}; on a machine without a GPU pass {flag}"
    return message


def with_suggestion(message: str, options: Sequence[str]) -> str:
    """``message`` (an argument error) in one line (its first, or a ``...:`` header joined
    with the reason below it), plus the nearest known option to each unknown ``--name``
    or ``name`` it mentions, and where to see them all.

    Examples
    --------
    >>> with_suggestion("unrecognized arguments: --data.n_vall 3", ["--data.n_val", "--data.size"])
    'unrecognized arguments: --data.n_vall 3 (did you mean --data.n_val?); --help lists the options'
    """
    lines = [line.strip() for line in message.strip().splitlines()] or ["invalid arguments"]
    # 'Parser key "model.lr":' heads the reason on the lines below it: keep them, in one.
    first = " ".join(lines) if lines[0].endswith(":") else lines[0]
    first = re.sub(r"<class '([\w.]+)'>", r"\1", first)
    names = {o.lstrip("-"): o for o in options}
    mentioned = re.findall(r"--([\w.-]+)|'([\w.-]+)'", message)
    close = []
    for dashed, quoted in mentioned:
        word = dashed or quoted
        if word in names:
            continue
        match = difflib.get_close_matches(word, list(names), n=1, cutoff=0.8)
        if match and names[match[0]] not in close:
            close.append(names[match[0]])
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return f"{first.rstrip('.')}{hint}; --help lists the options"


def unpickling_refusal(what: str, error: BaseException | str) -> str:
    """One line refusing the checkpoint ``what`` that ``torch.load(weights_only=True)``
    would not read: it names the global torch blocked, and leaves out torch's advice to
    load the file with ``weights_only=False`` (which would run the pickled code).

    Parameters
    ----------
    what : str
        How the checkpoint was named, e.g. ``--ckpt_path last (runs/cpu/checkpoints/last.ckpt)``.
    error : BaseException or str
        torch's ``UnpicklingError`` (or its text).

    Returns
    -------
    str

    Examples
    --------
    >>> print(unpickling_refusal("x.ckpt", "Weights only load failed. ... weights_only set to False "
    ...       "...\\n\\nTrying to load unsupported GLOBAL posix.system whose module posix is blocked."))
    x.ckpt holds objects other than tensors and plain containers (posix.system), which dislotrack ...
    """
    text = str(error)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        detail = found[1]
    else:  # the reason below torch's first paragraph, never its advice to load unsafely
        lines = [ln.strip() for ln in text.splitlines()[1:]
                 if ln.strip() and "weights_only" not in ln and not ln.startswith("Check the documentation")]
        detail = lines[0] if lines else ""
    return (f"{what} holds objects other than tensors and plain containers"
            f"{f' ({detail})' if detail else ''}, which dislotrack never unpickles "
            "(weights_only=True): use a checkpoint saved by dislotrack train")


def is_unsafe_pickle(error: BaseException) -> bool:
    """Whether ``error`` is torch's refusal of a checkpoint that ``weights_only=True``
    cannot read (not some other unpickling failure)."""
    return type(error).__name__ == "UnpicklingError" and "Weights only load failed" in str(error)
