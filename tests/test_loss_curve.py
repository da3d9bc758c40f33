"""The tiny model's first 50 training losses, stored: a change to the numerics (model, init, data order, optimizer,
schedule, loss) shows here as a changed curve, not only as a failed "loss went down" check.

Recorded from the real CLI (the default recipe: tiny Llama 3 on the sample corpus) with one intra-op thread, so the
reduction order is fixed. Tolerance: 2e-3 absolute per step (the log prints 4 decimals; different CPUs' kernels
round differently in the last bits, which stays far below this over 50 steps). After an intended numerics change,
record anew with `RECORD_LOSS_CURVE=1 python -m pytest --full tests/test_loss_curve.py` and say why in the commit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers.cli import run_cli
from tests.helpers.training import losses

ASSET = Path(__file__).parent / "assets" / "tiny_loss_curve.json"
OVERRIDES = [
    "stages=[data,train]",
    "trainer.max_steps=50",
    "trainer.log_interval=1",
    "trainer.eval_interval=0",
    "trainer.checkpoint_interval=0",
    "trainer.num_threads=1",
    "data.num_proc=1",
    "run_dir=curve",
]
TOLERANCE = 2e-3


@pytest.mark.slow
def test_first_50_losses_of_the_tiny_model_match_the_stored_curve(isolated):
    proc = run_cli(OVERRIDES, cwd=isolated, env={"OMP_NUM_THREADS": "1"}, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = losses(proc.stdout)
    assert sorted(got) == list(range(1, 51)), sorted(got)
    if os.environ.get("RECORD_LOSS_CURVE") == "1":
        ASSET.parent.mkdir(parents=True, exist_ok=True)
        ASSET.write_text(json.dumps({"overrides": OVERRIDES, "losses": [got[s] for s in range(1, 51)]}, indent=1))
        pytest.skip(f"recorded {ASSET}")
    stored = json.loads(ASSET.read_text())
    assert stored["overrides"] == OVERRIDES, "the stored curve was recorded with other settings: record it anew"
    diffs = {s: (got[s], want) for s, want in enumerate(stored["losses"], 1) if abs(got[s] - want) > TOLERANCE}
    assert not diffs, f"steps whose loss moved by more than {TOLERANCE}: {diffs}"
