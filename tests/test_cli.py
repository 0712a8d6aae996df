"""``lightning-prune``: the ``export`` subcommand end to end, and the ``LoadWeights`` callback."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from lightning_prune.callbacks.structured_sparsity import StructuredSparsityRetrain
from lightning_prune.cli import LoadWeights, export_checkpoint, main, run_cli
from lightning_prune.demos import SmallResNet
from lightning_prune.functional.nm import nm_mask_is_valid
from lightning_prune.record import read_record
from lightning_prune.sparsity import masks_from_records

REPO = Path(__file__).resolve().parents[1]
SPARSE = "recipes/sparse_2to4_fashion_mnist.yaml"
DENSE = "recipes/dense_fashion_mnist.yaml"
RANDOM_DATA = ["--data=lightning_prune.demos.RandomImageDataModule", "--data.num_samples=32"]
SHORT = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.num_sanity_val_steps=0",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    shutil.copytree(REPO / "recipes", root / "recipes")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setattr(sys, "argv", ["lightning-prune"])  # LightningCLI warns when args and argv differ
        yield root


@pytest.fixture(scope="module")
def exported(workdir):
    """Fit the 2:4 recipe shortened (from a plain state_dict where it expects the dense checkpoint), export it."""
    start = Path("outputs/dense_fashion_mnist/checkpoints/last.ckpt")
    start.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(SmallResNet().state_dict(), start)
    assert (
        main(["fit", "--config", SPARSE, *SHORT, *RANDOM_DATA]) == 0
    )  # the exit status of the console script
    ckpt = "outputs/sparse_2to4_fashion_mnist/checkpoints/last.ckpt"
    main(["export", "--config", SPARSE, *RANDOM_DATA, "--ckpt_path", ckpt, "--export_dir", "export"])
    return workdir / "export"


def test_export_writes_the_three_artefacts(exported):
    assert sorted(path.name for path in exported.iterdir()) == [
        "model.onnx",
        "model_state_dict.pt",
        "prune_record.txt",
    ]
    # The record is the one the training run wrote for this checkpoint's masks.
    trained = Path("outputs/sparse_2to4_fashion_mnist/prune_record.txt")
    assert (exported / "prune_record.txt").read_text() == trained.read_text()


def test_exported_state_dict_is_a_plain_2to4_small_resnet(exported):
    state = torch.load(exported / "model_state_dict.pt", weights_only=True)
    network = SmallResNet()
    network.load_state_dict(state)  # strict: plain keys, no parametrizations
    record = read_record(exported / "prune_record.txt")
    masks = masks_from_records(list(record.n_out_of_m))
    assert len(masks) == 8
    for name, mask in masks.items():
        weight = network.get_submodule(name).weight
        assert nm_mask_is_valid(weight != 0, 2, 4, 1), name
        assert torch.equal(weight[~mask], torch.zeros_like(weight[~mask])), name


def test_exported_onnx_matches_torch(exported):
    onnxruntime = pytest.importorskip("onnxruntime")
    network = SmallResNet()
    network.load_state_dict(torch.load(exported / "model_state_dict.pt", weights_only=True))
    session = onnxruntime.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "input"
    for batch in (1, 5):  # the batch axis is dynamic
        x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(1))
        (onnx_out,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            torch_out = network.eval()(x).numpy()
        np.testing.assert_allclose(onnx_out, torch_out, rtol=1e-4, atol=1e-5)


def test_export_refuses_a_checkpoint_of_another_recipe(exported):
    ckpt = "outputs/sparse_2to4_fashion_mnist/checkpoints/last.ckpt"
    with pytest.raises(RuntimeError, match=r"(?s)does not fit the model and pruning callbacks.*HINT"):
        main(["export", "--config", DENSE, "--ckpt_path", ckpt, "--export_dir", "wrong", "--target", "model"])
    assert not Path("wrong").exists()


def test_export_names_a_missing_checkpoint(workdir):
    with pytest.raises(FileNotFoundError, match=re.escape("--ckpt_path 'nowhere.ckpt' does not exist")):
        main(["export", "--config", SPARSE, "--ckpt_path", "nowhere.ckpt", "--export_dir", "never"])
    assert not Path("never").exists()


def test_export_requires_its_arguments(workdir, capsys):
    with pytest.raises(SystemExit):
        main(["export", "--config", SPARSE, "--export_dir", "never"])
    assert "ckpt_path" in capsys.readouterr().err


def test_export_needs_an_example_input(tmp_path):
    module = _Module()
    module.example_input_array = None
    with pytest.raises(ValueError, match="example_input_array"):
        export_checkpoint(pl.Trainer(logger=False), module, "any.ckpt", str(tmp_path), target="model")


def test_module_entry_point(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lightning_prune.cli", "export", "--help"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--export_dir" in result.stdout


def test_test_subcommand_loads_a_sparse_checkpoint(exported):
    ckpt = "outputs/sparse_2to4_fashion_mnist/checkpoints/last.ckpt"
    cli = run_cli(
        ["test", "--config", SPARSE, *RANDOM_DATA, "--trainer.enable_progress_bar=false", "--ckpt_path", ckpt]
    )
    assert "test_acc" in cli.trainer.callback_metrics
    (pruner,) = [c for c in cli.trainer.callbacks if isinstance(c, StructuredSparsityRetrain)]
    assert len(pruner.sparse_layers) == 8


# ---- LoadWeights ----
class _Module(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
        self.example_input_array = torch.zeros(1, 4)


def _weights(seed=1):
    torch.manual_seed(seed)
    return _Module().model.state_dict()


@pytest.mark.parametrize(
    "saved",
    [
        pytest.param(lambda w: w, id="plain"),
        pytest.param(
            lambda w: {"state_dict": {f"model.{k}": v for k, v in w.items()}, "epoch": 3}, id="lightning"
        ),
        pytest.param(lambda w: {f"module.{k}": v for k, v in w.items()}, id="ddp"),
    ],
)
def test_load_weights_reads_plain_lightning_and_ddp_files(tmp_path, saved):
    weights = _weights()
    torch.save(saved(weights), tmp_path / "w.pt")
    module = _Module()
    LoadWeights(str(tmp_path / "w.pt")).setup(None, module, "fit")
    for key, value in module.model.state_dict().items():
        assert torch.equal(value, weights[key]), key


def test_load_weights_loads_once(tmp_path):
    torch.save(_weights(), tmp_path / "w.pt")
    module, callback = _Module(), LoadWeights(str(tmp_path / "w.pt"))
    callback.setup(None, module, "fit")
    with torch.no_grad():
        module.model[0].weight.zero_()
    callback.setup(None, module, "test")  # a later stage keeps the weights trained since
    assert not module.model[0].weight.any()


def test_load_weights_must_come_before_the_pruning(tmp_path):
    torch.save(_weights(), tmp_path / "w.pt")
    module = _Module()
    parametrize.register_parametrization(module.model[0], "weight", nn.Identity())
    with pytest.raises(ValueError, match="list LoadWeights before the pruning callbacks"):
        LoadWeights(str(tmp_path / "w.pt")).setup(None, module, "fit")


def test_load_weights_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape("LoadWeights(path='missing.pt')")):
        LoadWeights("missing.pt").setup(None, _Module(), "fit")
    torch.save({"0.weight": torch.zeros(2, 2)}, tmp_path / "small.pt")
    with pytest.raises(RuntimeError, match="do not fit Sequential"):
        LoadWeights(str(tmp_path / "small.pt")).setup(None, _Module(), "fit")
    with pytest.raises(ValueError, match=r"has no submodule 'backbone'.*children: model"):
        LoadWeights(str(tmp_path / "small.pt"), target="backbone").setup(None, _Module(), "fit")
    with pytest.raises(TypeError, match="strict='yes'"):
        LoadWeights("w.pt", strict="yes")
    with pytest.raises(TypeError, match="path=None"):
        LoadWeights(None)


def test_load_weights_non_strict_loads_the_matching_part(tmp_path):
    weights = _weights()
    torch.save({**weights, "extra.weight": torch.zeros(1)}, tmp_path / "w.pt")
    module = _Module()
    LoadWeights(str(tmp_path / "w.pt"), strict=False).setup(None, module, "fit")
    assert torch.equal(module.model[2].bias, weights["2.bias"])
