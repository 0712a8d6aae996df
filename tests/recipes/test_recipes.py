"""Every recipe in ``recipes/`` parses with ``lightning-prune`` and runs, shortened, as written.

The runs share one working directory holding a copy of ``recipes/`` (the recipes' paths are
relative to the repo root); a tiny Fashion-MNIST in IDX format stands in for the data set, so the
recipes' own data module reads real files. A weights file a recipe starts from (``LoadWeights``)
is produced first: by running, shortened, the recipe whose ``ModelCheckpoint`` writes it, or, for a
plain ``.pt``, by saving a freshly built backbone. Every pruning recipe's checkpoint is then
exported with the ``lightning-prune`` commands of its header comment, so the documented commands
are tested too. The channel-pruning recipes are the LightningCLI test of the search + retrain
pipeline: ChannelPruneSearch hands its .cfg to StructuredSparsityRetrain, export writes a compact
network.
"""

import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.cli import instantiate_class

from lightning_prune.api import restore_prune_retrain_model
from lightning_prune.cli import main
from lightning_prune.config import RetrainConfig, load_auto_channel_prune_config
from lightning_prune.functional.nm import nm_mask
from lightning_prune.record import read_record
from lightning_prune.search import count_macs
from lightning_prune.summary import count_parameters

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
SEARCH = Path("recipes/search_channel_prune_fashion_mnist.yaml")
CHANNELS = Path("recipes/channel_prune_fashion_mnist.yaml")
SHORT = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.num_sanity_val_steps=0",
]


def _write_idx(path: Path, tensor: torch.Tensor) -> None:
    header = bytes([0, 0, 0x08, tensor.dim()]) + b"".join(n.to_bytes(4, "big") for n in tensor.shape)
    path.write_bytes(header + tensor.numpy().tobytes())


@pytest.fixture(scope="session")
def tiny_fashion_mnist(tmp_path_factory):
    """192 train and 32 test random 28x28 images with labels, as the 4 standard IDX files.

    With 32 held out for validation and batches of 16 that is 10 training batches: enough for
    the 8 (test_iteration) that ChannelPruneSearch scores channels on.
    """
    root = tmp_path_factory.mktemp("fashion-mnist")
    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", 192), ("t10k", 32)):
        images = torch.randint(0, 256, (count, 28, 28), generator=generator, dtype=torch.uint8)
        labels = torch.randint(0, 10, (count,), generator=generator, dtype=torch.uint8)
        _write_idx(root / f"{split}-images-idx3-ubyte", images)
        _write_idx(root / f"{split}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One working directory for the module: a recipe's outputs are the next recipe's inputs."""
    root = tmp_path_factory.mktemp("workdir")
    shutil.copytree(REPO / "recipes", root / "recipes")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setattr(sys, "argv", ["lightning-prune"])  # LightningCLI warns when args and argv differ
        yield root


def _config(recipe: Path) -> dict:
    return yaml.safe_load(recipe.read_text())


def _callbacks(recipe: Path, suffix: str) -> list[dict]:
    callbacks = _config(recipe)["trainer"].get("callbacks") or []
    return [cb.get("init_args", {}) for cb in callbacks if cb["class_path"].endswith(suffix)]


def _root(recipe: Path) -> Path:
    return Path(_config(recipe)["trainer"]["default_root_dir"])


def _documented_commands(recipe: Path) -> dict[str, list[str]]:
    """The ``lightning-prune ...`` commands of the recipe's header comment, by subcommand."""
    commands, pending = {}, []
    for line in recipe.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.removeprefix("#").strip()
        if pending or text.startswith("lightning-prune "):
            pending.append(text.removesuffix("\\"))
            if not text.endswith("\\"):
                args = shlex.split(" ".join(pending))[1:]
                commands[args[0]] = args
                pending = []
    return commands


def _data_overrides(recipe: Path, data_dir: Path) -> list[str]:
    if not _config(recipe)["data"]["class_path"].endswith("FashionMNISTDataModule"):
        return []
    return [
        f"--data.init_args.data_dir={data_dir}",
        "--data.init_args.val_size=32",
        "--data.init_args.batch_size=16",
    ]


_FITTED: set[Path] = set()


def _fit_shortened(recipe: Path, data_dir: Path) -> None:
    """Fit ``recipe`` shortened in the working directory, once (it may already have run for another)."""
    if recipe.resolve() in _FITTED:
        return
    _make_start_weights(recipe, data_dir)
    main(["fit", "--config", str(recipe), *SHORT, *_data_overrides(recipe, data_dir)])
    _FITTED.add(recipe.resolve())


def _make_start_weights(recipe: Path, data_dir: Path) -> None:
    for load in _callbacks(recipe, "LoadWeights"):
        path = Path(load["path"])
        if path.exists():
            continue
        producers = [
            r
            for r in RECIPES
            if any(Path(cb.get("dirpath", "")) == path.parent for cb in _callbacks(r, "ModelCheckpoint"))
        ]
        if producers:
            _fit_shortened(Path("recipes") / producers[0].name, data_dir)
            continue
        model = instantiate_class((), _config(recipe)["model"])
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.get_submodule(load.get("target", "model")).state_dict(), path)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.name)
def test_recipe_parses(recipe, workdir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(Path("recipes") / recipe.name), "--print_config"])
    assert exit_info.value.code == 0
    assert "class_path" in capsys.readouterr().out


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.name)
def test_recipe_runs_shortened(recipe, workdir, tiny_fashion_mnist):
    recipe = Path("recipes") / recipe.name
    _fit_shortened(recipe, tiny_fashion_mnist)

    for checkpoint in _callbacks(recipe, "ModelCheckpoint"):
        assert (Path(checkpoint["dirpath"]) / "last.ckpt").is_file()
    for pruner in _callbacks(recipe, "StructuredSparsityRetrain"):
        assert read_record(pruner.get("record_file") or _root(recipe) / "prune_record.txt").fingerprint.layer
    for search in _callbacks(recipe, "ChannelPruneSearch"):
        assert Path(search.get("output_cfg") or _root(recipe) / "searched_prune.cfg").is_file()


