from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_COLOURS, encode, make_tiny_model, noisy, solid, tiny_spec
from leafid.classifier import Classifier, in_place, make_session, softmax
from leafid.errors import (
    BadImageError,
    ImageError,
    ImageNotFoundError,
    InvalidModelError,
    InvalidRequestError,
    ModelNotFoundError,
    TooLargeError,
    UnsupportedTypeError,
)
from leafid.images import ImageLimits
from leafid.paths import default_model_path, shipped_model_candidates
from leafid.results import CAVEAT, LOW_SCORE, PHOTOS_DISAGREE, Prediction


@pytest.fixture(scope="module")
def clf(tiny_model):
    return Classifier(tiny_model)


def test_spec_is_read_from_metadata(clf):
    assert clf.spec == tiny_spec()
    assert clf.threshold == 0.5


@pytest.mark.parametrize("slug", list(TINY_COLOURS))
def test_coloured_photo_is_its_class(clf, slug):
    pred = clf.classify_arrays(clf.load(encode(noisy(TINY_COLOURS[slug])))[None])[0]
    assert pred.best_match == slug and not pred.unknown
    assert pred.results[0].score > 0.9
    d = pred.to_dict()
    assert d["caveat"] == CAVEAT and d["model_version"] == "0.0.1-test"
    assert [r["slug"] for r in d["results"]][0] == slug


def test_grey_photo_is_unknown_with_reason(clf):
    (pred,) = clf.classify([solid((128, 128, 128))])
    assert pred.unknown and pred.best_match is None
    assert "threshold" in (pred.reason or "")
    assert sum(c.score for c in pred.results) == pytest.approx(1.0)


def test_threshold_override(tiny_model):
    low = Classifier(tiny_model, threshold=0.2)
    assert not low.classify([solid((128, 128, 128))])[0].unknown
    with pytest.raises(InvalidRequestError):
        Classifier(tiny_model, threshold=2.0)


def test_top_k(clf):
    (pred,) = clf.classify([noisy((220, 30, 30))], top_k=2)
    assert len(pred.results) == 2
    assert len(clf.classify([noisy((220, 30, 30))], top_k=99)[0].results) == 3
    with pytest.raises(InvalidRequestError):
        clf.classify([noisy((220, 30, 30))], top_k=0)


def test_batch_matches_single(clf):
    imgs = [noisy(c, seed=i) for i, c in enumerate(TINY_COLOURS.values())]
    batch = clf.classify(imgs)
    singles = [clf.classify([im])[0] for im in imgs]
    for b, s in zip(batch, singles, strict=True):
        assert b.results[0].slug == s.results[0].slug
        assert b.results[0].score == pytest.approx(s.results[0].score, abs=1e-6)


def test_temperature_softens_scores(tmp_path):
    hot = Classifier(make_tiny_model(tmp_path / "t.onnx", tiny_spec(temperature=4.0)))
    cold = Classifier(make_tiny_model(tmp_path / "c.onnx", tiny_spec(temperature=1.0)))
    img = [noisy((220, 30, 30))]
    assert hot.classify(img)[0].results[0].score < cold.classify(img)[0].results[0].score


def test_identify_fuses_photos(clf):
    fused = clf.identify([noisy((220, 30, 30), seed=1), noisy((150, 90, 80), seed=2)])
    assert fused.best_match == "rubra"
    one = clf.classify([noisy((150, 90, 80), seed=2)])[0]
    assert fused.results[0].score > one.results[0].score
    with pytest.raises(InvalidRequestError):
        clf.identify([])


# --- many images: a prediction or a typed error each, in place ---------------------------


def _jpeg(slug, seed=0):
    return encode(noisy(TINY_COLOURS[slug], seed=seed))


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", BadImageError),
        (b"just some text", UnsupportedTypeError),
        (encode(noisy((200, 30, 30), (64, 48)))[:300], BadImageError),
        (None, ImageNotFoundError),
    ],
    ids=["zero-byte", "text", "truncated", "missing-file"],
)
def test_try_load_returns_typed_errors(clf, tmp_path, data, error):
    path = tmp_path / "bad.jpg"
    if data is not None:
        path.write_bytes(data)
        assert type(clf.try_load(data)) is error  # bytes and paths alike
    assert type(clf.try_load(path)) is error


