"""``cml``: the command-line entry point. Each command lives in its own module under ``cli/``."""

from __future__ import annotations

import importlib

import click

from cml_dgl import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="cml")
def cli() -> None:
    """cml-dgl: Contrastive Meta Learning for multi-behavior recommendation.

    Typical flow: ``cml preprocess`` a raw log into a dataset, ``cml train`` it,
    then ``cml evaluate`` / ``cml export-embeddings`` / ``cml recommend`` the run.
    """


def _register() -> None:
    # each module adds its commands to ``cli``
    for name in ("preprocess", "train", "evaluate", "export", "demo", "refit", "tune"):
        importlib.import_module(f".{name}", __package__)


_register()
