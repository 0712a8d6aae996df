"""Pure shape arithmetic: where the channel axis goes through reshape, index, permute and reduce.

Every function returns the new channel axis as a negative index, or None when the channel axis
cannot be followed (it is indexed, reduced, split or merged with a preceding axis). None means
"not prunable", never a guess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Seg:
    """``channels`` channels of group ``gid`` (None: channels that cannot be pruned), each ``k`` wide."""

    gid: int | None
    channels: int
    k: int = 1

    @property
    def width(self) -> int:
        """Entries along the axis: ``channels * k``."""
        return self.channels * self.k


@dataclass(frozen=True)
class Layout:
    """Where the channels of a tensor are: ``axis`` (negative) and the segments along it."""

    axis: int
    segs: tuple[Seg, ...]

    @property
    def width(self) -> int:
        """Size of the channel axis."""
        return sum(s.width for s in self.segs)

    @property
    def gids(self) -> set[int]:
        """Groups present."""
        return {s.gid for s in self.segs if s.gid is not None}


def reshape_layout(lay: Layout, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Layout | None:
    """Follow the channel axis through a row-major reshape (view, flatten, unsqueeze, ...).

    Two cases are understood: the channel axis survives as one axis (only other axes merged,
    split, added or removed), or it becomes the leading part of a merged axis (flatten), so that
    each channel turns into ``k`` consecutive entries.

    Example:
        >>> lay = Layout(-3, (Seg(0, 8),))
        >>> reshape_layout(lay, (2, 8, 3, 3), (2, 72))
        Layout(axis=-1, segs=(Seg(gid=0, channels=8, k=9),))
        >>> reshape_layout(lay, (2, 8, 3, 3), (2, 4, 18)) is None
        True
    """
    pos = len(in_shape) + lay.axis
    width = in_shape[pos]
    before = math.prod(in_shape[:pos])
    if width <= 1:
        return None
    pre = 1
    for q, size in enumerate(out_shape):
        if pre == before and size != 1:
            axis = q - len(out_shape)
            if size == width:
                return Layout(axis, lay.segs)
            acc = 1
            for r in range(pos, len(in_shape)):
                acc *= in_shape[r]
                if acc == size:
                    k = size // width
                    return Layout(axis, tuple(Seg(s.gid, s.channels, s.k * k) for s in lay.segs))
                if acc > size:
                    break
            return None
        pre *= size
        if pre > before:
            break
    return None


def _full_slice(item: slice, size: int) -> bool:
    return (
        item.start in (None, 0)
        and item.step in (None, 1)
        and (item.stop is None or (isinstance(item.stop, int) and item.stop >= size))
    )


def getitem_axis(index: Any, in_shape: tuple[int, ...], pos: int) -> int | None:
    """Channel axis after ``x[index]``; None if the channel axis itself is indexed.

    Example:
        >>> getitem_axis((slice(None), 0), (2, 5, 16), 2)  # x[:, 0] of [B, T, C]
        -1
        >>> getitem_axis((slice(None), slice(0, 4)), (2, 8, 3, 3), 1) is None
        True
    """
    items = index if isinstance(index, tuple) else (index,)
    if not all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in items):
        return None
    if any(isinstance(i, bool) for i in items):
        return None
    rank = len(in_shape)
    consumed = sum(1 for i in items if isinstance(i, (int, slice)))
    in_dim = out_dim = 0
    new_pos = None
    for item in items:
        if item is None:
            out_dim += 1
        elif item is Ellipsis:
            for _ in range(rank - consumed):
                new_pos = out_dim if in_dim == pos else new_pos
                in_dim, out_dim = in_dim + 1, out_dim + 1
        elif isinstance(item, int):
            if in_dim == pos:
                return None
            in_dim += 1
        else:
            if in_dim == pos:
                if not _full_slice(item, in_shape[pos]):
                    return None
                new_pos = out_dim
            in_dim, out_dim = in_dim + 1, out_dim + 1
    while in_dim < rank:
        new_pos = out_dim if in_dim == pos else new_pos
        in_dim, out_dim = in_dim + 1, out_dim + 1
    return None if new_pos is None else new_pos - out_dim


def permute_axis(name: str, args: tuple, rank: int, pos: int) -> int | None:
    """Channel axis after ``permute``/``transpose``/``swapaxes``/``t``.

    Example:
        >>> permute_axis("transpose", (None, 1, 2), 3, 1)  # [B, C, HW] -> [B, HW, C]
        -1
    """
    try:
        if name == "permute":
            dims = args[1:] if len(args) > 2 or isinstance(args[1], int) else args[1]
            new = [d % rank for d in dims].index(pos)
        elif name == "t":
            new = 1 - pos if rank == 2 else pos
        else:
            a, b = args[1] % rank, args[2] % rank
            new = b if pos == a else a if pos == b else pos
    except (IndexError, TypeError, ValueError):
        return None
    return new - rank


def reduce_axis(args: tuple, kwargs: dict, rank: int, pos: int) -> int | None:
    """Channel axis after ``mean``/``sum``/``amax``... over ``dim``; None if channels are reduced.

    Example:
        >>> reduce_axis((None, (2, 3)), {}, 4, 1)  # x.mean((2, 3)) of NCHW
        -1
        >>> reduce_axis((None,), {}, 4, 1) is None  # x.mean()
        True
    """
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    keepdim = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
    dims = [dim] if isinstance(dim, int) else dim
    if not isinstance(dims, (list, tuple)) or not dims or not all(isinstance(d, int) for d in dims):
        return None
    if not isinstance(keepdim, bool):
        return None
    norm = {d % rank for d in dims}
    if pos in norm:
        return None
    if keepdim:
        return pos - rank
    return pos - sum(d < pos for d in norm) - (rank - len(norm))


__all__ = ["Layout", "Seg", "getitem_axis", "permute_axis", "reduce_axis", "reshape_layout"]
