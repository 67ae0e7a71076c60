from __future__ import annotations

import io

import pytest

from leafid_train import progress
from leafid_train.progress import EpochProgress, clock


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _batches(sizes: list[int]) -> list[tuple[None, list[int]]]:
    return [(None, [0] * n) for n in sizes]


def test_clock_writes_minutes_and_hours() -> None:
    assert [clock(s) for s in (0, 9.6, 75, 3600 + 62)] == ["0:00", "0:10", "1:15", "1:01:02"]


def test_log_lines_name_the_step_rate_and_time_left() -> None:
    out = io.StringIO()
    shown = EpochProgress("epoch 3", 6, 48, show=True, stream=out)
    shown.start = 0.0
    shown.update(8)
    shown.update(8)
    assert shown.line(10.0) == "epoch 3: step 2/6, 1.6 img/s, 0:10 elapsed, ETA 0:20"


def test_without_a_terminal_a_line_comes_every_interval_but_not_after_the_last_step() -> None:
    out = io.StringIO()
    shown = EpochProgress("epoch 1", 3, 20, show=True, interval_s=0.0, stream=out)
    assert list(shown.over(_batches([8, 8, 4]))) == _batches([8, 8, 4])
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["epoch 1: step 1/3", "epoch 1: step 2/3"]
    assert all("img/s" in line and "ETA" in line for line in lines)
    assert (shown.steps_done, shown.images_done) == (3, 20)


def test_lines_wait_for_the_interval() -> None:
    out = io.StringIO()
    shown = EpochProgress("epoch 1", 3, 24, show=True, interval_s=3600.0, stream=out)
    list(shown.over(_batches([8, 8, 8])))
    assert out.getvalue() == ""


def test_nothing_is_shown_unless_asked() -> None:
    out = Terminal()
    list(
        EpochProgress("epoch 1", 2, 16, show=False, interval_s=0.0, stream=out).over(
            _batches([8, 8])
        )
    )
    assert out.getvalue() == ""


def test_a_terminal_gets_a_bar_in_images_per_second() -> None:
    pytest.importorskip("tqdm")
    out = Terminal()
    shown = EpochProgress("epoch 2", 2, 16, show=True, interval_s=0.0, stream=out)
    list(shown.over(_batches([8, 8])))
    text = out.getvalue()
    assert "epoch 2" in text and "img/s" in text and shown.bar.n == shown.bar.total == 16
    assert "step 1/2" not in text  # the bar, not lines


def test_a_terminal_without_tqdm_gets_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "optional", lambda module: None)
    out = Terminal()
    list(
        EpochProgress("epoch 1", 2, 16, show=True, interval_s=0.0, stream=out).over(
            _batches([8, 8])
        )
    )
    assert out.getvalue().startswith("epoch 1: step 1/2, ")
