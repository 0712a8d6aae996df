"""One pruning of one network: what a config (or a record) asks for, applied, and recorded.

The ``StructuredSparsityRetrain`` callback and the AMCT-style functions share this module, so
channel selection, the train-mode check, application and records exist in one place.

A :class:`Pruning` is decided from a config (channels chosen by BalancedL2Norm, or taken from
the config's ``channel_selection_record``) or from a record (nothing recomputed), then applied
to the network either as masks (shapes fixed during fit) or physically (a compact network).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_prune.config import FilterPruneSpec, NOutOfMSpec, RetrainConfig
from lightning_prune.coupling import CouplingAnalysis, analyze_coupling
from lightning_prune.coupling.plan import layer_indices
from lightning_prune.functional.channels import (
    balanced_l2_scores,
    channels_to_keep,
    ramp_order,
    select_pruned_channels,
)
from lightning_prune.proto import ModelFingerprint, PruneRecord
from lightning_prune.record import check_fingerprint, model_fingerprint, read_record
from lightning_prune.sparsity import apply_nm_sparsity, masks_from_records, nm_records
from lightning_prune.surgery import (
    apply_channel_masks,
    drop_breaking_groups,
    plan_to_records,
    prune_channels,
    records_to_plan,
)

__all__ = ["CHANNEL_MODES", "Pruning", "as_input_tuple", "channel_plan_from_specs"]

CHANNEL_MODES = ("mask", "compact")


def as_input_tuple(example_inputs: object) -> tuple:
    """Example inputs as a tuple (a bare tensor is wrapped)."""
    return (example_inputs,) if isinstance(example_inputs, Tensor) else tuple(example_inputs)


def _producer_weight(layer: nn.Module) -> Tensor:
    weight = layer.weight.detach()
    return weight.transpose(0, 1) if isinstance(layer, nn.ConvTranspose2d) else weight


def channel_plan_from_specs(
    network: nn.Module, analysis: CouplingAnalysis, specs: Mapping[str, FilterPruneSpec]
) -> dict[int, list[int]]:
    """Pick each group's channels by BalancedL2Norm at the ratio its producers' specs ask for.

    A group is pruned only when every producer has a filter spec (a skipped producer keeps its
    output channels, and so the whole group keeps them). As in AMCT the group takes the smallest
    ratio of its producers; its channel multiple is the largest of theirs. Scores combine all
    producers (mean of their normalised scores), not the first producer only.

    Returns:
        Group id -> sorted pruned indices, for groups that lose at least one channel.
    """
    plan: dict[int, list[int]] = {}
    for group in analysis.prunable_groups:
        producer_specs = [specs.get(p.name) for p in group.producers]
        if not producer_specs or not all(isinstance(s, FilterPruneSpec) for s in producer_specs):
            continue
        ratio = min(s.prune_ratio for s in producer_specs)
        multiple = max(s.channel_multiple for s in producer_specs)
        n_prune = group.channels - channels_to_keep(group.channels, ratio, multiple, group.group)
        if n_prune > 0:
            weights = [_producer_weight(network.get_submodule(p.name)) for p in group.producers]
            pruned = select_pruned_channels(balanced_l2_scores(weights), n_prune, group.group)
            plan[group.id] = sorted(int(i) for i in pruned)
    return plan


@dataclass
class Pruning:
    """The pruning decided for one network.

    Attributes:
        fingerprint: structure of the unpruned network (records refuse other models).
        analysis: its coupling analysis (``None`` when no layer is channel-pruned).
        channel_plan: channel-group id -> pruned indices (group coordinates).
        nm_specs: layer name -> N:M pattern.
        nm_masks: layer name -> mask to install (from a record); others are computed from weights.
        config_file: the config the pruning came from, for the record.
    """

    fingerprint: ModelFingerprint
    analysis: CouplingAnalysis | None = None
    channel_plan: dict[int, list[int]] = field(default_factory=dict)
    nm_specs: dict[str, NOutOfMSpec] = field(default_factory=dict)
    nm_masks: dict[str, Tensor] = field(default_factory=dict)
    config_file: str = ""

    @classmethod
    def from_config(
        cls,
        network: nn.Module,
        config: RetrainConfig,
        example_inputs: tuple | None,
        check_forward: bool = True,
    ) -> Pruning:
        """Decide the pruning ``config`` asks for (channels by BalancedL2Norm or the config's record).

        Groups whose pruning breaks a train-mode forward are dropped with a warning naming them.
        With ``check_forward=False`` that check is left to the caller, who must run the pruned
        network and call :meth:`drop_breaking_groups` if it fails (``create_prune_retrain_model``
        does so: one forward of the pruned model instead of two on copies, in the common case).
        """
        specs = config.resolve(network)
        filter_specs = {name: s for name, s in specs.items() if isinstance(s, FilterPruneSpec)}
        pruning = cls(
            fingerprint=model_fingerprint(network),
            nm_specs={name: s for name, s in specs.items() if isinstance(s, NOutOfMSpec)},
            config_file=config.source,
        )
        if filter_specs:
            if example_inputs is None:
                raise ValueError(
                    f"{config.source} asks for channel pruning of {', '.join(list(filter_specs)[:3])}, which needs "
                    "example inputs to trace the model. HINT: set `example_input_array` on the LightningModule, "
                    "or pass input_shape=[C, H, W] to StructuredSparsityRetrain."
                )
            pruning.analysis = analyze_coupling(network, example_inputs)
            selection = config.proto.channel_selection_record
            if selection:
                record_path = (
                    Path(config.source).parent / selection if not os.path.isabs(selection) else selection
                )
                chosen = read_record(record_path)
                check_fingerprint(chosen, network, source=os.fspath(record_path))
                pruning.channel_plan = records_to_plan(pruning.analysis, chosen.channel_group)
            else:
                pruning.channel_plan = channel_plan_from_specs(network, pruning.analysis, filter_specs)
            if check_forward:
                pruning.drop_breaking_groups(network, example_inputs)
        return pruning

    def drop_breaking_groups(self, network: nn.Module, example_inputs: tuple) -> None:
        """Drop from the plan the channel groups whose pruning breaks a train-mode forward of ``network``.

        ``network`` is the unpruned network (left unchanged); a warning names each dropped group.
        """
        if self.channel_plan:
            self.channel_plan = drop_breaking_groups(
                network, self.analysis, self.channel_plan, example_inputs
            )

    @classmethod
    def from_record(
        cls, network: nn.Module, record: PruneRecord, example_inputs: tuple | None, source: str
    ) -> Pruning:
        """The pruning a record holds, for a fresh network of the recorded structure."""
        check_fingerprint(record, network, source=source)
        pruning = cls(
            fingerprint=model_fingerprint(network),
            nm_specs={
                r.name: NOutOfMSpec(n=r.n, m=r.m, update_freq=r.update_freq) for r in record.n_out_of_m
            },
            nm_masks=masks_from_records([r for r in record.n_out_of_m if r.mask_bits]),
            config_file=record.config_file,
        )
        if record.channel_group:
            if example_inputs is None:
                raise ValueError(
                    f"{source} holds channel pruning; restoring it needs example inputs to trace the model. "
                    "HINT: pass example inputs of the shape the model takes (e.g. (torch.randn(1, 3, 224, 224),))."
                )
            pruning.analysis = analyze_coupling(network, example_inputs)
            pruning.channel_plan = records_to_plan(pruning.analysis, record.channel_group)
        return pruning

    def apply(self, network: nn.Module, channel_mode: str = "compact") -> list[str]:
        """Apply to ``network`` in place: channels as masks or removed, then the N:M masks.

        Returns:
            The names of the layers made N:M-sparse.
        """
        if channel_mode not in CHANNEL_MODES:
            raise ValueError(f"channel_mode={channel_mode!r} is not one of {CHANNEL_MODES}.")
        if self.channel_plan:
            if channel_mode == "mask":
                self._refuse_masks_on_nm_layers()
                apply_channel_masks(network, self.analysis, self.channel_plan)
            else:
                prune_channels(network, self.analysis, self.channel_plan)
        return apply_nm_sparsity(network, self.nm_specs, masks=self.nm_masks)

    def _refuse_masks_on_nm_layers(self) -> None:
        touched = set(layer_indices(self.analysis, self.channel_plan))
        both = sorted(touched & set(self.nm_specs))
        if both:
            raise ValueError(
                f"Layers {', '.join(both[:5])} would carry both channel masks and N:M masks. "
                "HINT: use channel_mode='compact' (channels removed first, then N:M), or skip them in one pruner."
            )

    def ramp_order(self, network: nn.Module) -> dict[int, list[int]]:
        """Per pruned group, its planned channels in the order a gradual pruning masks them.

        Least important first by BalancedL2Norm on ``network``'s current weights (call it before
        the masks zero them); grouped-conv slices take turns (see
        :func:`~lightning_prune.functional.channels.ramp_order`).
        """
        order = {}
        for gid, pruned in self.channel_plan.items():
            group = self.analysis.group(gid)
            weights = [_producer_weight(network.get_submodule(p.name)) for p in group.producers]
            order[gid] = ramp_order(pruned, balanced_l2_scores(weights), group.group)
        return order

    def channel_record(self) -> PruneRecord:
        """The record of the channel pruning alone (what a resumed fit needs before weights load)."""
        record = PruneRecord(fingerprint=self.fingerprint, config_file=self.config_file)
        if self.channel_plan:
            record.channel_group.extend(plan_to_records(self.analysis, self.channel_plan))
        return record

    def record(self, network: nn.Module) -> PruneRecord:
        """The full record: channel groups, plus the N:M masks ``network`` holds now."""
        record = self.channel_record()
        record.n_out_of_m.extend(nm_records(network))
        return record

    @property
    def pruned_channels(self) -> int:
        """Number of group channels removed."""
        return sum(len(index) for index in self.channel_plan.values())


def example_inputs_from_shape(input_shape: list[int] | None) -> tuple | None:
    """A batch of one zero input of ``input_shape`` (``None`` passes through)."""
    return None if input_shape is None else (torch.zeros(1, *input_shape),)
