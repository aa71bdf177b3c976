"""Atomic, checksummed, weights-only checkpoints.

A checkpoint file is ``torch.save`` of a plain dict ``{"format", "version", "info" (a JSON
string), "info_sha256", "sha256", "state" (uint8 tensor)}`` where ``state`` holds the bytes of an
inner ``torch.save`` of tensors and state dicts, ``sha256`` is their digest and ``info_sha256`` the
digest of the info string (torch does not verify the zip's CRCs, so both are needed; files written
before ``info_sha256`` existed are read without it). Both levels are read with
``torch.load(weights_only=True)``, so a file carrying a pickled object is refused, and a truncated
or altered file fails a checksum. Files are written to a temporary sibling, fsynced and renamed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from pathlib import Path
from typing import Any, Callable

import torch

from cml_dgl.errors import CmlError
from cml_dgl.fsutil import atomic_write_bytes
from cml_dgl.train import faults

FORMAT = "cml-dgl-checkpoint"
VERSION = 1


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], info: dict[str, Any], *,
                    before_rename: Callable[[], None] | None = None) -> None:
    """Write the checkpoint atomically; ``before_rename`` runs when the temporary file is complete."""

    def ready() -> None:
        if before_rename is not None:
            before_rename()
        faults.pause_point("ckpt", int(info.get("epoch", -1)))

    inner = io.BytesIO()
    torch.save(state, inner)
    raw = inner.getvalue()
    outer = io.BytesIO()
    info_json = json.dumps(info, sort_keys=True)
    torch.save({
        "format": FORMAT,
        "version": VERSION,
        "info": info_json,
        "info_sha256": hashlib.sha256(info_json.encode()).hexdigest(),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "state": torch.frombuffer(bytearray(raw), dtype=torch.uint8),
    }, outer)
    atomic_write_bytes(path, outer.getvalue(), before_rename=ready)


def _safe_load(data: Any, where: str) -> Any:
    try:
        return torch.load(data, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CmlError(f"{where}: refused, not a weights-only checkpoint ({str(e).splitlines()[0]})") from None
    except MemoryError:
        raise
    except Exception as e:  # a corrupt zip or pickle stream can raise nearly anything
        first = (str(e).splitlines() or [""])[0]
        raise CmlError(f"{where}: unreadable or truncated checkpoint ({type(e).__name__}: {first})") from None


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
    info_json = outer.get("info", "{}")
    if not isinstance(info_json, str) or ("info_sha256" in outer and  # absent in files before it was added
                                          hashlib.sha256(info_json.encode()).hexdigest() != outer["info_sha256"]):
        raise CmlError(f"{p}: checksum mismatch in the checkpoint info (corrupt checkpoint)")
    state = _safe_load(io.BytesIO(raw), str(p))
    try:
        info = json.loads(info_json)
    except json.JSONDecodeError:
        raise CmlError(f"{p}: checkpoint info is not valid JSON") from None
    return state, info
