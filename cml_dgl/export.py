"""Export embeddings (with raw ids), per-user meta contrastive weights, and top-k recommendations."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from cml_dgl.data.dataset import dropped_user_ids
from cml_dgl.errors import CmlError
from cml_dgl.fsutil import atomic_dir, atomic_write_json, sha256_file
from cml_dgl.outputs import check_output, write_mark
from cml_dgl.runs import LoadedRun
from cml_dgl.train.config import quote

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
    check_output(out, "export", overwrite=overwrite, inputs=[run.run_dir, run.checkpoint, run.ds.path])
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
        write_mark(tmp, "export")
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


def user_indices(run: LoadedRun, raw: Sequence[str], where: Sequence[str] | None = None) -> np.ndarray:
    """Internal indices of raw user ids (as typed: strings); CmlError naming the first unknown one
    (``where[j]`` says where id j came from, e.g. ``users.txt: line 7``)."""
    ids = run.ds.user_ids
    if ids.dtype.kind in "iu":
        keys = np.zeros(len(raw), dtype=np.int64)
        known = np.ones(len(raw), dtype=bool)
        for j, r in enumerate(raw):
            try:
                keys[j] = int(r)
            except (ValueError, OverflowError):  # not an integer, or beyond int64: no such user
                known[j] = False
    else:
        keys, known = np.asarray([str(r) for r in raw], dtype=str), np.ones(len(raw), dtype=bool)
    order = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids[order], keys).clip(max=max(len(ids) - 1, 0))
    found = order[pos] if len(ids) else np.zeros(len(raw), dtype=np.int64)
    if len(ids):
        known &= ids[found] == keys
    else:
        known[:] = False
    if not known.all():
        bad = np.flatnonzero(~known)
        j = int(bad[0])
        origin = f"{where[j]}: " if where is not None else ""
        more = f" ({len(bad):,} unknown users in all)" if len(bad) > 1 else ""
        kind = "; this dataset's user ids are integers" if ids.dtype.kind in "iu" else ""
        dropped = dropped_user_ids(run.ds)
        if dropped is not None and np.any(dropped.astype(str) == str(raw[j])):
            opts = run.ds.options
            rules = ", ".join(f"{k}={opts[k]}" for k in ("min_purchases", "min_user_interactions",
                                                          "min_item_interactions") if k in opts)
            raise CmlError(f"{origin}user {quote(repr(str(raw[j])), 80)}: in the input log, but the "
                           f"preprocessing filters dropped it ({rules}); the model has no embedding for it")
        raise CmlError(f"{origin}unknown user {quote(repr(str(raw[j])), 80)}: not in the dataset's user id "
                       f"map ({len(ids):,} users{kind}){more}")
    return found.astype(np.int64)


def raw_user_index(run: LoadedRun, raw: str) -> int:
    return int(user_indices(run, [raw])[0])


@torch.no_grad()
def recommend_users(run: LoadedRun, users: np.ndarray, k: int = 10, include_purchased: bool = False,
                    chunk: int | None = None) -> dict[str, np.ndarray]:
    """Top-k for many internal users from one encoder pass: columns ``user`` and ``item`` (raw ids),
    ``rank`` (1-based) and ``score`` (float64, the exact float32 score), rank by rank per user; the
    user's training purchases are excluded unless ``include_purchased``. A user with fewer than k
    allowed items gets fewer rows."""
    if k <= 0:
        raise CmlError(f"-k must be positive, got {k}")
    exclude = None if include_purchased else run.ds.csr(run.ds.n_behaviors - 1)
    run.model.eval()
    items, scores = run.model.recommend(users, k, exclude=exclude, chunk=chunk)
    items, scores = items.cpu().numpy(), scores.double().cpu().numpy()
    keep = items >= 0
    row = np.repeat(np.arange(len(users)), keep.sum(1))
    return {"user": run.ds.user_ids[np.asarray(users, dtype=np.int64)[row]],
            "rank": (np.cumsum(keep, axis=1)[keep]).astype(np.int64),
            "item": run.ds.item_ids[items[keep]], "score": scores[keep]}


def recommend(run: LoadedRun, raw_user: str, k: int = 10, include_purchased: bool = False) -> list[dict[str, Any]]:
    """Top-k raw item ids with scores for one raw user id; training purchases excluded by default."""
    if k <= 0:
        raise CmlError(f"-k must be positive, got {k}")
    table = recommend_users(run, user_indices(run, [raw_user]), k=k, include_purchased=include_purchased)
    return [{"rank": int(r), "item": i.item(), "score": float(sc)}
            for r, i, sc in zip(table["rank"], table["item"], table["score"])]


REC_FORMATS = ("csv", "jsonl", "parquet")


def recommendations_bytes(table: dict[str, np.ndarray], fmt: str) -> bytes:
    """The table as CSV (header ``user,rank,item,score``), JSON lines or Parquet; scores at full
    precision (the shortest text that reads back as the same float)."""
    if fmt == "jsonl":
        lines = (json.dumps({"user": u, "rank": r, "item": i, "score": s})
                 for u, r, i, s in zip(table["user"].tolist(), table["rank"].tolist(),
                                       table["item"].tolist(), table["score"].tolist()))
        return "".join(line + "\n" for line in lines).encode()
    import pandas as pd

    df = pd.DataFrame({c: table[c] for c in ("user", "rank", "item", "score")})
    if fmt == "csv":
        return df.to_csv(index=False, float_format=None, lineterminator="\n").encode()
    if fmt == "parquet":
        buf = io.BytesIO()
        try:
            df.to_parquet(buf, index=False)
        except ImportError:
            raise CmlError("--format parquet needs pyarrow (pip install pyarrow)") from None
        return buf.getvalue()
    raise CmlError(f"unknown recommendation format {fmt!r}; choose one of {', '.join(REC_FORMATS)}")
