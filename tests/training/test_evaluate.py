from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from synthetic_data import make_imagefolder, make_lab_root, make_ood

import leafid.classifier
from conftest import make_tiny_model, tiny_spec
from leafid.classifier import Classifier
from leafid.errors import InvalidRequestError
from leafid.images import ImageLimits, read_bytes
from leafid.results import Candidate, Prediction, TaxonMatch
from leafid.spec import ClassInfo
from leafid_train.data import DatasetError, Sample, open_root, samples_of
from leafid_train.evaluate import Scored, compute_metrics, evaluate_model, score
from leafid_train.split import make_split

pytest.importorskip("matplotlib")


def _pred(slug_scores: list[tuple[str, float]], unknown: bool = False) -> Prediction:
    results = tuple(Candidate(s, s, s, p) for s, p in slug_scores)
    return Prediction(results, unknown, None, "t")


def test_compute_metrics_by_hand() -> None:
    labels = ["a", "b"]
    leaf = [
        Scored(Sample("x", "a/1", "a"), _pred([("a", 0.9), ("b", 0.1)])),
        Scored(Sample("x", "a/2", "a"), _pred([("b", 0.6), ("a", 0.4)])),
        Scored(Sample("y", "b/1", "b"), _pred([("b", 0.3), ("a", 0.2)], unknown=True)),
    ]
    ood = [Scored(Sample("n", "n/1", "nonleaf"), _pred([("a", 0.3), ("b", 0.1)], unknown=True))]
    m = compute_metrics(labels, leaf, ood)
    assert m["top1"] == pytest.approx(2 / 3) and m["top5"] == 1.0
    assert m["unknown_rate"] == pytest.approx(1 / 3)
    assert m["confusion"] == [[1, 1], [0, 1]]
    assert m["per_class"]["a"] == {"support": 2, "recall": 0.5, "precision": 1.0}
    assert m["per_class"]["b"]["precision"] == 0.5
    assert m["per_dataset"]["x"]["top1"] == 0.5 and m["per_dataset"]["y"]["top1"] == 1.0
    assert m["ood"]["rejected"] == 1.0
    assert m["ood"]["auroc"] == pytest.approx(2.5 / 3)  # 0.9 and 0.6 beat 0.3, 0.3 ties
    # |1-0.9|, |0-0.6|, |1-0.3| each weighted 1/3
    assert m["ece"] == pytest.approx((0.1 + 0.6 + 0.7) / 3)


def test_rank_counts_of_genus_and_family_answers() -> None:
    classes = (
        ClassInfo("a", "A a", "", "A", "F"),
        ClassInfo("b", "A b", "", "A", "F"),
        ClassInfo("c", "C c", "", "C", "F"),
    )
    unsure = _pred([("a", 0.4), ("b", 0.35), ("c", 0.25)])

    def at(rank: str, name: str) -> Prediction:
        return Prediction(unsure.results, False, None, "t", taxon=TaxonMatch(rank, name, 0.8, ()))

    leaf = [
        Scored(Sample("x", "a/1", "a"), _pred([("a", 0.9), ("b", 0.1)])),  # species, right
        Scored(Sample("x", "b/1", "b"), at("genus", "A")),  # genus, right
        Scored(Sample("x", "c/1", "c"), at("genus", "A")),  # genus, wrong
        Scored(Sample("x", "c/2", "c"), at("family", "F")),  # family, right
        Scored(Sample("x", "c/3", "c"), _pred([("a", 0.4), ("c", 0.3)], unknown=True)),
    ]
    m = compute_metrics(["a", "b", "c"], leaf, [], classes)
    r = m["ranks"]
    assert r["species"] == {"answers": 1, "right": 1, "accuracy": 1.0}
    assert r["genus"] == {"answers": 2, "right": 1, "accuracy": 0.5}
    assert r["family"] == {"answers": 1, "right": 1, "accuracy": 1.0}
    assert r["unknown"] == 1
    assert (r["right_at_species_rank"], r["right_at_some_rank"]) == (0.2, 0.6)
    assert m["unknown_rate"] == pytest.approx(0.8)  # without a species answer
    assert "ranks" not in compute_metrics(["a", "b", "c"], leaf, [])


def test_unknown_class_is_an_error() -> None:
    leaf = [Scored(Sample("x", "z/1", "zeta"), _pred([("a", 0.9)]))]
    with pytest.raises(DatasetError, match="zeta"):
        compute_metrics(["a"], leaf, [])


