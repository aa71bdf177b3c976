"""Layered run configuration: defaults < the model's defaults < presets < a user YAML file <
``--set key=value``.

Every key has a default in ``presets/defaults.yaml``; the model's registry entry may set some of
them (:mod:`cml_dgl.models.registry`); a later layer may only set known keys, with a value of the
default's type (an int where a float is expected is accepted). The resolved config is saved as
``config.yaml`` in the run directory. The admissible values of each choice key come from the
module that defines them (:data:`CHOICES`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml

from cml_dgl.errors import CmlError
from cml_dgl.eval.metrics import TIE_RULES
from cml_dgl.graph.backends import BACKENDS, NORMS
from cml_dgl.models import losses
from cml_dgl.models.cml import ACTIVATIONS, VARIANTS
from cml_dgl.models.registry import MODELS, REGISTRY
from cml_dgl.train.devices import DEVICES
from cml_dgl.train.draws.factory import SAMPLERS

PRESETS = ("retailrocket", "ijcai15", "tmall", "official", "demo")
CHOICES: dict[str, tuple[str, ...]] = {
    "model": MODELS,
    "variant": VARIANTS,
    "backend": BACKENDS,
    "device": DEVICES,
    "sampler": SAMPLERS,
    "activation": ACTIVATIONS,
    "norm": tuple(NORMS),
    "meta_optimizer": ("adamw", "sgd"),
    "cl_variant": losses.VARIANTS,
    "cl_similarity": losses.SIMILARITIES,
    "monitor": ("valid", "test"),
    "monitor_metric": ("ndcg@10", "hr@10"),
    "tie_rule": TIE_RULES,
    "meta_users": ("auto", "rule"),
}
POSITIVE = ("dim", "batch_size", "meta_batch", "meta_samples", "cl_chunk", "opt_step_up",
            "opt_step_down", "meta_step_up", "meta_step_down", "patience", "knn_neighbors", "cascade_max_iter")
NON_NEGATIVE = ("epochs", "n_layers", "reg", "beta", "grad_clip", "lr_clone", "opt_base_lr",
                "opt_max_lr", "meta_opt_base_lr", "meta_opt_max_lr", "meta_dropout",
                "opt_weight_decay", "meta_opt_weight_decay", "meta_gamma", "knn_shrink", "cascade_tolerance")
UNIT = ("cascade_alpha", "cascade_beta")
FRACTIONS = ("cl_sample_ratio",)  # in (0, 1]


def _read_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CmlError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CmlError(f"{where}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def defaults() -> dict[str, Any]:
    text = resources.files("cml_dgl.train").joinpath("presets/defaults.yaml").read_text()
    return _read_yaml(text, "presets/defaults.yaml")


def preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise CmlError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    text = resources.files("cml_dgl.train").joinpath(f"presets/{name}.yaml").read_text()
    return _read_yaml(text, f"preset {name}")


def _coerce(key: str, value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise CmlError(f"{where}: {key} must be true or false, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise CmlError(f"{where}: {key} must be an integer, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CmlError(f"{where}: {key} must be a number, got {value!r}")
        value = float(value)
    elif isinstance(default, list):
        if not isinstance(value, list) or not all(isinstance(v, int) and v > 0 for v in value):
            raise CmlError(f"{where}: {key} must be a list of positive integers, got {value!r}")
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise CmlError(f"{where}: {key} must be a string, got {value!r}")
    choices = tuple(REGISTRY) if key == "model" else CHOICES.get(key)  # models registered at run time too
    if choices is not None and value not in choices:
        raise CmlError(f"{where}: {key} must be one of {', '.join(choices)}, got {value!r}")
    if key in POSITIVE and value <= 0:
        raise CmlError(f"{where}: {key} must be positive, got {value!r}")
    if key in NON_NEGATIVE and value < 0:
        raise CmlError(f"{where}: {key} must be >= 0, got {value!r}")
    if key in UNIT and not 0 <= value <= 1:
        raise CmlError(f"{where}: {key} must be in [0, 1], got {value!r}")
    if key in FRACTIONS and not 0 < value <= 1:
        raise CmlError(f"{where}: {key} must be in (0, 1], got {value!r}")
    if key == "cl_temperature" and value <= 0:
        raise CmlError(f"{where}: {key} must be positive, got {value!r}")
    if key == "meta_dropout" and value >= 1:
        raise CmlError(f"{where}: {key} must be below 1, got {value!r}")
    return value


def _apply(cfg: dict[str, Any], layer: dict[str, Any], where: str) -> None:
    for key, value in layer.items():
        if key not in cfg:
            raise CmlError(f"{where}: unknown config key {key!r}")
        cfg[key] = _coerce(key, value, cfg[key], where)


def parse_set(item: str) -> tuple[str, Any]:
    """Parse one ``--set key=value``; the value is read as YAML (``1e-3``, ``true``, ``[10,20]``)."""
    if "=" not in item:
        raise CmlError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    value = _read_yaml(f"v: {raw}", f"--set {item}")["v"] if raw.strip() else ""
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    return key, value


def resolve(presets: Iterable[str] = (), config_file: str | Path | None = None,
            overrides: Iterable[str] = (), base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the run configuration from its layers; raise CmlError on any unknown key or bad value.

    ``base`` (a saved run's config) replaces the defaults layer when resuming.
    """
    cfg = defaults()
    layers: list[tuple[dict[str, Any], str]] = [(base, "saved config")] if base is not None else []
    layers += [(preset(name), f"preset {name}") for name in presets]
    if config_file is not None:
        path = Path(config_file)
        try:
            text = path.read_text()
        except OSError as e:
            raise CmlError(f"{path}: cannot read config file ({e.strerror})") from None
        layers.append((_read_yaml(text, str(path)), str(path)))
    for item in overrides:
        key, value = parse_set(item)
        layers.append(({key: value}, f"--set {item}"))
    model = cfg["model"]
    for layer, _ in layers:
        model = layer.get("model", model)
    if base is None and model in REGISTRY:
        _apply(cfg, dict(REGISTRY[model].defaults), f"model {model} defaults")
    for layer, where in layers:
        _apply(cfg, layer, where)
    if cfg["opt_max_lr"] < cfg["opt_base_lr"] or cfg["meta_opt_max_lr"] < cfg["meta_opt_base_lr"]:
        raise CmlError("config: *_max_lr must be at least *_base_lr")
    if cfg["cascade_alpha"] + cfg["cascade_beta"] > 1:
        raise CmlError(f"config: cascade_alpha + cascade_beta must be at most 1 (their rest is the walk's weight), "
                       f"got {cfg['cascade_alpha']} + {cfg['cascade_beta']}")
    k = int(cfg["monitor_metric"].split("@")[1])
    if k not in cfg["eval_ks"]:
        raise CmlError(f"config: eval_ks {cfg['eval_ks']} must include {k}, the cut-off of "
                       f"monitor_metric {cfg['monitor_metric']}")
    return cfg


def dump(cfg: dict[str, Any]) -> str:
    return yaml.safe_dump(cfg, sort_keys=True)
