"""Figures and a Markdown summary of a training run, from its ``metrics.jsonl``.

``metrics.jsonl`` holds one JSON object per epoch::

    {"epoch": 3, "seconds": 12.5, "losses": {"bpr": 0.41, "cl": 2.1},
     "valid": {"hr@10": 0.31, "ndcg@10": 0.18}, "test": {...}}

``seconds`` is the wall time of that epoch; ``valid`` is absent where the dataset has no validation
split, ``test`` is optional. The best epoch is the one with the highest validation ``ndcg@10`` (the
earliest on ties); test metrics never select it. Figures are drawn with matplotlib's Agg canvas
(no pyplot, no global backend change); every output is written to a temporary file and renamed.
"""

from __future__ import annotations

import io
import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cml_dgl.errors import CmlError
from cml_dgl.fsutil import atomic_write_bytes
from cml_dgl.outputs import check_output, write_mark

SELECT_METRIC = "ndcg@10"
_MAX_CASE_USERS = 8


@dataclass
class EpochRecord:
    epoch: int
    seconds: float
    losses: dict[str, float]
    valid: dict[str, float] | None
    test: dict[str, float] | None


def _number_map(obj: Any, where: str, field: str) -> dict[str, float]:
    if not isinstance(obj, dict):
        raise CmlError(f"{where}: field {field!r} must be an object of numbers, got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise CmlError(f"{where}: {field}[{k!r}] must be a number, got {v!r}")
        out[str(k)] = float(v)
    return out


def read_metrics(path: str | Path) -> list[EpochRecord]:
    """Parse ``metrics.jsonl``; CmlError names the file and line of the first bad record."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CmlError(f"{path}: missing (the run has logged no epochs)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CmlError(f"{path}: cannot read ({e})") from None
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CmlError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise CmlError(f"{where}: expected a JSON object per line, got {type(obj).__name__}")
        epoch = obj.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise CmlError(f"{where}: field 'epoch' must be an integer, got {epoch!r}")
        seconds = obj.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or not seconds >= 0:
            raise CmlError(f"{where}: field 'seconds' must be a non-negative number, got {seconds!r}")
        if "losses" not in obj:
            raise CmlError(f"{where}: field 'losses' is missing")
        records.append(EpochRecord(
            epoch=epoch, seconds=float(seconds),
            losses=_number_map(obj["losses"], where, "losses"),
            valid=_number_map(obj["valid"], where, "valid") if obj.get("valid") is not None else None,
            test=_number_map(obj["test"], where, "test") if obj.get("test") is not None else None,
        ))
    if not records:
        raise CmlError(f"{path}: empty (the run has logged no epochs)")
    return records


def best_epoch(records: list[EpochRecord], metric: str = SELECT_METRIC) -> EpochRecord | None:
    """The record with the highest finite validation ``metric`` (earliest on ties), or None."""
    best = None
    for r in records:
        v = (r.valid or {}).get(metric)
        if v is not None and math.isfinite(v) and (best is None or v > best.valid[metric]):
            best = r
    return best


def _figure(n_panels: int, ncols: int = 3, panel: tuple[float, float] = (4.2, 3.2)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = max(1, min(ncols, n_panels))
    nrows = max(1, math.ceil(n_panels / ncols))
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:max(n_panels, 1)]


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _names(dicts) -> list[str]:
    seen: dict[str, None] = {}
    for d in dicts:
        for k in d or {}:
            seen.setdefault(k, None)
    return list(seen)


def _plot_losses(records: list[EpochRecord], path: Path) -> Path:
    names = _names(r.losses for r in records)
    fig, axes = _figure(max(len(names), 1))
    if not names:
        axes[0].text(0.5, 0.5, "no losses logged", ha="center", va="center", transform=axes[0].transAxes)
    for ax, name in zip(axes, names):
        pts = [(r.epoch, r.losses[name]) for r in records if name in r.losses]
        ax.plot(*zip(*pts), marker="o", markersize=3)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    fig.suptitle("Training losses")
    return _save(fig, path)


def _plot_metrics(records: list[EpochRecord], best: EpochRecord | None, path: Path) -> Path:
    names = _names([r.valid for r in records] + [r.test for r in records])
    fig, axes = _figure(max(len(names), 1))
    if not names:
        axes[0].text(0.5, 0.5, "no evaluation metrics logged", ha="center", va="center",
                     transform=axes[0].transAxes)
    for ax, name in zip(axes, names):
        for split, style in (("valid", "-"), ("test", "--")):
            pts = [(r.epoch, getattr(r, split)[name]) for r in records
                   if getattr(r, split) and name in getattr(r, split)]
            if pts:
                ax.plot(*zip(*pts), style, marker="o", markersize=3, label=split)
        if best is not None:
            ax.axvline(best.epoch, color="grey", linestyle=":", label=f"best (epoch {best.epoch})")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("Evaluation metrics")
    return _save(fig, path)


def _check_weights(meta_weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not meta_weights:
        raise CmlError("meta_weights: expected at least one auxiliary behavior")
    out = {}
    n = None
    for name, w in meta_weights.items():
        arr = np.asarray(w, dtype=np.float64)
        if arr.ndim != 1 or arr.size == 0:
            raise CmlError(f"meta_weights[{name!r}]: expected a non-empty 1-d per-user vector, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise CmlError(f"meta_weights[{name!r}]: holds NaN or infinite values")
        if n is not None and arr.size != n:
            raise CmlError(f"meta_weights[{name!r}]: has {arr.size} users, the others {n}")
        n = arr.size
        out[str(name)] = arr
    return out


def _case_users(weights: dict[str, np.ndarray], user_ids: np.ndarray | None
                ) -> tuple[np.ndarray, list[str]]:
    """A few users spread over the internal ids, and their labels: the raw id where known."""
    n_users = len(next(iter(weights.values())))
    users = np.unique(np.linspace(0, n_users - 1, min(_MAX_CASE_USERS, n_users)).astype(int))
    if user_ids is not None and len(user_ids) == n_users:
        return users, [f"user {user_ids[u]}" for u in users]
    return users, [f"user #{u} (internal)" for u in users]


def _plot_meta_weights(weights: dict[str, np.ndarray], path: Path,
                       user_ids: np.ndarray | None = None) -> Path:
    """Paper Fig. 4a: per-behavior distribution (violin + box) and a few users' weights."""
    names = list(weights)
    n_users = len(next(iter(weights.values())))
    fig, (ax_d, ax_c) = _figure(2, ncols=2, panel=(max(4.2, 1.2 * len(names) + 2), 3.6))
    data = [weights[k] for k in names]
    pos = np.arange(1, len(names) + 1)
    if all(np.ptp(d) > 0 for d in data):
        ax_d.violinplot(data, positions=pos, showextrema=False)
    ax_d.boxplot(data, positions=pos, widths=0.15, showfliers=False)
    ax_d.set_xticks(pos, [f"{k}\nmean {weights[k].mean():.3f}" for k in names])
    ax_d.set_ylabel("meta contrastive weight")
    ax_d.set_title(f"Distribution over {n_users} users")
    ax_d.grid(alpha=0.3, axis="y")

    users, labels = _case_users(weights, user_ids)
    grid = np.stack([weights[k][users] for k in names], axis=1)
    im = ax_c.imshow(grid, aspect="auto", cmap="viridis")
    for (r, c), v in np.ndenumerate(grid):
        ax_c.text(c, r, f"{v:.3f}", ha="center", va="center", color="white", fontsize="small")
    ax_c.set_xticks(np.arange(len(names)), names)
    ax_c.set_yticks(np.arange(len(users)), labels)
    ax_c.set_title("Sampled users")
    fig.colorbar(im, ax=ax_c)
    fig.suptitle("Learned meta contrastive weights per auxiliary behavior")
    return _save(fig, path)


def _fmt_metrics(m: dict[str, float] | None) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in (m or {}).items()) or "n/a"


