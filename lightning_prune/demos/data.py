"""Demo data: an IDX reader, a Fashion-MNIST data module and a synthetic image data module.

Everything is held in memory as :class:`~torch.utils.data.TensorDataset` objects: Fashion-MNIST is
small (about 50 MB as float32), and skipping per-sample decoding keeps CPU training fast.

Example:
    >>> dm = RandomImageDataModule(num_samples=8, batch_size=4)
    >>> dm.setup("fit")
    >>> images, labels = next(iter(dm.train_dataloader()))
    >>> tuple(images.shape), tuple(labels.shape)
    ((4, 1, 28, 28), (4,))
"""

from __future__ import annotations

import gzip
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "FashionMNISTDataModule",
    "RandomImageDataModule",
    "read_idx",
]

#: Per-pixel mean and standard deviation of the Fashion-MNIST training images, scaled to [0, 1].
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

# IDX type byte -> torch dtype. Multi-byte types are stored big-endian.
_IDX_DTYPES: dict[int, torch.dtype] = {
    0x08: torch.uint8,
    0x09: torch.int8,
    0x0B: torch.int16,
    0x0C: torch.int32,
    0x0D: torch.float32,
    0x0E: torch.float64,
}

_FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _read_bytes(path: Path) -> bytes:
    """Return the raw bytes of ``path``, transparently decompressing ``.gz`` files."""
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as handle:
                return handle.read()
        except (gzip.BadGzipFile, EOFError, zlib.error) as error:
            raise ValueError(f"{path}: not a valid gzip file ({error})") from error
    return path.read_bytes()


def _parse_idx_header(raw: bytes, path: Path) -> tuple[torch.dtype, list[int], int]:
    """Validate the IDX header and return ``(dtype, dims, payload_offset)``."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX element type 0x{type_code:02x}")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares zero dimensions")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header_size})")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return _IDX_DTYPES[type_code], dims, header_size


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file (the MNIST / Fashion-MNIST container format) into a tensor.

    Args:
        path: File to read. Names ending in ``.gz`` are decompressed on the fly.

    Returns:
        A tensor with the dtype and shape declared in the file header.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not valid IDX (bad magic number, unknown type, or a payload
            whose size does not match the declared dimensions). The message names the file.

    Example:
        >>> import tempfile
        >>> header = bytes([0, 0, 0x08, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     file = Path(tmp) / "tiny-idx2-ubyte"
        ...     _ = file.write_bytes(header + bytes(range(6)))
        ...     read_idx(file)
        tensor([[0, 1, 2],
                [3, 4, 5]], dtype=torch.uint8)
    """
    path = Path(path)
    raw = _read_bytes(path)
    dtype, dims, offset = _parse_idx_header(raw, path)
    itemsize = torch.empty((), dtype=dtype).element_size()
    expected = itemsize * _product(dims)
    payload_size = len(raw) - offset
    if payload_size != expected:
        raise ValueError(
            f"{path}: IDX payload is {payload_size} bytes but dims {dims} of {dtype} need {expected}"
        )
    if expected == 0:
        return torch.empty(dims, dtype=dtype)
    # bytearray gives torch.frombuffer a writable buffer, so no "non-writable" warning is raised.
    payload = torch.frombuffer(bytearray(raw[offset:]), dtype=torch.uint8)
    if itemsize > 1 and sys.byteorder == "little":
        # IDX is big-endian: reverse the bytes of each element before reinterpreting them.
        payload = payload.view(-1, itemsize).flip(-1).contiguous().view(-1)
    return payload.view(dtype).reshape(dims).clone()


def _product(values: list[int]) -> int:
    result = 1
    for value in values:
        result *= value
    return result


