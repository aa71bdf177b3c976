"""One epoch's training samples, drawn on the host (:mod:`.host`, numpy) or on the training device
(:mod:`.device`, torch) behind one interface (:class:`.types.Draws`); :func:`.factory.make_draws`
picks one by config ``sampler``."""

from cml_dgl.train.draws.factory import SAMPLERS, make_draws, resolve_sampler
from cml_dgl.train.draws.host import EdgeIndex, MetaPointer, default_meta_users, edge_indices
from cml_dgl.train.draws.types import CMLStep, DeviceTriples, Draws

__all__ = ["SAMPLERS", "CMLStep", "DeviceTriples", "Draws", "EdgeIndex", "MetaPointer", "default_meta_users",
           "edge_indices", "make_draws", "resolve_sampler"]
