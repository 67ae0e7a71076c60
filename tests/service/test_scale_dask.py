"""leafid.scale.dask_batch on a local Dask cluster: the CLI's rows, one model per worker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY_COLOURS, noisy
from leafid.cli import main
from leafid.scale import dask_batch

distributed = pytest.importorskip(
    "dask.distributed", reason="needs dask[distributed] (pip install 'leafid[scale]')"
)


@pytest.fixture(scope="module")
def client() -> object:
    # Worker processes (not threads): each has its own module-level classifier cache,
    # as on a real cluster. Starting them takes a few seconds.
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


def cli_rows(folder: Path, model: Path, capsys: pytest.CaptureFixture[str]) -> list[dict]:
    status = main(["classify", str(folder), "--model", str(model), "--format", "jsonl"])
    assert status == 1  # the broken file
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_rows_equal_the_cli_rows(
    client: object, tiny_model: Path, photo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i, colour in enumerate(TINY_COLOURS.values()):
        noisy(colour, seed=i + 7).save(photo_dir / f"more_{i}.jpg", quality=85)
    (photo_dir / "broken.jpg").write_bytes(b"not a jpeg")
    expected = cli_rows(photo_dir, tiny_model, capsys)
    assert len(expected) == 8 and sum("error" in r for r in expected) == 1

    rows = dask_batch.classify_folder_dask([str(photo_dir)], client, tiny_model, chunk_size=2)
    assert rows == expected

    def cached() -> list[int]:
        return [id(c) for c in dask_batch._classifiers.values()]

    before = client.run(cached)  # type: ignore[attr-defined]
    assert len(before) == 2 and sum(len(ids) for ids in before.values()) >= 1
    assert all(len(ids) <= 1 for ids in before.values())  # one model per worker process
    assert dask_batch.classify_folder_dask([str(photo_dir)], client, tiny_model) == expected
    after = client.run(cached)  # type: ignore[attr-defined]
    for worker, ids in before.items():
        assert after[worker][: len(ids)] == ids  # the same objects: not loaded again


def test_no_images_and_bad_sizes_are_errors(client: object, tmp_path: Path) -> None:
    with pytest.raises(dask_batch.InvalidRequestError, match="no images"):
        dask_batch.classify_folder_dask([str(tmp_path)], client, tmp_path / "m.onnx")
    with pytest.raises(dask_batch.InvalidRequestError, match="chunk_size"):
        dask_batch.classify_folder_dask([str(tmp_path)], client, "m.onnx", chunk_size=0)
    with pytest.raises(dask_batch.InvalidRequestError, match="chunk_size"):
        dask_batch.classify_files_dask(["a.jpg"], client, "m.onnx", chunk_size=0)


def test_dask_command_writes_the_cli_rows(
    client: object,
    tiny_model: Path,
    photo_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (photo_dir / "broken.jpg").write_bytes(b"not a jpeg")
    expected = cli_rows(photo_dir, tiny_model, capsys)
    address = client.scheduler.address  # type: ignore[attr-defined]
    # in this process, on a running scheduler, on a new local cluster
    for how in (["--processes", "0"], ["--scheduler", address], ["--processes", "1"]):
        out = tmp_path / "rows.jsonl"
        args = ["dask", str(photo_dir), "--model", str(tiny_model), "-o", str(out), *how]
        assert main(args) == 1  # the broken file
        assert [json.loads(line) for line in out.read_text().splitlines()] == expected
        assert f"leafid: {len(expected)} files (1 failed) in " in capsys.readouterr().err


def test_dask_command_errors(
    tiny_model: Path,
    photo_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert main(["dask", "--model", str(tiny_model)]) == 2
    assert "give image files or folders" in capsys.readouterr().err
    assert main(["dask", str(photo_dir), "--model", str(tmp_path / "missing.onnx")]) == 2
    assert "model file not found" in capsys.readouterr().err
    assert main(["dask", str(tmp_path), "--model", str(tiny_model), "--processes", "0"]) == 2
    assert "no images found" in capsys.readouterr().err
    args = ["dask", str(photo_dir), "--model", str(tiny_model), "-o", str(photo_dir / "x.jpg")]
    assert main(args) == 2
    assert "named like an image" in capsys.readouterr().err
    assert main([*args[:-1], str(tmp_path / "no" / "such" / "rows.jsonl")]) == 2
    assert "cannot write" in capsys.readouterr().err
    monkeypatch.setattr(dask_batch, "CONNECT_TIMEOUT_S", 1)
    old = tmp_path / "old_rows.jsonl"
    old.write_text('{"path": "kept"}\n')
    args = ["dask", str(photo_dir), "--model", str(tiny_model), "-o", str(old)]
    assert main([*args, "--scheduler", "tcp://127.0.0.1:9"]) == 2
    assert "cannot reach Dask scheduler tcp://127.0.0.1:9" in capsys.readouterr().err
    assert old.read_text() == '{"path": "kept"}\n'  # a failed run leaves the old rows
    with (
        distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as empty,
        distributed.Client(empty),
    ):
        assert main([*args, "--scheduler", empty.scheduler_address]) == 2
    assert "has no workers" in capsys.readouterr().err
    assert old.read_text() == '{"path": "kept"}\n'
