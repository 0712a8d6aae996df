"""Record one real forward pass as a graph of module calls and torch functions.

Unlike ``torch.fx`` symbolic tracing, the recorder runs the model on real inputs, so Python
control flow that depends on data is fine: the path actually taken is what gets recorded.

* Leaf modules (convolutions, linears, norms, activations, pooling, ...) are recorded as one
  node per call, named by their qualified name; the torch calls inside them are not recorded.
* Every other torch function or tensor method (``+``, ``cat``, ``view``, ``F.relu``, ...) is
  recorded through a :class:`~torch.overrides.TorchFunctionMode`, with its non-tensor
  arguments (``dim`` of ``cat``, target shapes, ...).

Tensors are identified by object identity, with a fresh version after every in-place change
(``x += y``, ``nn.ReLU(inplace=True)``), so each recorded value is written once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_unflatten

# Parameter-free activations applied to every element alone: a channel stays a channel.
ELEMENTWISE_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Softplus,
)

# Modules recorded as a single node. Anything else is looked into.
LEAF_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.Bilinear,
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.Embedding,
    nn.EmbeddingBag,
    nn.MultiheadAttention,
    nn.RNNBase,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.dropout._DropoutNd,
    nn.Flatten,
    nn.Unflatten,
    nn.Identity,
    nn.Upsample,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.Softmax,
    nn.LogSoftmax,
    nn.PReLU,
    *ELEMENTWISE_ACTIVATIONS,
)

_METADATA = frozenset(
    {
        "size",
        "dim",
        "numel",
        "nelement",
        "stride",
        "is_contiguous",
        "element_size",
        "data_ptr",
        "__len__",
        "__get__",
        "__format__",
        "__repr__",
        "__hash__",
        "get_device",
        "is_floating_point",
        "is_complex",
        "storage_offset",
        "untyped_storage",
        "_set_grad_enabled",
        "has_names",
        "__reduce_ex__",
        "__setstate__",
        "__deepcopy__",
    }
)


@dataclass
class Node:
    """One recorded call.

    Attributes:
        index: Position in execution order.
        kind: ``"module"`` for a leaf-module call, ``"op"`` for a torch function or method.
        target: Qualified module name (modules) or canonical function name (ops).
        inputs: Value ids of the tensor arguments, in argument order.
        outputs: Value ids of the tensor results (for in-place ops, the new version).
        args: The positional arguments with tensors replaced by :class:`ValueRef`.
        kwargs: Keyword arguments, likewise.
        module: The module object for module nodes.
        scope: Qualified name of the innermost module running when an op was called.
        func_name: The raw ``__name__`` of the function, for messages.
    """

    index: int
    kind: str
    target: str
    inputs: list[int]
    outputs: list[int]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    module: nn.Module | None = None
    scope: str = ""
    func_name: str = ""

    @property
    def where(self) -> str:
        """Human-readable location, e.g. ``"op 'view' in 'blocks.0.attn'"``."""
        if self.kind == "module":
            return f"layer '{self.target}' ({type(self.module).__name__})"
        scope = f" in '{self.scope}'" if self.scope else " in the top-level forward"
        return f"op '{self.func_name}'{scope}"


@dataclass(frozen=True)
class ValueRef:
    """Placeholder for a tensor argument inside :attr:`Node.args`."""

    vid: int


@dataclass
class Value:
    """One tensor version. ``producer`` is a node index, or -1 for model inputs and constants."""

    vid: int
    shape: tuple[int, ...]
    producer: int
    # "input", "param:<name>", "buffer:<name>", "const" (made outside the forward), or "untracked":
    # shares memory with a recorded tensor but came from a call the recorder could not see.
    origin: str = ""


@dataclass
class Trace:
    """The recorded graph: nodes in execution order, values, and the model's inputs and outputs."""

    nodes: list[Node]
    values: dict[int, Value]
    inputs: list[int]
    outputs: list[int]
    call_counts: dict[str, int]
    module_names: dict[int, str]


