"""The error that a training setup cannot run as asked (reported in one line)."""


class TrainConfigError(ValueError):
    """A train config or resume that cannot run as written."""