_EXPORTED: dict[Path, Path] = {}


def _export_shortened(recipe: Path, data_dir: Path) -> Path:
    """Fit ``recipe`` shortened, then run the export command of its header once; the export directory."""
    if recipe.resolve() not in _EXPORTED:
        _fit_shortened(recipe, data_dir)
        command = _documented_commands(recipe)["export"]
        main([*command, *_data_overrides(recipe, data_dir)])
        _EXPORTED[recipe.resolve()] = Path(command[command.index("--export_dir") + 1])
    return _EXPORTED[recipe.resolve()]


PRUNING_RECIPES = [recipe for recipe in RECIPES if _callbacks(recipe, "StructuredSparsityRetrain")]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.name)
def test_recipe_header_documents_its_fit_command(recipe):
    commands = _documented_commands(recipe)
    assert commands["fit"] == ["fit", "--config", f"recipes/{recipe.name}"]
    if recipe in PRUNING_RECIPES:
        (checkpoint,) = _callbacks(recipe, "ModelCheckpoint")
        export = commands["export"]
        assert export[:3] == ["export", "--config", f"recipes/{recipe.name}"]
        assert export[export.index("--ckpt_path") + 1] == f"{checkpoint['dirpath']}/last.ckpt"


@pytest.mark.parametrize("recipe", PRUNING_RECIPES, ids=lambda path: path.name)
def test_pruning_recipe_exports_as_documented(recipe, workdir, tiny_fashion_mnist):
    recipe = Path("recipes") / recipe.name
    export = _export_shortened(recipe, tiny_fashion_mnist)

    assert sorted(path.name for path in export.iterdir()) == [
        "model.onnx",
        "model_state_dict.pt",
        "prune_record.txt",
    ]
    # The exported record is the one the training run wrote for the checkpoint's pruning.
    assert (export / "prune_record.txt").read_text() == (_root(recipe) / "prune_record.txt").read_text()


def test_sparse_recipe_masks_come_from_the_dense_checkpoint(workdir, tiny_fashion_mnist):
    """LoadWeights runs before StructuredSparsityRetrain: the 2:4 masks (fixed: update_freq 0) are the dense weights'."""
    recipe = Path("recipes/sparse_2to4_fashion_mnist.yaml")
    _fit_shortened(recipe, tiny_fashion_mnist)
    dense = torch.load("outputs/dense_fashion_mnist/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    sparse = torch.load("outputs/sparse_2to4_fashion_mnist/checkpoints/last.ckpt", weights_only=True)[
        "state_dict"
    ]
    masks = {
        key.removesuffix(".parametrizations.weight.0.mask"): m
        for key, m in sparse.items()
        if key.endswith(".0.mask")
    }
    assert len(masks) == 8
    for layer, mask in masks.items():
        assert torch.equal(mask, nm_mask(dense[f"{layer}.weight"], 2, 4, 1)), layer


