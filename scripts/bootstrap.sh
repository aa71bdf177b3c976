#!/usr/bin/env bash
# Create .venv (Python 3.11) and install the pinned stack from requirements.lock, unless the
# venv was already built from the same lock. Usage: [LOCK=requirements-modern.lock] scripts/bootstrap.sh [VENV_DIR]
# A lock with dgl must give dgl 2.1.x; requirements-modern.lock has no dgl (the newest torch).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
LOCK=${LOCK:-requirements.lock}
STAMP="$VENV/.cml-lock.sha256"

pick_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  for c in python3.11 "$HOME/.pyenv/versions/3.11.7/bin/python" python3; do
    if command -v "$c" >/dev/null 2>&1; then echo "$c"; return; fi
  done
  echo python3
}

want=$(cat "$LOCK" pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi

PY=$(pick_python)
ver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo none)
case "$ver" in
  3.11) ;;
  none) echo "bootstrap: no Python found; install Python 3.11 or set PYTHON=/path/to/python3.11" >&2; exit 2 ;;
  *) echo "bootstrap: Python $ver refused: the pinned stack (torch 2.2.1 + dgl 2.1.0) is verified on Python 3.11 only (on 3.13+ pip falls back to dgl 0.1.3); set PYTHON=/path/to/python3.11" >&2; exit 2 ;;
esac

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$LOCK"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
grep -q '^dgl==' "$LOCK" && "$VENV/bin/python" - <<'PY'
import sys
import dgl
if not dgl.__version__.startswith("2.1."):
    sys.exit(f"bootstrap: dgl {dgl.__version__} refused: cml-dgl needs dgl 2.1.x (the newest Linux release, CPU only)")
PY
echo "$want" > "$STAMP"
