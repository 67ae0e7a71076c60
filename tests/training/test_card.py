from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import make_tiny_model, tiny_spec
from leafid.errors import InvalidRequestError
from leafid_train.calibrate import calibration_report
from leafid_train.card import render_card, run_int8_decision
from leafid_train.config import TrainConfig
from leafid_train.run_folder import RunFolder
from leafid_train.unknown_rule import UnknownRule


def _fake_run(run: Path, model: Path | None) -> None:
    run.mkdir()
    TrainConfig(data=["setA"], out=str(run), arch="test_efficientnet").save(run / "config.json")
    datasets = {"setA": {"role": "train", "images": 30, "classes": 3}}
    split = {"train": 21, "val": 3, "test": 6}
    summary = {
        "labels": tiny_spec().labels,
        "epochs_run": 2,
        "best_epoch": 2,
        "best_val_loss": 0.5,
        "train_seconds": 60.0,
        "world_size": 1,
        "training_data": {
            "datasets": datasets,
            "split": split,
            "ood_split": {},
            "split_seed": 1,
            "split_fractions": [0.7, 0.15, 0.15],
        },
    }
    (run / "summary.json").write_text(json.dumps(summary))
    keys = ("temperature", "unknown_threshold", "val_top1", "val_images", "ece_before")
    keys += ("ece_after", "nll_before", "nll_after", "val_unknown_rate")
    calibration = dict.fromkeys(keys, 0.5) | {"ood_auroc": None, "ood_rejected": None}
    (run / "calibration.json").write_text(json.dumps(calibration))
    if model is not None:
        export = {"onnx": str(model), "parity_max_abs_diff": 1e-6}
        (run / "export.json").write_text(json.dumps(export))


def test_card_names_the_model_as_its_spec_does(tmp_path: Path) -> None:
    spec = tiny_spec(model_name="leafid-own-name", model_version="3.1.4")
    model = make_tiny_model(tmp_path / "m.onnx", spec)
    _fake_run(tmp_path / "run", model)
    card = render_card(tmp_path / "run")
    assert card.startswith("# Model card: leafid-own-name 3.1.4\n")
    other = make_tiny_model(tmp_path / "other.onnx", tiny_spec(model_version="9"))
    assert render_card(tmp_path / "run", other).startswith("# Model card: tiny-test 9\n")
    # A version other than the run's came from 'leafid export --model-version'.
    exports = [line for line in card.splitlines() if line.startswith("leafid export")]
    assert len(exports) == 2
    assert exports[0].endswith(" --model-version 3.1.4")  # the export into the run
    assert " --model-version 3.1.4 --card " in exports[1]  # the export of the shipped copy


def test_card_leaves_out_the_version_option_when_it_is_the_runs(tmp_path: Path) -> None:
    model = make_tiny_model(
        tmp_path / "m.onnx",
        tiny_spec(
            model_version=TrainConfig(
                data=["setA"], out=str(tmp_path / "run")
            ).resolved_model_version()
        ),
    )
    _fake_run(tmp_path / "run", model)
    assert "--model-version" not in render_card(tmp_path / "run").split("## Reproduce")[1]


def test_card_of_a_run_never_exported_is_refused(tmp_path: Path) -> None:
    _fake_run(tmp_path / "run", None)
    with pytest.raises(InvalidRequestError, match="leafid export"):
        render_card(tmp_path / "run")


def _fake_eval(folder: Path, top1: float) -> None:
    folder.mkdir()
    per = {"images": 6, "top1": top1, "top5": 1.0, "unknown_rate": 0.0, "answered_top1": top1}
    metrics = {
        "split": "test",
        "images": 6,
        "top1": top1,
        "top5": 1.0,
        "ece": 0.01,
        "unknown_rate": 0.0,
        "threshold": 0.5,
        "per_dataset": {"setA": per},
        "per_class": {"rubra": {"support": 2, "precision": 1.0, "recall": 1.0}},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))


