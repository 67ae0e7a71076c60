from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from synthetic_data import make_imagefolder, make_ood, tiny_config, write_taxonomy

pytest.importorskip("torch")
pytestmark = pytest.mark.train

import torch  # noqa: E402

from leafid.classifier import Classifier  # noqa: E402
from leafid.errors import InvalidRequestError, ModelError  # noqa: E402
from leafid.spec import ClassInfo, ModelSpec  # noqa: E402
from leafid_train import progress, train  # noqa: E402
from leafid_train.backbone import PRETRAINED_MEAN, PRETRAINED_STD  # noqa: E402
from leafid_train.calibrate import calibration_report  # noqa: E402
from leafid_train.checkpoint import load_best  # noqa: E402
from leafid_train.config import TrainConfig  # noqa: E402
from leafid_train.data import DatasetError, open_root  # noqa: E402
from leafid_train.export import onnx_logits  # noqa: E402
from leafid_train.export_run import export_run  # noqa: E402
from leafid_train.int8_rule import Int8Decision  # noqa: E402
from leafid_train.locations import MANIFEST_DIR_ENV  # noqa: E402
from leafid_train.loop import (  # noqa: E402
    build_model,
    build_optimizer,
    build_scheduler,
    set_phase,
    train_one_epoch,
)
from leafid_train.manifest import ManifestMismatchError, write_manifest  # noqa: E402
from leafid_train.outlier_exposure import (  # noqa: E402
    OodBatches,
    load_ood_batches,
    ood_order,
    outlier_exposure_loss,
)
from leafid_train.run_data import build_data, build_spec, load_train_set  # noqa: E402
from leafid_train.run_folder import RunFolder  # noqa: E402
from leafid_train.train import TrainingFailedError, resume_training, run_training  # noqa: E402
from leafid_train.unknown_rule import UnknownRule  # noqa: E402


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_calibrate_export_matches_torch(tmp_path: Path) -> None:
    make_ood(tmp_path / "nonleaf")
    cfg = tiny_config(tmp_path, ood=[str(tmp_path / "nonleaf")])
    result = run_training(cfg, quiet=True)
    run = tmp_path / "run"
    for name in (
        "config.json",
        "split.json",
        "checkpoint.pt",
        "best.pt",
        "calibration.json",
        "summary.json",
    ):
        assert (run / name).is_file(), name
    assert [m["epoch"] for m in _metrics(run)] == [1, 2]
    assert [m["phase"] for m in _metrics(run)] == ["head", "full"]
    calibration = json.loads((run / "calibration.json").read_text())
    assert calibration == result.calibration
    assert calibration["temperature"] > 0 and calibration["ood_val_images"] == 4
    assert calibration["nll_after"] <= calibration["nll_before"] + 1e-9

    report = export_run(run, tmp_path / "model.onnx", model_version="0.0.9")
    assert report["parity_max_abs_diff"] <= 1e-3
    clf = Classifier(tmp_path / "model.onnx")
    assert clf.model_version == report["model_version"] == "0.0.9"  # not the run's
    assert clf.spec.temperature == pytest.approx(calibration["temperature"])
    assert clf.threshold == pytest.approx(calibration["unknown_threshold"])
    assert clf.spec.labels == ["caerulea", "rubra", "viridis"]
    assert clf.spec.classes[1].scientific_name == "Planta rubra"
    assert clf.spec.training_data["split"]["train"] == 18
    assert clf.spec.training_data["ood_split_fractions"] == list(cfg.ood_split)
    assert "val" in clf.spec.metrics

    model, _ = load_best(RunFolder(run).best, cfg)
    files = sorted((tmp_path / "leaf" / "images").rglob("*.jpg"))
    batch = np.stack([clf.load(f.read_bytes()) for f in files])
    with torch.no_grad():
        torch_top1 = model(torch.from_numpy(batch)).argmax(1).numpy()
    onnx_top1 = [clf.spec.labels.index(p.results[0].slug) for p in clf.classify_arrays(batch)]
    np.testing.assert_array_equal(torch_top1, onnx_top1)


