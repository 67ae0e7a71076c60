import io
from functools import partial
from pathlib import Path

import pytest
from PIL import Image

from leafid.bench import (
    SIZES,
    Result,
    make_classifiers,
    measure_rounds,
    synthetic_photo,
    write_photos,
)
from leafid.bench import main as bench_main
from leafid.cli import main

Capsys = pytest.CaptureFixture[str]


def test_synthetic_photo_is_a_realistic_jpeg() -> None:
    data = synthetic_photo(*SIZES["1mp"], seed=1)
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG" and img.size == (1152, 864)
    assert 100_000 < len(data) < 1_000_000  # textured, not a flat colour
    assert synthetic_photo(*SIZES["1mp"], seed=1) == data


def test_write_photos_names_and_count(tmp_path: Path) -> None:
    paths = write_photos(tmp_path / "p", 5, (64, 48))
    assert [Path(p).name for p in paths] == [f"photo_{i:05d}.jpg" for i in range(5)]
    assert all(Path(p).stat().st_size > 0 for p in paths)


def test_bench_prints_table(tiny_model: Path, capsys: Capsys) -> None:
    args = [
        "--model",
        str(tiny_model),
        "--n12",
        "2",
        "--n1",
        "2",
        "--repeat",
        "1",
        "--batch-size",
        "2",
        "--decode-threads",
        "2",
    ]
    assert main(["bench", *args]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert any(line.startswith("cpus: ") for line in lines)
    assert any("onnxruntime" in line for line in lines)
    table = [line.split() for line in lines if line.startswith(("end-to-end", "model only"))]
    assert [row[:3] for row in table] == [
        ["end-to-end", "12mp", "JPEG"],
        ["end-to-end", "1mp", "JPEG"],
        ["model", "only", "64"],
        ["model", "only", "64"],
    ]
    assert [row[-7] for row in table] == ["2", "2", "1", "16"]  # batch column
    assert [row[-6] for row in table] == ["2", "2", "-", "-"]  # decoding threads
    assert all(float(row[-4]) > 0 for row in table)  # img/s


def test_python_dash_m_bench_uses_the_cli(tiny_model: Path, capsys: Capsys) -> None:
    assert bench_main(["--model", str(tiny_model), "--n12", "0", "--n1", "1", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "end-to-end 1mp JPEG" in out and "12mp" not in out


def test_bench_refuses_bad_options(tiny_model: Path, capsys: Capsys) -> None:
    assert main(["bench", "--model", str(tiny_model), "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err


def test_measure_rounds_takes_turns() -> None:
    order: list[str] = []

    def run(name: str) -> int:
        order.append(name)
        return 2

    cases = [(Result(name, 2, 1, None, 1), partial(run, name)) for name in ("usual", "leafid")]
    results = measure_rounds(cases, 3)
    assert order == ["usual", "leafid"] * 3
    assert [r.case for r in results] == ["usual", "leafid"]
    assert all(len(r.rates) == 3 and min(r.rates) > 0 for r in results)


def test_only_the_model_only_classifier_spins(tiny_model: Path) -> None:
    from leafid.cli import build_parser

    args = build_parser().parse_args(["bench", "--model", str(tiny_model)])
    end_to_end, model_only = make_classifiers(args)

    def spins(classifier: object) -> str:
        options = classifier.session.get_session_options()  # type: ignore[attr-defined]
        return options.get_session_config_entry("session.intra_op.allow_spinning")

    assert (spins(end_to_end), spins(model_only)) == ("0", "1")
