"""Export embeddings (with raw ids), per-user meta contrastive weights, and top-k recommendations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cml_dgl.errors import CmlError
from cml_dgl.fsutil import atomic_dir, atomic_write_json, sha256_file
from cml_dgl.runs import LoadedRun

FORMATS = ("npy", "parquet", "csv")


@torch.no_grad()
def meta_contrastive_weights(run: LoadedRun, chunk: int = 1024, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-user weight ω_u^{K,k} of each auxiliary behavior k (paper Eq. 6, Figure 4a).

    Each user's contrastive loss is computed against the other users of its chunk (users in a
    seeded random order, ``chunk`` at a time, as in training's in-batch negatives); the meta
    network, in eval mode, maps (loss, e_u^k, e_u) to the weight. Empty for baselines and no-meta.
    """
    from cml_dgl.models.losses import contrastive_loss

    if run.meta is None or not run.model.has_behavior_views:
        return {}
    out = run.model(item_behavior=False)
    K = run.ds.n_behaviors
    cfg = run.cfg
    order = torch.as_tensor(np.random.default_rng(seed).permutation(run.ds.n_users), device=out.user.device)
    weights = {b: np.zeros(run.ds.n_users, dtype=np.float32) for b in run.ds.behaviors[:-1]}
    for start in range(0, run.ds.n_users, chunk):
        s = order[start:start + chunk]
        if len(s) < 2:
            s = order[-2:]
        anchor = out.user_beh[K - 1][s]
        for k, b in enumerate(run.ds.behaviors[:-1]):
            loss = contrastive_loss(anchor, out.user_beh[k][s], temperature=cfg["cl_temperature"],
                                    similarity=cfg["cl_similarity"], variant=cfg["cl_variant"],
                                    chunk_size=cfg["cl_chunk"], users=s)
            w = run.meta.cl_weights(loss, out.user_beh[k][s], out.user[s], k)
            weights[b][s.cpu().numpy()] = w.float().cpu().numpy()
    return weights


def _write_table(directory: Path, name: str, ids: np.ndarray, emb: np.ndarray, fmt: str,
                 columns: list[str] | None = None) -> list[Path]:
    cols = columns or [f"e{j}" for j in range(emb.shape[1])]
    if fmt == "npy":
        np.save(directory / f"{name}.npy", emb, allow_pickle=False)
        np.save(directory / f"{name}_ids.npy", ids, allow_pickle=False)
        return [directory / f"{name}.npy", directory / f"{name}_ids.npy"]
    import pandas as pd

    df = pd.DataFrame(emb, columns=cols)
    df.insert(0, "id", ids)
    path = directory / f"{name}.{fmt}"
    if fmt == "parquet":
        try:
            df.to_parquet(path, index=False)
        except ImportError:
            raise CmlError("--format parquet needs pyarrow (pip install pyarrow)") from None
    else:
        df.to_csv(path, index=False, float_format="%.8g")
    return [path]


def export_embeddings(run: LoadedRun, out: str | Path, fmt: str = "npy", per_behavior: bool = False,
                      overwrite: bool = False) -> dict[str, Any]:
    """Write user/item embeddings (float32, raw ids row-aligned), meta weights and a manifest."""
    if fmt not in FORMATS:
        raise CmlError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    ds = run.ds
    with torch.no_grad():
        run.model.eval()
        if per_behavior and not run.model.has_behavior_views:
            raise CmlError("--per-behavior needs a CML run (baselines have no behavior-specific embeddings)")
        o = run.model() if per_behavior else None
        user, item = (o.user, o.item) if o is not None else run.model.embeddings()
        tables: dict[str, tuple[np.ndarray, np.ndarray]] = {
            "users": (ds.user_ids, user.float().cpu().numpy()),
            "items": (ds.item_ids, item.float().cpu().numpy()),
        }
        if o is not None:
            for k, b in enumerate(ds.behaviors):
                tables[f"users_{b}"] = (ds.user_ids, o.user_beh[k].float().cpu().numpy())
                tables[f"items_{b}"] = (ds.item_ids, o.item_beh[k].float().cpu().numpy())
    weights = meta_contrastive_weights(run)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        files: list[Path] = []
        for name, (ids, emb) in tables.items():
            files += _write_table(tmp, name, ids, emb, fmt)
        if weights:
            names = list(weights)
            mat = np.stack([weights[b] for b in names], axis=1)
            files += _write_table(tmp, "meta_weights", ds.user_ids, mat, fmt,
                                  columns=[f"w_{b}" for b in names])
        manifest = {
            "format": fmt,
            "model": run.cfg["model"],
            "variant": run.cfg["variant"],
            "checkpoint": str(run.checkpoint),
            "epoch": run.info.get("epoch"),
            "dim": int(tables["users"][1].shape[1]),
            "n_users": ds.n_users,
            "n_items": ds.n_items,
            "behaviors": ds.behaviors,
            "score": "dot product of users and items rows",
            "tables": sorted(tables) + (["meta_weights"] if weights else []),
            "meta_weight_behaviors": list(weights),
            "id_map_checksum": ds.id_map_checksum(),
            "files": {p.name: sha256_file(p) for p in files},
        }
        atomic_write_json(tmp / "manifest.json", manifest)
    return manifest


def raw_user_index(run: LoadedRun, raw: str) -> int:
    ids = run.ds.user_ids
    try:
        key: Any = int(raw) if ids.dtype.kind in "iu" else raw
    except ValueError:
        raise CmlError(f"unknown user {raw!r}: this dataset's user ids are integers") from None
    hits = np.flatnonzero(ids == key)
    if len(hits) == 0:
        raise CmlError(f"unknown user {raw!r}: not in the dataset's user id map ({len(ids)} users)")
    return int(hits[0])


@torch.no_grad()
def recommend(run: LoadedRun, raw_user: str, k: int = 10, include_purchased: bool = False) -> list[dict[str, Any]]:
    """Top-k raw item ids with scores for one raw user id; training purchases excluded by default."""
    if k <= 0:
        raise CmlError(f"-k must be positive, got {k}")
    u = raw_user_index(run, raw_user)
    scorer = run.scorer()
    scores = scorer.score_users(torch.tensor([u], device=scorer.device))[0].float().cpu().numpy()
    if not include_purchased:
        bu, bi = run.ds.edges(run.ds.n_behaviors - 1)
        lo, hi = np.searchsorted(bu, [u, u + 1])  # edges are sorted by (behavior, user, item)
        scores[bi[lo:hi]] = -np.inf
    k = min(k, int(np.isfinite(scores).sum()))
    top = np.argpartition(-scores, k - 1)[:k] if k > 0 else np.array([], dtype=np.int64)
    top = top[np.lexsort((top, -scores[top]))]
    return [{"rank": r + 1, "item": run.ds.item_ids[i].item(), "score": float(scores[i])}
            for r, i in enumerate(top)]
