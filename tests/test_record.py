"""Record files: round trips, model fingerprints, atomic writes and bit-packed masks."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from hypothesis import given, settings
from hypothesis.extra import numpy as hnp
from torch import nn
from torch.nn.utils import parametrize

from lightning_prune.errors import RecordError
from lightning_prune.proto import PruneRecord
from lightning_prune.proto.prune_record_pb2 import INPUT, OUTPUT
from lightning_prune.record import (
    RECORD_FORMAT_VERSION,
    check_fingerprint,
    model_fingerprint,
    pack_mask,
    read_record,
    unpack_mask,
    write_record,
)


class Net(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3)
        self.bn = nn.BatchNorm2d(width)
        self.act = nn.ReLU()
        self.fc = nn.Linear(width, 4, bias=False)


class KeepMask(nn.Module):
    """A mask-only parametrization, like the N:M one: shapes never change."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", torch.rand_like(weight) > 0.5, persistent=False)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def make_record(model: nn.Module) -> PruneRecord:
    record = PruneRecord(producer_version="0.1.0", config_file="prune.cfg")
    record.fingerprint.CopyFrom(model_fingerprint(model))
    group = record.channel_group.add(channels=8, pruned_index=[1, 5], prune_ratio=0.25)
    group.producer.add(name="conv", type="Conv2d", begin=0, end=8, prune_index=[1, 5], axis=OUTPUT)
    group.consumer.add(name="bn", type="BatchNorm2d", begin=0, end=8, prune_index=[1, 5], axis=INPUT)
    mask = torch.rand(4, 8) > 0.5
    record.n_out_of_m.add(
        name="fc", type="Linear", weight_shape=[4, 8], n=2, m=4, axis=1, mask_bits=pack_mask(mask)
    )
    return record


