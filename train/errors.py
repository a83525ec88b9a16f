"""The error that a training setup cannot run as asked (reported in one line)."""


class TrainConfigError(ValueError):
    """A train config or resume that cannot run as written."""


def without_gpu_hint(message: str, flag: str) -> str:
    """``message`` plus, where Lightning found no GPU, the ``flag`` that runs on the CPU.

    Examples
    --------
    >>> without_gpu_hint("No supported gpu backend found!", "--trainer.accelerator cpu")
    'No supported gpu backend found!; on a machine without a GPU pass --trainer.accelerator cpu'
    """
    if "gpu backend" in message.lower() or "cuda" in message.lower():
        return f"{message.rstrip()}; on a machine without a GPU pass {flag}"
    return message
