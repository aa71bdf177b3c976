"""Baselines that CML must beat, one file each; every one implements
:class:`cml_dgl.models.base.Recommender`. The training-free ones that are no embedding product
(ItemKNN, CascadingRank, the history rule) are :class:`~cml_dgl.models.base.ScoredRecommender`."""

from cml_dgl.models.baselines.cascading_rank import CascadingRank
from cml_dgl.models.baselines.history import History
from cml_dgl.models.baselines.itemknn import ItemKNN
from cml_dgl.models.baselines.lightgcn import LightGCN
from cml_dgl.models.baselines.mf import MF, bpr_objective
from cml_dgl.models.baselines.popularity import Popularity

__all__ = ["CascadingRank", "History", "ItemKNN", "LightGCN", "MF", "Popularity", "bpr_objective"]
