from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic_data import make_imagefolder

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.train

from leafid_train.checkpoint import rank_rng_state  # noqa: E402
from leafid_train.ddp import DistInfo  # noqa: E402


def test_torchrun_two_processes(tmp_path: Path) -> None:
    make_imagefolder(tmp_path / "leaf")
    run = tmp_path / "run"
    options = (
        "--arch test_efficientnet --no-pretrained --input-size 32 --resize-size 36 --epochs 2 "
        "--head-epochs 1 --batch-size 4 --no-verify --threads 1 --patience 0 --ema-decay 0.5"
    ).split()
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd = [*launch, "-m", "leafid", "train", "--data", str(tmp_path / "leaf"), "--out", str(run)]
    cmd += options
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["world_size"] == 2 for r in rows)
    # each process trains on its half of the 18 training images (4 per batch, last dropped)
    assert all(r["train_images"] == 8 for r in rows)
    assert (run / "best.pt").is_file() and (run / "calibration.json").is_file()
    assert proc.stderr.count("epoch 2/2") == 1  # only rank 0 reports
    # each rank's own RNG state (seeded seed + rank) is kept for --resume
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    assert checkpoint["ema"] is not None  # the averaged weights, BatchNorm statistics of rank 0
    rngs = checkpoint["rng"]
    assert len(rngs) == 2 and not torch.equal(rngs[0]["torch"], rngs[1]["torch"])
    assert rank_rng_state(rngs, DistInfo(rank=1, world_size=2)) is rngs[1]


def test_rng_state_of_each_rank() -> None:
    states = [{"torch": i} for i in range(2)]
    assert rank_rng_state(states, DistInfo(rank=1, world_size=2)) is states[1]
    assert rank_rng_state(states, DistInfo()) is states[0]
    old_single = {"torch": 9}  # checkpoints before per-rank states
    assert rank_rng_state(old_single, DistInfo(rank=1, world_size=2)) is old_single


def _broadcast_worker(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    from leafid_train import ddp

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        norm = torch.nn.BatchNorm1d(3)
        norm.running_mean.fill_(rank + 1.0)  # each process's own statistics
        ddp.broadcast_buffers(DistInfo(rank=rank, world_size=2), norm)
        Path(out, f"{rank}.json").write_text(json.dumps(norm.running_mean.tolist()))
    finally:
        dist.destroy_process_group()


def test_broadcast_buffers_copies_rank_0s_statistics(tmp_path: Path) -> None:
    torch.multiprocessing.start_processes(
        _broadcast_worker,
        args=(str(tmp_path / "store"), str(tmp_path)),
        nprocs=2,
        start_method="fork",
    )
    got = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    assert got == [[1.0, 1.0, 1.0]] * 2
