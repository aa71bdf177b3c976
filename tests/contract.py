"""The contract every registered model passes (cf. implicit's shared recommender tests).

:class:`RecommenderContract` is a mixin: ``tests/test_contract.py`` makes one test class per entry
of :data:`cml_dgl.models.registry.REGISTRY`, so a new model gets every test here by registering.
Each class trains its model once (class-scoped fixture) on a small synthetic shop with
popularity and taste structure, through the real trainer and run directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cml_dgl.data.synth import synthetic_dataset
from cml_dgl.errors import CmlError
from cml_dgl.eval.evaluate import evaluate
from cml_dgl.models import registry
from cml_dgl.runs import load_run
from cml_dgl.train import config
from cml_dgl.train.trainer import Trainer

# sizes: a few seconds per model on 2 cores
N_USERS, N_ITEMS, N_EDGES = 300, 400, 9_000
RANDOM_HR10 = 0.10  # the positive among 1 + 99 stored candidates, uniformly at random


def contract_dataset():
    return synthetic_dataset(N_USERS, N_ITEMS, N_EDGES, seed=11)


def train_run(ds, name: str, run_dir: Path, seed: int = 5, sets: tuple[str, ...] = ()):
    """Train ``name`` with the contract's short schedule (and config ``sets``); returns (trainer,
    metric rows)."""
    cfg = config.resolve(overrides=[
        f"model={name}", f"seed={seed}", "epochs=4", "patience=4", "batch_size=64", "meta_batch=32",
        "meta_samples=8", "opt_base_lr=0.01", "opt_max_lr=0.05", "device=cpu", "backend=torch", *sets])
    tr = Trainer(ds, cfg, run_dir, quiet=True)
    tr.prepare_run_dir()
    tr.fit()
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return tr, [{k: v for k, v in r.items() if k not in ("seconds", "timings")} for r in rows]


class RecommenderContract:
    """Tests every model passes; subclasses set ``model_name``."""

    model_name: str = ""
    #: config items over the contract's schedule (a model's options under test)
    sets: tuple[str, ...] = ()

    @pytest.fixture(scope="class")
    def trained(self, tmp_path_factory):
        ds = contract_dataset()
        root = tmp_path_factory.mktemp(f"contract-{self.model_name}")
        tr, rows = train_run(ds, self.model_name, root / "run", sets=self.sets)
        return ds, tr, rows, root

    def test_registered_with_a_known_strategy(self):
        spec = registry.spec(self.model_name)
        assert spec.strategy in registry.STRATEGIES and spec.summary

    def test_embeddings_are_finite_with_the_documented_shapes(self, trained):
        ds, tr, _, _ = trained
        with torch.no_grad():
            user, item = tr.model.embeddings()
        assert user.dim() == item.dim() == 2
        assert user.shape[0] == ds.n_users and item.shape[0] == ds.n_items and user.shape[1] == item.shape[1]
        assert torch.isfinite(user).all() and torch.isfinite(item).all()

    def test_trains_and_beats_a_random_ranking(self, trained):
        ds, tr, rows, _ = trained
        if tr.strategy.trains:
            assert tr.model.trainable and len(rows) == 4
            assert all(np.isfinite(v) for r in rows for v in r["losses"].values())
        else:
            assert len(rows) == 1
        hr = evaluate(ds, tr.scorer(), split="test", protocol="sampled", ks=(10,))[0]["metrics"]["hr@10"]
        # three standard deviations above a random ranking's HR@10 over this many users
        bar = RANDOM_HR10 + 3 * np.sqrt(RANDOM_HR10 * (1 - RANDOM_HR10) / len(ds.test))
        assert hr > bar, f"{self.model_name}: test HR@10 {hr:.3f} is not above a random ranking's ({bar:.3f})"

    def test_the_same_seed_gives_the_same_metrics(self, trained):
        ds, _, rows, root = trained
        _, again = train_run(ds, self.model_name, root / "again", sets=self.sets)
        assert again == rows

    def test_a_checkpoint_round_trip_gives_identical_scores(self, trained):
        ds, tr, _, root = trained
        run = load_run(root / "run", "last", dataset=ds)
        users = torch.arange(ds.n_users)
        items = torch.randint(0, ds.n_items, (ds.n_users, 7), generator=torch.Generator().manual_seed(0))
        tr.model.eval()
        assert torch.equal(run.model.score(users, items), tr.model.score(users, items))
        assert torch.equal(run.model.score(users, items[:, 0]), run.model.score(users, items)[:, 0])

    def test_recommend_excludes_items_and_handles_any_k(self, trained):
        ds, tr, _, _ = trained
        exclude = ds.csr(ds.n_behaviors - 1)
        users = np.arange(ds.n_users)
        items, scores = tr.model.recommend(users, 10, exclude=exclude, chunk=64)
        assert items.shape == scores.shape == (ds.n_users, 10)
        for u in range(ds.n_users):
            assert not set(items[u].tolist()) & set(exclude[u].indices.tolist())
        assert (scores[:, :-1] >= scores[:, 1:]).all()
        whole, whole_scores = tr.model.recommend(users[:5], ds.n_items + 50, exclude=exclude)
        assert whole.shape == (5, ds.n_items)
        for u in range(5):
            n_admissible = ds.n_items - len(exclude[u].indices)
            got = whole[u][whole[u] >= 0]
            assert len(got) == n_admissible == len(set(got.tolist()))
            assert torch.isinf(whole_scores[u, n_admissible:]).all()
        # chunking does not change the result
        one, _ = tr.model.recommend(users, 10, exclude=exclude, chunk=ds.n_users)
        assert torch.equal(one, items)
        with pytest.raises(CmlError, match="k must be positive"):
            tr.model.recommend(users, 0)