def _run_selection(run_dir: Path, records: list[EpochRecord]) -> tuple[EpochRecord | None, str, dict | None]:
    """The best epoch as the trainer chose it (``summary.json``), else by validation NDCG@10.

    Returns (record, how it was selected, test metrics at that epoch if the run measured them).
    """
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        summary = None
    if isinstance(summary, dict) and "best_epoch" in summary:
        best = next((r for r in records if r.epoch == summary["best_epoch"]), None)
        if best is not None:
            how = f"highest {summary.get('monitor', 'valid')} {summary.get('monitor_metric', SELECT_METRIC)}"
            if summary.get("monitor") == "test":
                how += "; chosen on the test set, so its test figures are optimistic"
            return best, how, best.test or summary.get("test_at_best")
    best = best_epoch(records)
    return best, f"highest validation {SELECT_METRIC}; test metrics do not select it", \
        best.test if best is not None else None


def _weights_table(weights: dict[str, np.ndarray], user_ids: np.ndarray | None) -> list[str]:
    users, labels = _case_users(weights, user_ids)
    names = list(weights)
    rows = ["| user | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    rows += [f"| {label.removeprefix('user ')} | " + " | ".join(f"{weights[k][u]:.4f}" for k in names) + " |"
             for u, label in zip(users, labels)]
    return rows


