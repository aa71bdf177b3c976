"""Per-sample losses of CML: BPR (paper Eq. 7) and the behavior-wise contrastive loss (Eq. 3).

Both return one value per sample; the trainer weights them with the meta network and reduces them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from cml_dgl.errors import CmlError

SIMILARITIES = ("dot", "cosine")
VARIANTS = ("paper", "official")
_LOG_EPS = math.log(1e-8)


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    """:math:`\\ell = -\\ln \\sigma(\\hat y_{u,i^+} - \\hat y_{u,i^-})` per triple (Eq. 7 without the L2 term).

    Computed as ``-logsigmoid``, which is finite for any score gap.
    """
    return -F.logsigmoid(pos_scores - neg_scores)


def contrastive_loss(anchor: Tensor, view: Tensor, *, temperature: float, similarity: str = "dot",
                     variant: str = "paper", chunk_size: int | None = None, users: Tensor | None = None,
                     log_mask: Tensor | None = None) -> Tensor:
    """Per-anchor contrastive loss between two views of the same n sampled users, shape (n,).

    Row u of ``anchor`` (the target-behavior view :math:`e_u^k`) and row u of ``view`` (behavior
    k' view :math:`e_u^{k'}`) form the positive pair; with
    :math:`s(a, b) = \\varphi(a, b)/\\tau`, :math:`\\varphi` = dot product or cosine similarity:

    * ``"paper"`` (InfoNCE, Eq. 3), the positive is in the denominator:

      .. math:: \\ell_u = -s(a_u, v_u) + \\log \\sum_{u'} \\exp s(a_u, v_{u'})

      Duplicates: when ``users`` is given, other rows holding the same user id are removed from the
      anchor's denominator (they are not negatives of themselves). ``chunk_size`` is ignored.

    * ``"official"`` (the authors' code, spec 3.2), the positive is *not* in the denominator and
      negatives are the distinct users of the sample outside the anchor's chunk (rows split in order
      into chunks of ``chunk_size``; ``None`` means chunks of one row, i.e. every other user):

      .. math:: \\ell_u = -\\log\\Big( \\frac{\\exp s(a_u, v_u)}{\\sum_{v \\in set(S) \\setminus set(C_u)}
                \\exp s(a_u, v) + 10^{-8}} + 10^{-8} \\Big)

      With ``users`` given, each distinct id counts once (its first row) and an id present in the
      anchor's chunk is no negative (set semantics of the code). An anchor without negatives gets
      :math:`-s(a_u,v_u) - \\ln 10^8`, as in the code. The code's setting is ``similarity="dot"``,
      ``temperature=d``.

    Everything is one n × n product plus an additive mask of 0 and -inf (which rows enter each
    anchor's sum), evaluated in log space (logsumexp) for stability. ``users`` (n,) are the user ids
    of the rows; without it rows are taken as distinct users. The mask depends on the ids alone:
    ``log_mask`` passes the one :func:`contrastive_log_mask` made for them, so that several views
    of the same sample share it.
    """
    if variant not in VARIANTS:
        raise CmlError(f"unknown contrastive variant {variant!r}; expected one of {list(VARIANTS)}")
    if similarity not in SIMILARITIES:
        raise CmlError(f"unknown similarity {similarity!r}; expected one of {list(SIMILARITIES)}")
    if not temperature > 0:
        raise CmlError(f"the contrastive temperature must be positive, got {temperature}")
    if chunk_size is not None and chunk_size < 1:
        raise CmlError(f"chunk_size must be a positive integer or None, got {chunk_size}")
    if anchor.dim() != 2 or anchor.shape != view.shape:
        raise CmlError(f"anchor and view must both have shape (n, d), got {tuple(anchor.shape)} "
                       f"and {tuple(view.shape)}")
    n = anchor.shape[0]
    if users is not None and tuple(users.shape) != (n,):
        raise CmlError(f"users must have shape ({n},), got {tuple(users.shape)}")
    if n == 0:
        return anchor.new_zeros(0)
    if similarity == "cosine":
        anchor = F.normalize(anchor, dim=-1)
        view = F.normalize(view, dim=-1)
    if log_mask is None:
        log_mask = contrastive_log_mask(n, users, variant=variant, chunk_size=chunk_size,
                                        dtype=anchor.dtype, device=anchor.device)
    elif tuple(log_mask.shape) != (n, n):
        raise CmlError(f"log_mask must have shape ({n}, {n}), got {tuple(log_mask.shape)}")
    logits = (anchor @ view.T) / temperature
    pos = logits.diagonal()
    if variant == "paper":
        return torch.logsumexp(logits + log_mask, dim=1) - pos
    eps_col = logits.new_full((n, 1), _LOG_EPS)
    log_neg = torch.logsumexp(torch.cat([logits + log_mask, eps_col], 1), dim=1)
    return -torch.logaddexp(pos - log_neg, torch.full_like(pos, _LOG_EPS))


def contrastive_log_mask(n: int, users: Tensor | None = None, *, variant: str = "paper",
                         chunk_size: int | None = None, dtype: torch.dtype = torch.float32,
                         device: torch.device | str | None = None) -> Tensor:
    """(n, n): 0 where column j enters anchor i's sum in :func:`contrastive_loss`, -inf elsewhere.

    ``"paper"``: every row except the other rows of i's user id; ``"official"``: the negatives of
    :func:`_official_negatives`. Adding it to finite logits gives what masking them with -inf gives,
    bit for bit, forward and backward (the masked entries get a zero gradient either way).
    """
    if variant not in VARIANTS:
        raise CmlError(f"unknown contrastive variant {variant!r}; expected one of {list(VARIANTS)}")
    dev = users.device if device is None and users is not None else device
    ids = torch.arange(n, device=dev) if users is None else users.to(dev)
    if variant == "paper":
        keep = ids[:, None] != ids[None, :]
        keep.fill_diagonal_(True)
    else:
        keep = _official_negatives(ids, 1 if chunk_size is None else chunk_size)
    return torch.zeros((n, n), dtype=dtype, device=dev).masked_fill_(~keep, float("-inf"))


def _official_negatives(ids: Tensor, chunk_size: int) -> Tensor:
    """Bool (n, n): column j is a negative of anchor i iff j is the first row of its user id and
    that id does not occur in i's chunk. Built from the n x n id comparison only (no ``unique``,
    no data-dependent shapes), so it does not wait for the device."""
    n = ids.shape[0]
    same = ids[:, None] == ids[None, :]
    is_first = ~same.triu(1).any(0)
    n_chunks = -(-n // chunk_size)
    padded = torch.cat([same, same.new_zeros(n_chunks * chunk_size - n, n)])
    id_in_chunk = padded.view(n_chunks, chunk_size, n).any(1)
    chunk = torch.arange(n, device=ids.device) // chunk_size
    return is_first[None, :] & ~id_in_chunk[chunk]
