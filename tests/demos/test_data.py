from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from lightning_prune.demos.data import (
    FashionMNISTDataModule,
    RandomImageDataModule,
    read_idx,
)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_IDX_TYPE_CODES = {torch.uint8: 0x08, torch.int8: 0x09, torch.int16: 0x0B, torch.int32: 0x0C,
                   torch.float32: 0x0D, torch.float64: 0x0E}  # fmt: skip


def idx_bytes(tensor: torch.Tensor) -> bytes:
    """Encode ``tensor`` as IDX independently of the reader: header + big-endian payload via struct."""
    import struct

    formats = {torch.uint8: "B", torch.int8: "b", torch.int16: "h", torch.int32: "i",
               torch.float32: "f", torch.float64: "d"}  # fmt: skip
    header = bytes([0, 0, _IDX_TYPE_CODES[tensor.dtype], tensor.dim()])
    header += b"".join(size.to_bytes(4, "big") for size in tensor.shape)
    values = tensor.flatten().tolist()
    return header + struct.pack(f">{len(values)}{formats[tensor.dtype]}", *values)


def write_idx(path: Path, tensor: torch.Tensor) -> Path:
    raw = idx_bytes(tensor)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(raw)
    else:
        path.write_bytes(raw)
    return path


@pytest.mark.parametrize("dtype", list(_IDX_TYPE_CODES))
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trip(tmp_path: Path, dtype: torch.dtype, suffix: str) -> None:
    values = torch.arange(-12, 12).reshape(2, 3, 4)
    if dtype == torch.uint8:
        values = values + 12
    tensor = (values * 3 + 1 if dtype.is_floating_point else values * 5).to(dtype)
    loaded = read_idx(write_idx(tmp_path / f"data-idx3{suffix}", tensor))
    assert loaded.dtype == dtype
    assert torch.equal(loaded, tensor)


def test_read_idx_empty_dimension(tmp_path: Path) -> None:
    loaded = read_idx(write_idx(tmp_path / "empty", torch.zeros(0, 5, dtype=torch.uint8)))
    assert loaded.shape == (0, 5)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "bad magic number"),
        (b"\x01\x00\x08\x01" + (1).to_bytes(4, "big") + b"\x00", "bad magic number"),
        (b"\x00\x00\x07\x01" + (1).to_bytes(4, "big") + b"\x00", "unknown IDX element type 0x07"),
        (b"\x00\x00\x08\x00", "zero dimensions"),
        (b"\x00\x00\x08\x02" + (1).to_bytes(4, "big"), "truncated IDX header"),
        (b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + b"\x00\x01", "payload is 2 bytes"),
        (b"\x00\x00\x0c\x01" + (1).to_bytes(4, "big") + b"\x00\x01\x02\x03\x04", "need 4"),
    ],
)
def test_read_idx_rejects_corrupt_files(tmp_path: Path, raw: bytes, message: str) -> None:
    path = tmp_path / "corrupt-idx"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=message) as error:
        read_idx(path)
    assert str(path) in str(error.value)


def test_read_idx_rejects_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "corrupt-idx.gz"
    path.write_bytes(b"definitely not gzip")
    with pytest.raises(ValueError, match="not a valid gzip file") as error:
        read_idx(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("name", ["nope", "nope.gz"])
def test_read_idx_missing_file(tmp_path: Path, name: str) -> None:
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / name)


def test_read_idx_rejects_truncated_gzip(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "data-idx1.gz", torch.arange(100, dtype=torch.uint8))
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(ValueError, match="not a valid gzip file"):
        read_idx(path)


def test_missing_fashion_mnist_explains_how_to_get_it(tmp_path: Path) -> None:
    datamodule = FashionMNISTDataModule(data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        datamodule.prepare_data()
    message = str(error.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path) in message
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):  # fmt: skip
        assert name in message


