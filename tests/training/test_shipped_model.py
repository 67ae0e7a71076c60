"""The shipped model's test figures (model card, README) reproduce from the staged data.

Opt-in (``pytest -m slow``): it reads the real datasets under $LEAFID_DATA_DIR.
"""

from pathlib import Path

import pytest

pytest.importorskip("torch")

from leafid.classifier import Classifier  # noqa: E402
from leafid.paths import shipped_model_candidates  # noqa: E402
from leafid_train.config import DEFAULT_OOD_SPLIT  # noqa: E402
from leafid_train.data import open_root  # noqa: E402
from leafid_train.evaluate import evaluate_model  # noqa: E402
from leafid_train.locations import data_dir  # noqa: E402
from leafid_train.split import make_split  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.train]


def test_test_split_metrics_match_the_model_card(tmp_path: Path) -> None:
    model = next((p for p in shipped_model_candidates() if p.is_file()), None)
    if model is None:
        pytest.skip("no shipped model")
    spec = Classifier(model).spec
    datasets = spec.training_data["datasets"]
    if not all((data_dir() / name).is_dir() for name in datasets):
        pytest.skip(f"staged datasets not found under {data_dir()}")
    leaf = [n for n, d in datasets.items() if d["role"] == "train"]
    ood = [n for n, d in datasets.items() if d["role"] == "ood"]
    split = make_split(
        [open_root(n) for n in leaf],
        [open_root(n) for n in ood],
        spec.training_data["split_seed"],
        spec.training_data["split_fractions"],
        spec.training_data.get("ood_split_fractions", DEFAULT_OOD_SPLIT),
    )
    split.save(tmp_path / "split.json")
    want = spec.metrics["test"]
    got = evaluate_model(
        model,
        [],
        tmp_path / "eval",
        ood=ood,
        split_file=tmp_path / "split.json",
        split="test",
        shifts="shifts" in want,
    )
    assert got["images"] == want["images"]
    assert got["top1"] == pytest.approx(want["top1"], abs=1e-9)
    assert got["ece"] == pytest.approx(want["ece"], abs=1e-6)
    assert got["ood"]["auroc"] == pytest.approx(want["ood"]["auroc"], abs=1e-9)
    for name, figures in want["per_dataset"].items():
        assert got["per_dataset"][name]["top1"] == pytest.approx(figures["top1"], abs=1e-9)
    for name, figures in want.get("shifts", {}).get("results", {}).items():
        assert got["shifts"]["results"][name] == pytest.approx(figures, abs=1e-9)
