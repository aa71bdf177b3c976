"""The one restricted unpickler: numpy arrays, scipy.sparse matrices and plain containers only.

``pickle`` runs code when it loads: every ``GLOBAL``/``STACK_GLOBAL`` opcode names a callable that
``REDUCE`` then calls. :class:`SafeUnpickler` resolves only the names in :data:`ALLOWED`, so a
file that asks for ``os.system``, ``subprocess.Popen``, ``builtins.eval`` or any other callable is
refused before anything runs. Pickles written by numpy 2 (``numpy._core``) and numpy 1
(``numpy.core``) and by old and new scipy module layouts (``scipy.sparse.csr`` and
``scipy.sparse._csr``) are accepted.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
from pathlib import Path
from typing import Any

from cml_dgl.errors import CmlError
from cml_dgl.fsutil import open_binary

_SPARSE = ("csr_matrix", "csc_matrix", "coo_matrix", "csr_array", "csc_array", "coo_array")

ALLOWED: frozenset[tuple[str, str]] = frozenset(
    [(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
     for n in ("_reconstruct", "scalar")]
    + [("numpy", "ndarray"), ("numpy", "dtype")]
    + [(f"numpy.{c}", n) for c in ("core.numeric", "_core.numeric") for n in ("_frombuffer",)]
    + [(m, n) for m in ("scipy.sparse._csr", "scipy.sparse.csr", "scipy.sparse._csc", "scipy.sparse.csc",
                        "scipy.sparse._coo", "scipy.sparse.coo", "scipy.sparse._arrays",
                        "scipy.sparse") for n in _SPARSE]
    + [("builtins", n) for n in ("list", "tuple", "dict", "set", "frozenset", "object", "int",
                                 "float", "bool", "str", "bytes", "complex")]
    + [("copyreg", "_reconstructor"), ("copy_reg", "_reconstructor"), ("_codecs", "encode"),
       ("__builtin__", "object"), ("__builtin__", "list")]
)

_RENAMED = {"copy_reg": "copyreg", "__builtin__": "builtins"}


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a callable outside :data:`ALLOWED`; nothing of it has been called."""


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler whose ``find_class`` resolves only :data:`ALLOWED` names."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED:
            raise RefusedGlobal(f"{module}.{name}")
        candidates = [_RENAMED.get(module, module)]
        if module.startswith("numpy._core"):
            candidates.append(module.replace("numpy._core", "numpy.core", 1))
        elif module.startswith("numpy.core"):
            candidates.append(module.replace("numpy.core", "numpy._core", 1))
        for mod in candidates:
            try:
                return getattr(importlib.import_module(mod), name)
            except (ImportError, AttributeError):
                continue
        raise RefusedGlobal(f"{module}.{name} (not importable here)")


def restricted_loads(data: bytes, what: str = "data") -> Any:
    """Unpickle ``data`` with :class:`SafeUnpickler`; CmlError naming ``what`` on any failure."""
    try:
        return SafeUnpickler(io.BytesIO(data)).load()
    except RefusedGlobal as e:
        raise CmlError(f"{what}: refused to unpickle: it references {e}, and only numpy arrays, "
                       "scipy.sparse matrices and plain lists/None are accepted") from None
    except MemoryError:
        raise
    except Exception as e:  # a corrupt pickle can raise nearly anything while being rebuilt
        raise CmlError(f"{what}: not a readable pickle ({type(e).__name__}: {e})") from None


def restricted_load(path: str | os.PathLike) -> Any:
    """Read and safely unpickle one file; CmlError naming the file when missing, refused or corrupt."""
    p = Path(path)
    with open_binary(p, "a pickle file") as f:
        try:
            data = f.read()
        except OSError as e:
            raise CmlError(f"{p}: cannot read ({e.strerror or e})") from None
    if not data:
        raise CmlError(f"{p}: empty file, expected a pickle")
    return restricted_loads(data, str(p))