def write_fake_fashion_mnist(directory: Path, num_train: int, num_test: int, gz: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    suffix = ".gz" if gz else ""
    for split, count in (("train", num_train), ("t10k", num_test)):
        images = torch.randint(0, 256, (count, 28, 28), dtype=torch.uint8, generator=generator)
        labels = torch.arange(count, dtype=torch.uint8) % 10
        write_idx(directory / f"{split}-images-idx3-ubyte{suffix}", images)
        write_idx(directory / f"{split}-labels-idx1-ubyte{suffix}", labels)


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_datamodule_on_fake_files(tmp_path: Path, gz: bool) -> None:
    write_fake_fashion_mnist(tmp_path, num_train=50, num_test=20, gz=gz)
    datamodule = FashionMNISTDataModule(data_dir=str(tmp_path), batch_size=8, val_size=10, train_subset=30)
    datamodule.setup("fit")
    assert len(datamodule.train_dataset) == 30
    assert len(datamodule.val_dataset) == 10
    assert len(datamodule.test_dataset) == 20
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (8, 1, 28, 28)
    assert images.dtype == torch.float32
    assert labels.dtype == torch.int64
    # Normalised: the 0..255 pixel range maps to roughly [-0.81, 2.02].
    assert -1.0 < images.min() < 0
    assert 1.5 < images.max() < 2.1


def test_fashion_mnist_split_is_disjoint_and_seeded(tmp_path: Path) -> None:
    write_fake_fashion_mnist(tmp_path, num_train=40, num_test=5, gz=False)

    def split(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        datamodule = FashionMNISTDataModule(data_dir=str(tmp_path), val_size=10, seed=seed)
        datamodule.setup()
        return datamodule.train_dataset.tensors[0], datamodule.val_dataset.tensors[0]

    train, val = split(seed=0)
    train_again, val_again = split(seed=0)
    _, val_other_seed = split(seed=1)
    assert torch.equal(val, val_again)
    assert torch.equal(train, train_again)
    assert not torch.equal(val, val_other_seed)
    # Random uint8 images are unique, so no val image may appear in train.
    assert not (train.flatten(1)[:, None] == val.flatten(1)[None]).all(-1).any()


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"val_size": -1}, {"train_subset": 0}])
def test_fashion_mnist_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        FashionMNISTDataModule(**kwargs)


def test_dataloader_before_setup_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="call setup"):
        RandomImageDataModule().train_dataloader()


def test_random_image_datamodule_shapes_and_determinism() -> None:
    datamodule = RandomImageDataModule(num_samples=10, image_shape=[3, 8, 6], num_classes=4, batch_size=4)
    datamodule.setup()
    batches = list(datamodule.train_dataloader())
    assert [len(labels) for _, labels in batches] == [4, 4, 2]
    assert batches[0][0].shape == (4, 3, 8, 6)
    for loader in (datamodule.val_dataloader(), datamodule.test_dataloader()):
        images, labels = next(iter(loader))
        assert images.shape == (4, 3, 8, 6)
        assert labels.dtype == torch.int64
        assert labels.min() >= 0
        assert labels.max() < 4

    again = RandomImageDataModule(num_samples=10, image_shape=[3, 8, 6], num_classes=4, batch_size=4)
    again.setup()
    assert torch.equal(again.train_dataset.tensors[0], datamodule.train_dataset.tensors[0])
    assert torch.equal(again.test_dataset.tensors[1], datamodule.test_dataset.tensors[1])


@pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_shapes() -> None:
    datamodule = FashionMNISTDataModule(batch_size=256)
    datamodule.setup()
    assert len(datamodule.train_dataset) == 55_000
    assert len(datamodule.val_dataset) == 5_000
    assert len(datamodule.test_dataset) == 10_000
    test_images, test_labels = datamodule.test_dataset.tensors
    assert test_images.shape == (10_000, 1, 28, 28)
    assert torch.equal(torch.bincount(test_labels), torch.full((10,), 1000))
    # The normalisation constants are the training-set statistics, so train images are ~N(0, 1).
    train_images = torch.cat([datamodule.train_dataset.tensors[0], datamodule.val_dataset.tensors[0]])
    assert abs(train_images.mean().item()) < 1e-3
    assert abs(train_images.std().item() - 1) < 1e-3