def test_export_gives_a_run_trained_without_taxonomy_its_genus_family_and_thresholds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_ood(tmp_path / "nonleaf")
    cfg = tiny_config(tmp_path, ood=[str(tmp_path / "nonleaf")], unknown_rule="coverage")
    run_training(cfg, quiet=True)
    run = tmp_path / "run"
    assert "taxon_thresholds" not in json.loads((run / "calibration.json").read_text())
    monkeypatch.setenv(MANIFEST_DIR_ENV, str(tmp_path / "manifests"))
    write_taxonomy(tmp_path / "manifests", "leaf")
    export_run(run, tmp_path / "model.onnx", int8=True, compare_seconds=0.02, compare_rounds=1)
    calibration = json.loads((run / "calibration.json").read_text())
    assert calibration["taxon_backoff"]["val_images"] == calibration["val_images"]
    clf = Classifier(tmp_path / "model.onnx")
    assert [c.genus for c in clf.spec.classes] == ["Caerula", "Planta", "Planta"]
    assert clf.spec.taxon_thresholds == calibration["taxon_thresholds"]
    assert clf.spec.metrics["val"]["taxon_backoff"] == calibration["taxon_backoff"]
    int8 = json.loads((run / "int8_report.json").read_text())["calibration"]
    assert "taxon_backoff" in int8  # the INT8 copy's own, on its own logits


def test_spec_normalisation_follows_the_weights() -> None:
    classes = (ClassInfo("a", "Planta a", "a plant"),)
    lite = build_spec(TrainConfig(data=["x"], out="y", arch="efficientnet_lite0"), classes)
    assert (lite.mean, lite.std) == (PRETRAINED_MEAN, PRETRAINED_STD)
    other = build_spec(TrainConfig(data=["x"], out="y", arch="resnet18"), classes)
    default = ModelSpec(model_name="m", model_version="0", classes=classes)
    assert (other.mean, other.std) == (default.mean, default.std) != (lite.mean, lite.std)


def test_export_failing_parity_leaves_the_old_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_training(tiny_config(tmp_path, epochs=1), quiet=True)
    shipped = tmp_path / "leafid.onnx"
    shipped.write_bytes(b"the model in service")
    monkeypatch.setattr("leafid_train.export_run.max_abs_diff", lambda *a: 1.0)
    with pytest.raises(ModelError, match="differ"):
        export_run(tmp_path / "run", shipped)
    assert shipped.read_bytes() == b"the model in service"
    assert sorted(p.name for p in tmp_path.iterdir() if "onnx" in p.name) == ["leafid.onnx"]


class Interrupt(Exception):
    pass


