"""CML encoder (Eq. 1-2), its losses (Eq. 3, 7) and the meta weight network (Eq. 4-6)."""

from cml_dgl.models.cml import CML, CMLOutput
from cml_dgl.models.losses import bpr_loss, contrastive_loss
from cml_dgl.models.meta import MetaWeightNet

__all__ = ["CML", "CMLOutput", "MetaWeightNet", "bpr_loss", "contrastive_loss"]
