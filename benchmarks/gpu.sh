#!/usr/bin/env bash
# One-shot GPU run for issue 13: environment check, GPU-only tests (Pallas compiled for
# real), the GPU grid; writes docs/bench/gpu.md and gpu.json. About 6 minutes on one
# H100/H200; a time guard (--budget, seconds) stops early and still writes what ran.
#
#   benchmarks/gpu.sh              # on a GPU machine
#   benchmarks/gpu.sh --dry-run    # the same code on a CPU at tiny shapes (CI)
#
# Python: $PYTHON, else the checkout's .venv, else python3. Nothing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then
  py="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
  py=.venv/bin/python
else
  py=python3
fi
exec "$py" benchmarks/gpu.py "$@"
