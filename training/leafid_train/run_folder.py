"""The run folder: the one place that names its files and reads and writes them.

``leafid train`` writes ``config.json`` (the resolved :class:`TrainConfig`),
``split.json``, ``checkpoint.pt`` (last finished epoch, with optimiser/scheduler state
and every process's RNG state), ``best.pt`` (best val loss; with ``ema_decay`` the
averaged weights), ``metrics.jsonl`` (one line per epoch), ``calibration.json``,
``summary.json`` and ``safety.json`` (:mod:`~leafid_train.safety`). ``leafid export``
adds ``export.json`` and, with ``--int8``, ``int8_report.json``; ``leafid evaluate`` of
the run's models fills ``eval/`` and ``eval_int8/`` (:class:`EvalFolder`), and of the
model it replaces ``eval_base/``.
``leafid add-species`` writes its files beside its model (:class:`AddSpeciesFiles`).
Standard library and :mod:`leafid` only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leafid.paths import int8_copy_path
from leafid_train.config import TrainConfig
from leafid_train.split import Split


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when the file is absent."""
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


@dataclass(frozen=True)
class EvalFolder:
    """What ``leafid evaluate`` writes into its ``--out`` folder."""

    path: Path

    @property
    def metrics(self) -> Path:
        """``metrics.json``: every figure of the evaluation."""
        return self.path / "metrics.json"

    @property
    def confusion(self) -> Path:
        """``confusion.png``: the row-normalised confusion matrix."""
        return self.path / "confusion.png"

    @property
    def reliability(self) -> Path:
        """``reliability.png``: the reliability diagram."""
        return self.path / "reliability.png"

    def load_metrics(self) -> dict[str, Any] | None:
        """The evaluation's figures, or None when it has not run."""
        return _read_json(self.metrics)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """Write ``metrics.json`` (making the folder)."""
        self.path.mkdir(parents=True, exist_ok=True)
        _write_json(self.metrics, metrics)


