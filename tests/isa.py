"""Force PyTorch's CPU kernels down to another instruction set, for the second numerics pass.

A test whose tolerance was fitted on one CPU fails on another because the kernels sum in another
order (AVX-512 against AVX2, say). ``./run.sh test`` therefore runs the ``numerics`` tests a second
time with the kernels forced one level below this machine's own, so that every run, on whatever
machine, sees two summation orders:

- native AVX-512 → AVX2: ``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``,
  ``MKL_ENABLE_INSTRUCTIONS=AVX2``;
- native AVX2 → the baseline: ``ATEN_CPU_CAPABILITY=default`` (ATen's scalar build),
  ``ONEDNN_MAX_CPU_ISA=SSE41`` and ``MKL_CBWR=COMPATIBLE`` (MKL's reproducible SSE2 path:
  ``MKL_ENABLE_INSTRUCTIONS`` below AVX2 changed no result on an AMD EPYC, where MKL does not
  take its Intel-only paths anyway).

``python tests/isa.py`` prints the ``export`` line for this machine (empty where nothing lower
exists, e.g. a CPU without AVX2 or another architecture). ``python tests/isa.py --check`` runs
a matrix multiply, a oneDNN linear layer and a reduction under each variable alone and says
which of them changed the result on this machine, i.e. which the installed PyTorch honours.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

DOWN = {
    "AVX512": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "AVX2": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"},
}


def native() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


def forced_env(capability: str | None = None) -> dict[str, str]:
    """The variables that take this machine's kernels one level down ({} where none is lower)."""
    return dict(DOWN.get(capability or native(), {}))


def _fingerprints() -> dict[str, str]:
    """Hashes of the bits of three results whose summation order the ISA decides."""
    import torch

    torch.manual_seed(0)
    x, w, b = torch.randn(200, 384), torch.randn(1536, 384), torch.randn(1536)
    out = {"aten capability": torch.backends.cpu.get_cpu_capability(), "mkl sgemm": torch.mm(x, w.T),
           "reduction": torch.randn(1000, 4000).sum(1)}
    try:
        out["onednn linear"] = torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "none")
    except (RuntimeError, AttributeError):
        out["onednn linear"] = None
    return {k: v if isinstance(v, str) or v is None else hashlib.sha1(v.numpy().tobytes()).hexdigest()[:12]
            for k, v in out.items()}


def _fingerprints_under(env: dict[str, str]) -> dict[str, str]:
    code = f"import json, sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); " \
           "import isa; print(json.dumps(isa._fingerprints()))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                         check=True)
    import json

    return json.loads(out.stdout)


def check() -> int:
    cap = native()
    env = forced_env(cap)
    print(f"native kernels: {cap}")
    if not env:
        print("no lower instruction set to force on this machine")
        return 0
    base = _fingerprints_under({})
    for var, value in env.items():
        got = _fingerprints_under({var: value})
        changed = [k for k in base if got[k] != base[k]]
        print(f"{var}={value}: {'changes ' + ', '.join(changed) if changed else 'no observable effect'}")
    return 0


def main(argv: list[str]) -> int:
    if argv[1:] == ["--check"]:
        return check()
    env = forced_env()
    if env:
        print("export " + " ".join(f"{k}={v}" for k, v in env.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
