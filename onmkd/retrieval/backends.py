"""Inference backends for a trained encoder: PyTorch fp32, int8 dynamic quantisation, ONNX Runtime.

Every backend gives an object with the :class:`~onmkd.retrieval.models.Encoder` inference contract:
``encode(texts, *, max_length, batch_size, progress=False, desc=...)`` (length-sorted batches,
:func:`onmkd.retrieval.models.encode_sorted`), ``tokenize(texts, max_length)``, ``infer(input_ids,
attention_mask) -> [B, H]``, ``fingerprint()`` (which names the backend, so encoded-corpus caches
keep backends apart), ``dim``, ``name``, ``device``. Evaluation and profiling take any of them.

- ``torch``: the encoder itself, fp32 (on the CPU its fused forward, :mod:`onmkd.retrieval.fastpath`).
- ``int8``: PyTorch dynamic quantisation of every ``nn.Linear``: int8 weights with one scale per
  output channel, activations quantised per batch. Per-tensor weight scales (torch's default)
  cost MiniLM about 0.07 cosine on some passages; per-channel scales and, on CPUs with VNNI
  (where int8 products cannot saturate), the full 8-bit activation range instead of fbgemm's
  7-bit default bring it within 0.01. ``torch.ao.quantization`` is deprecated in favour of
  torchao, whose CPU int8 path needs ``torch.compile``; the eager kernels used here still work.
- ``onnx``: the encoder with its pooling exported to ONNX (TorchScript exporter), its attention,
  GELU and layer norms fused by ONNX Runtime's transformer optimizer where the model is
  BERT-like, run by ONNX Runtime's CPU provider with as many threads as PyTorch uses.
- ``onnx-int8``: that graph with ONNX Runtime's dynamic int8 quantisation of its matrix
  multiplies (per-channel weights, full range with VNNI): usually the fastest on a CPU.

Exported graphs are cached in ``cache_dir()/onnx`` under the encoder's fingerprint, written
atomically, and checked against the PyTorch forward before first use. The quantised and ONNX
backends run on the CPU.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from onmkd.errors import ConfigError, ModelError

BACKENDS = ("torch", "int8", "onnx", "onnx-int8")
ONNX_FORMAT = "v1-opset17"  # part of the cache key: bump when the export changes


def check_backend(backend: str, field: str = "backend") -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"{field}: {backend!r} is not one of {', '.join(BACKENDS)}")
    return backend


@functools.lru_cache(maxsize=1)
def has_vnni() -> bool:
    """Whether the CPU has 8-bit dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    except OSError:
        pass
    return False


@contextmanager
def _quiet():
    """Silence the exporters' and quantisers' deprecation warnings and root-logger chatter."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


class InferenceEncoder:
    """The shared part of the non-PyTorch backends: tokenizer, batching, identity, size."""

    backend = "torch"

    def __init__(self, base):
        self.base = base
        self.name = base.name
        self.tokenizer = base.tokenizer
        self.pooling = base.pooling
        self.normalize = base.normalize
        self.training = False
        self._fingerprint: str | None = None

    # what evaluation and profiling read from an Encoder
    @property
    def model(self):
        """The fp32 model the backend was built from (its config and parameter count)."""
        return self.base.model

    @property
    def device(self):
        import torch

        return torch.device("cpu")

    @property
    def dim(self) -> int:
        return self.base.dim

    @property
    def num_layers(self) -> int:
        return self.base.num_layers

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def parameters_count(self) -> int:
        return self.base.parameters_count()

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = f"{self.base.fingerprint()}-{self.backend}"
        return self._fingerprint

    def tokenize(self, texts: Sequence[str], max_length: int):
        return self.base.tokenize(texts, max_length)

    def infer(self, input_ids, attention_mask):  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, input_ids, attention_mask):
        """``{num_layers: [B, H]}``, like :meth:`Encoder.forward` (last layer only)."""
        return {self.num_layers: self.infer(input_ids, attention_mask)}

    def encode(self, texts: Sequence[str], *, max_length: int, batch_size: int = 64, progress: bool = False,
               desc: str = "encode") -> np.ndarray:
        from onmkd.retrieval.models import encode_sorted

        return encode_sorted(self.tokenizer, texts, self.infer, dim=self.dim, max_length=max_length,
                             batch_size=batch_size, progress=progress, desc=desc)


# --------------------------------------------------------------------------- int8 (PyTorch)


def quantize_int8(model):
    """A copy of ``model`` (on the CPU) with every ``nn.Linear`` dynamically quantised to int8,
    per-channel weight scales; the modules are torch's ``DynamicQuantizedLinear``."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    engines = torch.backends.quantized.supported_engines
    engine = next((e for e in ("x86", "fbgemm", "qnnpack") if e in engines), None)
    if engine is None:
        raise ModelError("int8 backend: this PyTorch build has no quantised CPU engine")
    torch.backends.quantized.engine = engine
    with _quiet():
        return quantize_dynamic(copy.deepcopy(model).cpu().eval(), {torch.nn.Linear: per_channel_dynamic_qconfig},
                                dtype=torch.qint8)


