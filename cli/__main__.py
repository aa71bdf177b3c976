"""``python -m cml_dgl_cli``: the same entry point as the ``cml`` script."""

from .main import cli

cli()
