"""Multi-node ``torchrun`` (c10d rendezvous) across two hosts with their own addresses.

The two "nodes" are Linux network namespaces joined by a veth pair (10.77.0.1 and
10.77.0.2), so rendezvous and gloo traffic cross a real network link. Opt-in
(``pytest -m slow``): it needs root and iproute2, and skips without them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from synthetic_data import make_imagefolder

pytest.importorskip("torch")
pytestmark = [pytest.mark.train, pytest.mark.slow]

ADDRESSES = ("10.77.0.1", "10.77.0.2")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def two_hosts() -> Iterator[list[tuple[str, str, str]]]:
    """Two network namespaces linked by veth: [(namespace, interface, address), ...]."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("needs root and iproute2 (ip netns) to make two hosts")
    tag = uuid.uuid4().hex[:6]
    hosts = [(f"lf{tag}{i}", f"vl{tag}{i}", addr) for i, addr in enumerate(ADDRESSES)]
    try:
        for ns, _, _ in hosts:
            _ip("netns", "add", ns)
        _ip("link", "add", hosts[0][1], "type", "veth", "peer", "name", hosts[1][1])
        for ns, dev, addr in hosts:
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as exc:
        for ns, _, _ in hosts:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        pytest.skip(f"cannot make network namespaces here: {exc.stderr.decode().strip()}")
    yield hosts
    for ns, _, _ in hosts:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def test_torchrun_across_two_nodes(tmp_path: Path, two_hosts: list[tuple[str, str, str]]) -> None:
    make_imagefolder(tmp_path / "leaf")
    run = tmp_path / "run"
    options = (
        "--arch test_efficientnet --no-pretrained --input-size 32 --resize-size 36 --epochs 2 "
        "--head-epochs 1 --batch-size 4 --no-verify --threads 1 --patience 0"
    ).split()
    endpoint = f"{ADDRESSES[0]}:29400"
    procs = []
    for rank, (ns, dev, addr) in enumerate(two_hosts):
        # the namespaces cannot resolve the machine's hostname, so each node names its
        # own address, and the first one says it hosts the rendezvous store
        host = ["--rdzv-conf", "is_host=1"] if rank == 0 else []
        cmd = ["ip", "netns", "exec", ns, "env", f"GLOO_SOCKET_IFNAME={dev}", "OMP_NUM_THREADS=1"]
        cmd += [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2"]
        cmd += ["--nproc-per-node", "1", "--rdzv-id", "leafid-test", "--rdzv-backend", "c10d"]
        cmd += ["--rdzv-endpoint", endpoint, "--local-addr", addr, *host]
        cmd += ["-m", "leafid", "train", "--data", str(tmp_path / "leaf"), "--out", str(run)]
        procs.append(
            subprocess.Popen([*cmd, *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    outputs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        outputs.append(out.decode(errors="replace"))
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["world_size"] == 2 for r in rows)
    assert (run / "best.pt").is_file() and (run / "calibration.json").is_file()
