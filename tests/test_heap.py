"""cml_dgl.heap: after retain_freed_memory, freed large blocks are reused, not faulted in again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import json, resource, sys
import torch
from cml_dgl.heap import retain_freed_memory

def faults_per_round(n=8):
    out = []
    for _ in range(n):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = torch.ones(5 * 1024 ** 2)  # 20 MiB each, as a step's large products and their results
        b = a * 2
        del a, b
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return out

before = faults_per_round()
applied = retain_freed_memory()
after = faults_per_round()
print(json.dumps({"applied": applied, "before": before, "after": after}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_a_freed_large_tensor_is_reused_after_retain_freed_memory():
    res = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if not out["applied"]:
        pytest.skip("the C library is not glibc (mallopt unavailable)")
    pages = 2 * 5 * 1024 ** 2 * 4 // 4096
    # the default: rounds after the first fault in fresh pages again (glibc's dynamic mmap threshold
    # may stop that after a few rounds, so only more than one round's worth is asserted)
    assert sum(out["before"][1:]) > pages, out
    # retained: once warm, rounds mostly reuse freed blocks (torch's allocator may still map a
    # fresh block now and then): at most half the default's faults after the first two rounds
    assert sum(out["after"][2:]) <= sum(out["before"][2:]) / 2, out
