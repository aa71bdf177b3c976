"""Bulk top-k recommendation from user and item embeddings: :func:`recommend_topk`.

For every requested user u the items i with the k highest scores s(u, i) = <user_emb[u], item_emb[i]>
among the items not excluded for u, scored chunk by chunk (never a users x items matrix), ordered by
score and, among equal scores, by item id, exactly: an item ties with all items of the same score,
so which tied items make the cut at rank k is decided by item id, never by torch.topk's order.

A user's scores do not depend on which or how many users are asked for with it: every chunk is one
matrix product of the same shape (the last one padded with zero rows). BLAS picks its kernel, and so
the order of its additions, by shape: a 2-user product and a 559-user one can round a score
differently in the last bit, which would reorder near-ties.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from cml_dgl.errors import CmlError

CHUNK_ENTRIES = 1 << 20  # scores held at once (chunk users x n_items): 4 MiB stay in the cache


def _csr_parts(exclude: Any, n_users: int, n_items: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(indptr, indices) of a users x items scipy.sparse or torch sparse CSR matrix, on ``device``."""
    if isinstance(exclude, torch.Tensor):
        if exclude.layout != torch.sparse_csr:
            raise TypeError("exclude must be a sparse CSR matrix (scipy.sparse or torch.sparse_csr)")
        indptr, indices, shape = exclude.crow_indices(), exclude.col_indices(), tuple(exclude.shape)
    else:
        csr = exclude.tocsr()
        indptr, indices, shape = torch.as_tensor(csr.indptr), torch.as_tensor(csr.indices), csr.shape
    if tuple(shape) != (n_users, n_items):
        raise ValueError(f"exclude has shape {tuple(shape)}, the embeddings ({n_users}, {n_items})")
    return indptr.to(device=device, dtype=torch.int64), indices.to(device=device, dtype=torch.int64)


