"""``python -m cli``: the same entry point as the ``cml`` script."""

from cli.main import cli

cli()
