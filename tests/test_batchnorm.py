import pytest
import torch
from torch import nn

from lightning_prune.batchnorm import recalibrate_batchnorm


def test_statistics_become_the_exact_batch_average():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).train()
    batches = [torch.randn(16, 3) for _ in range(3)]
    used = recalibrate_batchnorm(net, [(b, torch.zeros(16)) for b in batches])
    assert used == 3
    features = [net[0](b) for b in batches]
    expected_mean = torch.stack([f.mean(0) for f in features]).mean(0)
    torch.testing.assert_close(net[1].running_mean, expected_mean.detach())
    assert net[1].momentum == 0.1, "momentum is restored"
    assert net.training, "training flags are restored"
    assert net[1].training


def test_weights_do_not_change_and_max_batches_is_honoured():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
    before = [p.clone() for p in net.parameters()]
    assert recalibrate_batchnorm(net.eval(), (torch.randn(2, 1, 5, 5) for _ in range(10)), max_batches=4) == 4
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    assert not net.training
    assert net[1].num_batches_tracked.item() == 4


def test_model_without_batchnorm_is_left_alone():
    assert recalibrate_batchnorm(nn.Linear(2, 2), [torch.randn(1, 2)]) == 0


def test_unusable_batches_are_named():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with pytest.raises(
        TypeError, match=r"a batch must be a tensor or an \(inputs, labels, \.\.\.\) sequence, got dict"
    ):
        recalibrate_batchnorm(net, [{"x": torch.randn(2, 2)}])
