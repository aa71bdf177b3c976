"""cml-dgl: Contrastive Meta Learning (Wei et al., WSDM 2022) for multi-behavior recommendation.

Importing the package needs numpy only; torch is imported by the first API call, and DGL lazily
by the DGL backend. The Python API (:mod:`cml_dgl.api`): :func:`load_dataset`, :func:`fit`,
:func:`refit`, :func:`tune`, :func:`open_run`, :func:`evaluate`, :func:`recommend`, :func:`export_embeddings`.
"""

from __future__ import annotations

from typing import Any

from cml_dgl.errors import CmlError

__version__ = "0.1.0"

_API = ("load_dataset", "fit", "refit", "tune", "open_run", "evaluate", "recommend", "export_embeddings")

__all__ = ["CmlError", "__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from cml_dgl import api

        return getattr(api, name)
    raise AttributeError(f"module 'cml_dgl' has no attribute {name!r}")
