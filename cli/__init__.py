"""The Click command-line layer of cml-dgl: option parsing only; the work is in ``cml_dgl``."""
