"""The old flat import paths still name the modules that moved into retrieval/, training/ and study/."""

import importlib

import pytest

from onmkd._moved import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_import_path_is_the_moved_module(old):
    assert importlib.import_module(old) is importlib.import_module(MOVED[old])
    assert importlib.import_module(old).__spec__.name == MOVED[old]


def test_old_names_still_import():
    from onmkd.convert import ensure_minilm_l3, verify_checksums  # noqa: F401
    from onmkd.peers import DualEncoder, build_peer  # noqa: F401
    from onmkd.sweep import baseline_config, test_evaluate  # noqa: F401
    from onmkd.train import Trainer, train  # noqa: F401