def _int8_linear_class():
    import torch

    class Int8Linear(torch.nn.Module):
        """A dynamically quantised linear layer with a chosen activation range (see module doc)."""

        def __init__(self, packed, reduce_range: bool):
            super().__init__()
            self.packed = packed
            self.reduce_range = reduce_range

        def forward(self, x):
            return torch.ops.quantized.linear_dynamic(x, self.packed, self.reduce_range).to(x.dtype)

    return Int8Linear


class Int8Encoder(InferenceEncoder):
    """PyTorch dynamic int8 quantisation of an encoder's linear layers (CPU)."""

    backend = "int8"

    def __init__(self, base):
        super().__init__(base)
        model = quantize_int8(base.model)
        from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

        Int8Linear = _int8_linear_class()
        full_range = has_vnni()
        replaced = 0
        for module in list(model.modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, DynamicQuantizedLinear):
                    setattr(module, child_name, Int8Linear(child._packed_params._packed_params, not full_range))
                    replaced += 1
        if not replaced:
            raise ModelError(f"{base.name}: int8 backend found no linear layers to quantise")
        self.qmodel = model
        self.reduce_range = not full_range

    def infer(self, input_ids, attention_mask):
        import torch

        with torch.inference_mode():
            hidden = self.qmodel(input_ids=input_ids.cpu(), attention_mask=attention_mask.cpu()).last_hidden_state
            return self.base.pool(hidden, attention_mask.cpu())


# --------------------------------------------------------------------------- ONNX Runtime


def _example_batch(encoder):
    """Two texts of different token counts, so that the traced graph handles padding."""
    batch = encoder.tokenize(["the the the the the the the the", "the"], 16)
    if bool(batch["attention_mask"].all()):
        raise ModelError(f"{encoder.name}: cannot build a padded example batch for the ONNX export")
    return batch["input_ids"], batch["attention_mask"]


def _export(encoder, path: Path) -> None:
    """Export ``encoder`` (transformer + pooling + normalisation) to an ONNX file at ``path``."""
    import torch

    model = copy.deepcopy(encoder.model).cpu().eval()
    try:  # eager attention: the pattern ONNX Runtime's optimizer fuses into one Attention op
        model.set_attn_implementation("eager")
    except (AttributeError, ValueError):
        model.config._attn_implementation = "eager"

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return encoder.pool(hidden, attention_mask)

    ids, mask = _example_batch(encoder)
    with _quiet():
        torch.onnx.export(Wrapped().eval(), (ids, mask), str(path), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                                        "embedding": {0: "batch"}}, do_constant_folding=True)


def _optimize(encoder, src: Path, dst: Path) -> bool:
    """ONNX Runtime's transformer fusions (attention, GELU, layer norms) for BERT-like models."""
    cfg = encoder.model.config
    if getattr(cfg, "model_type", "") not in ("bert",):
        return False
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        with _quiet():
            opt = optimize_model(str(src), model_type="bert", num_heads=int(cfg.num_attention_heads),
                                 hidden_size=int(cfg.hidden_size))
            opt.save_model_to_file(str(dst))
    except Exception:  # noqa: BLE001 - any optimizer failure leaves the plain graph, which is correct
        return False
    return True


