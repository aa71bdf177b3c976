"""Meta-knowledge encoder and meta weight network (paper Eq. 4-6, architecture of the authors' code).

For behavior k, per-sample losses :math:`\\ell` (n,), behavior-specific user embeddings
:math:`z^k` (n,d) and fused ones :math:`z` (n,d); :math:`rep_m` repeats a scalar m times, γ scales it.

Meta-knowledge (Eq. 4) and contrastive weights (Eq. 5-6 as in the code; spec 4):

.. math::

    Z_1 = [\\gamma\\, rep_d(\\ell) \\| z^k \\| z], \\qquad Z_2 = rep_{2d}(\\ell) \\odot [z^k \\| z]

    a = \\sigma(BN(\\sqrt{3d}\\; Drop(L_2(Drop(PReLU(L_1 Z_1)))))), \\qquad
    b = \\sigma(BN(Drop(PReLU(L_3 Z_2)))), \\qquad w_{cl} = (a + b)/2 \\in (0, 1)

with :math:`L_1`: 3d → ⌊1.5d⌋, :math:`L_2`: ⌊1.5d⌋ → 1, :math:`L_3`: 2d → 1. BPR weights use their own
layers, the inputs in the code's order :math:`Z_1' = [\\gamma\\, rep_d(\\ell) \\| z \\| z^k]`,
:math:`Z_2' = rep_d(\\ell) \\odot z` (:math:`L_3'`: d → 1), and are not halved:
:math:`w_{bpr} = a' + b' \\in (0, 2)` (``halve_bpr=True`` gives (a'+b')/2 ∈ (0,1)).

One PReLU, one dropout rate and one ``BatchNorm1d(1)`` are shared by every call site, as in the
code whose settings produced the published numbers. Choices beyond the code:

* ``detach_loss=True`` (default): :math:`\\ell` enters the network as a constant. The paper treats
  the losses as meta-knowledge *input*; the code's non-detached input also sent gradients from the
  weights into the encoder, a side effect that ``detach_loss=False`` reproduces. Gradients of
  :math:`w\\,\\ell` w.r.t. the encoder through the loss factor itself are unaffected.
* BatchNorm with one row in training mode is undefined (it raises in torch, spec B12): a single
  row is normalised with the running statistics instead; zero rows give an empty result.
* ``mke=False`` is the CML(w/o)-MKE ablation: no meta-knowledge encoder, a learnable per-behavior
  gate shared by all users, :math:`w_{cl}(k) = \\sigma(g_k)`, :math:`w_{bpr}(k) = 2\\sigma(h_k)`
  (or :math:`\\sigma(h_k)` with ``halve_bpr``); gates start at 0, i.e. at the centre of each range.

The embeddings are not detached: the code lets the weight network's gradient reach them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cml_dgl.errors import CmlError


class MetaWeightNet(nn.Module):
    """Maps (loss, behavior-specific and fused user embeddings) to per-sample loss weights.

    One network serves every behavior (``k`` only selects the gate with ``mke=False``, and is
    checked against ``n_behaviors`` when that is given).
    """

    def __init__(self, dim: int = 16, dropout: float = 0.8, gamma: float = 1.0, halve_bpr: bool = False,
                 mke: bool = True, n_behaviors: int | None = None, detach_loss: bool = True):
        super().__init__()
        if dim < 1:
            raise CmlError(f"meta network dim must be positive, got {dim}")
        if not mke and (n_behaviors is None or n_behaviors < 1):
            raise CmlError(f"mke=False (per-behavior gates) needs n_behaviors >= 1, got {n_behaviors}")
        if not 0.0 <= dropout < 1.0:
            raise CmlError(f"meta dropout must be in [0, 1), got {dropout}")
        self.dim, self.gamma, self.halve_bpr = dim, float(gamma), halve_bpr
        self.mke, self.n_behaviors, self.detach_loss = mke, n_behaviors, detach_loss
        if not mke:
            self.cl_gate = nn.Parameter(torch.zeros(n_behaviors))
            self.bpr_gate = nn.Parameter(torch.zeros(n_behaviors))
            return
        hidden = int(1.5 * dim)
        self.cl_layer1 = nn.Linear(3 * dim, hidden)
        self.cl_layer2 = nn.Linear(hidden, 1)
        self.cl_layer3 = nn.Linear(2 * dim, 1)
        self.bpr_layer1 = nn.Linear(3 * dim, hidden)
        self.bpr_layer2 = nn.Linear(hidden, 1)
        self.bpr_layer3 = nn.Linear(dim, 1)
        self.prelu = nn.PReLU(1)
        self.dropout = nn.Dropout(dropout)
        self.bn = nn.BatchNorm1d(1)

    def _bn(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias,
                                training=False, eps=self.bn.eps)
        return self.bn(x)

    def _branches(self, z1: Tensor, z2: Tensor, l1: nn.Linear, l2: nn.Linear, l3: nn.Linear) -> tuple[Tensor, Tensor]:
        scale = math.sqrt(z1.shape[1])
        a = torch.sigmoid(self._bn(scale * self.dropout(l2(self.dropout(self.prelu(l1(z1)))))))
        b = torch.sigmoid(self._bn(self.dropout(self.prelu(l3(z2)))))
        return a.squeeze(1), b.squeeze(1)

    def _check(self, loss: Tensor, z_a: Tensor, z_b: Tensor, k: int) -> Tensor:
        if k < 0 or (self.n_behaviors is not None and k >= self.n_behaviors):
            raise CmlError(f"behavior index {k} outside [0, {self.n_behaviors})")
        n = loss.shape[0] if loss.dim() == 1 else -1
        if n < 0 or z_a.shape != (n, self.dim) or z_b.shape != (n, self.dim):
            raise CmlError(f"meta network expects loss (n,) and embeddings (n, {self.dim}), got "
                           f"{tuple(loss.shape)}, {tuple(z_a.shape)}, {tuple(z_b.shape)}")
        return loss.detach() if self.detach_loss else loss

    def cl_weights(self, loss: Tensor, z_beh: Tensor, z_fused: Tensor, k: int) -> Tensor:
        """Contrastive-loss weights in (0, 1), one per sampled user, for the pair (target, behavior k)."""
        loss = self._check(loss, z_beh, z_fused, k)
        if not self.mke:
            return torch.sigmoid(self.cl_gate[k]).expand(loss.shape[0])
        if loss.shape[0] == 0:
            return loss.new_zeros(0)
        rep = loss[:, None]
        z1 = torch.cat([self.gamma * rep.expand(-1, self.dim), z_beh, z_fused], 1)
        z2 = rep * torch.cat([z_beh, z_fused], 1)
        a, b = self._branches(z1, z2, self.cl_layer1, self.cl_layer2, self.cl_layer3)
        return (a + b) / 2

    def bpr_weights(self, loss: Tensor, z_fused: Tensor, z_beh: Tensor, k: int) -> Tensor:
        """BPR weights in (0, 2) (or (0, 1) with ``halve_bpr``), one per triple of behavior k."""
        loss = self._check(loss, z_fused, z_beh, k)
        if not self.mke:
            w = torch.sigmoid(self.bpr_gate[k]).expand(loss.shape[0])
            return w if self.halve_bpr else 2 * w
        if loss.shape[0] == 0:
            return loss.new_zeros(0)
        rep = loss[:, None]
        z1 = torch.cat([self.gamma * rep.expand(-1, self.dim), z_fused, z_beh], 1)
        z2 = rep * z_fused
        a, b = self._branches(z1, z2, self.bpr_layer1, self.bpr_layer2, self.bpr_layer3)
        return (a + b) / 2 if self.halve_bpr else a + b
