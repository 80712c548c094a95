"""Old import paths of the modules that moved into ``retrieval/``, ``training/`` and ``study/``.

Kept for compatibility: ``import onmkd.train`` or ``from onmkd.evaluate import evaluate`` still
work and give the moved module itself (one module object, so ``monkeypatch.setattr`` on either
name patches both, and files pickled under an old path still load). The project's own code and
tests use the new paths; new code should too.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    **{f"onmkd.{m}": f"onmkd.retrieval.{m}"
       for m in ("models", "backends", "fastpath", "index", "bm25", "metrics", "evaluate", "shards")},
    **{f"onmkd.{m}": f"onmkd.training.{m}" for m in ("losses", "peers", "gradcache", "distributed", "train")},
    **{f"onmkd.{m}": f"onmkd.study.{m}" for m in ("space", "sweep", "paper", "report", "figures", "profile")},
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old name as the module at its new path."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def __init__(self) -> None:
        self._specs: dict = {}

    def create_module(self, spec):
        module = importlib.import_module(MOVED[spec.name])
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module) -> None:
        """The module ran already, under its new name; give it back its own spec (the import
        system set the alias's)."""
        module.__spec__ = self._specs[module.__spec__.name]


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.insert(0, _Alias())  # before an editable install's finder, which would look for the old files
