"""Every registered model passes :class:`tests.contract.RecommenderContract`."""

from __future__ import annotations

from cml_dgl.models.registry import REGISTRY
from tests.contract import RecommenderContract

for _name in REGISTRY:
    _cls = f"TestContract_{_name.replace('-', '_')}"
    globals()[_cls] = type(_cls, (RecommenderContract,), {"model_name": _name})


class TestContract_cml_every_option(RecommenderContract):
    """CML with every option beyond the paper on (issue 13), the history term forced on."""

    model_name = "cml"
    sets = ("propagation=linear", "readout=mean", "init=normal", "reg_on=ego", "item_bias=true",
            "history=always", "history_negatives=0.5", "used_view_rows=true")


def test_every_registered_model_has_a_contract_class():
    assert {c.model_name for c in globals().values()
            if isinstance(c, type) and issubclass(c, RecommenderContract) and c.model_name} == set(REGISTRY)
