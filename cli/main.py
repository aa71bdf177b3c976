"""``cml``: the command-line entry point. Each command lives in its own module under ``cli/``."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from cml_dgl import __version__


class CmlGroup(click.Group):
    """A Click group whose usage errors (unknown option, bad choice, missing argument) are one
    line ``error: ...`` on stderr with exit code 2, like every other bad input."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.ClickException as e:
            where = f"{e.ctx.command_path}: " if getattr(e, "ctx", None) is not None else ""
            hint = f" (see '{e.ctx.command_path} -h')" if isinstance(e, click.UsageError) and e.ctx else ""
            message = " ".join(e.format_message().split())
            click.echo(f"error: {where}{message}{hint}", err=True)
            sys.exit(2)
        except click.Abort:  # Ctrl-C outside a command's own handling (handle_errors)
            click.echo("interrupted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=CmlGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="cml")
def cli() -> None:
    """cml-dgl: Contrastive Meta Learning for multi-behavior recommendation.

    Typical flow: 'cml preprocess' a raw log into a dataset, 'cml train' it,
    then 'cml evaluate' / 'cml export-embeddings' / 'cml recommend' the run.
    """


def _register() -> None:
    # each module adds its commands to ``cli``
    for name in ("preprocess", "train", "evaluate", "export", "demo", "refit", "tune"):
        importlib.import_module(f".{name}", __package__)


_register()
