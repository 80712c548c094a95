"""Errors the tool reports to users as one line (the CLI prints ``error: <message>``)."""


class OnmkdError(Exception):
    """Base class: an error caused by the user's input, with a message that says where."""


class DataError(OnmkdError):
    """A data file or data set spec is malformed; the message names the file and line or field."""


class ConfigError(OnmkdError):
    """An option or config field is impossible; the message names the field."""


class ModelError(OnmkdError):
    """A model name, path or checkpoint cannot be resolved or loaded."""


def shown(text: str) -> str:
    """``text`` as an error message may quote it: as it is when printable, else with escapes
    (a key holding a line break such as U+0085 must not break the message's one line)."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
