"""`benchmarks/gpu_check.py --dry --json` runs every phase's code on the CPU with the tiny model, so the check a GPU
machine runs first is known to work before any GPU time is spent on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_every_phase_dry(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry", "--json", "--out",
                           str(out), "--work-dir", str(tmp_path / "work")], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(done.stdout)  # stdout is the JSON alone
    assert json.loads(out.read_text()) == doc  # the file holds what was measured, phase by phase
    phases = doc["phases"]["tiny"]
    assert set(phases) == {"ours", "ours_padded", "ours_live", "multi_lora", "reference", "eval_scaling"}
    assert phases["ours"]["eval_loss"] > 0 and phases["ours"]["train_tokens"] > 0
    assert phases["ours_padded"]["loss_rel_diff"] < 1e-5  # packing changes the layout, not the loss
    assert phases["ours_live"] == {"skipped": "the 4-bit nf4 base and the paged 8-bit AdamW need CUDA"}
    assert phases["multi_lora"]["k"] == 4 and phases["multi_lora"]["max_loss_diff"] < 1e-5
    assert phases["reference"]["eval_loss"] > 0 and set(phases["eval_scaling"]) == {"20", "40"}
    assert doc["environment"]["cuda_available"] is False and doc["dry"] is True
