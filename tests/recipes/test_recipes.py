"""Every recipe in ``recipes/`` parses with ``lightning-prune`` and runs, shortened, as written.

The runs share one working directory holding a copy of ``recipes/`` (the recipes' paths are
relative to the repo root); a tiny Fashion-MNIST in IDX format stands in for the data set, so the
recipes' own data module reads real files. A weights file a recipe starts from (``LoadWeights``)
is produced first: by running, shortened, the recipe whose ``ModelCheckpoint`` writes it, or, for a
plain ``.pt``, by saving a freshly built backbone.
"""

import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.cli import instantiate_class

from lightning_prune.cli import main
from lightning_prune.functional.nm import nm_mask
from lightning_prune.record import read_record

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
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
    """96 train and 32 test random 28x28 images with labels, as the 4 standard IDX files."""
    root = tmp_path_factory.mktemp("fashion-mnist")
    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", 96), ("t10k", 32)):
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
        root = Path(_config(recipe)["trainer"]["default_root_dir"])
        assert read_record(pruner.get("record_file") or root / "prune_record.txt").fingerprint.layer


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
