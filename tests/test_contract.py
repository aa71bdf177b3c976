"""Every registered model passes :class:`tests.contract.RecommenderContract`."""

from __future__ import annotations

from cml_dgl.models.registry import REGISTRY
from tests.contract import RecommenderContract

for _name in REGISTRY:
    _cls = f"TestContract_{_name.replace('-', '_')}"
    globals()[_cls] = type(_cls, (RecommenderContract,), {"model_name": _name})


def test_every_registered_model_has_a_contract_class():
    assert {c.model_name for c in globals().values()
            if isinstance(c, type) and issubclass(c, RecommenderContract) and c.model_name} == set(REGISTRY)