def canonical_name(func: Any) -> str:
    """Map a torch callable to a canonical op name: ``__iadd__``/``add_``/``__radd__`` → ``add``.

    Reflected non-commutative ops keep their ``r`` prefix (``rsub``, ``rdiv``).
    """
    name = getattr(func, "__name__", str(func))
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if name.startswith("i") and name[1:] in {"add", "sub", "mul", "truediv", "div", "and", "or"}:
            name = name[1:]
        if name.startswith("r") and name[1:] in {"add", "mul"}:
            name = name[1:]
    if name.endswith("_") and not name.startswith("_"):
        name = name[:-1]
    return {"truediv": "div", "rtruediv": "rdiv", "concat": "cat", "concatenate": "cat"}.get(name, name)


class _Recorder(TorchFunctionMode):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.nodes: list[Node] = []
        self.values: dict[int, Value] = {}
        self.by_obj: dict[int, int] = {}
        self.keep: list[torch.Tensor] = []  # keeps ids unique while recording
        self.leaf_depth = 0
        self.scope: list[str] = []
        self.call_counts: dict[str, int] = {}
        self.names = {id(m): n for n, m in model.named_modules()}
        self.tensor_names: dict[int, str] = {}
        for n, p in model.named_parameters():
            self.tensor_names[id(p)] = f"param:{n}"
        for n, b in model.named_buffers():
            self.tensor_names[id(b)] = f"buffer:{n}"
        self.pending: list[tuple[list[int], tuple, dict]] = []
        self.views: dict[tuple, int] = {}  # (storage, offset, shape, stride) -> latest vid
        self.storages: set[int] = set()

    # ----------------------------------------------------------------- values
    @staticmethod
    def _view_key(t: torch.Tensor) -> tuple:
        try:
            return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        except (RuntimeError, NotImplementedError):  # tensors without storage
            return (id(t),)

    def value_of(self, t: torch.Tensor) -> int:
        vid = self.by_obj.get(id(t))
        if vid is not None:
            return vid
        origin = self.tensor_names.get(id(t))
        if origin is None:
            key = self._view_key(t)
            if key in self.views:  # e.g. ``x.data``: another Python object for a recorded tensor
                return self.views[key]
            origin = "untracked" if key[0] in self.storages else "const"
        return self.new_value(t, -1, origin)

    def new_value(self, t: torch.Tensor, producer: int, origin: str = "") -> int:
        vid = len(self.values)
        self.values[vid] = Value(vid, tuple(t.shape), producer, origin)
        self.by_obj[id(t)] = vid
        self.keep.append(t)
        if producer >= 0 or origin == "input":
            key = self._view_key(t)
            self.views[key] = vid
            self.storages.add(key[0])
        return vid

    def encode(self, obj: Any, inputs: list[int]) -> Any:
        """Replace tensors by :class:`ValueRef`, collecting their ids in ``inputs``."""
        if isinstance(obj, torch.Tensor):
            vid = self.value_of(obj)
            inputs.append(vid)
            return ValueRef(vid)
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.encode(o, inputs) for o in obj) if not hasattr(obj, "_fields") else obj
        if isinstance(obj, dict):
            return {k: self.encode(v, inputs) for k, v in obj.items()}
        return obj

    def add_node(
        self,
        kind: str,
        target: str,
        func_name: str,
        inputs: list[int],
        out: Any,
        args: tuple,
        kwargs: dict,
        module: nn.Module | None = None,
    ) -> None:
        index = len(self.nodes)
        outs = [self.new_value(t, index) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        scope = self.scope[-1] if self.scope else ""
        self.nodes.append(Node(index, kind, target, inputs, outs, args, kwargs, module, scope, func_name))

    # -------------------------------------------------------------- functions
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if self.leaf_depth > 0 or name in _METADATA:
            return func(*args, **kwargs)
        inputs: list[int] = []
        enc_args = self.encode(tuple(args), inputs)
        enc_kwargs = self.encode(dict(kwargs), inputs)
        out = func(*args, **kwargs)
        tensors = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if name == "__setitem__" and isinstance(args[0], torch.Tensor):
            tensors, out = [args[0]], args[0]
        if tensors or inputs:
            self.add_node("op", canonical_name(func), name, inputs, out, enc_args, enc_kwargs)
        return out

    # ---------------------------------------------------------------- modules
    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        name = self.names.get(id(module), "?")
        if isinstance(module, LEAF_TYPES):
            if self.leaf_depth == 0:
                self.call_counts[name] = self.call_counts.get(name, 0) + 1
                inputs: list[int] = []
                enc = (self.encode(tuple(args), inputs), self.encode(dict(kwargs), inputs))
                self.pending.append((inputs, *enc))
            self.leaf_depth += 1
        else:
            self.scope.append(name)

    def post_hook(self, module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        name = self.names.get(id(module), "?")
        if isinstance(module, LEAF_TYPES):
            self.leaf_depth -= 1
            if self.leaf_depth == 0:
                inputs, enc_args, enc_kwargs = self.pending.pop()
                self.add_node(
                    "module", name, type(module).__name__, inputs, out, enc_args, enc_kwargs, module
                )
        elif self.scope:
            self.scope.pop()


@contextlib.contextmanager
def _mode_no_grad(model: nn.Module, train: bool) -> Iterator[None]:
    """Eval (or train) mode without gradients; flags, buffers and the RNG are restored afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    # BatchNorm statistics move in train mode: keep each buffer object and its value.
    saved = (
        [(m, name, b, b.clone()) for m in model.modules() for name, b in m._buffers.items() if b is not None]
        if train
        else []
    )
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    model.train(train)
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            # Dropout and stochastic depth draw the same masks every time.
            torch.default_generator.manual_seed(0)
            for d in devices:
                torch.cuda.default_generators[d].manual_seed(0)
            yield
    finally:
        for m, flag in flags:
            m.training = flag
        with torch.no_grad():
            for m, name, b, value in saved:
                m._buffers[name] = b  # in case the forward assigned a new tensor
                b.copy_(value)


def repeat_batch(inputs: tuple) -> tuple | None:
    """``inputs`` with a batch of two (each tensor repeated along dim 0), if every tensor has a batch of one.

    A train-mode forward on a batch of one fails wherever BatchNorm sees a single value per channel
    (a 1x1 map, e.g. an auxiliary classifier); the repeated batch runs.

    Example:
        >>> [t.shape for t in repeat_batch((torch.zeros(1, 3, 4, 4),))]
        [torch.Size([2, 3, 4, 4])]
    """
    flat, spec = tree_flatten(tuple(inputs))
    tensors = [t for t in flat if isinstance(t, torch.Tensor)]
    if not tensors or any(t.dim() == 0 or t.shape[0] != 1 for t in tensors):
        return None
    return tree_unflatten([torch.cat([t, t]) if isinstance(t, torch.Tensor) else t for t in flat], spec)


def trace_model(model: nn.Module, example_inputs: tuple | torch.Tensor, train: bool = False) -> Trace:
    """Run ``model(*example_inputs)`` once in eval mode (or train mode) and record what ran.

    The model's parameters, buffers and training flags are left as they were: the forward runs
    under ``torch.no_grad()`` in eval mode (so BatchNorm statistics do not move), and each
    module's ``training`` flag is restored afterwards. With ``train=True`` the forward runs in
    train mode (auxiliary heads, stochastic depth, ...) with a fixed seed for dropout; the
    buffers (BatchNorm statistics) and the global RNG are restored afterwards.

    Args:
        model: The model to record.
        example_inputs: A tensor or a tuple of positional inputs.
        train: Record the train-mode forward instead of the eval-mode one.

    Returns:
        The recorded :class:`Trace`.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 2))
        >>> trace = trace_model(net, torch.randn(1, 3, 5, 5))
        >>> [n.target for n in trace.nodes]
        ['0', '1', '2', '3']
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    rec = _Recorder(model)
    inputs = [
        rec.new_value(t, -1, "input")
        for t in tree_flatten(tuple(example_inputs))[0]
        if isinstance(t, torch.Tensor)
    ]
    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(rec.pre_hook, with_kwargs=True))
        handles.append(m.register_forward_hook(rec.post_hook, with_kwargs=True, always_call=True))
    try:
        with _mode_no_grad(model, train), rec:
            out = model(*example_inputs)
    finally:
        for h in handles:
            h.remove()
    outputs = [rec.value_of(t) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    return Trace(rec.nodes, rec.values, inputs, outputs, rec.call_counts, rec.names)


__all__ = [
    "LEAF_TYPES",
    "Node",
    "Trace",
    "Value",
    "ValueRef",
    "canonical_name",
    "repeat_batch",
    "trace_model",
]