# ---- channel pruning: ChannelPruneSearch + StructuredSparsityRetrain from a LightningCLI YAML ----
def _retrain_cfg(recipe: Path) -> Path:
    """The retrain .cfg the recipe's StructuredSparsityRetrain pruned with: its own, or the search's."""
    (pruner,) = _callbacks(recipe, "StructuredSparsityRetrain")
    searches = _callbacks(recipe, "ChannelPruneSearch")
    return Path(searches[0]["output_cfg"] if searches else pruner["config"])


def _network(recipe: Path) -> torch.nn.Module:
    """A freshly built, dense backbone of the recipe."""
    torch.manual_seed(0)
    return instantiate_class((), _config(recipe)["model"]).model


def test_search_recipe_hands_its_cfg_to_the_compact_retrain(workdir, tiny_fashion_mnist):
    _fit_shortened(SEARCH, tiny_fashion_mnist)
    (search,) = _callbacks(SEARCH, "ChannelPruneSearch")
    assert Path(search["output_cfg"]).parent == _root(SEARCH)
    assert _callbacks(SEARCH, "StructuredSparsityRetrain") == [{"target": "model", "channel_mode": "compact"}]

    # The search wrote a retrain .cfg naming the record of the channels it chose ...
    output_cfg = Path(search["output_cfg"])
    searched = read_record(
        output_cfg.parent / RetrainConfig.from_file(output_cfg).proto.channel_selection_record
    )
    assert len(searched.channel_group) >= 3
    assert all(group.pruned_index for group in searched.channel_group)
    # ... and the retrain pruned exactly those channels.
    trained = read_record(_root(SEARCH) / "prune_record.txt")
    assert list(trained.channel_group) == list(searched.channel_group)
    assert not trained.n_out_of_m

    # compact: the checkpoint holds the smaller network itself, without masks.
    state = torch.load(_root(SEARCH) / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert not any("parametrizations" in key for key in state)
    dense = _network(SEARCH).state_dict()
    assert state["model.layer1.0.conv1.weight"].shape[0] < dense["layer1.0.conv1.weight"].shape[0]


def test_channel_recipe_retrains_with_channel_masks(workdir, tiny_fashion_mnist):
    _fit_shortened(CHANNELS, tiny_fashion_mnist)
    trained = read_record(_root(CHANNELS) / "prune_record.txt")
    assert len(trained.channel_group) >= 3
    for group in trained.channel_group:  # 30% of every group, rounded
        assert len(group.pruned_index) == round(0.3 * group.channels), group.channels

    # mask: the checkpoint keeps the dense shapes, the pruned channels are masked out.
    state = torch.load(_root(CHANNELS) / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    dense = _network(CHANNELS).state_dict()
    original = state["model.layer1.0.conv1.parametrizations.weight.original"]
    assert original.shape == dense["layer1.0.conv1.weight"].shape
    mask = state["model.layer1.0.conv1.parametrizations.weight.0.mask"]
    assert 0 < int(mask.sum()) < mask.numel()


@pytest.mark.parametrize("recipe", [SEARCH, CHANNELS], ids=lambda path: path.name)
def test_channel_recipe_exports_a_smaller_network(recipe, workdir, tiny_fashion_mnist):
    export = _export_shortened(recipe, tiny_fashion_mnist)
    x = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    dense = _network(recipe)
    compact = restore_prune_retrain_model(
        _network(recipe),
        (x,),
        export / "prune_record.txt",
        _retrain_cfg(recipe),
        export / "model_state_dict.pt",
    )  # strict: the exported weights are exactly the compact network of the record

    dense_macs, compact_macs = count_macs(dense, (x,)), count_macs(compact, (x,))
    assert compact_macs < dense_macs
    assert count_parameters(compact) < count_parameters(dense)
    if recipe == SEARCH:
        (search,) = _callbacks(SEARCH, "ChannelPruneSearch")
        assert dense_macs / compact_macs >= load_auto_channel_prune_config(search["config"]).compress_ratio

    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch_out = compact.eval()(x).numpy()
    np.testing.assert_allclose(onnx_out, torch_out, rtol=1e-4, atol=1e-5)