@dataclass(frozen=True)
class RunFolder:
    """The files of one training run, by role."""

    path: Path

    @property
    def config(self) -> Path:
        """``config.json``: the run's :class:`TrainConfig`."""
        return self.path / "config.json"

    @property
    def split(self) -> Path:
        """``split.json``: which file is train, val or test."""
        return self.path / "split.json"

    @property
    def checkpoint(self) -> Path:
        """``checkpoint.pt``: everything resuming needs, after the last finished epoch."""
        return self.path / "checkpoint.pt"

    @property
    def best(self) -> Path:
        """``best.pt``: the weights of the epoch with the best val loss."""
        return self.path / "best.pt"

    @property
    def metrics(self) -> Path:
        """``metrics.jsonl``: one line per finished epoch."""
        return self.path / "metrics.jsonl"

    @property
    def calibration(self) -> Path:
        """``calibration.json``: temperature and unknown threshold of ``best.pt``."""
        return self.path / "calibration.json"

    @property
    def summary(self) -> Path:
        """``summary.json``: epochs, best epoch, time, labels and training data."""
        return self.path / "summary.json"

    @property
    def safety(self) -> Path:
        """``safety.json``: the run's val figures beside the shipped model's."""
        return self.path / "safety.json"

    @property
    def export(self) -> Path:
        """``export.json``: the last export's report."""
        return self.path / "export.json"

    @property
    def int8_report(self) -> Path:
        """``int8_report.json``: the INT8 copy's comparison, calibration and decision."""
        return self.path / "int8_report.json"

    @property
    def model(self) -> Path:
        """``model.onnx``: where the run's own export goes."""
        return self.path / "model.onnx"

    @property
    def model_int8(self) -> Path:
        """The INT8 copy beside :attr:`model`."""
        return int8_copy_path(self.model)

    @property
    def eval(self) -> EvalFolder:
        """``eval/``: the fp32 model evaluated on test."""
        return EvalFolder(self.path / "eval")

    @property
    def eval_int8(self) -> EvalFolder:
        """``eval_int8/``: the INT8 copy evaluated on test."""
        return EvalFolder(self.path / "eval_int8")

    @property
    def release_notes(self) -> Path:
        """``release_notes.md``: what people who ran it say about the run, for the card."""
        return self.path / "release_notes.md"

    def load_release_notes(self) -> str | None:
        """The release notes' Markdown, or None when there are none."""
        path = self.release_notes
        return path.read_text(encoding="utf-8").strip() if path.is_file() else None

    @property
    def eval_base(self) -> EvalFolder:
        """``eval_base/``: the model this run replaces, evaluated on this run's test split."""
        return EvalFolder(self.path / "eval_base")

    def holds_run(self) -> bool:
        """Whether a run was started here (a config or a checkpoint is on disk)."""
        return self.checkpoint.is_file() or self.config.is_file()

    def missing_for_export(self) -> list[str]:
        """Names of the files an export needs that are not on disk."""
        needed = (self.best, self.config, self.split, self.calibration, self.summary)
        return [p.name for p in needed if not p.is_file()]

    def load_config(self) -> TrainConfig:
        """The run's config."""
        return TrainConfig.load(self.config)

    def save_config(self, cfg: TrainConfig) -> None:
        """Write ``config.json`` (making the folder)."""
        self.path.mkdir(parents=True, exist_ok=True)
        cfg.save(self.config)

    def save_split(self, split: Split) -> None:
        """Write ``split.json``."""
        split.save(self.split)

    def epochs(self) -> list[dict[str, Any]]:
        """Rows of ``metrics.jsonl``; a last line cut off by a kill (no newline) is dropped."""
        if not self.metrics.is_file():
            return []
        text = self.metrics.read_text()
        complete = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def append_epoch(self, row: dict[str, Any]) -> None:
        """Add one epoch's line to ``metrics.jsonl``."""
        with self.metrics.open("a") as fh:
            fh.write(json.dumps(row) + "\n")

    def keep_epochs(self, last: int) -> None:
        """Drop lines of epochs after ``last`` (and a torn last line) from ``metrics.jsonl``."""
        kept = [row for row in self.epochs() if row["epoch"] <= last]
        self.metrics.write_text("".join(json.dumps(row) + "\n" for row in kept))

    def load_calibration(self) -> dict[str, Any]:
        """The calibration report of ``best.pt``."""
        data: dict[str, Any] = json.loads(self.calibration.read_text())
        return data

    def write_calibration(self, report: dict[str, Any]) -> None:
        """Write ``calibration.json``."""
        _write_json(self.calibration, report)

    def load_summary(self) -> dict[str, Any]:
        """The training summary."""
        data: dict[str, Any] = json.loads(self.summary.read_text())
        return data

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write ``summary.json``."""
        _write_json(self.summary, summary)

    def write_safety(self, report: dict[str, Any]) -> None:
        """Write ``safety.json``."""
        _write_json(self.safety, report)

    def load_export(self) -> dict[str, Any] | None:
        """The last export's report, or None when the run was never exported."""
        return _read_json(self.export)

    def write_export(self, report: dict[str, Any]) -> None:
        """Write ``export.json``."""
        _write_json(self.export, report)

    def load_int8_report(self) -> dict[str, Any] | None:
        """The INT8 report, or None when no export made an INT8 copy."""
        return _read_json(self.int8_report)

    def write_int8_report(self, report: dict[str, Any]) -> None:
        """Write ``int8_report.json``."""
        _write_json(self.int8_report, report)


@dataclass(frozen=True)
class AddSpeciesFiles:
    """What ``leafid add-species`` writes beside its model ``NAME.onnx``."""

    model: Path

    def _beside(self, suffix: str) -> Path:
        return self.model.with_name(self.model.name.removesuffix(".onnx") + suffix)

    @property
    def model_int8(self) -> Path:
        """The INT8 copy (kept only when it qualifies)."""
        return int8_copy_path(self.model)

    @property
    def card(self) -> Path:
        """``NAME.card.md``: what the model derives from, and its figures."""
        return self._beside(".card.md")

    @property
    def report(self) -> Path:
        """``NAME.add-species.json``: data, calibration, INT8 decision and timings."""
        return self._beside(".add-species.json")

    @property
    def safety(self) -> Path:
        """``NAME.safety.json``: the model's val figures beside its base's."""
        return self._beside(".safety.json")

    def write_report(self, report: dict[str, Any]) -> None:
        """Write the add-species report."""
        _write_json(self.report, report)

    def write_safety(self, report: dict[str, Any]) -> None:
        """Write the safety report."""
        _write_json(self.safety, report)
