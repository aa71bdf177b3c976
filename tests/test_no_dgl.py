"""cml_dgl imports, builds the torch backend and trains a CML step where DGL cannot be imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs first in a fresh interpreter: any import of dgl (or a submodule) fails as if it were absent.
_BLOCKER = """
import sys
class _NoDGL:
    def find_spec(self, name, path=None, target=None):
        if name == "dgl" or name.startswith("dgl."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by test)", name=name)
        return None
sys.meta_path.insert(0, _NoDGL())
"""

_SCRIPT = _BLOCKER + """
import numpy as np
import torch
import cml_dgl
from cml_dgl.errors import CmlError
from cml_dgl.graph import build_propagator, resolve_backend
from cml_dgl.models import CML, MetaWeightNet, bpr_loss, contrastive_loss
from cml_dgl.models.base import score_rows

assert resolve_backend("auto", "cpu") == "torch"
edges = [(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 3])), (np.array([0, 2]), np.array([2, 3]))]
prop = build_propagator(3, 4, edges, backend="auto", names=["cart", "buy"])
assert prop.backend == "torch", prop.backend
model = CML(3, 4, 2, prop, dim=4, n_layers=2)
meta = MetaWeightNet(dim=4)
out = model()
users = torch.tensor([0, 2])
pos = score_rows(out.user, out.item, users, torch.tensor([0, 3]))
neg = score_rows(out.user, out.item, users, torch.tensor([3, 0]))
l_bpr = bpr_loss(pos, neg)
l_cl = contrastive_loss(out.user_beh[-1, users], out.user_beh[0, users], temperature=0.5)
w = meta.bpr_weights(l_bpr, out.user[users], out.user_beh[1, users], 1)
loss = (w * l_bpr).sum() + (meta.cl_weights(l_cl, out.user_beh[0, users], out.user[users], 0) * l_cl).sum()
loss.backward()
assert model.user_emb.grad is not None and model.user_emb.grad.abs().sum() > 0
try:
    build_propagator(3, 4, edges, backend="dgl")
except CmlError as e:
    assert "backend 'dgl' is unavailable" in str(e) and "torch" in str(e), str(e)
else:
    raise AssertionError("backend='dgl' did not fail without dgl")
leaked = sorted(m for m in sys.modules if m == "dgl" or m.startswith("dgl."))
assert not leaked, leaked
print("NO-DGL-OK")
"""


def test_package_works_without_dgl():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NO-DGL-OK" in proc.stdout


def test_blocker_really_blocks_dgl():
    """Guards the test above: with the blocker installed, ``import dgl`` must fail."""
    code = _BLOCKER + "\ntry:\n    import dgl\nexcept ModuleNotFoundError:\n    print('BLOCKED')\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "BLOCKED", proc.stderr[-2000:]