def test_try_load_turns_unplanned_pillow_exceptions_into_bad_image(clf, odd_image):
    item = clf.try_load(odd_image)
    assert type(item) is BadImageError and "IndexError" in str(item)


def test_try_load_reads_files_with_the_byte_limit(tiny_model, tmp_path):
    data = _jpeg("rubra")
    (tmp_path / "a.jpg").write_bytes(data)
    small = Classifier(tiny_model, limits=ImageLimits(max_bytes=len(data) - 1))
    assert type(small.try_load(tmp_path / "a.jpg")) is TooLargeError
    usual = Classifier(tiny_model)
    np.testing.assert_array_equal(usual.try_load(tmp_path / "a.jpg"), usual.load(data))


def test_classify_images_keeps_order_and_failures_in_place(clf, tmp_path, odd_image):
    viridis = tmp_path / "viridis.jpg"
    viridis.write_bytes(_jpeg("viridis"))
    images = [
        _jpeg("rubra"),
        tmp_path / "missing.jpg",
        b"just some text",
        odd_image,
        str(viridis),
        _jpeg("caerulea")[:300],
        _jpeg("caerulea"),
    ]
    got = clf.classify_images(images, top_k=2)
    assert [type(item) for item in got] == [
        Prediction,
        ImageNotFoundError,
        UnsupportedTypeError,
        BadImageError,
        Prediction,
        BadImageError,
        Prediction,
    ]
    assert "IndexError" in str(got[3])
    good = np.stack([clf.load(images[0]), clf.load(viridis.read_bytes()), clf.load(images[6])])
    assert [got[0], got[4], got[6]] == clf.classify_arrays(good, top_k=2)
    assert [p.best_match for p in (got[0], got[4], got[6])] == ["rubra", "viridis", "caerulea"]


def test_classify_loaded_with_no_good_input_runs_no_model(clf, monkeypatch):
    errors = [clf.try_load(b""), clf.try_load(b"text")]
    monkeypatch.setattr(clf, "probabilities", None)  # calling it would fail
    assert clf.classify_loaded(errors) == errors
    assert clf.classify_images([]) == []


def test_probabilities_in_parts_are_those_of_one_call(clf):
    arrays = np.stack([clf.load(_jpeg(slug, seed)) for seed in range(2) for slug in TINY_COLOURS])
    whole = clf.probabilities(arrays)
    np.testing.assert_allclose(clf.probabilities_in_parts(arrays, 3), whole, atol=1e-6)
    np.testing.assert_allclose(clf.probabilities_in_parts(arrays[:1], 3), whole[:1], atol=1e-6)


def test_classify_loaded_in_parts_gives_the_same_answers(clf):
    loaded = [clf.try_load(_jpeg(slug, seed)) for seed in range(3) for slug in TINY_COLOURS]
    loaded.insert(4, clf.try_load(b""))
    whole = clf.classify_loaded(loaded)
    for parts in (2, 3, 20):
        got = clf.classify_loaded(loaded, parts=parts)
        assert [type(a) for a in got] == [type(a) for a in whole]
        for a, b in zip(got, whole, strict=True):
            if isinstance(a, Prediction):
                assert a.best_match == b.best_match
                assert [c.score for c in a.results] == pytest.approx(
                    [c.score for c in b.results], abs=1e-6
                )


def test_in_place():
    bad = BadImageError("x")
    loaded = [np.zeros(1), bad, np.zeros(1)]
    assert in_place(loaded, ["a", "b"]) == ["a", bad, "b"]
    with pytest.raises(ValueError, match="more answers"):
        in_place(loaded, ["a", "b", "c"])


# --- the identify policy ----------------------------------------------------------------