def csr_row_entries(indptr: torch.Tensor, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(position in ``users``, entry index into the CSR arrays) of every stored entry of the rows
    ``users`` of a CSR matrix with row offsets ``indptr``, row after row."""
    lo = indptr[users]
    counts = indptr[users + 1] - lo
    total = int(counts.sum())
    rows = torch.repeat_interleave(torch.arange(len(users), device=users.device), counts, output_size=total)
    shift = lo - (torch.cumsum(counts, 0) - counts)  # entry = position in the concatenation + shift of its row
    return rows, torch.arange(total, device=users.device) + torch.repeat_interleave(shift, counts, output_size=total)


def _excluded(indptr: torch.Tensor, indices: torch.Tensor, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row in the chunk, item) of every excluded entry of ``users``' rows."""
    rows, entries = csr_row_entries(indptr, users)
    return rows, indices[entries]


def exact_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows' top-k (items, scores): by score descending, equal scores by item id ascending.

    A tie crosses the cut exactly when the (k+1)-th best score equals the k-th: only those rows
    are selected again, taking the tied items with the lowest ids."""
    n_items = scores.shape[1]
    values, items = torch.topk(scores, min(k + 1, n_items), dim=1)
    if n_items > k:
        tied = values[:, k] == values[:, k - 1]
        values, items = values[:, :k], items[:, :k]
        if bool(tied.any()):
            sub, cut = scores[tied], values[tied][:, -1:]
            above, equal = sub > cut, sub == cut
            need = k - above.sum(1, keepdim=True)
            take = above | (equal & (torch.cumsum(equal, 1) <= need))
            picked = take.nonzero()[:, 1].view(-1, k)  # row by row, ascending item id
            items[tied], values[tied] = picked, sub.gather(1, picked)
    items, perm = items.sort(dim=1)
    values = values.gather(1, perm)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    return items.gather(1, order), values.gather(1, order)


@torch.no_grad()
def recommend_topk(user_emb: torch.Tensor, item_emb: torch.Tensor,
                   users: torch.Tensor | np.ndarray | Sequence[int], k: int, exclude: Any = None,
                   chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` items of each of ``users`` (internal ids) by s(u, i) = <user_emb[u], item_emb[i]>.

    ``exclude``: a users x items sparse CSR matrix (scipy.sparse or torch ``sparse_csr``) whose
    non-zero entries are never recommended (e.g. the training purchases), or None. ``chunk``:
    users scored at once (default: as many as keep ``CHUNK_ENTRIES`` scores).

    Returns ``(items, scores)`` of shape (len(users), min(k, n_items)) on ``user_emb``'s device:
    int64 item ids and their scores, each row by score descending and equal scores by ascending
    item id. Where a user has fewer allowed items than that, the row ends in item -1, score -inf.
    """
    if not (bool(torch.isfinite(user_emb).all()) and bool(torch.isfinite(item_emb).all())):
        raise CmlError("the embeddings hold NaN or infinite values (the training diverged); nothing to rank")
    n_items = item_emb.shape[0]
    step = chunk or max(1, CHUNK_ENTRIES // n_items)
    item_t = item_emb.t().contiguous()
    block = user_emb.new_zeros((step, user_emb.shape[1]))
    # finite embeddings give finite scores unless a dot product can overflow (inf - inf = NaN)
    may_overflow = float(user_emb.abs().max()) * float(item_emb.abs().max()) * user_emb.shape[1] > 1e38

    def rows(u: torch.Tensor) -> torch.Tensor:
        block[:len(u)] = user_emb[u]
        block[len(u):] = 0
        scores = (block @ item_t)[:len(u)]  # one product shape for every chunk: see the module docstring
        return torch.nan_to_num_(scores, nan=float("-inf")) if may_overflow else scores

    return _topk(rows, user_emb.shape[0], n_items, user_emb.device, user_emb.dtype, users, k, exclude, step)


def _topk(rows: Any, n_users: int, n_items: int, device: torch.device, dtype: torch.dtype, users: Any, k: int,
          exclude: Any, step: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked loop of both top-k functions: ``rows(u)`` gives the score rows of users ``u``."""
    if k < 1:
        raise CmlError(f"-k must be positive, got {k}")
    users = torch.as_tensor(np.asarray(users, dtype=np.int64) if not isinstance(users, torch.Tensor)
                            else users, device=device).long().reshape(-1)
    if users.numel() and (int(users.min()) < 0 or int(users.max()) >= n_users):
        raise ValueError(f"users must lie in [0, {n_users})")
    kk = min(k, n_items)
    items_out = torch.full((len(users), kk), -1, dtype=torch.int64, device=device)
    scores_out = torch.full((len(users), kk), float("-inf"), dtype=dtype, device=device)
    if kk == 0 or len(users) == 0:
        return items_out, scores_out
    csr = _csr_parts(exclude, n_users, n_items, device) if exclude is not None else None
    step = step or max(1, CHUNK_ENTRIES // n_items)
    for start in range(0, len(users), step):
        u = users[start:start + step]
        scores = rows(u)
        if csr is not None:
            r, c = _excluded(*csr, u)
            scores[r, c] = float("-inf")
        items, values = exact_topk(scores, kk)
        items[values == float("-inf")] = -1
        items_out[start:start + step], scores_out[start:start + step] = items, values
    return items_out, scores_out


@torch.no_grad()
def scorer_topk(scorer: Any, users: torch.Tensor | np.ndarray | Sequence[int], k: int, exclude: Any = None,
                chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`recommend_topk` over the score rows of a :class:`~cml_dgl.models.base.Scorer`
    (models whose scores are not embedding products: ItemKNN, CascadingRank, the history rule),
    with the same ties, exclusions and output; its rows do not depend on the chunk by contract."""
    return _topk(lambda u: scorer.score_users(u).float(), scorer.n_users, scorer.n_items, scorer.device,
                 torch.float32, users, k, exclude, chunk)
