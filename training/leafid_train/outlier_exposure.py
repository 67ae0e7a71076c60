"""Outlier exposure: train photos that are none of the classes towards a uniform softmax.

Hendrycks et al., 2019, "Deep Anomaly Detection with Outlier Exposure": beside the
classification loss, out-of-distribution training images get the cross-entropy from the
uniform distribution to the model's softmax, weighted by lambda (``--outlier-exposure``).
Here they are the OOD roots' train images (unknown plants, non-leaf photos), augmented
like the leaf images; each training step sees one batch of them beside its leaf batch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from leafid_train.data import DatasetError
from leafid_train.run_data import RunData, TrainSet, progress

# Part of the OOD images' augmentation seed, so that they are not augmented exactly like
# the leaf images at the same position of an epoch.
_STREAM = 1


def outlier_exposure_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy from the uniform distribution to ``softmax(logits)``.

    Its minimum, ``log C`` for C classes, is reached when every softmax is uniform.
    """
    return -logits.log_softmax(dim=1).mean(dim=1).mean()


def ood_order(images: int, length: int, seed: int, epoch: int, rank: int = 0) -> list[int]:
    """The OOD image shown at each of an epoch's ``length`` positions.

    Successive shuffles of all ``images``, seeded by (seed, epoch, rank): each image is
    shown once before any is shown again, and an epoch is the same after resume.
    """
    rng = np.random.default_rng([seed, epoch, rank])
    passes = -(-length // images)
    order = np.concatenate([rng.permutation(images) for _ in range(passes)])
    return [int(i) for i in order[:length]]


class OodBatches:
    """Augmented OOD training images, one batch per training step of an epoch.

    Args:
        images: OOD training images (shorter side = the spec's resize_size).
        data: The run's data (for its spec).
        seed: The run's seed.
        rank: This process's rank (each process sees other images).
        batch_size: OOD images per step.
        processes: DataLoader worker processes.
    """

    def __init__(
        self,
        images: list[np.ndarray],
        data: RunData,
        seed: int,
        rank: int,
        batch_size: int,
        processes: int = 0,
    ) -> None:
        augment_seed = int(np.random.SeedSequence([seed, _STREAM, rank]).generate_state(1)[0])
        self.images = TrainSet(images, np.zeros(len(images), np.int64), data.spec, augment_seed)
        self.seed, self.rank = seed, rank
        self.batch_size, self.processes = batch_size, processes

    def epoch(self, epoch: int, steps: int) -> DataLoader:  # type: ignore[type-arg]
        """The ``steps`` batches of ``epoch`` (batches of (uint8 NHWC images, zeros))."""
        self.images.epoch = epoch
        self.images.order = ood_order(
            len(self.images.arrays), steps * self.batch_size, self.seed, epoch, self.rank
        )
        return DataLoader(
            self.images, batch_size=self.batch_size, shuffle=False, num_workers=self.processes
        )


def load_ood_batches(
    data: RunData, seed: int, rank: int, batch_size: int, processes: int, show: bool = False
) -> OodBatches:
    """Decode (or read from the cache) the OOD roots' train images once.

    Raises:
        DatasetError: The split has no OOD train images.
    """
    if not data.split.ood.get("train"):
        raise DatasetError(
            "outlier exposure needs OOD train images, and this run's split has none "
            "(its --ood roots are split into val and test only)"
        )
    paths = data.paths("train", ood=True)
    images = [data.cache.train_array(p) for p in progress(paths, "decode OOD train", show)]
    return OodBatches(images, data, seed, rank, batch_size, processes)