def _find_idx_file(data_dir: Path, stem: str) -> Path | None:
    """Return ``data_dir/stem`` or ``data_dir/stem.gz``, whichever exists first."""
    for candidate in (data_dir / stem, data_dir / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _missing_data_message(data_dir: Path, missing: list[str]) -> str:
    return (
        f"Fashion-MNIST files not found in {data_dir}: missing {', '.join(missing)} "
        "(plain or .gz). To get the data, run `apt-get install dataset-fashion-mnist` "
        "(installs them into /usr/share/datasets/fashion-mnist), or set data_dir to a directory "
        "holding the 4 standard IDX files: " + ", ".join(_FASHION_MNIST_FILES.values()) + "."
    )


def _normalise_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, H, W)`` -> float ``(N, 1, H, W)`` normalised with the Fashion-MNIST statistics."""
    scaled = images.unsqueeze(1).float().div_(255.0)
    return scaled.sub_(FASHION_MNIST_MEAN).div_(FASHION_MNIST_STD)


class _InMemoryDataModule(LightningDataModule):
    """Shared dataloader plumbing for data modules whose splits are in-memory datasets."""

    def __init__(self, batch_size: int, num_workers: int, seed: int) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_dataset: TensorDataset | None = None
        self.val_dataset: TensorDataset | None = None
        self.test_dataset: TensorDataset | None = None

    def _loader(self, dataset: TensorDataset | None, split: str, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before {split}_dataloader()")
        # A seeded generator keeps the shuffling order reproducible across runs.
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            generator=generator,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, "train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, "val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, "test", shuffle=False)


class FashionMNISTDataModule(_InMemoryDataModule):
    """Fashion-MNIST (60k train / 10k test 28x28 grey images, 10 classes) held in memory.

    ``val_size`` images are held out of the training set with a fixed seed, so train and val are
    disjoint and identical from run to run. The official 10k test set is the test split.

    Args:
        data_dir: Directory holding the 4 standard IDX files, plain or ``.gz``.
        batch_size: Batch size of every dataloader.
        val_size: Number of training images held out for validation (0 disables validation data).
        num_workers: DataLoader worker processes. 0 is fastest for in-memory tensors.
        train_subset: If set, keep only this many (randomly chosen) training images; handy for
            quick experiments.
        seed: Seed for the train/val split, the subset choice and the shuffling order.

    Raises:
        FileNotFoundError: From :meth:`prepare_data` / :meth:`setup` when files are missing; the
            message says how to get them.
    """

    def __init__(
        self,
        data_dir: str = "/usr/share/datasets/fashion-mnist",
        batch_size: int = 128,
        val_size: int = 5000,
        num_workers: int = 0,
        train_subset: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        if val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}")
        if train_subset is not None and train_subset < 1:
            raise ValueError(f"train_subset must be >= 1 or None, got {train_subset}")
        self.data_dir = Path(data_dir)
        self.val_size = val_size
        self.train_subset = train_subset
        self.save_hyperparameters()

    def file_paths(self) -> dict[str, Path]:
        """Locate the 4 IDX files.

        Returns:
            Mapping ``train_images`` / ``train_labels`` / ``test_images`` / ``test_labels`` to paths.

        Raises:
            FileNotFoundError: If any file is missing; the message explains how to get the data.
        """
        found = {key: _find_idx_file(self.data_dir, stem) for key, stem in _FASHION_MNIST_FILES.items()}
        missing = [_FASHION_MNIST_FILES[key] for key, path in found.items() if path is None]
        if missing:
            raise FileNotFoundError(_missing_data_message(self.data_dir, missing))
        return {key: path for key, path in found.items() if path is not None}

    def prepare_data(self) -> None:
        """Fail early, before any training starts, if the data is missing (nothing is downloaded)."""
        self.file_paths()

    def setup(self, stage: str | None = None) -> None:
        """Load the IDX files into memory and build the train/val/test datasets (idempotent)."""
        if self.train_dataset is not None:
            return
        paths = self.file_paths()
        train_images, train_labels = self._load_split(paths["train_images"], paths["train_labels"])
        test_images, test_labels = self._load_split(paths["test_images"], paths["test_labels"])

        if self.val_size >= len(train_labels):
            raise ValueError(f"val_size={self.val_size} leaves no training data ({len(train_labels)} images)")
        order = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(self.seed))
        val_indices, train_indices = order[: self.val_size], order[self.val_size :]
        if self.train_subset is not None:
            train_indices = train_indices[: self.train_subset]

        self.train_dataset = TensorDataset(train_images[train_indices], train_labels[train_indices])
        self.val_dataset = TensorDataset(train_images[val_indices], train_labels[val_indices])
        self.test_dataset = TensorDataset(test_images, test_labels)

    @staticmethod
    def _load_split(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
            raise ValueError(
                f"{images_path} / {labels_path}: expected (N, H, W) images and (N,) labels, "
                f"got {tuple(images.shape)} and {tuple(labels.shape)}"
            )
        return _normalise_images(images), labels.long()


class RandomImageDataModule(_InMemoryDataModule):
    """Seeded synthetic images for tests and doctests; no files needed.

    The label of each image is the argmax of its per-class mean over a fixed partition of the
    pixels, so a model can actually learn it (useful to check that loss goes down).

    Args:
        num_samples: Number of images in each of the train, val and test splits.
        image_shape: Shape of one image, ``[channels, height, width]``.
        num_classes: Number of classes.
        batch_size: Batch size of every dataloader.
        num_workers: DataLoader worker processes.
        seed: Seed for the images and the shuffling order.

    Example:
        >>> dm = RandomImageDataModule(num_samples=6, image_shape=[3, 8, 8], num_classes=4)
        >>> dm.setup()
        >>> images, labels = dm.val_dataset.tensors
        >>> tuple(images.shape), bool(labels.max() < 4)
        ((6, 3, 8, 8), True)
    """

    def __init__(
        self,
        num_samples: int = 64,
        image_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        image_shape = list(image_shape)
        if num_samples < 1 or num_classes < 2 or any(size < 1 for size in image_shape):
            raise ValueError(
                f"need num_samples >= 1, num_classes >= 2 and positive image_shape; got "
                f"{num_samples}, {num_classes}, {image_shape}"
            )
        self.num_samples = num_samples
        self.image_shape = image_shape
        self.num_classes = num_classes
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        """Generate the three splits (idempotent)."""
        if self.train_dataset is not None:
            return
        generator = torch.Generator().manual_seed(self.seed)
        self.train_dataset, self.val_dataset, self.test_dataset = (
            self._make_split(generator) for _ in range(3)
        )

    def _make_split(self, generator: torch.Generator) -> TensorDataset:
        images = torch.randn(self.num_samples, *self.image_shape, generator=generator)
        flat = images.flatten(1)
        # Pixel i belongs to class group i % num_classes; the label is the group with the largest mean.
        group_of_pixel = torch.arange(flat.shape[1]) % self.num_classes
        group_sums = torch.zeros(self.num_samples, self.num_classes).index_add_(1, group_of_pixel, flat)
        group_sizes = torch.bincount(group_of_pixel, minlength=self.num_classes).clamp(min=1)
        labels = (group_sums / group_sizes).argmax(dim=1)
        return TensorDataset(images, labels)
