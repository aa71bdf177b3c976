"""Behavior-typed user-item graphs and the message-passing interface (DGL or pure torch backend).

Nothing here imports DGL at import time; the DGL backend imports it when it is built.
"""

from cml_dgl.graph.backends import (
    DGLPropagator,
    Propagator,
    TorchPropagator,
    build_propagator,
    propagator_for_dataset,
    resolve_backend,
)

__all__ = ["DGLPropagator", "Propagator", "TorchPropagator", "build_propagator", "propagator_for_dataset",
           "resolve_backend"]
