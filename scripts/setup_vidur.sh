#!/usr/bin/env bash
# Install Microsoft's Vidur LLM-serving simulator (PyPI `vidur`) into its OWN virtual
# environment, for benchmarks/bench_vidur.py (servetune vs Vidur, docs/vidur-comparison.md).
#
#   scripts/setup_vidur.sh                 # -> ./.venv-vidur (git-ignored by .venv*/)
#   VIDUR_VENV=/opt/vidur scripts/setup_vidur.sh
#   scripts/setup_vidur.sh /path/to/venv
#
# Vidur 0.0.26 (Aug 2025) is a cp311 manylinux wheel with a native extension; it installs with
# its full dependency set (wandb, streamlit, kaleido, huggingface_hub, ... ~100 packages, a few
# minutes) next to, never inside, servetune's venv. It ships no profiling data: at run time it
# downloads profiles from Hugging Face, which bench_vidur.py replaces by an offline local
# dataset cache built from /work/shared/data/profiles/vidur (see docs/vidur-comparison.md).
# Idempotent: an existing venv where `import vidur` works at the pinned version is kept.
set -euo pipefail

VIDUR_VERSION="${VIDUR_VERSION:-0.0.26}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-${VIDUR_VENV:-$ROOT/.venv-vidur}}"
PYTHON="${PYTHON:-}"

if [[ -z "$PYTHON" ]]; then
  for cand in python3.11 python3.12 python3.10 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PYTHON="$cand"; break; fi
  done
fi
if [[ -z "$PYTHON" ]]; then
  echo "error: no python3 found (Vidur needs Python 3.10-3.12; set PYTHON=...)" >&2
  exit 2
fi

if [[ -x "$VENV/bin/python" ]] && \
   "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('vidur') != '$VIDUR_VERSION')" 2>/dev/null && \
   "$VENV/bin/python" -c "import vidur.simulator" >/dev/null 2>&1; then
  echo "vidur $VIDUR_VERSION already installed in $VENV"
  exit 0
fi

echo "creating $VENV with $("$PYTHON" --version 2>&1)"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "vidur==$VIDUR_VERSION"
"$VENV/bin/python" -c "import vidur.simulator, importlib.metadata as m; print('vidur', m.version('vidur'), 'ok')"
echo "Vidur python: $VENV/bin/python"