def test_identify_fuses_the_usable_photos_and_flags_the_others(clf):
    datas = [_jpeg("rubra", 1), b"just some text", _jpeg("rubra", 2), b""]
    loaded = [clf.try_load(d) for d in datas]
    found = clf.identify_loaded(loaded, ["a.jpg", "t.jpg", "b.jpg", "e.jpg"], top_k=2)
    good = np.stack([clf.load(datas[0]), clf.load(datas[2])])
    assert found.fused == clf.identify_arrays(good, top_k=2)
    assert found.fused.best_match == "rubra"
    own = clf.classify_arrays(good, top_k=2)
    assert found.images == (own[0], loaded[1], own[1], loaded[3])
    assert type(found.images[1]) is UnsupportedTypeError


def test_identify_flags_photos_that_look_like_different_plants(clf):
    datas = [_jpeg("rubra", 1), _jpeg("viridis", 2), _jpeg("rubra", 3), b"text"]
    loaded = [clf.try_load(d) for d in datas]
    found = clf.identify_loaded(loaded, ["r1.jpg", "v.jpg", "r2.jpg", "t.jpg"], top_k=2)
    assert found.fused.unknown and found.fused.best_match is None
    assert found.fused.reason_code == PHOTOS_DISAGREE
    assert "these photos look like different plants" in (found.fused.reason or "")
    picks = [(p.index, p.photo, p.candidate.slug) for p in found.disagreement]
    assert picks == [(0, "r1.jpg", "rubra"), (1, "v.jpg", "viridis"), (2, "r2.jpg", "rubra")]
    assert found.to_dict()["disagreement"][1]["photo"] == "v.jpg"


def test_an_unsure_photo_is_no_disagreement(clf):
    # grey is unknown on its own (under the threshold): it does not count against red
    datas = [_jpeg("rubra", 1), encode(solid((128, 128, 128)))]
    found = clf.identify_loaded([clf.try_load(d) for d in datas], ["r.jpg", "grey.jpg"])
    assert found.images[1].unknown and found.images[1].reason_code == LOW_SCORE
    assert found.disagreement == () and found.to_dict()["disagreement"] is None
    assert found.fused.reason_code != PHOTOS_DISAGREE


def test_identify_with_no_usable_photo_fails_with_the_first_error(clf):
    loaded = [clf.try_load(b"just some text"), clf.try_load(b"")]
    with pytest.raises(UnsupportedTypeError, match=r"^t\.jpg: not a recognised image file$"):
        clf.identify_loaded(loaded, ["t.jpg", "e.jpg"])
    with pytest.raises(InvalidRequestError):
        clf.identify_loaded([], [])


def test_softmax_rows_sum_to_one():
    p = softmax(np.array([[1000.0, 0.0], [1.0, 1.0]]))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert p[0, 0] == pytest.approx(1.0)


def test_missing_model(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not found"):
        Classifier(tmp_path / "nope.onnx")


def test_model_without_metadata_is_refused(tmp_path):
    path = make_tiny_model(tmp_path / "m.onnx", with_metadata=False)
    with pytest.raises(InvalidModelError, match="no leafid metadata"):
        Classifier(path)


def test_model_with_bad_metadata_is_refused(tmp_path):
    path = make_tiny_model(tmp_path / "m.onnx", metadata='{"spec_version": 1}')
    with pytest.raises(InvalidModelError):
        Classifier(path)


def test_spec_that_does_not_fit_the_graph_is_refused(tmp_path):
    path = make_tiny_model(tmp_path / "m.onnx")
    import onnx

    from leafid.spec import METADATA_KEY

    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = tiny_spec(input_size=48, resize_size=64).to_json()
    onnx.save(model, str(path))
    with pytest.raises(InvalidModelError, match="model input"):
        Classifier(path)


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"garbage")
    with pytest.raises(InvalidModelError, match="cannot load"):
        Classifier(path)