def test_int8_export_has_its_own_calibration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import leafid_train.export_run as export_module

    decided = []

    def qualifies(compare: dict[str, Any], *tests: Any) -> Int8Decision:  # kept whatever it is
        decided.append(compare)
        return Int8Decision(ships=True, faster=True, val_drop=0.0, test_drop=None)

    monkeypatch.setattr(export_module, "int8_decision", qualifies)
    make_ood(tmp_path / "nonleaf")
    cfg = tiny_config(tmp_path, ood=[str(tmp_path / "nonleaf")])
    run_training(cfg, quiet=True)
    run = tmp_path / "run"
    report = export_run(run, tmp_path / "m.onnx", int8=True, compare_seconds=0.02, compare_rounds=1)
    assert decided == [report["int8_compare"]]  # decided once, on the copy's comparison
    fp32, int8 = Classifier(tmp_path / "m.onnx"), Classifier(tmp_path / "m.int8.onnx")
    assert int8.spec.classes == fp32.spec.classes
    # refit on the int8 model's own raw logits of the run's val and OOD val images
    data = build_data(cfg, run / "split.json")
    want = calibration_report(
        onnx_logits(int8.path, data.eval_arrays("val")),
        data.labels("val"),
        onnx_logits(int8.path, data.eval_arrays("val", ood=True)),
        UnknownRule.of(cfg),
    )
    assert int8.spec.temperature == pytest.approx(want["temperature"])
    assert int8.threshold == pytest.approx(want["unknown_threshold"])
    assert int8.spec.metrics["val"]["ood_auroc"] == pytest.approx(want["ood_auroc"])
    assert "int8 QDQ" in int8.spec.training_data["quantization"]
    assert "quantization" not in fp32.spec.training_data
    saved = json.loads((run / "int8_report.json").read_text())
    assert saved["int8"] == str(tmp_path / "m.int8.onnx") and saved["compare"] == decided[0]
    assert saved["ship_int8"] is report["int8_ship"] is True
    assert saved["calibration"]["temperature"] == pytest.approx(want["temperature"])


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_resume_after_interrupted_epoch_matches_uninterrupted(
    tmp_path: Path, ema_decay: float
) -> None:
    straight = run_training(
        tiny_config(tmp_path, out="straight", epochs=3, ema_decay=ema_decay), quiet=True
    )
    assert straight.epochs_run == 3

    def kill_in_epoch_2(epoch: int, step: int) -> None:
        if epoch == 2 and step == 1:
            raise Interrupt

    cfg = tiny_config(tmp_path, out="killed", epochs=3, ema_decay=ema_decay)
    with pytest.raises(Interrupt):
        run_training(cfg, hook=kill_in_epoch_2, quiet=True)
    killed = tmp_path / "killed"
    assert [m["epoch"] for m in _metrics(killed)] == [1]
    assert torch.load(killed / "checkpoint.pt", weights_only=False)["state"]["epoch"] == 1
    with pytest.raises(InvalidRequestError, match="--resume"):
        run_training(cfg, quiet=True)

    resumed = resume_training(killed, quiet=True)
    assert resumed.epochs_run == 3
    got, want = _metrics(killed), _metrics(tmp_path / "straight")
    assert [m["epoch"] for m in got] == [1, 2, 3]
    for a, b in zip(got, want, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
    assert (killed / "calibration.json").is_file()


def test_ema_weights_are_the_ones_validated_and_kept(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, epochs=1, head_epochs=0, ema_decay=0.9)
    result = run_training(cfg, quiet=True)
    ckpt = torch.load(result.out / "checkpoint.pt", weights_only=False)
    best = torch.load(result.out / "best.pt", weights_only=False)
    assert best["epoch"] == ckpt["state"]["epoch"] == 1
    assert int(ckpt["ema"]["n_averaged"]) > 1
    averaged = {k.removeprefix("module."): v for k, v in ckpt["ema"].items()}
    raw = ckpt["model"]
    assert any(not torch.equal(raw[k], averaged[k]) for k in raw if raw[k].is_floating_point())
    assert best["model"].keys() == raw.keys()
    for k, v in best["model"].items():
        assert torch.equal(v, averaged[k]), k


def test_no_finite_val_loss_is_a_typed_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = train.validate

    def nan_loss(*args: Any, **kwargs: Any) -> tuple[np.ndarray, dict[str, float]]:
        logits, val = real(*args, **kwargs)
        return logits, {**val, "val_loss": float("nan")}

    monkeypatch.setattr(train, "validate", nan_loss)
    with pytest.raises(TrainingFailedError, match="finite val loss"):
        run_training(tiny_config(tmp_path), quiet=True)
    assert not (tmp_path / "run" / "best.pt").exists()


def test_resume_without_checkpoint_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="nothing to resume"):
        resume_training(tmp_path / "run", quiet=True)


def test_resume_validates_the_changed_epoch_count(tmp_path: Path) -> None:
    saved = tiny_config(tmp_path, epochs=3, head_epochs=2)
    run = tmp_path / "run"
    run.mkdir()
    saved.save(run / "config.json")
    (run / "checkpoint.pt").write_bytes(b"")  # never read: the config is refused first
    with pytest.raises(InvalidRequestError, match="head_epochs <= epochs"):
        resume_training(run, epochs=1, quiet=True)


def test_head_only_epoch_changes_only_the_head(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    data = build_data(cfg)
    train_set = load_train_set(data, cfg.seed)
    loader = torch.utils.data.DataLoader(train_set, batch_size=6)
    model = build_model(cfg, data.spec)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, len(loader), 0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    steps: list[int] = []
    set_phase(model, head_only=True)
    stats = train_one_epoch(
        model,
        loader,
        optimizer,
        scheduler,
        torch.nn.CrossEntropyLoss(),
        head_only=True,
        hook=lambda epoch, step: steps.append(step),
    )
    assert steps == [0, 1, 2] and stats["train_images"] == 18
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"backbone.classifier.weight", "backbone.classifier.bias"}


