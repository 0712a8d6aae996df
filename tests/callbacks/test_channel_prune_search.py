import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_prune.callbacks.channel_prune_search import ChannelPruneSearch
from lightning_prune.callbacks.structured_sparsity import StructuredSparsityRetrain
from lightning_prune.config import RetrainConfig, load_auto_channel_prune_config
from lightning_prune.demos import ImageClassifier, RandomImageDataModule
from lightning_prune.search import count_macs

SEARCH_CFG = "compress_ratio: 1.6 ascend_optimized: false test_iteration: 2 max_prune_ratio: 0.8\n"


def _search_cfg(tmp_path):
    path = tmp_path / "search.cfg"
    path.write_text(SEARCH_CFG)
    return str(path)


def _fit(tmp_path, callbacks, max_epochs=1, logger=False):
    torch.manual_seed(0)
    module = ImageClassifier(arch="small_resnet", lr=0.01)
    data = RandomImageDataModule(num_samples=64, batch_size=16)
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_epochs=max_epochs, callbacks=callbacks, accelerator="cpu", logger=logger,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        limit_val_batches=1,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    return module


def test_search_hands_its_channels_to_retraining_in_one_trainer(tmp_path, caplog):
    search = ChannelPruneSearch(_search_cfg(tmp_path), target="model")
    retrain = StructuredSparsityRetrain(target="model", channel_mode="compact")
    dense_macs = count_macs(ImageClassifier().model, torch.zeros(1, 1, 28, 28))
    with caplog.at_level("INFO"):
        module = _fit(tmp_path, [search, retrain], logger=CSVLogger(tmp_path))
    progress = [r.getMessage() for r in caplog.records if "sensitivity batch" in r.getMessage()]
    iterations = load_auto_channel_prune_config(_search_cfg(tmp_path)).test_iteration
    assert [m.split("batch ")[1].split(" ")[0] for m in progress] == [
        f"{i}/{iterations}" for i in range(1, iterations + 1)
    ]

    assert search.result is not None
    assert search.result.reached
    assert retrain.config_path == search.output_cfg == str(tmp_path / "searched_prune.cfg")
    RetrainConfig.from_file(search.output_cfg)  # a valid retrain config
    # The channels the search chose are the channels retraining removed (not re-picked).
    assert retrain.pruning.channel_plan == {
        gid: list(idx) for gid, idx in search.result.plan.items() if len(idx)
    }
    compact_macs = count_macs(module.model, torch.zeros(1, 1, 28, 28))
    assert dense_macs / compact_macs == pytest.approx(search.result.achieved_ratio, rel=1e-9)
    assert search.result.achieved_ratio >= 1.6
    metrics = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "search/achieved_ratio" in metrics
    # The per-group table reaches the loggers too: one column per group and quantity.
    for row in search.result.groups:
        for quantity in ("channels_before", "channels_after", "macs_share", "sensitivity"):
            assert f"search/{row.producers[0]}/{quantity}" in metrics


def test_a_finished_search_is_not_run_again(tmp_path):
    first = ChannelPruneSearch(_search_cfg(tmp_path), target="model")
    _fit(tmp_path, [first, StructuredSparsityRetrain(target="model")])
    second = ChannelPruneSearch(_search_cfg(tmp_path), target="model")
    retrain = StructuredSparsityRetrain(target="model")
    _fit(tmp_path, [second, retrain])
    assert second.result is None, "the search of the first fit is reused"
    assert retrain.pruning.channel_plan == {gid: list(i) for gid, i in first.result.plan.items() if len(i)}


def test_search_must_come_before_its_retrain_callback(tmp_path):
    callbacks = [
        StructuredSparsityRetrain(target="model"),
        ChannelPruneSearch(_search_cfg(tmp_path), target="model"),
    ]
    with pytest.raises(ValueError, match=r"put a ChannelPruneSearch with the same target before it"):
        _fit(tmp_path, callbacks)


def test_search_without_a_retrain_callback_says_what_to_add(tmp_path):
    with pytest.raises(
        ValueError, match=r"needs exactly one StructuredSparsityRetrain with the same target after it"
    ):
        _fit(tmp_path, [ChannelPruneSearch(_search_cfg(tmp_path), target="model")])


def test_retrain_without_config_or_search_explains_both_ways(tmp_path):
    with pytest.raises(ValueError, match=r"has no config\. HINT: pass config=.* or put a ChannelPruneSearch"):
        _fit(tmp_path, [StructuredSparsityRetrain(target="model")])


def test_too_few_batches_for_test_iteration(tmp_path):
    path = tmp_path / "search.cfg"
    path.write_text("compress_ratio: 1.5 ascend_optimized: false test_iteration: 50\n")
    with pytest.raises(
        ValueError, match=r"test_iteration is 50 but the train dataloader has only \d+ batches"
    ):
        _fit(
            tmp_path,
            [ChannelPruneSearch(str(path), target="model"), StructuredSparsityRetrain(target="model")],
        )
