from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from conftest import TINY_COLOURS, noisy, tiny_spec  # noqa: E402
from leafid.errors import InvalidModelError, InvalidRequestError  # noqa: E402
from leafid.preprocess import preprocess  # noqa: E402
from leafid.spec import ClassInfo, ModelSpec  # noqa: E402
from leafid_train.backbone import (  # noqa: E402
    PRETRAINED_ARCH,
    PRETRAINED_MEAN,
    PRETRAINED_STD,
    LeafNet,
    build_backbone,
    build_leafnet,
    lite0_weights_path,
    load_lite0_imagenet_state,
    map_state_dict,
)

pytestmark = pytest.mark.train

_SPEC_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelSpec)}
IMAGENET_MEAN = _SPEC_DEFAULTS["mean"]  # ModelSpec's default normalisation is ImageNet's
IMAGENET_STD = _SPEC_DEFAULTS["std"]
# Real photos shipped inside the scikit-image wheel, and their acceptable ImageNet classes.
KNOWN_PHOTOS = {
    "chelsea.png": {281, 282, 285},  # tabby cat, tiger cat, Egyptian cat
    "coffee.png": {967, 968},  # espresso, cup
}


def known_photo(name: str) -> Image.Image:
    found = importlib.util.find_spec("skimage")
    if found is None or not found.submodule_search_locations:
        pytest.skip("scikit-image (a dev dependency) is not installed")
    path = Path(next(iter(found.submodule_search_locations))) / "data" / name
    with Image.open(path) as img:
        return img.convert("RGB")


def imagenet_spec(
    mean: tuple[float, ...] = PRETRAINED_MEAN,
    std: tuple[float, ...] = PRETRAINED_STD,
    **changes: object,
) -> ModelSpec:
    classes = tuple(ClassInfo(f"c{i}", f"C {i}", f"class {i}") for i in range(1000))
    return ModelSpec("imagenet-test", "0", classes, mean=mean, std=std, **changes)


@pytest.fixture(scope="module")
def imagenet_state() -> dict[str, torch.Tensor]:
    return load_lite0_imagenet_state()


@pytest.fixture(scope="module")
def imagenet_net(imagenet_state: dict[str, torch.Tensor]) -> LeafNet:
    return build_leafnet(imagenet_spec()).eval()


def test_every_key_is_mapped_with_equal_shape(imagenet_state: dict[str, torch.Tensor]) -> None:
    raw = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    timm_state = build_backbone(PRETRAINED_ARCH, 1000, pretrained=False).state_dict()
    wanted = {k: v for k, v in timm_state.items() if not k.endswith("num_batches_tracked")}
    assert list(imagenet_state) == list(wanted)
    for key, value in wanted.items():
        assert imagenet_state[key].shape == value.shape, key
    raw_tensors = [v for k, v in raw.items() if not k.endswith("num_batches_tracked")]
    assert len(raw_tensors) == len(imagenet_state)
    # One-to-one in order: the first and last tensors are the stem conv and the fc.
    assert torch.equal(imagenet_state["conv_stem.weight"], raw["_conv_stem.weight"])
    assert torch.equal(imagenet_state["classifier.weight"], raw["_fc.weight"])


def test_misaligned_mapping_is_rejected() -> None:
    target = {"a.weight": torch.zeros(4, 3), "a.bias": torch.zeros(4), "b.weight": torch.zeros(2)}
    good = {"x.weight": torch.ones(4, 3), "x.bias": torch.ones(4), "y.weight": torch.ones(2)}
    assert list(map_state_dict(good, target)) == list(target)
    swapped = {"x.bias": torch.ones(4), "x.weight": torch.ones(4, 3), "y.weight": torch.ones(2)}
    with pytest.raises(InvalidModelError, match="does not fit"):
        map_state_dict(swapped, target)
    # Same shapes but a different kind of tensor is caught too.
    renamed = {
        "x.weight": torch.ones(4, 3),
        "x.running_mean": torch.ones(4),
        "y.weight": torch.ones(2),
    }
    with pytest.raises(InvalidModelError, match="does not fit"):
        map_state_dict(renamed, target)
    with pytest.raises(InvalidModelError, match="source tensors"):
        map_state_dict({"x.weight": torch.ones(4, 3)}, target)


@pytest.mark.parametrize("name", sorted(KNOWN_PHOTOS))
def test_pretrained_net_recognises_a_known_photo(imagenet_net: LeafNet, name: str) -> None:
    spec = imagenet_spec()
    batch = torch.from_numpy(np.stack([preprocess(known_photo(name), spec)]))
    with torch.no_grad():
        probs = imagenet_net(batch).softmax(dim=1)[0]
    top5 = set(probs.topk(5).indices.tolist())
    assert KNOWN_PHOTOS[name] & top5, f"{name}: top-5 {sorted(top5)}"
    # Most of the probability mass is on the right classes, not a lucky top-5.
    assert float(probs[sorted(KNOWN_PHOTOS[name])].sum()) > 0.5


