"""Layered run configuration: defaults < the model's defaults < presets < a user YAML file <
``--set key=value``.

Every key has a default in ``presets/defaults.yaml``; the model's registry entry may set some of
them (:mod:`cml_dgl.models.registry`); a later layer may only set known keys, with a value of the
default's type (an int where a float is expected is accepted). The resolved config is saved as
``config.yaml`` in the run directory. The admissible values of each choice key come from the
module that defines them (:data:`CHOICES`).
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml

from cml_dgl.errors import CmlError
from cml_dgl.eval.metrics import TIE_RULES
from cml_dgl.graph.backends import BACKENDS, NORMS
from cml_dgl.models import losses
from cml_dgl.models.cml import ACTIVATIONS, FUSIONS, INITS, PROPAGATIONS, READOUTS, VARIANTS
from cml_dgl.models.history_term import HISTORY_CHOICES
from cml_dgl.models.registry import MODELS, REGISTRY
from cml_dgl.train.devices import DEVICES
from cml_dgl.train.draws.factory import SAMPLERS

PRESETS = ("retailrocket", "ijcai15", "tmall", "mbcgcn", "authors-retailrocket", "authors-ijcai15", "authors-tmall",
           "official", "paper", "light", "demo")
CHOICES: dict[str, tuple[str, ...]] = {
    "model": MODELS,
    "variant": VARIANTS,
    "backend": BACKENDS,
    "device": DEVICES,
    "sampler": SAMPLERS,
    "activation": ACTIVATIONS,
    "propagation": PROPAGATIONS,
    "readout": READOUTS,
    "fusion": FUSIONS,
    "init": INITS,
    "reg_on": ("final", "ego"),
    "aux_draws": ("target", "edges"),
    "aux_edge_weight": ("one", "balanced"),
    "history": HISTORY_CHOICES,
    "norm": tuple(NORMS),
    "meta_optimizer": ("adamw", "sgd"),
    "cl_variant": losses.VARIANTS,
    "cl_similarity": losses.SIMILARITIES,
    "monitor": ("valid", "test", "none"),
    "monitor_metric": ("ndcg@10", "hr@10"),
    "monitor_protocol": ("sampled", "full"),
    "tie_rule": TIE_RULES,
    "meta_users": ("auto", "rule"),
}
POSITIVE = ("dim", "batch_size", "meta_batch", "meta_samples", "cl_chunk", "opt_step_up",
            "opt_step_down", "meta_step_up", "meta_step_down", "patience", "knn_neighbors", "cascade_max_iter")
NON_NEGATIVE = ("epochs", "n_layers", "reg", "beta", "grad_clip", "lr_clone", "opt_base_lr",
                "opt_max_lr", "meta_opt_base_lr", "meta_opt_max_lr", "meta_dropout",
                "opt_weight_decay", "meta_opt_weight_decay", "meta_gamma", "knn_shrink", "cascade_tolerance", "init_std")
UNIT = ("cascade_alpha", "cascade_beta", "history_negatives")
FRACTIONS = ("cl_sample_ratio",)  # in (0, 1]


# What a run saved before a key existed was trained with: the behaviour before the key came, where the
# key's default has changed since (issue 13's new default). A saved config lacking the key reads so.
SAVED_WITHOUT: dict[str, Any] = {
    "propagation": "nonlinear", "readout": "concat", "fusion": "mean", "init": "xavier", "reg_on": "final",
    "item_bias": False, "history": "none", "history_item_weights": False, "history_negatives": 0.0,
    "aux_draws": "target",
}

QUOTE_LIMIT = 200  # characters of a value (or of a --set item) quoted in an error message
MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 16  # nesting of YAML collections in a config file
SEED_MAX = 2 ** 32 - 1  # numpy refuses negative seeds, its legacy seeding anything above 2**32 - 1
INT_MAX = 2 ** 31 - 1  # every integer key, unless INT_RANGES says otherwise
INT_RANGES: dict[str, tuple[int, int]] = {
    "seed": (0, SEED_MAX), "dim": (1, 4096), "n_layers": (0, 64), "epochs": (0, 1_000_000),
    "patience": (1, 1_000_000), "batch_size": (1, 1 << 24), "meta_batch": (1, 1 << 24),
    "meta_samples": (1, 1 << 16), "cl_chunk": (1, 1 << 24), "knn_neighbors": (1, 1 << 24),
    "cascade_max_iter": (1, 1_000_000),
    **{k: (1, 1_000_000) for k in ("opt_step_up", "opt_step_down", "meta_step_up", "meta_step_down")},
}
EVAL_K_MAX, EVAL_KS_MAX = 1 << 20, 64  # largest cut-off, most cut-offs


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` (a printable string as it is), cut to ``limit`` characters: the form of a
    value in a one-line error message."""
    text = value if isinstance(value, str) else repr(value)
    if not text.isprintable():
        text = repr(text)[1:-1]
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