@pytest.mark.parametrize("suffix", [".txt", ".pb"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    record = make_record(Net())
    path = tmp_path / "deep" / "dir" / f"record{suffix}"
    write_record(path, record)
    assert read_record(path) == record
    assert sorted(os.listdir(path.parent)) == [path.name]


def test_text_record_is_protobuf_text_and_binary_is_not(tmp_path: Path) -> None:
    record = make_record(Net())
    write_record(tmp_path / "r.txt", record)
    write_record(tmp_path / "r.pb", record)
    assert text_format.Parse((tmp_path / "r.txt").read_text(), PruneRecord()) == record
    assert (tmp_path / "r.pb").read_bytes() == record.SerializeToString()


def test_large_mask_round_trips_as_text(tmp_path: Path) -> None:
    # 11 MB of mask bits over 8 layers: bytes fields are escaped in text format, which stays exact.
    rng = np.random.default_rng(0)
    record = PruneRecord()
    for i in range(8):
        record.n_out_of_m.add(
            name=f"layer{i}", mask_bits=rng.integers(0, 256, size=11 * 2**17, dtype=np.uint8).tobytes()
        )
    assert sum(len(layer.mask_bits) for layer in record.n_out_of_m) > 10 * 2**20
    write_record(tmp_path / "big.txt", record)
    assert read_record(tmp_path / "big.txt") == record


def test_fingerprint_lists_layers_with_parameters() -> None:
    fingerprint = model_fingerprint(Net())
    layers = [(layer.name, layer.type, list(layer.param_shape)) for layer in fingerprint.layer]
    assert layers == [
        ("conv", "Conv2d", ["bias:8", "weight:8x3x3x3"]),
        ("bn", "BatchNorm2d", ["bias:8", "weight:8"]),
        ("fc", "Linear", ["weight:4x8"]),
    ]
    assert len(fingerprint.digest) == 64


def test_fingerprint_is_stable_across_mask_parametrization() -> None:
    model = Net()
    before = model_fingerprint(model)
    for module in (model.conv, model.fc):
        parametrize.register_parametrization(module, "weight", KeepMask(module.weight))
    assert parametrize.is_parametrized(model.conv, "weight")
    assert model_fingerprint(model) == before
    check_fingerprint(PruneRecord(fingerprint=before), model)


def test_fingerprint_differs_for_another_model() -> None:
    assert model_fingerprint(Net(8)).digest != model_fingerprint(Net(16)).digest


@pytest.mark.parametrize(
    ("other", "match"),
    [
        (
            lambda: Net(16),
            r"layer `conv` differs: record Conv2d \[bias:8, weight:8x3x3x3\], model Conv2d \[bias:16, weight:16x3x3x3\]",
        ),
        (lambda: nn.Sequential(), r"layer `conv` is missing from the model \(record: Conv2d"),
        (
            lambda: _with_extra_layer(),
            r"the model has an extra layer `extra` \(model: Linear \[bias:2, weight:2x2\]\)",
        ),
        (lambda: _renamed_fc(), r"layer `fc` is missing from the model"),
        (lambda: _conv_replaced_by_linear(), r"layer `conv` differs: record Conv2d .*, model Linear"),
    ],
)
def test_mismatch_names_the_first_differing_layer(other, match: str) -> None:
    record = PruneRecord(fingerprint=model_fingerprint(Net()))
    with pytest.raises(RecordError, match=match) as err:
        check_fingerprint(record, other(), source="runs/record.txt")
    assert str(err.value).startswith("runs/record.txt: the record does not match the model")
    assert "HINT: this record was made for another model" in str(err.value)


def _with_extra_layer() -> nn.Module:
    model = Net()
    model.extra = nn.Linear(2, 2)
    return model


def _renamed_fc() -> nn.Module:
    model = Net()
    model.head = model.fc
    del model.fc
    return model


def _conv_replaced_by_linear() -> nn.Module:
    model = Net()
    model.conv = nn.Linear(3, 8)
    return model


def test_record_without_fingerprint_is_accepted() -> None:
    check_fingerprint(PruneRecord(), Net())


def test_digest_only_fingerprint() -> None:
    digest = model_fingerprint(Net()).digest
    check_fingerprint(PruneRecord(fingerprint={"digest": digest}), Net())
    with pytest.raises(RecordError, match="has only a digest"):
        check_fingerprint(PruneRecord(fingerprint={"digest": digest}), Net(16))


def test_newer_record_version_is_refused(tmp_path: Path) -> None:
    newer = PruneRecord(format_version=RECORD_FORMAT_VERSION + 1)
    with pytest.raises(
        RecordError, match=r"r\.txt: record format_version 2 was made by a newer lightning_prune"
    ):
        check_fingerprint(newer, Net(), source="r.txt")
    (tmp_path / "r.txt").write_text("format_version: 2\nfield_from_the_future: 1\n")
    with pytest.raises(RecordError, match=r"format_version 2 was made by a newer lightning_prune"):
        read_record(tmp_path / "r.txt")


def test_read_missing_record(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"absent\.txt"):
        read_record(tmp_path / "absent.txt")


def test_read_unparsable_record_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text('n_out_of_m {\n  name: "fc"\n  nn: 2\n}\n')
    with pytest.raises(RecordError, match=r"bad\.txt:3:3: cannot parse the record: .*\"nn\".*HINT"):
        read_record(path)
    (tmp_path / "bad.pb").write_bytes(b"\xff\xff\xff")
    with pytest.raises(RecordError, match=r"bad\.pb: not a binary PruneRecord"):
        read_record(tmp_path / "bad.pb")


@pytest.mark.parametrize("suffix", [".txt", ".pb"])
@pytest.mark.parametrize("failure", ["serialize", "fsync", "replace"])
def test_failed_write_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str, suffix: str
) -> None:
    path = tmp_path / f"record{suffix}"
    old = make_record(Net())
    write_record(path, old)
    old_bytes = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk on fire")

    target = {
        "serialize": (PruneRecord, "SerializeToString")
        if suffix == ".pb"
        else (text_format, "MessageToString"),
        "fsync": (os, "fsync"),
        "replace": (os, "replace"),
    }[failure]
    monkeypatch.setattr(*target, boom)
    with pytest.raises(OSError, match="disk on fire"):
        write_record(path, PruneRecord(config_file="new.cfg"))
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert read_record(path) == old
    assert os.listdir(tmp_path) == [path.name]


# ---- masks --------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, database=None)
@given(hnp.arrays(dtype=bool, shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=9)))
def test_pack_unpack_round_trip(mask: np.ndarray) -> None:
    bits = pack_mask(torch.from_numpy(mask))
    assert len(bits) == (mask.size + 7) // 8
    assert bits == np.packbits(mask.reshape(-1), bitorder="big").tobytes()
    restored = unpack_mask(bits, mask.shape)
    assert restored.dtype == torch.bool
    assert tuple(restored.shape) == mask.shape
    assert np.array_equal(restored.numpy(), mask)


def test_pack_is_row_major_big_endian() -> None:
    mask = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 0, 1, 1]])
    assert pack_mask(mask) == bytes([0b10000000, 0b10000000, 0b11000000])
    assert pack_mask(mask.float().t().contiguous().t()) == pack_mask(mask)  # layout does not matter


def test_pack_rejects_non_binary_values() -> None:
    with pytest.raises(ValueError, match="0/1 mask"):
        pack_mask(torch.tensor([0.0, 0.5]))


@pytest.mark.parametrize(("length", "shape"), [(1, (3, 3)), (3, (4, 4)), (1, (0,))])
def test_unpack_rejects_wrong_length(length: int, shape: tuple[int, ...]) -> None:
    with pytest.raises(
        RecordError, match=re.escape(f"shape {list(shape)}") + rf".*needs \d+ bytes, got {length}\. HINT"
    ):
        unpack_mask(b"\x00" * length, shape)
