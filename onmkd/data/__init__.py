"""Data readers: every supported format becomes one :class:`Dataset` (corpus + splits).

``load_dataset(spec)`` resolves a short spec string; :data:`SPEC_HELP` documents the grammar.
"""

from onmkd.data.readers import SPEC_HELP, load_dataset
from onmkd.data.types import Dataset, Split, passage_text

__all__ = ["SPEC_HELP", "Dataset", "Split", "load_dataset", "passage_text"]
