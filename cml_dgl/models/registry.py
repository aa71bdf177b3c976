"""The one table of models: name -> class, build options, config defaults, training strategy.

The CLI's ``--model`` choices, config validation (:mod:`cml_dgl.train.config`) and the model list
in ``docs/usage.md`` all come from :data:`REGISTRY` (a test compares the docs with it). A new
model is one :class:`~cml_dgl.models.base.Recommender` subclass and one line here; the contract
tests (``tests/contract.py``) then run over it.

Strategies (carried out by :mod:`cml_dgl.train.strategies`): ``meta`` is CML's three phases
(paper Eq. 8), ``pair`` one BPR step per batch of training edges, ``none`` no training (the model
is evaluated as built).

Search spaces (``search_space``, used by ``cml tune``): one distribution per config key
(:mod:`cml_dgl.models.search_space`); a model without one (nothing to tune, e.g. popularity) has
an empty space, and tune refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from cml_dgl.errors import CmlError
from cml_dgl.models.base import Recommender
from cml_dgl.models.baselines import MF, CascadingRank, History, ItemKNN, LightGCN, Popularity
from cml_dgl.models.cml import CML
from cml_dgl.models.search_space import Choice, Distribution, IntRange, LogUniform, Uniform

STRATEGIES = ("meta", "pair", "none")


@dataclass(frozen=True)
class ModelSpec:
    """One registered model. ``options`` go to ``cls.from_config``; ``defaults`` are config keys
    this model sets over ``presets/defaults.yaml`` (below any preset, file or ``--set``);
    ``search_space`` maps the config keys ``cml tune`` searches to their distributions."""

    name: str
    cls: type[Recommender]
    strategy: str
    summary: str
    options: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    search_space: Mapping[str, Distribution] = field(default_factory=dict)

    def build(self, ds: Any, cfg: dict[str, Any], device: torch.device) -> Recommender:
        return self.cls.from_config(ds, cfg, device, **self.options)


#: the pairwise baselines' own defaults (below presets): the settings of the LightGCN-merged rows of
#: issue 13's scoreboard, not the CML defaults' 10x faster cycle
_PAIR_DEFAULTS = {"dim": 64, "opt_base_lr": 0.001, "opt_max_lr": 0.005, "reg": 0.0001}
#: the learning rates of the pairwise baselines' AdamW cycle, and their L2 weight
_PAIR_SPACE: dict[str, Distribution] = {
    "dim": Choice((16, 32, 64, 128)),
    "reg": LogUniform(1e-5, 1e-1),
    "opt_base_lr": LogUniform(1e-4, 1e-2),
    "opt_max_lr": LogUniform(1e-3, 5e-2, at_least="opt_base_lr"),
}
_GRAPH_SPACE: dict[str, Distribution] = {"dim": _PAIR_SPACE["dim"], "n_layers": IntRange(1, 4),
                                         **{k: v for k, v in _PAIR_SPACE.items() if k != "dim"}}
#: around the default (issue 13): its learning-rate cycle, size, L2, contrastive weight, item bias and
#: the auxiliary behaviors' BPR draws (with ``edges`` those terms weigh about as many samples as the
#: auxiliary edges, so L2 and the rates are searched with it)
_CML_SPACE: dict[str, Distribution] = {
    "dim": Choice((32, 64, 128)),
    "n_layers": IntRange(1, 4),
    "reg": LogUniform(1e-4, 1e-1),
    "beta": LogUniform(1e-4, 1e-1),
    "cl_temperature": LogUniform(2.0, 64.0),
    "opt_base_lr": LogUniform(1e-3, 3e-2),
    "opt_max_lr": LogUniform(5e-3, 1e-1, at_least="opt_base_lr"),
    "item_bias": Choice((True, False)),
    "lr_clone": LogUniform(1e-5, 1e-3),
    "meta_opt_max_lr": LogUniform(1e-4, 1e-2, at_least="meta_opt_base_lr"),
    "aux_draws": Choice(("target", "edges")),
}
#: ItemKNN's neighbours and shrinkage, over the ranges Dacrema et al. (RecSys 2019) searched, the
#: neighbours widened past their 800 (Retailrocket's best trial chose 800, the grid's edge)
_KNN_SPACE: dict[str, Distribution] = {
    "knn_neighbors": Choice((5, 10, 20, 50, 100, 200, 400, 800, 1600)),
    "knn_shrink": Choice((0.0, 1.0, 10.0, 50.0, 100.0, 500.0, 1000.0)),
}
#: CascadingRank's two restart weights (its authors' settings, 0 / 0.9 and 0.3 / 0.6, lie on the grid)
_CASCADE_SPACE: dict[str, Distribution] = {
    "cascade_beta": Uniform(0.0, 0.95, 0.05),
    "cascade_alpha": Uniform(0.0, 0.5, 0.05, sum_at_most=("cascade_beta", 1.0)),
}

REGISTRY: dict[str, ModelSpec] = {s.name: s for s in (
    ModelSpec("cml", CML, "meta", "CML (the paper's model): behavior-aware encoder, contrastive views, "
              "meta-learned weights", search_space=_CML_SPACE),
    ModelSpec("pop", Popularity, "none", "items by their number of training interactions, every behavior"),
    ModelSpec("pop-target", Popularity, "none", "items by their number of training purchases",
              options={"target_only": True}),
    ModelSpec("mf", MF, "pair", "BPR matrix factorisation on the purchases", defaults=_PAIR_DEFAULTS,
              search_space=_PAIR_SPACE),
    ModelSpec("lightgcn", LightGCN, "pair", "LightGCN on the purchase graph", defaults=_PAIR_DEFAULTS,
              search_space=_GRAPH_SPACE),
    ModelSpec("lightgcn-merged", LightGCN, "pair", "LightGCN on every behavior merged into one graph",
              options={"merged": True}, defaults=_PAIR_DEFAULTS, search_space=_GRAPH_SPACE),
    ModelSpec("history", History, "none", "the user's own auxiliary-behavior items first (stronger behavior, "
              "then more behaviors), then items by purchase popularity"),
    ModelSpec("itemknn", ItemKNN, "none", "item-item cosine neighbours (shrunk, top-k per item) over every "
              "behavior merged", search_space=_KNN_SPACE),
    ModelSpec("cascading-rank", CascadingRank, "none", "CascadingRank: random walks with restart on the "
              "behavior graphs in cascade order, each restarting to the previous one's ranking",
              search_space=_CASCADE_SPACE),
)}

MODELS: tuple[str, ...] = tuple(REGISTRY)


def markdown_table() -> str:
    """The rows of the model table in ``docs/usage.md`` (between its ``models:begin/end`` marks)."""
    return "\n".join(f"| `{s.name}` | `{s.strategy}` | {s.summary} |" for s in REGISTRY.values())


def search_space_table() -> str:
    """The rows of the search-space table in ``docs/usage.md`` (between its ``search-spaces:begin/end``
    marks): one per model and key, models without a space listed as such."""
    rows = []
    for s in REGISTRY.values():
        rows += [f"| `{s.name}` | `{key}` | {dist.describe()} |" for key, dist in s.search_space.items()] or \
            [f"| `{s.name}` | | none: nothing to tune |"]
    return "\n".join(rows)


def spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise CmlError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}") from None


def build(ds: Any, cfg: dict[str, Any], device: torch.device) -> Recommender:
    """The model of ``cfg["model"]`` for ``ds`` on ``device``."""
    return spec(cfg["model"]).build(ds, cfg, device)