def test_pretrained_mean_std_fit_the_weights_batchnorm_statistics(imagenet_net: LeafNet) -> None:
    """The first BatchNorm's running variance matches inputs normalised as the weights expect."""
    backbone = imagenet_net.backbone
    photos = [known_photo(name) for name in sorted(KNOWN_PHOTOS)]

    def log_variance_error(mean: tuple[float, ...], std: tuple[float, ...]) -> float:
        spec = imagenet_spec(mean, std, input_format="float32_nchw")
        x = torch.from_numpy(np.stack([preprocess(p, spec) for p in photos]))
        with torch.no_grad():
            var = backbone.conv_stem(x).var(dim=(0, 2, 3))
        running = backbone.bn1.running_var
        ok = running > 1e-4
        return float(torch.log(var[ok] / running[ok]).abs().median())

    assert log_variance_error(PRETRAINED_MEAN, PRETRAINED_STD) < 0.7
    assert log_variance_error(PRETRAINED_MEAN, PRETRAINED_STD) < log_variance_error(
        IMAGENET_MEAN, IMAGENET_STD
    )


def test_leafnet_normalises_like_float_preprocess(imagenet_net: LeafNet) -> None:
    """LeafNet on uint8 input equals the backbone on preprocess()'s float32_nchw output."""
    spec = imagenet_spec(input_size=64, resize_size=72)
    photos = [noisy(c, (80, 70), seed=i) for i, c in enumerate(TINY_COLOURS.values())]
    as_bytes = np.stack([preprocess(p, spec) for p in photos])
    as_float = np.stack([preprocess(p, spec.replace(input_format="float32_nchw")) for p in photos])
    with torch.no_grad():
        got = imagenet_net(torch.from_numpy(as_bytes))
        want = imagenet_net.backbone(torch.from_numpy(as_float))
    assert got.dtype == torch.float32 and got.shape == (3, 1000)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("mean", "std"),
    [(PRETRAINED_MEAN, PRETRAINED_STD), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))],
    ids=["shared", "per-channel"],
)
def test_leafnet_normalisation_matches_preprocess(
    mean: tuple[float, float, float], std: tuple[float, float, float]
) -> None:
    """Shared (scalar) and per-channel mean/std both normalise as float preprocess does."""
    spec = tiny_spec().replace(mean=mean, std=std)
    net = LeafNet(torch.nn.Flatten(), spec.mean, spec.std)
    assert net.mean.dim() == (0 if len(set(mean)) == 1 else 4)
    photos = [noisy(c, (40, 30), seed=i) for i, c in enumerate(TINY_COLOURS.values())]
    as_bytes = np.stack([preprocess(p, spec.replace(input_format="uint8_nhwc")) for p in photos])
    as_float = np.stack([preprocess(p, spec.replace(input_format="float32_nchw")) for p in photos])
    with torch.no_grad():
        got = net(torch.from_numpy(as_bytes))
    torch.testing.assert_close(got, torch.from_numpy(as_float).flatten(1), atol=1e-5, rtol=1e-5)


def test_leafnet_rejects_non_uint8_nhwc(imagenet_net: LeafNet) -> None:
    with pytest.raises(ValueError, match="uint8"):
        imagenet_net(torch.zeros(1, 32, 32, 3))
    with pytest.raises(ValueError, match="uint8"):
        imagenet_net(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_fresh_head_for_other_class_counts(imagenet_state: dict[str, torch.Tensor]) -> None:
    net = build_leafnet(tiny_spec(mean=PRETRAINED_MEAN, std=PRETRAINED_STD))
    state = net.backbone.state_dict()
    assert net.backbone.get_classifier().out_features == 3
    assert torch.equal(state["conv_head.weight"], imagenet_state["conv_head.weight"])
    assert torch.equal(net.mean.expand(1, 3, 1, 1).flatten(), torch.tensor(PRETRAINED_MEAN))
    # Normalisation comes from the spec, never from a checkpoint.
    assert "mean" not in net.state_dict() and "std" not in net.state_dict()


def test_checkpoint_loads_all_but_the_classifier(tmp_path: Path) -> None:
    source = build_leafnet(tiny_spec(), pretrained=False)
    with torch.no_grad():
        source.backbone.get_classifier().weight.fill_(7.0)
    ckpt = tmp_path / "ckpt.pth"
    torch.save(source.state_dict(), ckpt)  # LeafNet keys: "backbone." prefix
    net = build_backbone(PRETRAINED_ARCH, 5, checkpoint=ckpt)
    assert torch.equal(
        net.state_dict()["conv_stem.weight"], source.backbone.state_dict()["conv_stem.weight"]
    )
    assert net.get_classifier().out_features == 5
    assert not torch.any(net.get_classifier().weight == 7.0)


def test_build_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="no pretrained weights"):
        build_backbone("resnet18", 3, pretrained=True)
    with pytest.raises(InvalidRequestError, match="unknown timm architecture"):
        build_backbone("no_such_arch", 3, pretrained=False)
    with pytest.raises(InvalidRequestError, match="checkpoint not found"):
        build_backbone("resnet18", 3, checkpoint=tmp_path / "missing.pth")
    with pytest.raises(InvalidRequestError, match="num_classes"):
        build_backbone(PRETRAINED_ARCH, 0, pretrained=False)


def test_tf_variant_takes_the_same_weights(imagenet_state: dict[str, torch.Tensor]) -> None:
    net = build_backbone("tf_efficientnet_lite0", 3)
    assert torch.equal(
        net.state_dict()["blocks.6.0.conv_pwl.weight"], imagenet_state["blocks.6.0.conv_pwl.weight"]
    )
    assert net.bn1.eps == build_backbone(PRETRAINED_ARCH, 3, pretrained=False).bn1.eps == 1e-3
