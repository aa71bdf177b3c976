"""Every model implements :class:`~cml_dgl.models.base.Recommender`; the registry
(:mod:`cml_dgl.models.registry`) names them. CML: the encoder (Eq. 1-2), its losses (Eq. 3, 7),
its objective (:mod:`cml_dgl.models.cml_loss`) and the meta weight network (Eq. 4-6)."""

from cml_dgl.models.base import Recommender
from cml_dgl.models.cml import CML, CMLOutput
from cml_dgl.models.losses import bpr_loss, contrastive_loss
from cml_dgl.models.meta import MetaWeightNet

__all__ = ["CML", "CMLOutput", "MetaWeightNet", "Recommender", "bpr_loss", "contrastive_loss"]