def _fake_int8(run: Path, val: tuple[float, float], test: tuple[float, float]) -> None:
    speed = {"fp32": (100.0, 120.0), "int8": (150.0, 200.0)}
    compare = {
        name: {
            "size_mb": 4.0,
            "top1": val[i],
            "images_per_s_b1": speed[name][0],
            "images_per_s_b16": speed[name][1],
        }
        for i, name in enumerate(("fp32", "int8"))
    } | {"n": 3, "top1_agreement": 0.99}
    calibration = json.loads((run / "calibration.json").read_text()) | {"ood_auroc": 0.9}
    report = {"int8": "x", "ship_int8": True, "compare": compare, "calibration": calibration}
    (run / "int8_report.json").write_text(json.dumps(report))
    _fake_eval(run / "eval", test[0])
    _fake_eval(run / "eval_int8", test[1])


@pytest.mark.parametrize(("test_top1", "ships"), [((0.960, 0.958), True), ((0.960, 0.950), False)])
def test_int8_ships_only_within_half_a_point_on_val_and_test(
    tmp_path: Path, test_top1: tuple[float, float], ships: bool
) -> None:
    model = make_tiny_model(tmp_path / "m.onnx")
    run = tmp_path / "run"
    _fake_run(run, model)
    _fake_int8(run, val=(0.970, 0.966), test=test_top1)
    decision = run_int8_decision(RunFolder(run))
    assert decision is not None and decision.ships is ships
    assert decision.val_drop == pytest.approx(0.004)
    before = render_card(run, model)  # no m.int8.onnx beside the model yet
    assert ("qualifies, but this export did not ship a copy" in before) is ships
    assert "Test results: shipped INT8" not in before
    (tmp_path / "m.int8.onnx").write_bytes(model.read_bytes())
    card = render_card(run, model)
    assert ("INT8 is shipped as the default (`m.int8.onnx`)" in card) is ships
    assert ("INT8 is not shipped" in card) is not ships
    assert ("Test results: shipped INT8 model" in card) is ships
    assert "Test results: fp32 model" in card
    ship_line = card.split("```sh\n")[1].split("```")[0].strip().splitlines()[-1]
    assert ship_line.endswith("--card " + str(tmp_path))
    assert (" --int8 " in ship_line) is ships