def test_training_without_a_terminal_logs_its_progress_inside_epochs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(progress, "LINE_INTERVAL_S", 0.0)
    run_training(tiny_config(tmp_path, epochs=1, head_epochs=0))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("epoch 1: step ")]
    assert lines and lines[0].startswith("epoch 1: step 1/2, ")
    assert "img/s" in lines[0] and "ETA" in lines[0]
    assert err.index(lines[-1]) < err.index("epoch 1/1 [full]")  # inside the epoch


def test_oversampled_root_is_shown_n_times_per_epoch(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, data=[str(tmp_path / "leaf"), str(tmp_path / "more")])
    make_imagefolder(tmp_path / "more", classes={"alba": (240, 240, 230)})
    data = build_data(cfg)
    roots = [item.root for item in data.split.leaf["train"]]
    plain = load_train_set(data, cfg.seed)
    twice = load_train_set(data, cfg.seed, oversample={"more": 2})
    assert len(plain) == len(roots) and len(twice) == len(roots) + roots.count("more")
    shown = [roots[j] for j in twice.order]
    assert shown.count("more") == 2 * roots.count("more") and shown.count("leaf") == roots.count(
        "leaf"
    )
    # the two showings of one image are augmented differently
    first, second = [i for i, j in enumerate(twice.order) if j == twice.order[-1]]
    assert not torch.equal(twice[first][0], twice[second][0])
    assert twice[first][1] == twice[second][1]


def test_oversample_must_name_a_data_root(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="ROOT=N"):
        tiny_config(tmp_path, oversample=["leaf=0"])
    with pytest.raises(InvalidRequestError, match=r"\['elsewhere'\], not a --data root"):
        build_data(tiny_config(tmp_path, oversample=["elsewhere=2"]))