class _ConfigLoader(yaml.SafeLoader):
    """safe_load without aliases (an alias bomb expands exponentially), nesting deeper than
    MAX_DEPTH (the composer recurses) or duplicate keys (the last one silently won)."""

    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"YAML aliases (*{quote(event.anchor, 40)}) are "
                                              "not allowed in config files; write the value out",
                                              event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = (key_node.tag, key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {quote(key_node.value, 60)} "
                                                        "appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or (str(e).splitlines() or ["unreadable"])[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return quote(f"{where}{problem}")


def _read_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_ConfigLoader)
    except yaml.YAMLError as e:
        raise CmlError(f"{where}: not valid YAML ({_yaml_problem(e)})") from None
    except (ValueError, TypeError, OverflowError, AttributeError) as e:  # a tagged scalar that does not
        # parse (!!int x; PyYAML's !!timestamp x fails with AttributeError)
        raise CmlError(f"{where}: not valid YAML (a value does not fit its tag: {quote(str(e))})") from None
    except RecursionError:  # belt and braces: MAX_DEPTH stops the composer long before this
        raise CmlError(f"{where}: not valid YAML (nested too deeply)") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CmlError(f"{where}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML config file (a ``--config`` file or a run's ``config.yaml``) as a mapping; CmlError
    naming the file when it is missing, too large, not UTF-8 text or not a YAML mapping."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise CmlError(f"{p}: cannot read config file ({e.strerror or e})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise CmlError(f"{p}: config file is larger than {MAX_CONFIG_BYTES:,} bytes; expected a short "
                       "YAML mapping of config keys")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CmlError(f"{p}: not a text file (byte {e.start} is not UTF-8); expected a YAML mapping "
                       "of config keys") from None
    return _read_yaml(text, str(p))


def defaults() -> dict[str, Any]:
    text = resources.files("cml_dgl.train").joinpath("presets/defaults.yaml").read_text()
    return _read_yaml(text, "presets/defaults.yaml")


def preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise CmlError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    text = resources.files("cml_dgl.train").joinpath(f"presets/{name}.yaml").read_text()
    return _read_yaml(text, f"preset {name}")


def _coerce(key: str, value: Any, default: Any, where: str) -> Any:
    shown = quote(repr(value))
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise CmlError(f"{where}: {key} must be true or false, got {shown}")
    elif isinstance(default, int):
        lo, hi = INT_RANGES.get(key, (1 if key in POSITIVE else 0 if key in NON_NEGATIVE else -INT_MAX, INT_MAX))
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise CmlError(f"{where}: {key} must be an integer in [{lo}, {hi}], got {shown}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CmlError(f"{where}: {key} must be a number, got {shown}")
        try:
            value = float(value)
        except OverflowError:  # an integer beyond the float range
            value = math.inf
        if not math.isfinite(value):
            raise CmlError(f"{where}: {key} must be a finite number, got {shown}")
    elif isinstance(default, list):
        if (not isinstance(value, list) or not 1 <= len(value) <= EVAL_KS_MAX
                or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= EVAL_K_MAX
                           for v in value)):
            raise CmlError(f"{where}: {key} must be a list of 1 to {EVAL_KS_MAX} integers in "
                           f"[1, {EVAL_K_MAX}], got {shown}")
    choices = tuple(REGISTRY) if key == "model" else CHOICES.get(key)  # models registered at run time too
    if isinstance(default, str) and not isinstance(value, str):
        if isinstance(value, bool) and choices:  # YAML reads on/off/yes/no as booleans
            raise CmlError(f"{where}: {key} must be one of {', '.join(choices)}, got {shown} "
                           "(YAML reads on, off, yes and no as true and false)")
        raise CmlError(f"{where}: {key} must be a string, got {shown}")
    if key == "device":
        check_device_name(value, f"{where}: {key}")
    elif choices is not None and value not in choices:
        raise CmlError(f"{where}: {key} must be one of {', '.join(choices)}, got {shown}")
    if key in POSITIVE and value <= 0:
        raise CmlError(f"{where}: {key} must be positive, got {shown}")
    if key in NON_NEGATIVE and value < 0:
        raise CmlError(f"{where}: {key} must be >= 0, got {shown}")
    if key in UNIT and not 0 <= value <= 1:
        raise CmlError(f"{where}: {key} must be in [0, 1], got {shown}")
    if key in FRACTIONS and not 0 < value <= 1:
        raise CmlError(f"{where}: {key} must be in (0, 1], got {shown}")
    if key == "cl_temperature" and value <= 0:
        raise CmlError(f"{where}: {key} must be positive, got {shown}")
    if key == "meta_dropout" and value >= 1:
        raise CmlError(f"{where}: {key} must be below 1, got {shown}")
    return value


def check_device_name(value: str, where: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; whether GPU N exists is checked when the device is
    used (:func:`cml_dgl.train.devices.resolve_device`)."""
    head, sep, index = value.partition(":")
    if value in CHOICES["device"] or (head == "cuda" and sep and index.isdigit() and len(index) <= 4):
        return value
    raise CmlError(f"{where} must be one of {', '.join(CHOICES['device'])} or cuda:N, got {quote(value)}")


def _apply(cfg: dict[str, Any], layer: dict[str, Any], where: str) -> None:
    for key, value in layer.items():
        if key not in cfg:
            raise CmlError(f"{where}: unknown config key {quote(repr(key))}")
        cfg[key] = _coerce(key, value, cfg[key], where)


def set_label(item: str) -> str:
    """How an error names a ``--set`` item: its key and the start of its value."""
    return f"--set {quote(item, 60)}"


def parse_set(item: str) -> tuple[str, Any]:
    """Parse one ``--set key=value``; the value is read as YAML (``1e-3``, ``true``, ``[10,20]``)."""
    where = set_label(item)
    if "=" not in item:
        raise CmlError(f"{where}: expected key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if any(c in raw for c in "\n\r\x85\u2028\u2029"):  # YAML's line breaks
        raise CmlError(f"{where}: expected the value on one line")
    parsed = _read_yaml(f"v: {raw}", where) if raw.strip() else {"v": ""}
    if list(parsed) != ["v"]:
        raise CmlError(f"{where}: expected one value after '='")
    value = parsed["v"]
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    return key, value


def resolve(presets: Iterable[str] = (), config_file: str | Path | None = None,
            overrides: Iterable[str] = (), base: dict[str, Any] | None = None,
            base_where: str = "saved config") -> dict[str, Any]:
    """Build the run configuration from its layers; raise CmlError on any unknown key or bad value.

    ``base`` (a saved run's config, read from ``base_where``) replaces the defaults layer when resuming.
    """
    cfg = defaults()
    if base is not None:
        cfg.update({k: v for k, v in SAVED_WITHOUT.items() if k not in base})
    layers: list[tuple[dict[str, Any], str]] = [(base, base_where)] if base is not None else []
    layers += [(preset(name), f"preset {name}") for name in presets]
    if config_file is not None:
        layers.append((read_config_file(config_file), str(config_file)))
    for item in overrides:
        key, value = parse_set(item)
        layers.append(({key: value}, set_label(item)))
    model = cfg["model"]
    for layer, _ in layers:
        model = layer.get("model", model)
    if base is None and isinstance(model, str) and model in REGISTRY:
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


def differences(a: dict[str, Any], b: dict[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """``"key: A vs B"`` for every key (outside ``ignore``) whose values differ between two configs.

    A key one side lacks counts as what a run saved before the key existed was trained with: its
    :data:`SAVED_WITHOUT` value, else its default (a new key's default kept the behaviour before it)."""
    skip, base = set(ignore), {**defaults(), **SAVED_WITHOUT}
    out = []
    for k in sorted(set(a) | set(b), key=str):
        va, vb = a.get(k, base.get(k)), b.get(k, base.get(k))
        if k not in skip and va != vb:
            out.append(f"{k}: {quote(va, 60)} vs {quote(vb, 60)}")
    return out


def dump(cfg: dict[str, Any]) -> str:
    return yaml.safe_dump(cfg, sort_keys=True)