def test_evaluate_writes_metrics_and_plots(tmp_path: Path) -> None:
    trained = {"datasets": {"setA": {"images": 40, "role": "train"}}}
    model = make_tiny_model(
        tmp_path / "tiny.onnx", tiny_spec(unknown_threshold=0.6, training_data=trained)
    )
    make_imagefolder(tmp_path / "setA", per_class=4)
    make_imagefolder(tmp_path / "setB", per_class=2, classes={"rubra": (230, 20, 20)})
    make_ood(tmp_path / "grey", n=4)
    out = tmp_path / "eval"
    m = evaluate_model(
        model, [str(tmp_path / "setA"), str(tmp_path / "setB")], out, ood=[str(tmp_path / "grey")]
    )
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["top1"] == m["top1"] == 1.0  # the tiny model reads colour
    assert saved["images"] == 14 and set(saved["per_dataset"]) == {"setA", "setB"}
    assert saved["ood"]["images"] == 4 and saved["ood"]["rejected"] == 1.0
    assert saved["ood"]["auroc"] == 1.0 and saved["unknown_rate"] == 0.0
    assert len(saved["reliability"]) == 15 and saved["failed"] == []
    assert saved["trained_on"] == {"setA": 40}  # the model's training data, from its spec
    assert saved["input_size"] == 32
    for png in ("confusion.png", "reliability.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_uses_one_part_of_a_split_file(tmp_path: Path) -> None:
    model = make_tiny_model(tmp_path / "tiny.onnx")
    root = open_root(make_imagefolder(tmp_path / "setA", per_class=10))
    ood = open_root(make_ood(tmp_path / "nonleaf", n=6))
    split = make_split([root], [ood], 1, (0.7, 0.15, 0.15))
    split.save(tmp_path / "split.json")
    m = evaluate_model(
        model,
        [],
        tmp_path / "eval",
        ood=[str(tmp_path / "nonleaf")],
        split_file=tmp_path / "split.json",
        split="test",
    )
    assert m["images"] == len(split.leaf["test"]) == 6
    assert m["ood"]["images"] == len(split.ood["test"]) == 3
    assert m["split"] == "test"
    kwargs = {"ood": [str(tmp_path / "nonleaf")], "split_file": tmp_path / "split.json"}
    m = evaluate_model(model, [], tmp_path / "eval-val", split="val", **kwargs)
    assert m["ood"]["images"] == len(split.ood["val"]) == 3
    # the OOD root has no train part: its val half picked the threshold
    with pytest.raises(DatasetError, match="no 'train' part"):
        evaluate_model(model, [], tmp_path / "eval-train", split="train", **kwargs)
    m = evaluate_model(
        model, [], tmp_path / "eval-train", split="train", split_file=tmp_path / "split.json"
    )
    assert m["images"] == len(split.leaf["train"]) and "ood" not in m
    with pytest.raises(DatasetError, match="not in"):
        evaluate_model(
            model, [str(tmp_path / "nonleaf")], tmp_path / "e2", split_file=tmp_path / "split.json"
        )


def test_unreadable_image_is_listed_not_fatal(tmp_path: Path) -> None:
    model = make_tiny_model(tmp_path / "tiny.onnx")
    make_imagefolder(tmp_path / "setA", per_class=2)
    (tmp_path / "setA" / "images" / "rubra" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    m = evaluate_model(model, [str(tmp_path / "setA")], tmp_path / "eval")
    assert m["images"] == 6 and len(m["failed"]) == 1
    assert np.isclose(m["top1"], 1.0)


def test_unplanned_pillow_exception_is_listed_not_fatal(tmp_path: Path, odd_image: bytes) -> None:
    # what `leafid classify` writes an error row for must not crash evaluation
    model = make_tiny_model(tmp_path / "tiny.onnx")
    make_imagefolder(tmp_path / "setA", per_class=2)
    odd = tmp_path / "setA" / "images" / "rubra" / "odd.png"
    odd.write_bytes(odd_image)
    m = evaluate_model(model, [str(tmp_path / "setA")], tmp_path / "eval")
    assert m["images"] == 6 and np.isclose(m["top1"], 1.0)
    assert m["failed"] == [
        {"file": str(odd), "error": "cannot decode image: IndexError: tile index out of range"}
    ]


def test_no_readable_leaf_image_is_a_dataset_error(tmp_path: Path) -> None:
    model = make_tiny_model(tmp_path / "tiny.onnx")
    folder = tmp_path / "setA" / "images" / "rubra"
    folder.mkdir(parents=True)
    for i in range(2):
        (folder / f"broken{i}.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DatasetError, match="none of the 2 leaf images could be read"):
        evaluate_model(model, [str(tmp_path / "setA")], tmp_path / "eval")


def test_score_reads_files_like_users_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # through leafid.images.read_bytes, which refuses big files before reading them
    root = open_root(make_imagefolder(tmp_path / "setA", per_class=1))
    samples = samples_of(root)
    sizes = sorted(root.path(s.rel).stat().st_size for s in samples)
    assert sizes[-1] > sizes[0]
    limits = ImageLimits(max_bytes=sizes[0])  # the smallest file fits, bigger ones do not
    clf = Classifier(make_tiny_model(tmp_path / "tiny.onnx"), limits=limits)
    seen = []

    def spy(path: Path, limits: ImageLimits) -> bytes:
        seen.append(limits)
        return read_bytes(path, limits)

    monkeypatch.setattr(leafid.classifier, "read_bytes", spy)
    scored, failed = score(clf, [root], samples)
    assert seen == [limits] * len(samples)
    assert len(scored) + len(failed) == len(samples) and scored and failed
    assert all("over the limit" in f["error"] for f in failed)


def test_a_batch_is_not_a_request_no_image_is_refused_for_its_neighbours(tmp_path: Path) -> None:
    # leafid classify decodes each file on its own budget; so does evaluate
    root = open_root(make_imagefolder(tmp_path / "setA", per_class=4))
    one_image = 48 * 40 * 5  # an RGB 48x40 JPEG's decode cost, with room to spare
    limits = ImageLimits(max_decode_bytes=one_image, max_request_decode_bytes=one_image)
    clf = Classifier(make_tiny_model(tmp_path / "tiny.onnx"), limits=limits)
    scored, failed = score(clf, [root], samples_of(root), batch_size=32)
    assert len(scored) == 12 and failed == []


def test_batch_size_under_one_is_refused(tmp_path: Path) -> None:
    model = make_tiny_model(tmp_path / "tiny.onnx")
    make_imagefolder(tmp_path / "setA", per_class=1)
    with pytest.raises(InvalidRequestError, match="batch size"):
        evaluate_model(model, [str(tmp_path / "setA")], tmp_path / "eval", batch_size=0)


def test_shift_report_is_seeded_and_uses_held_out_backgrounds(tmp_path: Path) -> None:
    model = make_tiny_model(tmp_path / "tiny.onnx", tiny_spec(unknown_threshold=0.4))
    lab = open_root(make_lab_root(tmp_path / "lab", per_class=8))
    leaf = open_root(make_imagefolder(tmp_path / "field-leaves", per_class=8))
    ood = open_root(make_ood(tmp_path / "nonleaf", n=12))
    split = make_split([lab, leaf], [ood], 1, (0.5, 0.25, 0.25), (0.5, 0.25, 0.25))
    split.save(tmp_path / "split.json")
    kwargs: dict[str, Any] = {
        "ood": [str(tmp_path / "nonleaf")],
        "split_file": tmp_path / "split.json",
        "shifts": True,
    }
    m = evaluate_model(model, [], tmp_path / "eval", **kwargs)
    shifts = m["shifts"]
    assert shifts["backgrounds"] == len(split.ood["test"]) == 3
    assert shifts["field_roots"] == ["lab"]  # the noisy photos have no paper to cut off
    results = shifts["results"]
    assert list(results) == ["field", "greyscale", "blur", "rotation", "low_light"]
    lab_test = sum(s.root == "lab" for s in split.leaf["test"])
    assert results["field"]["images"] == lab_test
    for name in ("greyscale", "blur", "rotation", "low_light"):
        assert results[name]["images"] == m["images"]
    # the tiny model reads colour: grey images are all unknown, blurred ones all right
    assert results["greyscale"] == {
        "images": m["images"],
        "right": 0.0,
        "unknown_rate": 1.0,
        "answered_right": None,
    }
    assert results["blur"]["answered_right"] == 1.0
    again = evaluate_model(model, [], tmp_path / "eval2", **kwargs)
    assert again["shifts"] == shifts
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["shifts"] == shifts
    del kwargs["shifts"]
    assert "shifts" not in evaluate_model(model, [], tmp_path / "eval3", **kwargs)
    with pytest.raises(InvalidRequestError, match="not --split train"):
        evaluate_model(model, [], tmp_path / "eval4", split="train", shifts=True, **kwargs)
