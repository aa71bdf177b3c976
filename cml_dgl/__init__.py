"""cml-dgl: Contrastive Meta Learning (Wei et al., WSDM 2022) for multi-behavior recommendation.

Importing the package needs numpy and torch only; DGL is imported lazily by the DGL backend.
"""

from cml_dgl.errors import CmlError

__version__ = "0.1.0"

__all__ = ["CmlError", "__version__"]
