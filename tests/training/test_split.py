from __future__ import annotations

from pathlib import Path

from synthetic_data import make_imagefolder, make_ood

from leafid_train.data import Sample, open_root
from leafid_train.split import Split, make_split, split_samples, split_units


def test_split_is_deterministic_stratified_disjoint() -> None:
    samples = [Sample("r", f"c{c}/{i}.jpg", f"c{c}") for c in range(3) for i in range(40)]
    one = split_samples(samples, 7, (0.7, 0.15, 0.15))
    two = split_samples(list(reversed(samples)), 7, (0.7, 0.15, 0.15))
    assert one == two
    sets = [set(one[k]) for k in ("train", "val", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert set().union(*sets) == set(samples)
    for part, want in (("train", 28), ("val", 6), ("test", 6)):
        per_class = {c: sum(s.label == f"c{c}" for s in one[part]) for c in range(3)}
        assert set(per_class.values()) == {want}, (part, per_class)
    other_seed = split_samples(samples, 8, (0.7, 0.15, 0.15))
    assert other_seed["test"] != one["test"]


def test_small_class_gets_val_and_test() -> None:
    samples = [Sample("r", f"a/{i}.jpg", "a") for i in range(4)]
    split = split_samples(samples, 1, (0.7, 0.15, 0.15))
    assert [len(split[k]) for k in ("train", "val", "test")] == [2, 1, 1]


def _frames(runs: list[tuple[str, str, int, int]]) -> list[Sample]:
    """DeepWeeds-named frames: (day, camera, first second, count), 30 s apart."""
    out = []
    for day, camera, start, count in runs:
        for k in range(count):
            t = start + 30 * k
            hms = f"{t // 3600:02d}{t // 60 % 60:02d}{t % 60:02d}"
            out.append(Sample("weeds", f"w/{day}-{hms}-{camera}.jpg", "w"))
    return out


def test_capture_runs_are_cut_by_day_camera_and_gap() -> None:
    samples = _frames(
        [
            ("20170101", "0", 36000, 3),  # one run ...
            ("20170101", "0", 36000 + 60 + 121, 2),  # ... then a gap over 120 s: another
            ("20170101", "1", 36000, 2),  # another camera
            ("20170102", "0", 36000, 2),  # another day
        ]
    )
    assert [len(u) for u in split_units(samples)] == [3, 2, 2, 2]
    # one file not named like a frame: the group is split file by file
    mixed = [*samples, Sample("weeds", "w/other.jpg", "w")]
    assert all(len(u) == 1 for u in split_units(mixed))


def test_frames_of_one_capture_run_never_straddle_the_split() -> None:
    samples = _frames([("20170101", str(c), 3600 * h, 4) for c in range(3) for h in range(10)])
    parts = split_samples(samples, seed=5, fractions=(0.7, 0.15, 0.15))
    side = {s: name for name, items in parts.items() for s in items}
    for unit in split_units(samples):
        assert len({side[s] for s in unit}) == 1
    # 18 of 120 files wanted in test and val: whole runs of 4 give 20
    assert {name: len(v) for name, v in parts.items()} == {"train": 80, "val": 20, "test": 20}
    two_runs = _frames([("20170101", "0", 0, 5), ("20170101", "1", 0, 5)])
    assert len(split_samples(two_runs, 5, (0.7, 0.15, 0.15))["train"]) == 5  # train keeps one


def test_split_file_round_trip_and_ood_halves(tmp_path: Path) -> None:
    leaf = open_root(make_imagefolder(tmp_path / "leaf"))
    ood = open_root(make_ood(tmp_path / "nonleaf", n=9))
    split = make_split([leaf], [ood], 3, (0.7, 0.15, 0.15))
    assert sorted(len(v) for v in split.ood.values()) == [4, 5]
    assert not set(split.ood["val"]) & set(split.ood["test"])
    assert set(split.ood) == {"val", "test"}  # no train part unless asked for
    split.save(tmp_path / "split.json")
    assert Split.load(tmp_path / "split.json") == split


def test_ood_train_part_only_when_asked(tmp_path: Path) -> None:
    leaf = open_root(make_imagefolder(tmp_path / "leaf"))
    ood = open_root(make_ood(tmp_path / "nonleaf", n=12))
    split = make_split([leaf], [ood], 3, (0.7, 0.15, 0.15), (0.5, 0.25, 0.25))
    assert {k: len(v) for k, v in split.ood.items()} == {"train": 6, "val": 3, "test": 3}
    parts = [set(v) for v in split.ood.values()]
    assert sum(len(p) for p in parts) == len(set().union(*parts)) == 12  # disjoint, complete
    split.save(tmp_path / "split.json")
    assert Split.load(tmp_path / "split.json") == split
