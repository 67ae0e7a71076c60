"""``leafid bench --compare``: the usual torch approach next to leafid, ratios from measurements."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from conftest import make_tiny_model, tiny_spec
from leafid import bench
from leafid.bench import Result, write_photo_sets
from leafid.classifier import Classifier
from leafid.cli import main
from leafid.errors import MissingExtraError, ModelNotFoundError

Capsys = pytest.CaptureFixture[str]


def test_missing_torch_is_a_missing_extra_error(
    monkeypatch: pytest.MonkeyPatch, tiny_model: Path, capsys: Capsys
) -> None:
    class NoTorch:
        def load(self) -> Any:
            raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setattr(bench, "entry_points", lambda **kw: [NoTorch()])
    with pytest.raises(MissingExtraError, match=r"leafid\[train\]"):
        bench.load_compare()
    assert main(["bench", "--compare", "--model", str(tiny_model)]) == 2
    assert "'torch'" in capsys.readouterr().err
    monkeypatch.setattr(bench, "entry_points", lambda **kw: [])
    with pytest.raises(MissingExtraError, match="torch"):
        bench.load_compare()


def _result(case: str, batch: int, decode_threads: int | None, rates: list[float]) -> Result:
    r = Result(case, 10, batch, decode_threads, 1)
    r.rates, r.cpu, r.cpu_ms = rates, [1.0] * len(rates), [5.0] * len(rates)
    return r


@pytest.mark.train
def test_speedups_divide_by_the_usual_row_of_the_same_case() -> None:
    bc = pytest.importorskip("leafid_train.bench_compare")
    rows = [
        bc.Measured(bc.USUAL, _result("end-to-end 12mp JPEG", 1, 1, [2.0, 4.0, 3.0])),
        bc.Measured(bc.LEAFID, _result("end-to-end 12mp JPEG", 16, 2, [20.0, 15.0, 17.0])),
        bc.Measured(bc.USUAL, _result("model only", 1, None, [10.0])),
        bc.Measured(bc.USUAL, _result("model only", 16, None, [40.0])),
        bc.Measured(bc.LEAFID, _result("model only", 1, None, [31.0])),
        bc.Measured(bc.LEAFID_INT8, _result("model only", 16, None, [90.0])),  # not a target
        bc.Measured(bc.LEAFID, _result("end-to-end 1mp JPEG", 16, 2, [50.0])),
    ]
    ratios = [ratio for _, ratio in bc.speedups(rows)]
    assert ratios == [1.0, 17.0 / 3.0, 1.0, 1.0, 3.1, 2.25, None]
    best = [ratio for _, ratio in bc.speedups(rows, best=True)]
    assert best == [1.0, 5.0, 1.0, 1.0, 3.1, 2.25, None]
    table = bc.format_compare(rows)
    assert [line.split()[-2:] for line in table[1:]] == [
        ["1.00x", "1.00x"], ["5.67x", "5.00x"], ["1.00x", "1.00x"], ["1.00x", "1.00x"],
        ["3.10x", "3.10x"], ["2.25x", "2.25x"], ["-", "-"],
    ]  # fmt: skip
    targets = bc.target_lines(rows)
    assert targets == [
        "target end-to-end 12mp JPEG: leafid fp32 >= 5x usual: met "
        "(medians 5.67x, fastest repeats 5.00x)",
        "target model only, batch 1: leafid fp32 >= 5x usual: NOT met "
        "(medians 3.10x, fastest repeats 3.10x)",
    ]
    rows[1].result.rates = [19.0, 15.0, 19.0]  # fastest: 19 / 4 = 4.75x
    assert "NOT met (medians 6.33x, fastest repeats 4.75x)" in bc.target_lines(rows)[0]


def _small_torch_model() -> Any:
    from torch import nn

    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3)).eval()


@pytest.mark.train
def test_usual_model_and_transform_fit_the_spec(tiny_model: Path) -> None:
    bc = pytest.importorskip("leafid_train.bench_compare")
    from PIL import Image

    clf = Classifier(tiny_model)
    model, described = bc.usual_model(clf.spec)
    # "tiny-test" is no timm name: the default arch, with the ImageNet weights a fine-tuned
    # model starts from (random weights run slower in eager torch)
    n = len(clf.spec.classes)
    assert described == f"timm efficientnet_lite0 with {n} classes, ImageNet weights, fresh head"
    imagenet = bc.build_backbone("efficientnet_lite0", 1000, pretrained=True)
    torch = pytest.importorskip("torch")
    assert torch.equal(model.conv_head.weight, imagenet.conv_head.weight)
    x = bc.usual_transform(clf.spec)(Image.new("RGB", (90, 60), (200, 30, 30)))
    assert tuple(x.shape) == (3, 32, 32)
    assert tuple(model(x.unsqueeze(0)).shape) == (1, len(clf.spec.classes))


@pytest.mark.train
def test_run_compare_measures_both_approaches(tiny_model: Path, tmp_path: Path) -> None:
    bc = pytest.importorskip("leafid_train.bench_compare")
    clf = Classifier(tiny_model, threads=1)
    photos = write_photo_sets(
        tmp_path, {"12mp": 2, "1mp": 2}, sizes={"12mp": (400, 300), "1mp": (160, 120)}
    )
    rows = bc.run_compare(
        _small_torch_model(), {bc.LEAFID: (clf, clf), bc.LEAFID_INT8: (clf, clf)}, photos,
        decode_threads=2, batch_size=2, repeat=2, model_images=4,
    )  # fmt: skip
    assert [(m.approach, m.case) for m in rows] == [
        (bc.USUAL, "end-to-end 12mp JPEG"),
        (bc.LEAFID, "end-to-end 12mp JPEG"),
        (bc.LEAFID_INT8, "end-to-end 12mp JPEG"),
        (bc.USUAL, "end-to-end 1mp JPEG"),
        (bc.LEAFID, "end-to-end 1mp JPEG"),
        (bc.LEAFID_INT8, "end-to-end 1mp JPEG"),
        (bc.USUAL, "model only, batch 1"),
        (bc.LEAFID, "model only, batch 1"),
        (bc.LEAFID_INT8, "model only, batch 1"),
        (bc.USUAL, "model only, batch 16"),
        (bc.LEAFID, "model only, batch 16"),
        (bc.LEAFID_INT8, "model only, batch 16"),
    ]
    assert all(len(m.result.rates) == 2 and min(m.result.rates) > 0 for m in rows)
    assert [m.result.images for m in rows[:6]] == [2] * 6
    usual = {m.case: m.result.median for m in rows if m.approach == bc.USUAL}
    for m, ratio in bc.speedups(rows):
        assert ratio == pytest.approx(m.result.median / usual[m.case])


@pytest.mark.train
def test_cli_bench_compare_prints_the_table(
    tiny_model: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    bc = pytest.importorskip("leafid_train.bench_compare")
    monkeypatch.setattr(bc, "usual_model", lambda spec: (_small_torch_model(), "a small test net"))
    int8 = tiny_model.with_name(tiny_model.stem + ".int8.onnx")
    int8.write_bytes(tiny_model.read_bytes())  # found next to the model
    args = ["--model", str(tiny_model), "--n12", "0", "--n1", "1", "--repeat", "1"]
    assert main(["bench", "--compare", *args]) == 0
    out = capsys.readouterr().out
    assert "a small test net; PIL full-size decode" in out and "usual approach: torch" in out
    assert f"int8 model: {int8}" in out
    table = [line for line in out.splitlines() if line.startswith(("end-to-end", "model only"))]
    assert [line.split()[-1].endswith("x") for line in table] == [True] * 9
    assert "target model only, batch 1" in out
    assert main(["bench", "--compare", *args, "--int8", str(tiny_model) + ".missing"]) == 2


@pytest.mark.train
def test_compare_finds_the_fp32_model_of_a_shipped_int8_copy(
    tiny_model: Path, tmp_path: Path
) -> None:
    bc = pytest.importorskip("leafid_train.bench_compare")
    spec = tiny_spec()
    int8_spec = spec.replace(training_data={**spec.training_data, "quantization": "int8"})
    fp32 = make_tiny_model(tmp_path / "leafid.onnx", spec)
    int8 = make_tiny_model(tmp_path / "leafid.int8.onnx", int8_spec)

    def args(model: Path, int8_option: str | None = None) -> argparse.Namespace:
        return argparse.Namespace(model=str(model), int8=int8_option)

    assert bc.compare_models(args(int8)) == (fp32, int8)
    assert bc.compare_models(args(fp32)) == (fp32, int8)
    assert bc.compare_models(args(fp32, str(tiny_model))) == (fp32, tiny_model)
    int8.rename(tmp_path / "other.int8.onnx")
    assert bc.compare_models(args(fp32)) == (fp32, None)
    fp32.unlink()
    with pytest.raises(ModelNotFoundError, match="fp32 model"):
        bc.compare_models(args(tmp_path / "other.int8.onnx"))
