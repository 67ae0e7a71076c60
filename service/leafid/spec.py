"""The model's preprocessing spec and metadata, stored as JSON inside the ONNX file.

Training writes a :class:`ModelSpec` into the ONNX ``metadata_props`` under
:data:`METADATA_KEY`; the service, CLI and evaluation read it back through
onnxruntime's ``custom_metadata_map``. Labels and normalisation constants live here
and nowhere else.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from leafid.errors import InvalidModelError

METADATA_KEY = "leafid.spec"
SPEC_VERSION = 1

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
INPUT_FORMATS = ("uint8_nhwc", "float32_nchw")
TAXON_RANKS = ("genus", "family")
"""The ranks above species an answer can back off to, most specific first."""


def display_name(scientific_name: str, common_name: str) -> str:
    """A class's name for people: ``Scientific name (common name)``.

    The common name is left out when the scientific name's note already gives it
    (``Quercus (genus; oak)``, not ``Quercus (genus; oak) (oak)``); one of several
    common names (``linden / lime``) in the note counts.
    """
    note = scientific_name.partition("(")[2].lower()
    names = [n.strip().lower() for n in re.split(r"[/,]", common_name)]
    if not common_name.strip() or any(n and n in note for n in names):
        return scientific_name
    return f"{scientific_name} ({common_name})"


@dataclass(frozen=True)
class ClassInfo:
    """One output class of the model.

    Attributes:
        slug: Stable identifier, e.g. ``salix_aurita``.
        scientific_name: Scientific name as the training data gives it.
        common_name: English common name (may be empty).
        genus: The class's genus (itself for a genus-level class), None when unknown.
        family: The class's family (APG IV for flowering plants), None when unknown.
    """

    slug: str
    scientific_name: str
    common_name: str
    genus: str | None = None
    family: str | None = None

    def filled(self, genus: str | None, family: str | None) -> ClassInfo:
        """This class with its genus and family, where missing, set to these."""
        return replace(self, genus=self.genus or genus, family=self.family or family)

    def taxon(self, rank: str) -> str | None:
        """The class's name at ``rank`` (one of :data:`TAXON_RANKS`), None when unknown."""
        return self.genus if rank == "genus" else self.family if rank == "family" else None

    @property
    def display_name(self) -> str:
        """The class's name for people (see :func:`display_name`)."""
        return display_name(self.scientific_name, self.common_name)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to turn a decoded image into model input and read the output.

    Attributes:
        model_name: Short model name, e.g. ``leafid-efficientnet-lite0``.
        model_version: Version string of this trained model.
        classes: Ordered class list; index ``i`` is output logit ``i``.
        input_size: Side of the square network input in pixels.
        resize_size: The shorter image side is resized to this before the centre crop.
        interpolation: Pillow resampling filter name (one of :data:`INTERPOLATIONS`).
        input_format: ``uint8_nhwc`` (RGB bytes; normalisation is inside the graph) or
            ``float32_nchw`` (``preprocess`` applies ``(x / 255 - mean) / std``).
        mean: Per-channel RGB mean, on the 0-1 scale.
        std: Per-channel RGB standard deviation, on the 0-1 scale.
        temperature: Calibration temperature; probabilities are ``softmax(logits / T)``.
        unknown_threshold: Best calibrated score under this is answered as unknown.
        taxon_thresholds: {rank: threshold} for the ranks of :data:`TAXON_RANKS` an
            answer may back off to when no species passes ``unknown_threshold``: the
            calibrated scores summed per taxon of that rank must reach it. Empty: no
            back-off (models without taxonomy, or trained before it).
        training_data: Free-form summary of the training data (datasets, counts).
        metrics: Headline evaluation figures of this model (free-form).
    """

    model_name: str
    model_version: str
    classes: tuple[ClassInfo, ...]
    input_size: int = 224
    resize_size: int = 256
    interpolation: str = "bilinear"
    input_format: str = "uint8_nhwc"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    temperature: float = 1.0
    unknown_threshold: float = 0.0
    taxon_thresholds: dict[str, float] = field(default_factory=dict)
    training_data: dict[str, Any] = field(default_factory=dict, compare=False)
    metrics: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        problems = []
        if not self.classes:
            problems.append("classes is empty")
        slugs = [c.slug for c in self.classes]
        if len(set(slugs)) != len(slugs):
            problems.append("class slugs are not unique")
        if self.input_size <= 0 or self.resize_size < self.input_size:
            problems.append("need 0 < input_size <= resize_size")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation must be one of {INTERPOLATIONS}")
        if self.input_format not in INPUT_FORMATS:
            problems.append(f"input_format must be one of {INPUT_FORMATS}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            problems.append("mean and std need 3 values, std > 0")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            problems.append("temperature must be > 0")
        if not 0.0 <= self.unknown_threshold <= 1.0:
            problems.append("unknown_threshold must be in [0, 1]")
        for rank, value in self.taxon_thresholds.items():
            if rank not in TAXON_RANKS or not 0.0 <= value <= 1.0:
                problems.append(f"taxon_thresholds needs ranks of {TAXON_RANKS} in [0, 1]")
            elif not any(c.taxon(rank) for c in self.classes):
                problems.append(f"taxon_thresholds has {rank} but no class has a {rank}")
        if problems:
            raise InvalidModelError("invalid model spec: " + "; ".join(problems))

    @property
    def labels(self) -> list[str]:
        """Class slugs in output order."""
        return [c.slug for c in self.classes]

    @property
    def has_taxonomy(self) -> bool:
        """Whether any class has a genus or family."""
        return any(c.genus or c.family for c in self.classes)

    def to_json(self) -> str:
        """Serialise to the JSON stored in the ONNX metadata.

        Taxonomy fields that are not set are left out, so a spec without taxonomy is
        written as before it existed (and older leafid versions can read it).
        """
        data = asdict(self)
        for c in data["classes"]:
            for rank in TAXON_RANKS:
                if c[rank] is None:
                    del c[rank]
        if not data["taxon_thresholds"]:
            del data["taxon_thresholds"]
        data["spec_version"] = SPEC_VERSION
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        """Parse the JSON written by :meth:`to_json`.

        Raises:
            InvalidModelError: The text is not a valid spec.
        """
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError("spec JSON is not an object")
            version = data.pop("spec_version")
            if version != SPEC_VERSION:
                raise ValueError(f"spec_version {version} is not supported (want {SPEC_VERSION})")
            data["classes"] = tuple(ClassInfo(**c) for c in data["classes"])
            data["mean"] = tuple(float(v) for v in data["mean"])
            data["std"] = tuple(float(v) for v in data["std"])
            return cls(**data)
        except InvalidModelError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidModelError(f"invalid model spec in metadata: {exc!r}") from exc

    def replace(self, **changes: Any) -> ModelSpec:
        """Return a copy with some fields changed (validated again)."""
        data = {f: getattr(self, f) for f in self.__dataclass_fields__}
        data.update(changes)
        return ModelSpec(**data)
