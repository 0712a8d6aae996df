"""Propagation of channel groups through a recorded forward pass.

Every recorded tensor may carry a :class:`Layout`: which axis holds channels (a negative index,
so broadcasting lines up) and which groups sit at which offsets along it. Producers (Conv2d,
ConvTranspose2d, Linear) open a new group; BatchNorm, activations, pooling and depthwise convs
pass the layout through; ``add`` merges groups; ``cat`` along the channel axis concatenates
layouts; flatten turns each channel into ``k`` consecutive features. Anything else that sees a
grouped tensor marks its groups not prunable, with the reason.
"""

from __future__ import annotations

import math
import re

from torch import nn

from lightning_prune.coupling.groups import ChannelNode
from lightning_prune.coupling.shapes import (
    Layout,
    Seg,
    getitem_axis,
    permute_axis,
    reduce_axis,
    reshape_layout,
)
from lightning_prune.coupling.tracer import ELEMENTWISE_ACTIVATIONS, Node, Trace, ValueRef

UNARY = frozenset(
    {
        "relu",
        "relu6",
        "gelu",
        "silu",
        "sigmoid",
        "tanh",
        "hardswish",
        "hardsigmoid",
        "hardtanh",
        "leaky_relu",
        "elu",
        "selu",
        "celu",
        "mish",
        "softplus",
        "softsign",
        "dropout",
        "dropout1d",
        "dropout2d",
        "dropout3d",
        "alpha_dropout",
        "feature_alpha_dropout",
        "clone",
        "contiguous",
        "detach",
        "float",
        "half",
        "double",
        "bfloat16",
        "to",
        "type",
        "type_as",
        "abs",
        "neg",
        "negative",
        "clamp",
        "clip",
        "square",
        "exp",
        "identity",
        "hardshrink",
        "softshrink",
        "tanhshrink",
        "logsigmoid",
        "sin",
        "cos",
    }
)
BINARY = frozenset({"add", "sub", "rsub", "mul", "div", "rdiv", "maximum", "minimum", "multiply", "subtract"})
RESHAPE = frozenset(
    {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
)
REDUCE = frozenset({"mean", "sum", "amax", "amin", "max", "min", "nanmean", "nansum"})
SPLIT_DIM_ARG = {"split": 2, "chunk": 2, "tensor_split": 2, "unbind": 1}
_POOL = re.compile(
    r"^(adaptive_)?(avg|max|lp)_pool([123])d(_with_indices)?$|^(Adaptive)?(Avg|Max|LP)Pool([123])d$"
)
_TRANSPARENT_MODULES = (*ELEMENTWISE_ACTIVATIONS, nn.modules.dropout._DropoutNd, nn.Identity)


_NORM_FORWARDS = (
    nn.modules.batchnorm._BatchNorm.forward,
    nn.SyncBatchNorm.forward,
    nn.modules.instancenorm._InstanceNorm.forward,
)


def _torch_base(module: nn.Module) -> str:
    base = next((c for c in type(module).__mro__ if c.__module__.startswith("torch.nn.")), nn.Module)
    return f"torch.nn.{base.__name__}"


class _Raw:
    def __init__(self, channels: int, group: int) -> None:
        self.channels = channels
        self.group = group
        self.producers: list[ChannelNode] = []
        self.consumers: list[ChannelNode] = []
        self.reasons: list[str] = []


def exact_type(module: nn.Module, cls: type[nn.Module]) -> bool:
    """True if ``module`` is a ``cls`` whose ``forward`` is not overridden (so its math is known)."""
    return isinstance(module, cls) and type(module).forward is cls.forward


def native_forward(module: nn.Module) -> bool:
    """True if ``module``'s ``forward`` is torch's own, not one a subclass overrides.

    A subclass of a leaf layer with its own ``forward`` (e.g. a ``LayerNorm`` that permutes to
    normalise the channels of an NCHW map) is not what the layer's rule assumes.

    Example:
        >>> class LayerNorm2d(nn.LayerNorm):
        ...     def forward(self, x):
        ...         return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        >>> native_forward(nn.LayerNorm(4)), native_forward(LayerNorm2d(4))
        (True, False)
    """
    owner = next(c for c in type(module).__mro__ if "forward" in c.__dict__)
    return owner.__module__.startswith("torch.nn.")


class Propagator:
    """Walks a :class:`Trace` once and builds the raw groups (see module docstring)."""

    def __init__(self, trace: Trace, excluded: dict[str, str]) -> None:
        self.trace = trace
        self.excluded = excluded
        self.parent: dict[int, int] = {}
        self.raw: dict[int, _Raw] = {}
        self.layout: dict[int, Layout | None] = {}

    # ------------------------------------------------------------ union-find
    def find(self, gid: int) -> int:
        while self.parent[gid] != gid:
            self.parent[gid] = self.parent[self.parent[gid]]
            gid = self.parent[gid]
        return gid

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        ra, rb = min(ra, rb), max(ra, rb)
        self.parent[rb] = ra
        x, y = self.raw[ra], self.raw.pop(rb)
        x.producers += y.producers
        x.consumers += y.consumers
        x.group = math.lcm(x.group, y.group)
        x.reasons += y.reasons

    def block(self, gids: set[int], reason: str) -> None:
        for g in gids:
            self.raw[self.find(g)].reasons.append(reason)

    def new_group(self, node: Node, channels: int, group: int) -> Layout:
        gid = len(self.parent)
        self.parent[gid] = gid
        self.raw[gid] = _Raw(channels, group)
        self.raw[gid].producers.append(
            ChannelNode(node.target, type(node.module).__name__, "out", 0, channels, order=node.index)
        )
        return Layout(-1, (Seg(gid, channels),))

    def consume(self, lay: Layout, node: Node, axis: str = "in") -> None:
        offset = 0
        for s in lay.segs:
            if s.gid is not None:
                cn = ChannelNode(
                    node.target,
                    type(node.module).__name__,
                    axis,
                    offset,
                    offset + s.width,
                    s.k,
                    order=node.index,
                )
                self.raw[self.find(s.gid)].consumers.append(cn)
            offset += s.width

    # ------------------------------------------------------------------ walk
    def run(self) -> None:
        for vid in self.trace.inputs:
            self.layout[vid] = None
        for node in self.trace.nodes:
            if any(self.trace.values[v].origin == "untracked" for v in node.inputs):
                self.block(
                    set(self.raw),
                    f"{node.where} reads a tensor that shares memory with a recorded one but "
                    "came from a call the recorder cannot see (e.g. numpy or ctypes); coupling unknown",
                )
            lays = [self.layout.get(v) for v in node.inputs]
            if not any(lays):
                outs: list[Layout | None] = [None] * len(node.outputs)
                if node.kind == "module":
                    outs = self.module(node, lays)
            elif node.kind == "module":
                outs = self.module(node, lays)
            else:
                outs = self.op(node, lays)
            for vid, lay in zip(node.outputs, outs, strict=True):
                self.layout[vid] = lay
        for i, vid in enumerate(self.trace.outputs):
            lay = self.layout.get(vid)
            if lay:
                self.block(lay.gids, f"feeds the model output (output #{i}), which must keep its shape")

    def shape(self, vid: int) -> tuple[int, ...]:
        return self.trace.values[vid].shape

    def unknown(self, node: Node, lays: list[Layout | None], why: str = "") -> list[Layout | None]:
        gids = set().union(*(lay.gids for lay in lays if lay))
        why = why or "is not supported for channel pruning"
        self.block(gids, f"reaches {node.where}, which {why}")
        return [None] * len(node.outputs)

    def same(self, node: Node, lay: Layout) -> list[Layout | None]:
        return [lay] * len(node.outputs)

    def with_axis(self, node: Node, lay: Layout, axis: int | None, why: str) -> list[Layout | None]:
        if axis is None:
            return self.unknown(node, [lay], why)
        return [Layout(axis, lay.segs)] * len(node.outputs)

    # --------------------------------------------------------------- modules
    def module(self, node: Node, lays: list[Layout | None]) -> list[Layout | None]:
        m = node.module
        lay = lays[0] if lays else None
        rank = len(self.shape(node.inputs[0])) if node.inputs else 0
        if node.target in self.excluded:
            return self.unknown(node, lays, f"is excluded ({self.excluded[node.target]})")
        if len(node.inputs) != 1 and not isinstance(m, nn.MultiheadAttention):
            return self.unknown(node, lays, "takes several tensor inputs")
        if exact_type(m, nn.Conv2d) or exact_type(m, nn.ConvTranspose2d) or exact_type(m, nn.Linear):
            return self.producer(node, lay)
        if lay is None:
            return [None] * len(node.outputs)
        if not native_forward(m):
            return self.unknown(node, lays, f"overrides forward() of {_torch_base(m)} (its math is unknown)")
        if type(m).forward in _NORM_FORWARDS:
            if rank + lay.axis != 1 or lay.width != m.num_features:
                return self.unknown(node, lays, "does not see the channels on axis 1")
            self.consume(lay, node)
            return self.same(node, lay)
        if isinstance(m, _TRANSPARENT_MODULES) or (isinstance(m, nn.PReLU) and m.num_parameters == 1):
            return self.same(node, lay)
        if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
            dim = m.dim if m.dim is not None else -1
            ok = dim % rank != rank + lay.axis
            return self.same(node, lay) if ok else self.unknown(node, lays, "normalises across channels")
        if _POOL.match(type(m).__name__):
            n = int(next(c for c in type(m).__name__ if c.isdigit()))
            ok = rank + lay.axis < rank - n
            return self.same(node, lay) if ok else self.unknown(node, lays, "pools across channels")
        if isinstance(m, nn.Upsample):
            return (
                self.same(node, lay) if rank + lay.axis < 2 else self.unknown(node, lays, "resizes channels")
            )
        if isinstance(m, (nn.Flatten, nn.Unflatten)):
            return self.reshape(node, lay)
        if isinstance(m, nn.LayerNorm):
            if lay.axis >= -len(m.normalized_shape):
                return self.unknown(
                    node, lays, "normalises across channels (the masked model would not equal the pruned one)"
                )
            return self.same(node, lay)
        if isinstance(m, nn.GroupNorm):
            return self.unknown(node, lays, "normalises across groups of channels")
        if isinstance(m, nn.MultiheadAttention):
            return self.unknown(node, lays, "is attention (its projections are kept whole)")
        return self.unknown(node, lays)

    def producer(self, node: Node, lay: Layout | None) -> list[Layout | None]:
        m = node.module
        linear = isinstance(m, nn.Linear)
        in_axis, n_in = (-1, m.in_features) if linear else (-3, m.in_channels)
        n_out = m.out_features if linear else m.out_channels
        groups = 1 if linear else m.groups
        depthwise = not linear and groups > 1 and groups == m.in_channels == m.out_channels
        if isinstance(m, nn.ConvTranspose2d) and groups > 1:
            return self.unknown(node, [lay], "is a grouped transposed conv")
        if lay is not None:
            if lay.axis != in_axis or lay.width != n_in:
                return self.unknown(node, [lay], f"expects channels on axis {in_axis}")
            if depthwise:
                if any(s.k != 1 for s in lay.segs):
                    return self.unknown(node, [lay], "is depthwise over flattened channels")
                self.consume(lay, node, "in")
                self.consume(lay, node, "out")
                return self.same(node, lay)
            if groups > 1:
                seg = lay.segs[0]
                if len(lay.segs) != 1 or seg.gid is None or seg.k != 1:
                    self.block(
                        lay.gids,
                        f"reaches grouped conv '{node.target}' (groups={groups}) through a "
                        "concat or with unprunable channels",
                    )
                else:
                    self.raw[self.find(seg.gid)].group = math.lcm(self.raw[self.find(seg.gid)].group, groups)
            self.consume(lay, node, "in")
        if depthwise:
            return [None]
        out = self.new_group(node, n_out, groups)
        return [Layout(-1 if linear else -3, out.segs)]

    # ------------------------------------------------------------------- ops
    def op(self, node: Node, lays: list[Layout | None]) -> list[Layout | None]:
        name = node.target
        first = lays[0] if lays else None
        rank = len(self.shape(node.inputs[0]))
        if name in BINARY:
            return self.binary(node, lays)
        if name == "cat" or name == "stack":
            return self.cat(node, lays)
        if first is None or any(lays[1:]):
            return self.unknown(node, lays)  # only single-carrier ops below
        if name in UNARY and (len(lays) == 1 or name in {"to", "type_as"}):
            return self.same(node, first)
        pos = rank + first.axis
        if name in RESHAPE:
            return self.reshape(node, first)
        if name in {"permute", "transpose", "swapaxes", "swapdims", "t"}:
            return self.with_axis(
                node, first, permute_axis(name, node.args, rank, pos), "moves axes unknowably"
            )
        if name == "getitem":
            return self.with_axis(
                node,
                first,
                getitem_axis(node.args[1], self.shape(node.inputs[0]), pos),
                "indexes the channel axis",
            )
        if name in REDUCE:
            return self.with_axis(
                node, first, reduce_axis(node.args, node.kwargs, rank, pos), "reduces over channels"
            )
        if name in {"softmax", "log_softmax"}:
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
            ok = isinstance(dim, int) and dim % rank != pos
            return self.same(node, first) if ok else self.unknown(node, lays, "normalises across channels")
        if name in SPLIT_DIM_ARG:
            i = SPLIT_DIM_ARG[name]
            dim = node.kwargs.get("dim", node.args[i] if len(node.args) > i else 0)
            if not isinstance(dim, int) or dim % rank == pos:
                return self.unknown(node, lays, "splits the channel axis")
            axis = pos - (rank - 1) if name == "unbind" and dim % rank > pos else first.axis
            return [Layout(axis, first.segs)] * len(node.outputs)
        match = _POOL.match(name)
        if match:
            n = int(match.group(3))
            return (
                self.same(node, first)
                if pos < rank - n
                else self.unknown(node, lays, "pools across channels")
            )
        if name in {"interpolate", "upsample", "upsample_nearest", "upsample_bilinear"}:
            return self.same(node, first) if pos < 2 else self.unknown(node, lays, "resizes channels")
        if name == "pad" and len(node.args) > 1 and isinstance(node.args[1], (list, tuple)):
            ok = pos < rank - len(node.args[1]) // 2
            return self.same(node, first) if ok else self.unknown(node, lays, "pads the channel axis")
        if name in {"expand", "expand_as", "repeat", "broadcast_to"}:
            out = self.shape(node.outputs[0])
            ok = len(out) >= -first.axis and out[first.axis] == first.width
            return self.same(node, first) if ok else self.unknown(node, lays, "changes the channel axis")
        return self.unknown(node, lays)

    def reshape(self, node: Node, lay: Layout) -> list[Layout | None]:
        new = reshape_layout(lay, self.shape(node.inputs[0]), self.shape(node.outputs[0]))
        if new is None:
            return self.unknown(node, [lay], "reshapes the channel axis together with other axes")
        return [new] * len(node.outputs)

    def merge(self, node: Node, a: Layout, b: Layout) -> bool:
        if a.axis != b.axis or [(s.channels, s.k) for s in a.segs] != [(s.channels, s.k) for s in b.segs]:
            self.block(
                a.gids | b.gids,
                f"reaches {node.where}, which combines tensors with different channel layouts",
            )
            return False
        for sa, sb in zip(a.segs, b.segs, strict=True):
            if sa.gid is not None and sb.gid is not None:
                self.union(sa.gid, sb.gid)
            elif sa.gid is not None or sb.gid is not None:
                self.block(
                    {sa.gid if sa.gid is not None else sb.gid},  # type: ignore[arg-type]
                    f"is combined at {node.where} with channels that cannot be pruned",
                )
        return True

    def binary(self, node: Node, lays: list[Layout | None]) -> list[Layout | None]:
        carriers = [(v, lay) for v, lay in zip(node.inputs, lays, strict=True) if lay]
        first = carriers[0][1]
        divisor = {"div": 1, "rdiv": 0}.get(node.target)
        den = node.args[divisor] if divisor is not None and len(node.args) > divisor else None
        if isinstance(den, ValueRef) and self.layout.get(den.vid) is not None:
            return self.unknown(node, lays, "divides by pruned channels")
        for v, lay in zip(node.inputs, lays, strict=True):
            shape = self.shape(v)
            if lay is None and len(shape) >= -first.axis and shape[first.axis] != 1:
                origin = self.trace.values[v].origin
                what = f" ({origin})" if origin and origin != "const" else ""
                return self.unknown(
                    node, lays, f"combines them with a per-channel tensor{what} that cannot be sliced"
                )
        for _, lay in carriers[1:]:
            if not self.merge(node, first, lay):
                return [None] * len(node.outputs)
        out = self.shape(node.outputs[0])
        if len(out) < -first.axis or out[first.axis] != first.width:
            return self.unknown(node, lays, "broadcasts the channel axis")
        return self.same(node, first)

    def cat(self, node: Node, lays: list[Layout | None]) -> list[Layout | None]:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors", ())
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        if not isinstance(dim, int) or not all(isinstance(t, ValueRef) for t in tensors):
            return self.unknown(node, lays)
        items = [(t.vid, self.layout.get(t.vid)) for t in tensors]
        carriers = [lay for _, lay in items if lay]
        if not carriers:
            return [None]
        first = carriers[0]
        out_rank = len(self.shape(node.outputs[0]))
        rank = len(self.shape(items[0][0]))
        if any(lay.axis != first.axis for lay in carriers):
            return self.unknown(node, lays, "concatenates tensors with channels on different axes")
        if node.target == "cat" and dim % rank == rank + first.axis:
            segs: list[Seg] = []
            for vid, lay in items:
                segs += lay.segs if lay else [Seg(None, self.shape(vid)[dim])]
            return [Layout(first.axis, tuple(segs))]
        if len(carriers) != len(items):
            return self.unknown(
                node, lays, "concatenates pruned with unpruned tensors along a non-channel axis"
            )
        for lay in carriers[1:]:
            if not self.merge(node, first, lay):
                return [None]
        if node.target == "stack":
            pos = rank + first.axis
            d = dim % out_rank
            return [Layout((pos if pos < d else pos + 1) - out_rank, first.segs)]
        return [first]


__all__ = ["Layout", "Propagator", "Seg", "exact_type"]
