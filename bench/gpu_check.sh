#!/usr/bin/env bash
# GPU acceptance check of issue #7 (see bench/gpu_check.py): CPU/GPU embedding equality, a few
# Retailrocket epochs, seconds per epoch and peak GPU memory at Tmall and Taobao sizes. < 5 minutes.
#
#   bash bench/gpu_check.sh [--device cuda|cpu] [--small] [--budget SECONDS] [--retail DIR] ...
#   bash bench/gpu_check.sh --vendor      # before lending: copy pyyaml and tqdm (pure Python) from
#                                         # this machine's Python into bench/out/vendor; carry it
#
# Runs with $PYTHON, else .venv/bin/python, else python3; needs torch, numpy, pandas and click.
# Killed after $GPU_CHECK_TIMEOUT seconds (default 300); --budget (default 280) paces the stages.
# No pip installs: the repository is imported from its root, vendored packages from bench/out/vendor.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi

if [ "${1:-}" = "--vendor" ]; then
    dest=bench/out/vendor
    rm -rf "$dest" && mkdir -p "$dest"
    for mod in yaml tqdm; do
        src=$("$PY" -c "import os, $mod; print(os.path.dirname($mod.__file__))")
        cp -r "$src" "$dest/"
    done
    # compiled extensions would not match another Python; pyyaml falls back to pure Python
    find "$dest" \( -name '*.so' -o -name '__pycache__' \) -prune -exec rm -rf {} +
    du -sh "$dest"
    exit 0
fi

export DGLBACKEND=pytorch PYTHONUNBUFFERED=1
exec timeout --signal=INT "${GPU_CHECK_TIMEOUT:-300}" "$PY" bench/gpu_check.py "$@"