def test_make_session_is_the_classifiers_session(tmp_path):
    # training code times and checks models with the same session options as the service
    path = make_tiny_model(tmp_path / "bare.onnx", with_metadata=False)
    session = make_session(path, threads=1)
    batch = np.stack([np.full((32, 32, 3), c, dtype=np.uint8) for c in TINY_COLOURS.values()])
    (logits,) = session.run(None, {session.get_inputs()[0].name: batch})
    assert logits.shape == (len(TINY_COLOURS), 3)
    (tmp_path / "junk.onnx").write_bytes(b"garbage")
    with pytest.raises(InvalidModelError, match="cannot load"):
        make_session(tmp_path / "junk.onnx")


def test_idle_threads_spin_only_when_asked(tmp_path):
    path = make_tiny_model(tmp_path / "m.onnx")

    def spins(classifier: Classifier) -> str:
        options = classifier.session.get_session_options()
        return options.get_session_config_entry("session.intra_op.allow_spinning")

    assert spins(Classifier(path)) == "0"  # decoding threads share the cores
    assert spins(Classifier(path, spin=True)) == "1"


def test_default_model_path_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LEAFID_MODEL", str(tmp_path / "x.onnx"))
    assert default_model_path() == tmp_path / "x.onnx"
    monkeypatch.delenv("LEAFID_MODEL")
    present = [p for p in shipped_model_candidates() if p.is_file()]
    assert default_model_path() == (present or shipped_model_candidates()[-1:])[0]


def test_shipped_int8_copy_is_the_default_when_present(monkeypatch, tmp_path):
    import leafid.paths as paths

    monkeypatch.delenv("LEAFID_MODEL", raising=False)
    package = tmp_path / "site" / "leafid"  # a wheel install: no repository model/ folder
    monkeypatch.setattr(paths, "_PACKAGE_DIR", package)
    (package / "model").mkdir(parents=True)
    assert default_model_path() == tmp_path / "model" / "leafid.onnx"  # nothing: name a place
    (package / "model" / "leafid.onnx").write_bytes(b"fp32")
    assert default_model_path() == package / "model" / "leafid.onnx"
    (package / "model" / "leafid.int8.onnx").write_bytes(b"int8")
    assert default_model_path() == package / "model" / "leafid.int8.onnx"


def test_shipped_model_files_agree_with_the_model_card():
    """An INT8 copy in model/ is the default, so it must be there exactly when the card
    says it qualified (``leafid export --card`` removes one that did not)."""
    folder = Path(__file__).resolve().parents[2] / "model"
    card = folder / "MODEL_CARD.md"
    if not card.is_file():
        pytest.skip("no model card in model/")
    shipped = "INT8 is shipped" in card.read_text(encoding="utf-8")
    assert (folder / "leafid.int8.onnx").is_file() == shipped
    assert (folder / "leafid.onnx").is_file()


def test_shipped_model_when_present():
    """Runs the real shipped model when the repo has one."""
    path = next((p for p in shipped_model_candidates() if p.is_file()), None)
    if path is None:
        pytest.skip("no shipped model in model/ yet")
    clf = Classifier(path)
    (pred,) = clf.classify([noisy((40, 140, 40), (640, 480))])
    assert len(pred.results) == min(5, len(clf.spec.classes))
    assert 0.0 <= pred.results[0].score <= 1.0


def test_int8_copy_names_go_both_ways(tmp_path):
    from leafid.paths import INT8_MODEL_FILENAME, fp32_of_int8_copy, int8_copy_path

    assert INT8_MODEL_FILENAME == "leafid.int8.onnx"
    copy = int8_copy_path(tmp_path / "m.v2.onnx")
    assert copy == tmp_path / "m.v2.int8.onnx"
    assert fp32_of_int8_copy(copy) == tmp_path / "m.v2.onnx"
    assert fp32_of_int8_copy(tmp_path / "m.onnx") is None


def test_a_returned_image_error_holds_no_frames(tiny_model: Path) -> None:
    # a kept traceback would hold the failed decode's frames, and the photo's bytes
    bad = Classifier(tiny_model).try_load(b"\xff\xd8\xff" + b"\x00" * 5000)
    assert isinstance(bad, ImageError)
    err: BaseException | None = bad
    while err is not None:
        assert err.__traceback__ is None
        err = err.__cause__ or err.__context__
