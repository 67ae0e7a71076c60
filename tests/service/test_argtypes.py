import argparse
from collections.abc import Callable

import pytest

from leafid.argtypes import fraction, int_at_least, non_negative_float, positive_float


def test_int_at_least() -> None:
    assert int_at_least(1)("3") == 3 and int_at_least(0)("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match="must be >= 1, got 0"):
        int_at_least(1)("0")
    with pytest.raises(argparse.ArgumentTypeError, match="not an integer: '1.5'"):
        int_at_least(1)("1.5")


@pytest.mark.parametrize(
    ("convert", "good", "bad"),
    [
        (positive_float, ["0.5", "3"], ["0", "-1", "nan"]),
        (non_negative_float, ["0", "2.5"], ["-0.1", "nan"]),
        (fraction, ["0", "0.25", "1"], ["-0.1", "1.01", "nan"]),
    ],
)
def test_float_ranges(convert: Callable[[str], float], good: list[str], bad: list[str]) -> None:
    assert [convert(text) for text in good] == [float(text) for text in good]
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match="must be"):
            convert(text)
    with pytest.raises(argparse.ArgumentTypeError, match="not a number: 'x'"):
        convert("x")


def test_a_bad_value_is_a_usage_error_naming_the_range(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=positive_float)
    with pytest.raises(SystemExit):
        parser.parse_args(["--lr", "0"])
    assert "--lr: must be > 0, got 0.0" in capsys.readouterr().err
