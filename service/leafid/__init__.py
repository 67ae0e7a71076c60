"""leafid: leaf-photo plant identification with honest confidence.

The inference core needs only numpy, Pillow and onnxruntime.
"""

from leafid.classifier import Classifier
from leafid.errors import LeafidError
from leafid.images import ImageLimits, decode
from leafid.preprocess import preprocess
from leafid.results import CAVEAT, Candidate, Prediction
from leafid.spec import ClassInfo, ModelSpec

__version__ = "0.1.0"  # the one place it is stated: pyproject reads it

__all__ = [
    "CAVEAT",
    "Candidate",
    "ClassInfo",
    "Classifier",
    "ImageLimits",
    "LeafidError",
    "ModelSpec",
    "Prediction",
    "decode",
    "preprocess",
]