def _markdown(run_dir: Path, records: list[EpochRecord], best: EpochRecord | None,
              figures: dict[str, Path], how: str = "", test: dict | None = None,
              weights: dict[str, np.ndarray] | None = None, user_ids: np.ndarray | None = None) -> str:
    total = sum(r.seconds for r in records)
    lines = [f"# Run report: `{run_dir.name}`", "",
             f"- epochs: {len(records)} (epoch {records[0].epoch} to {records[-1].epoch})",
             f"- total training time: {total:.1f} s ({total / len(records):.2f} s per epoch)"]
    if best is None:
        has_valid = any(r.valid for r in records)
        why = (f"no validation {SELECT_METRIC} logged" if has_valid else "no validation split")
        lines.append(f"- best epoch: none selected ({why}); last epoch {records[-1].epoch}: "
                     f"test {_fmt_metrics(records[-1].test)}")
    else:
        lines += [f"- best epoch: {best.epoch} ({how})",
                  f"  - valid: {_fmt_metrics(best.valid)}",
                  f"  - test: {_fmt_metrics(test)}"]
    last_losses = _fmt_metrics(records[-1].losses)
    lines += [f"- final losses: {last_losses}", "", "## Figures", ""]
    titles = {"losses": "Training losses", "metrics": "Evaluation metrics",
              "meta_weights": "Meta contrastive weights (paper Fig. 4a)"}
    for key, p in figures.items():
        lines += [f"### {titles[key]}", "", f"![{titles[key]}]({p.name})", ""]
        if key == "meta_weights" and weights is not None:
            lines += ["Sampled users (raw ids, as in the input log):", "",
                      *_weights_table(weights, user_ids), ""]
    return "\n".join(lines)


def check_report_dir(run_dir: Path, out_dir: Path | None) -> Path:
    """The folder a report goes to: ``run_dir`` itself, or ``out_dir``, which must be new, empty,
    a report folder or a run directory (its other files are never touched)."""
    run_dir = Path(run_dir)
    if out_dir is None:
        return run_dir
    out = Path(out_dir)
    try:
        same = out.resolve() == run_dir.resolve()
    except (OSError, RuntimeError):
        same = False
    if same:
        return out
    return check_output(out, "report", inputs=[run_dir], what="--out", also=("report", "run"))


def write_report(run_dir: Path, out_dir: Path | None = None,
                 meta_weights: dict[str, np.ndarray] | None = None,
                 user_ids: np.ndarray | None = None) -> dict[str, Path]:
    """Write ``losses.png``, ``metrics.png``, optionally ``meta_weights.png``, and ``report.md``.

    ``meta_weights`` maps each auxiliary behavior to its per-user weight vector, ``user_ids`` the
    internal user ids to the raw ones that label the sampled users. A new ``out_dir`` is marked as
    a report folder (:func:`check_report_dir` says where a report may go). Returns the written
    paths under the keys ``losses``, ``metrics``, ``meta_weights`` (if drawn) and ``report``.
    """
    run_dir = Path(run_dir)
    out = check_report_dir(run_dir, out_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    weights = _check_weights(meta_weights) if meta_weights is not None else None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CmlError("reports need matplotlib: pip install 'cml-dgl[report]'") from None
    new = not out.exists() or not any(out.iterdir())
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CmlError(f"{out}: cannot create the report directory ({e.strerror})") from None
    if new:
        write_mark(out, "report")
    best, how, test = _run_selection(run_dir, records)
    paths = {"losses": _plot_losses(records, out / "losses.png"),
             "metrics": _plot_metrics(records, best, out / "metrics.png")}
    if weights is not None:
        paths["meta_weights"] = _plot_meta_weights(weights, out / "meta_weights.png", user_ids)
    report = out / "report.md"
    atomic_write_bytes(report, _markdown(run_dir, records, best, paths, how, test, weights,
                                         user_ids).encode())
    paths["report"] = report
    return paths
