"""Atomic, checksummed, weights-only checkpoints.

A checkpoint file is ``torch.save`` of a plain dict ``{"format", "version", "info" (a JSON
string), "sha256", "state" (uint8 tensor)}`` where ``state`` holds the bytes of an inner
``torch.save`` of tensors and state dicts, and ``sha256`` is their digest. Both levels are read with
``torch.load(weights_only=True)``, so a file carrying a pickled object is refused, and a truncated
or altered file fails the checksum. Files are written to a temporary sibling, fsynced and renamed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from cml_dgl.errors import CmlError
from cml_dgl.fsutil import atomic_write_bytes

FORMAT = "cml-dgl-checkpoint"
VERSION = 1


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], info: dict[str, Any]) -> None:
    inner = io.BytesIO()
    torch.save(state, inner)
    raw = inner.getvalue()
    outer = io.BytesIO()
    torch.save({
        "format": FORMAT,
        "version": VERSION,
        "info": json.dumps(info, sort_keys=True),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "state": torch.frombuffer(bytearray(raw), dtype=torch.uint8),
    }, outer)
    atomic_write_bytes(path, outer.getvalue())


def _safe_load(data: Any, where: str) -> Any:
    try:
        return torch.load(data, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CmlError(f"{where}: refused, not a weights-only checkpoint ({str(e).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        raise CmlError(f"{where}: unreadable or truncated checkpoint ({str(e).splitlines()[0]})") from None


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(state, info)``; raise CmlError if the file is missing, foreign or corrupt."""
    p = Path(path)
    if not p.is_file():
        raise CmlError(f"{p}: checkpoint not found")
    outer = _safe_load(str(p), str(p))
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise CmlError(f"{p}: not a cml-dgl checkpoint")
    if outer.get("version") != VERSION:
        raise CmlError(f"{p}: checkpoint version {outer.get('version')!r} is not supported")
    blob = outer.get("state")
    if not isinstance(blob, torch.Tensor) or blob.dtype != torch.uint8:
        raise CmlError(f"{p}: checkpoint has no state payload")
    raw = blob.numpy().tobytes()
    if hashlib.sha256(raw).hexdigest() != outer.get("sha256"):
        raise CmlError(f"{p}: checksum mismatch (corrupt checkpoint)")
    state = _safe_load(io.BytesIO(raw), str(p))
    try:
        info = json.loads(outer.get("info", "{}"))
    except json.JSONDecodeError:
        raise CmlError(f"{p}: checkpoint info is not valid JSON") from None
    return state, info