def _quantize_onnx(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=not has_vnni(),
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def session(path: str | os.PathLike[str], threads: int | None = None):
    """An ONNX Runtime CPU session with ``threads`` (default: PyTorch's count), all graph
    optimisations, no spinning."""
    import onnxruntime as ort
    import torch

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle threads sleep instead of spinning: as fast here (measured), and fair to a shared CPU.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _max_diff(sess, encoder) -> float:
    import torch

    ids, mask = _example_batch(encoder)
    with torch.inference_mode():
        ref = encoder.forward(ids.to(encoder.device), mask.to(encoder.device))[encoder.num_layers].float().cpu().numpy()
    got = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    return float(np.abs(got - ref).max())


def onnx_path(encoder, int8: bool = False) -> Path:
    """The cached ONNX graph of ``encoder`` (fp32, or int8-quantised), exported on first use.

    The fp32 graph is checked against the PyTorch forward on a padded batch (max abs difference
    under 1e-4); a fused graph that fails the check is replaced by the plain export.
    """
    from onmkd.io import atomic_path, cache_dir

    folder = cache_dir() / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    fp = encoder.fingerprint()
    fp32 = folder / f"{fp}-fp32-{ONNX_FORMAT}.onnx"
    if not fp32.exists():
        was_training = encoder.training
        encoder.eval()
        try:
            with tempfile.TemporaryDirectory(dir=folder) as work:
                raw = Path(work) / "raw.onnx"
                try:
                    _export(encoder, raw)
                except Exception as e:  # noqa: BLE001 - the exporter raises many kinds
                    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                    raise ModelError(f"{encoder.name}: ONNX export failed: {first}") from None
                with atomic_path(fp32) as tmp:
                    if not (_optimize(encoder, raw, tmp) and _max_diff(session(tmp), encoder) < 1e-4):
                        tmp.write_bytes(raw.read_bytes())
                        diff = _max_diff(session(tmp), encoder)
                        if not diff < 1e-4:
                            raise ModelError(f"{encoder.name}: ONNX export differs from PyTorch by {diff:.2e}")
        finally:
            encoder.train(was_training)
    if not int8:
        return fp32
    q = folder / f"{fp}-int8{'' if has_vnni() else '-rr'}-{ONNX_FORMAT}.onnx"
    if not q.exists():
        with atomic_path(q) as tmp:
            _quantize_onnx(fp32, tmp)
    return q


class OnnxEncoder(InferenceEncoder):
    """An encoder run by ONNX Runtime on the CPU, fp32 or with int8 matrix multiplies."""

    def __init__(self, base, int8: bool = False):
        super().__init__(base)
        self.backend = "onnx-int8" if int8 else "onnx"
        self.path = onnx_path(base, int8=int8)
        self._sessions: dict[int, object] = {}
        self.set_threads(None)

    def set_threads(self, threads: int | None) -> int:
        """Run with ``threads`` intra-op threads (None: PyTorch's count); returns the count before."""
        import torch

        before = getattr(self, "threads", None)
        self.threads = threads or torch.get_num_threads()
        if self.threads not in self._sessions:
            self._sessions[self.threads] = session(self.path, self.threads)
        self.session = self._sessions[self.threads]
        return before

    @property
    def file_mb(self) -> float:
        return self.path.stat().st_size / 2**20

    def infer(self, input_ids, attention_mask):
        import torch

        feeds = {"input_ids": input_ids.cpu().numpy().astype(np.int64, copy=False),
                 "attention_mask": attention_mask.cpu().numpy().astype(np.int64, copy=False)}
        return torch.from_numpy(self.session.run(None, feeds)[0])


# --------------------------------------------------------------------------- retrievers


def with_backend(encoder, backend: str):
    """``encoder`` itself for ``torch``, else its int8 or ONNX Runtime counterpart.

    An encoder already on ``backend`` is returned as it is; one on another backend is rebuilt
    from its fp32 model."""
    check_backend(backend)
    if getattr(encoder, "backend", "torch") == backend:
        return encoder
    if isinstance(encoder, InferenceEncoder):
        encoder = encoder.base
    if backend == "torch":
        return encoder
    if backend == "int8":
        return Int8Encoder(encoder)
    return OnnxEncoder(encoder, int8=backend == "onnx-int8")


class BackendDual:
    """A dual encoder whose towers run on an inference backend (same attributes as ``DualEncoder``)."""

    def __init__(self, question, passage=None):
        self.question = question
        self.passage = passage if passage is not None else question

    @property
    def tied(self) -> bool:
        return self.passage is self.question

    def to(self, device):
        return self


def dual_with_backend(dual, backend: str):
    """A :class:`~onmkd.training.peers.DualEncoder` on ``backend`` (the dual itself for ``torch``)."""
    check_backend(backend)
    if backend == "torch":
        return dual
    question = with_backend(dual.question, backend)
    return BackendDual(question, None if dual.tied else with_backend(dual.passage, backend))
