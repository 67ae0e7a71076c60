"""SIGKILL ``leafid train`` in the middle of an epoch, then ``--resume`` it (subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from synthetic_data import make_imagefolder

pytest.importorskip("torch")
pytestmark = [
    pytest.mark.train,
    pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals"),
]

TINY = (
    "--arch test_efficientnet --no-pretrained --input-size 32 --resize-size 36 --epochs 3 "
    "--head-epochs 1 --batch-size 4 --no-verify --threads 1 --patience 0 --loader-processes 0"
).split()


def _epochs(metrics: Path) -> list[int]:
    if not metrics.exists():
        return []
    return [json.loads(line)["epoch"] for line in metrics.read_text().splitlines() if line]


def test_sigkill_mid_epoch_then_resume_finishes_the_run(tmp_path: Path) -> None:
    # ~190 training images at batch size 4: a full epoch takes long enough to kill it
    data = make_imagefolder(tmp_path / "leaf", per_class=80, size=(40, 32))
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "leafid", "train", "--data", str(data), "--out", str(run)]
    argv += TINY
    metrics, ckpt = run / "metrics.jsonl", run / "checkpoint.pt"

    with (tmp_path / "first.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        # epoch 1 is done and checkpointed, so epoch 2 is running
        while not (ckpt.exists() and _epochs(metrics) == [1]):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "epoch 1 did not finish in time"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _epochs(metrics) == [1], "epoch 2 finished before the kill: make it longer"
    assert not (run / "summary.json").exists()
    # a kill in the middle of the metrics write would leave a torn last line
    with metrics.open("a") as f:
        f.write('{"epoch": 2, "phase": "fu')

    done = subprocess.run([*argv, "--resume"], capture_output=True, timeout=240)
    log = done.stderr.decode(errors="replace")
    assert done.returncode == 0, log
    assert "resuming after epoch 1" in log
    assert _epochs(metrics) == [1, 2, 3]  # each epoch exactly once, the torn line gone
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["head", "full", "full"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 3
    assert (run / "best.pt").is_file() and (run / "calibration.json").is_file()
