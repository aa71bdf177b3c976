"""Baselines that CML must beat, one file each; every one implements
:class:`cml_dgl.models.base.Recommender`."""

from cml_dgl.models.baselines.lightgcn import LightGCN
from cml_dgl.models.baselines.mf import MF, bpr_objective
from cml_dgl.models.baselines.popularity import Popularity

__all__ = ["LightGCN", "MF", "Popularity", "bpr_objective"]