def test_a_slower_int8_never_ships(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _fake_run(run, make_tiny_model(tmp_path / "m.onnx"))
    _fake_int8(run, val=(0.97, 0.97), test=(0.96, 0.96))
    report = json.loads((run / "int8_report.json").read_text())
    report["compare"]["int8"]["images_per_s_b1"] = 50.0
    (run / "int8_report.json").write_text(json.dumps(report))
    decision = run_int8_decision(RunFolder(run))
    assert decision is not None and not decision.ships and not decision.faster
    assert run_int8_decision(RunFolder(tmp_path)) is None  # no INT8 copy at all


def test_card_shows_the_coverage_rule_and_its_risk_coverage_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    logits = rng.normal(0, 1, (200, 3))
    logits[np.arange(200), labels] += 4.0
    ood = rng.normal(0, 1, (40, 3))
    rule = UnknownRule("coverage", answered_right=0.9, reject={"nonleaf": 0.8})
    report = calibration_report(logits, labels, ood, rule, ["nonleaf"] * 40)
    model = make_tiny_model(tmp_path / "m.onnx")
    run = tmp_path / "run"
    _fake_run(run, model)
    TrainConfig(
        data=["setA"],
        out=str(run),
        arch="test_efficientnet",
        ood=["nonleaf"],
        outlier_exposure=0.5,
        unknown_rule="coverage",
        answered_right=0.9,
        reject=["nonleaf=0.8"],
    ).save(run / "config.json")
    (run / "calibration.json").write_text(json.dumps(report))
    card = render_card(run)
    assert (
        "chosen on val to answer the most leaf photos with >= 90.00% of the answers right, "
        ">= 80.00% of nonleaf answered unknown (every target met)." in card
    )
    assert "- Outlier exposure: each step also trains" in card and "weight 0.5)" in card
    header = "| threshold | leaf photos answered | answered right | nonleaf unknown |"
    rows = card.split(header)[1].split("\n\n")[0].strip().splitlines()[1:]
    assert len(rows) == len(report["risk_coverage"])
    chosen = [r for r in rows if r.startswith("| **")]
    assert chosen == [
        f"| **{report['unknown_threshold']:.4f}** "
        f"| **{100 * (1 - report['val_unknown_rate']):.2f}%** "
        f"| **{100 * report['val_answered_right']:.2f}%** "
        f"| **{100 * report['ood_rejected_per_root']['nonleaf']:.2f}%** |"
    ]
    for name in ("max_softmax", "max_logit", "energy"):
        assert f"| {name} | {report['scores'][name]['auroc']:.4f} |" in card
    assert "--unknown-rule coverage --answered-right 0.9 --reject nonleaf=0.8" in card


def test_card_of_a_keep_rule_run_has_no_risk_coverage_table(tmp_path: Path) -> None:
    _fake_run(tmp_path / "run", make_tiny_model(tmp_path / "m.onnx"))
    card = render_card(tmp_path / "run")
    assert "chosen on val to keep 95.00% of correct answers." in card
    assert "Risk-coverage" not in card and "Outlier exposure" not in card


def test_card_shows_the_field_shifts_when_evaluated_with_them(tmp_path: Path) -> None:
    model = make_tiny_model(tmp_path / "m.onnx")
    _fake_run(tmp_path / "run", model)
    _fake_eval(tmp_path / "run" / "eval", 0.9)
    assert "Shifted copies" not in render_card(tmp_path / "run")
    metrics_file = tmp_path / "run" / "eval" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    field = {"images": 8, "right": 0.5, "unknown_rate": 0.25, "answered_right": 2 / 3}
    metrics["shifts"] = {
        "seed": 7,
        "backgrounds": 40,
        "field_roots": ["setA"],
        "results": {"field": field, "low_light": {"images": 0}},
    }
    metrics_file.write_text(json.dumps(metrics))
    card = render_card(tmp_path / "run")
    assert "lays the leaves of setA on 40 field photos" in card
    assert "| field | 8 | 50.00% | 25.00% | 66.67% |" in card
    assert "| low light | 0 | n/a | n/a | n/a |" in card


def test_card_reports_backing_off_on_val_and_test(tmp_path: Path) -> None:
    _fake_run(tmp_path / "run", make_tiny_model(tmp_path / "m.onnx"))
    assert "Backing off" not in render_card(tmp_path / "run")
    cal_file = tmp_path / "run" / "calibration.json"
    cal = json.loads(cal_file.read_text())
    cal["taxon_backoff"] = {
        "val_images": 100,
        "species_right": 80,
        "no_species_answer": 15,
        "genus": {"threshold": 0.7, "answers": 9, "right": 9, "ood_answers": 0},
        "family": {"threshold": 0.9, "answers": 2, "right": 2, "ood_answers": 1},
    }
    cal_file.write_text(json.dumps(cal))
    card = render_card(tmp_path / "run")
    assert "thresholds (chosen on val" in card.lower() and "genus 0.7000, family 0.9000" in card
    assert "15 without a species answer; of those, 9 answered at genus rank (9 right" in card
    _fake_eval(tmp_path / "run" / "eval", 0.9)
    metrics_file = tmp_path / "run" / "eval" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics["ranks"] = {
        "images": 100,
        "species": {"answers": 85, "right": 80, "accuracy": 80 / 85},
        "genus": {"answers": 10, "right": 9, "accuracy": 0.9},
        "family": {"answers": 0, "right": 0, "accuracy": None},
        "unknown": 5,
        "right_at_species_rank": 0.8,
        "right_at_some_rank": 0.89,
    }
    metrics_file.write_text(json.dumps(metrics))
    card = render_card(tmp_path / "run")
    assert "right at some rank 89.00% (+9.00 points)" in card
    assert "genus answers 10 (90.00% right)" in card and ": not met." in card


def test_card_names_the_background_and_greyscale_augmentation(tmp_path: Path) -> None:
    model = make_tiny_model(tmp_path / "m.onnx")
    _fake_run(tmp_path / "run", model)
    assert "Leaves on backgrounds" not in render_card(tmp_path / "run")
    cfg = TrainConfig(
        data=["setA"],
        out=str(tmp_path / "run"),
        arch="test_efficientnet",
        paste=["setA"],
        paste_prob=0.4,
        greyscale_prob=0.1,
    )
    cfg.save(tmp_path / "run" / "config.json")
    card = render_card(tmp_path / "run")
    assert "- Leaves on backgrounds: 40.00% of the training images of setA" in card
    assert "- Greyscale: any training image shown in grey with probability 0.1." in card


def test_card_compares_with_the_model_it_replaces_on_the_same_test_split(tmp_path: Path) -> None:
    model = make_tiny_model(tmp_path / "m.onnx")
    run = tmp_path / "run"
    _fake_run(run, model)
    _fake_eval(run / "eval", 0.9)
    assert "What changed" not in render_card(run)
    field = {"images": 8, "right": 0.5, "unknown_rate": 0.25, "answered_right": 2 / 3}
    for folder, version, top1, nonleaf in [
        ("eval", "2.0.0", 0.9, 0.96),
        ("eval_base", "1.2.1", 0.5, 0.8),
    ]:
        if folder == "eval_base":
            _fake_eval(run / folder, top1)
            field = {"images": 8, "right": 0.125, "unknown_rate": 0.75, "answered_right": 0.5}
        path = run / folder / "metrics.json"
        metrics = json.loads(path.read_text()) | {
            "model": f"/x/{folder}.onnx",
            "model_version": version,
            "trained_on": {"setA": 30 if version == "2.0.0" else 20},
            "input_size": 256 if version == "2.0.0" else 224,
            "ood": {
                "images": 10,
                "auroc": 0.9,
                "rejected": nonleaf,
                "per_dataset": {"nonleaf": nonleaf},
            },
            "shifts": {
                "seed": 1,
                "backgrounds": 4,
                "field_roots": ["setA"],
                "results": {"field": field},
            },
        }
        path.write_text(json.dumps(metrics))
    card = render_card(run)
    assert "## What changed from 1.2.1" in card
    assert "| setA | 6 | 50.00% -> 90.00% | 0.00% -> 0.00% | 50.00% -> 90.00% |" in card
    assert (
        "| field (shifted test leaves) | 8 | 12.50% -> 50.00% | 75.00% -> 25.00% | "
        "50.00% -> 66.67% |" in card
    )
    assert "| nonleaf | 80.00% -> 96.00% |" in card
    assert "1.2.1 trained on another copy of setA (20 images; this model: 30)" in card
    assert "Input 224x224 -> 256x256 px: the network does about 1.31x the work" in card
    reproduce = card.split("## Reproduce")[1]
    assert (
        f"leafid evaluate /x/eval_base.onnx --split-file {run}/split.json --split test "
        f"--shifts --out {run}/eval_base" in reproduce
    )


def test_card_quotes_the_runs_release_notes(tmp_path: Path) -> None:
    model = make_tiny_model(tmp_path / "m.onnx")
    _fake_run(tmp_path / "run", model)
    assert "## Release notes" not in render_card(tmp_path / "run")
    RunFolder(tmp_path / "run").release_notes.write_text("Resumed once.\n", encoding="utf-8")
    assert "## Release notes\n\nResumed once.\n" in render_card(tmp_path / "run")