def test_device_is_checked_before_the_run_folder_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for bad in ("gpu", "cuda:x", "cuda:"):
        with pytest.raises(InvalidRequestError, match="device must be cpu or cuda"):
            tiny_config(tmp_path, device=bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InvalidRequestError, match=r"--device cuda needs .*\(0 found\)"):
        run_training(tiny_config(tmp_path, device="cuda"), quiet=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(InvalidRequestError, match=r"--device cuda:1 needs .*\(1 found\)"):
        run_training(tiny_config(tmp_path, device="cuda:1"), quiet=True)
    assert not (tmp_path / "run").exists()


def test_manifest_mismatch_stops_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config(tmp_path, verify=True)
    write_manifest(open_root(tmp_path / "leaf"), tmp_path / "manifests")
    monkeypatch.setenv(MANIFEST_DIR_ENV, str(tmp_path / "manifests"))
    (tmp_path / "leaf" / "images" / "rubra" / "rubra_000.jpg").unlink()
    with pytest.raises(ManifestMismatchError, match="'leaf'.*does not match its manifest"):
        run_training(cfg, quiet=True)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_own_species_folder_joins_the_label_space(tmp_path: Path) -> None:
    mine = make_imagefolder(
        tmp_path / "my_photos",
        classes={"mitragyna_speciosa": (120, 90, 20)},
        with_tsv=False,
        nested_images=False,
    )
    cfg = tiny_config(
        tmp_path,
        data=[str(tmp_path / "leaf"), str(mine)],
        epochs=1,
        oversample=["my_photos=2"],
        batch_size=2,  # every image of the epoch makes a full batch: none dropped
    )
    run_training(cfg, quiet=True)
    _, spec = load_best(RunFolder(tmp_path / "run").best, cfg)
    assert spec.labels == ["caerulea", "rubra", "viridis", "mitragyna_speciosa"]
    assert spec.classes[3].scientific_name == "Mitragyna speciosa"
    # the training loop saw the oversampled root's images twice
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    roots = [item[0] for item in split["splits"]["train"]]
    assert _metrics(tmp_path / "run")[0]["train_images"] == len(roots) + roots.count("my_photos")


def test_int8_copy_that_does_not_qualify_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import leafid_train.export_run as export_module

    monkeypatch.setattr(
        export_module,
        "int8_decision",
        lambda *a: Int8Decision(ships=False, faster=True, val_drop=0.02, test_drop=None),
    )
    run_training(tiny_config(tmp_path), quiet=True)
    report = export_run(
        tmp_path / "run", tmp_path / "m.onnx", int8=True, compare_seconds=0.02, compare_rounds=1
    )
    assert report["int8_ship"] is False and report["int8_removed"] is True
    assert (tmp_path / "m.onnx").is_file() and not (tmp_path / "m.int8.onnx").exists()
    saved = json.loads((tmp_path / "run" / "int8_report.json").read_text())
    assert saved["ship_int8"] is False and "on test" in saved["rule"]


def _ood_train_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give the OOD roots a train part (their val images) when the split has none."""
    import leafid_train.run_data as run_data

    real = run_data.make_split

    def with_ood_train(*args: Any, **kwargs: Any) -> Any:
        split = real(*args, **kwargs)
        if not split.ood.get("train"):
            split.ood["train"] = list(split.ood["val"])
        return split

    monkeypatch.setattr(run_data, "make_split", with_ood_train)


def test_outlier_exposure_loss_is_least_for_a_uniform_softmax() -> None:
    uniform = torch.zeros(2, 4)
    sure = torch.tensor([[6.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]], requires_grad=True)
    assert float(outlier_exposure_loss(uniform)) == pytest.approx(np.log(4))
    loss = outlier_exposure_loss(sure)
    assert float(loss.detach()) > np.log(4) + 0.5
    loss.backward()
    assert sure.grad is not None
    # descent lowers each row's top logit and raises the others: towards uniform
    assert sure.grad[0, 0] > 0 and sure.grad[1, 2] > 0
    assert (sure.grad[0, 1:] < 0).all() and (sure.grad[1, [0, 1, 3]] < 0).all()
    with torch.no_grad():
        stepped = sure - 1.0 * sure.grad
    assert float(outlier_exposure_loss(stepped)) < float(loss.detach())


def test_ood_order_shows_every_image_before_repeating_one() -> None:
    order = ood_order(5, 12, seed=3, epoch=2)
    assert len(order) == 12
    assert sorted(order[:5]) == sorted(order[5:10]) == list(range(5))
    assert len(set(order[10:])) == 2
    assert order == ood_order(5, 12, seed=3, epoch=2)
    assert order != ood_order(5, 12, seed=3, epoch=3)
    assert order != ood_order(5, 12, seed=3, epoch=2, rank=1)


def test_outlier_exposure_pushes_ood_logits_towards_uniform(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ood_train_split(monkeypatch)
    make_ood(tmp_path / "nonleaf")
    cfg = tiny_config(tmp_path, ood=[str(tmp_path / "nonleaf")], outlier_exposure=1.0)
    data = build_data(cfg)
    loader = torch.utils.data.DataLoader(load_train_set(data, cfg.seed), batch_size=6)
    ood_batches = load_ood_batches(data, cfg.seed, rank=0, batch_size=6, processes=0)
    ood_images = torch.from_numpy(data.eval_arrays("train", ood=True))

    def ood_loss_after(weight: float, epochs: int = 4) -> tuple[float, list[float]]:
        torch.manual_seed(0)
        model = build_model(cfg, data.spec)
        optimizer = build_optimizer(model, cfg)
        scheduler = build_scheduler(optimizer, epochs * len(loader), 0.0)
        losses = []
        for epoch in range(1, epochs + 1):
            stats = train_one_epoch(
                model,
                loader,
                optimizer,
                scheduler,
                torch.nn.CrossEntropyLoss(),
                epoch=epoch,
                ood_batches=ood_batches.epoch(epoch, len(loader)),
                ood_weight=weight,
            )
            losses.append(stats["train_ood_loss"])
        model.eval()
        with torch.no_grad():
            return float(outlier_exposure_loss(model(ood_images))), losses

    exposed, losses = ood_loss_after(1.0)
    plain, _ = ood_loss_after(0.0)  # same batches, loss not minimised
    assert losses[-1] < losses[0]
    assert exposed < plain
    assert exposed < np.log(3) + 0.2  # near uniform over the 3 classes


def test_outlier_exposure_needs_ood_train_images(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="outlier_exposure needs --ood"):
        tiny_config(tmp_path, outlier_exposure=0.5)
    make_ood(tmp_path / "nonleaf")
    data = build_data(tiny_config(tmp_path, ood=[str(tmp_path / "nonleaf")]))
    data.split.ood.pop("train", None)
    with pytest.raises(DatasetError, match="needs OOD train images"):
        load_ood_batches(data, 1, rank=0, batch_size=4, processes=0)


@pytest.mark.parametrize(("outlier_batch", "shown"), [(0, 6), (2, 2)])
def test_outlier_batch_sets_the_ood_images_per_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outlier_batch: int, shown: int
) -> None:
    _ood_train_split(monkeypatch)
    make_ood(tmp_path / "nonleaf")
    sizes: list[int] = []
    real = OodBatches.epoch

    def spy(self: Any, epoch: int, steps: int) -> Any:
        loader = real(self, epoch, steps)
        sizes.extend(len(images) for images, _ in loader)
        return loader

    monkeypatch.setattr(OodBatches, "epoch", spy)
    cfg = tiny_config(
        tmp_path,
        epochs=1,
        batch_size=6,
        ood=[str(tmp_path / "nonleaf")],
        outlier_exposure=0.5,
        outlier_batch=outlier_batch,
    )
    run_training(cfg, quiet=True)
    assert sizes and set(sizes) == {shown}


def test_outlier_exposure_run_resumes_bit_identically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ood_train_split(monkeypatch)
    make_ood(tmp_path / "nonleaf")
    options: dict[str, Any] = dict(
        epochs=3, ood=[str(tmp_path / "nonleaf")], outlier_exposure=0.5, ema_decay=0.9
    )
    straight = run_training(tiny_config(tmp_path, out="straight", **options), quiet=True)
    assert straight.epochs_run == 3

    def kill_in_epoch_2(epoch: int, step: int) -> None:
        if epoch == 2 and step == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_training(
            tiny_config(tmp_path, out="killed", **options), hook=kill_in_epoch_2, quiet=True
        )
    resume_training(tmp_path / "killed", quiet=True)
    got, want = _metrics(tmp_path / "killed"), _metrics(tmp_path / "straight")
    assert [m["epoch"] for m in got] == [1, 2, 3]
    assert all(m["train_ood_loss"] > 0 for m in got)
    drop = ("seconds", "images_per_s")
    assert [{k: v for k, v in m.items() if k not in drop} for m in got] == [
        {k: v for k, v in m.items() if k not in drop} for m in want
    ]
    a = torch.load(tmp_path / "killed" / "best.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "straight" / "best.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_coverage_rule_run_reports_its_curve_and_ships_the_threshold(tmp_path: Path) -> None:
    make_ood(tmp_path / "nonleaf")
    cfg = tiny_config(
        tmp_path,
        epochs=1,
        ood=[str(tmp_path / "nonleaf")],
        unknown_rule="coverage",
        answered_right=0.5,
        reject=["nonleaf=0.5"],
    )
    result = run_training(cfg, quiet=True)
    calibration = json.loads((tmp_path / "run" / "calibration.json").read_text())
    assert calibration == result.calibration
    assert calibration["unknown_rule"]["reject"] == {"nonleaf": 0.5}
    assert list(calibration["ood_rejected_per_root"]) == ["nonleaf"]
    assert calibration["unknown_threshold"] in [
        p["threshold"] for p in calibration["risk_coverage"]
    ]
    assert set(calibration["scores"]) == {"max_softmax", "max_logit", "energy"}
    export_run(tmp_path / "run", tmp_path / "m.onnx")
    clf = Classifier(tmp_path / "m.onnx")
    assert clf.threshold == pytest.approx(calibration["unknown_threshold"])
    assert clf.spec.metrics["val"]["unknown_rule"]["name"] == "coverage"
    assert clf.spec.metrics["val"]["targets_met"] is calibration["targets_met"]


def test_reject_target_must_name_an_ood_root(tmp_path: Path) -> None:
    make_ood(tmp_path / "nonleaf")
    cfg = tiny_config(
        tmp_path, ood=[str(tmp_path / "nonleaf")], unknown_rule="coverage", reject=["plants=0.9"]
    )
    with pytest.raises(InvalidRequestError, match=r"\['plants'\], not an --ood root \(nonleaf\)"):
        run_training(cfg, quiet=True)
    assert not (tmp_path / "run").exists()
