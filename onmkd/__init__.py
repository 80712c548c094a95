"""onmkd: small dense passage retrievers trained with Online Mutual Knowledge Distillation."""

__version__ = "0.1.0"

from onmkd import _moved  # noqa: E402

_moved.install()  # the old flat import paths (onmkd.train, onmkd.evaluate, ...) keep working
