"""A test hook for fault injection: pause training at a named moment so a test can SIGKILL it there.

Off unless the environment sets ``CML_FAULT_PAUSE=<phase>:<epoch>``. The trainer calls
:func:`pause_point` at three moments of every epoch:

========== ===============================================================================
phase      moment
========== ===============================================================================
``train``  mid-epoch: after half of the epoch's training steps (parameters changed, nothing saved)
``eval``   at the start of the epoch's evaluation (before its metrics line is written)
``ckpt``   inside :func:`cml_dgl.train.checkpoint.save_checkpoint`, once the temporary file is
           written and fsynced (and, for last.pt, the old last.pt rotated to prev.pt) and before
           it is renamed into place: best.pt first when the epoch improved, else last.pt
========== ===============================================================================

When phase and epoch match, the hook writes ``<phase>:<epoch>`` to the file named by
``CML_FAULT_MARKER`` (if set), then sleeps ``CML_FAULT_SLEEP`` seconds (default 600) so that the
parent process can kill it at exactly that moment; if nobody does, training simply goes on.
``bench/kill_resume.py`` drives it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ENV_PAUSE = "CML_FAULT_PAUSE"
ENV_MARKER = "CML_FAULT_MARKER"
ENV_SLEEP = "CML_FAULT_SLEEP"
PHASES = ("train", "eval", "ckpt")


def parse(spec: str) -> tuple[str, int]:
    """``"<phase>:<epoch>"`` -> ``(phase, epoch)``; ValueError on anything else."""
    phase, sep, epoch = spec.partition(":")
    if not sep or phase not in PHASES:
        raise ValueError(f"{ENV_PAUSE}={spec!r}: expected <phase>:<epoch> with phase in {PHASES}")
    return phase, int(epoch)


def pause_point(phase: str, epoch: int) -> None:
    """Mark and sleep when ``CML_FAULT_PAUSE`` names this phase and epoch; else return at once."""
    spec = os.environ.get(ENV_PAUSE)
    if not spec or parse(spec) != (phase, int(epoch)):
        return
    marker = os.environ.get(ENV_MARKER)
    if marker:
        Path(marker).write_text(f"{phase}:{epoch}\n")
    time.sleep(float(os.environ.get(ENV_SLEEP, "600")))
