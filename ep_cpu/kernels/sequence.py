"""Sequence and Optional ops. Sequences are Python lists of arrays; an empty optional is None.

Kernels returning a sequence/optional wrap it in a 1-tuple so a list is never mistaken for the
output list of a multi-output op.
"""
from __future__ import annotations

import numpy as np

from ep_core.kernel import Kernel
from ep_cpu.registry import kernel


def _position(pos, length: int, allow_end: bool) -> int:
    """Normalise a (possibly negative) position; insert positions may equal `length`."""
    p = int(np.asarray(pos).reshape(-1)[0])
    hi = length if allow_end else length - 1
    if p < -length or p > hi:
        raise IndexError(f"sequence position {p} out of range for length {length}")
    return p + length if p < 0 else p


@kernel("SequenceEmpty")
class SequenceEmpty(Kernel):
    def compute(self):
        return ([],)


@kernel("SequenceConstruct")
class SequenceConstruct(Kernel):
    def compute(self, *tensors):
        return ([np.asarray(t) for t in tensors],)


@kernel("SequenceInsert")
class SequenceInsert(Kernel):
    def compute(self, seq, tensor, position=None):
        out = list(seq)  # never mutate the input sequence: other consumers may still read it
        if position is None:
            out.append(tensor)
        else:
            out.insert(_position(position, len(seq), allow_end=True), tensor)
        return (out,)


@kernel("SequenceAt")
class SequenceAt(Kernel):
    def compute(self, seq, position):
        return seq[_position(position, len(seq), allow_end=False)]


@kernel("SequenceErase")
class SequenceErase(Kernel):
    def compute(self, seq, position=None):
        out = list(seq)
        if not out:
            raise IndexError("SequenceErase on an empty sequence")
        idx = len(out) - 1 if position is None else _position(position, len(out), allow_end=False)
        del out[idx]
        return (out,)


@kernel("SequenceLength")
class SequenceLength(Kernel):
    def compute(self, seq):
        return np.array(len(seq), dtype=np.int64)


@kernel("SequenceMap")
class SequenceMap(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.run = ctx.subgraph_runner("body")

    def compute(self, *inputs):
        n = len(self.node.inputs)
        own = inputs[:n]
        outer = dict(zip(self.node.implicit_inputs, inputs[n:]))
        count = len(own[0])
        for x in own[1:]:
            if isinstance(x, list) and len(x) != count:
                raise ValueError(f"SequenceMap: sequence inputs have lengths {count} and {len(x)}")
        n_out = len(self.node.outputs)
        results: list[list] = [[] for _ in range(n_out)]
        for i in range(count):
            feeds = [x[i] if isinstance(x, list) else x for x in own]
            outs = self.run(feeds, outer)
            for j in range(n_out):
                results[j].append(outs[j])
        return tuple(results)


@kernel("SplitToSequence")
class SplitToSequence(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = int(self.attr("axis", 0))
        self.keepdims = int(self.attr("keepdims", 1))

    def compute(self, x, split=None):
        axis = self.axis + x.ndim if self.axis < 0 else self.axis
        dim = x.shape[axis]
        if split is None:
            # Default: chunks of 1; keepdims=0 squeezes the split axis away.
            parts = [np.take(x, [i], axis=axis) for i in range(dim)]
            if not self.keepdims:
                parts = [np.squeeze(p, axis=axis) for p in parts]
            return (parts,)
        split = np.asarray(split).astype(np.int64)
        if split.ndim == 0:
            step = int(split)
            if step <= 0:
                raise ValueError("SplitToSequence: split must be positive")
            sizes = [step] * (dim // step) + ([dim % step] if dim % step else [])
        else:
            sizes = [int(s) for s in split]
            if sum(sizes) != dim:
                raise ValueError(f"SplitToSequence: split sums to {sum(sizes)}, axis has {dim}")
        bounds = np.cumsum([0] + sizes)
        idx = [slice(None)] * x.ndim
        parts = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            idx[axis] = slice(int(a), int(b))
            parts.append(np.array(x[tuple(idx)]))
        return (parts,)


@kernel("ConcatFromSequence")
class ConcatFromSequence(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = int(self.attr("axis"))
        self.new_axis = int(self.attr("new_axis", 0))

    def compute(self, seq):
        if not seq:
            raise ValueError("ConcatFromSequence: empty sequence")
        rank = np.ndim(seq[0]) + (1 if self.new_axis else 0)
        axis = self.axis + rank if self.axis < 0 else self.axis
        if self.new_axis:
            return np.stack(seq, axis=axis)
        return np.concatenate(seq, axis=axis)


@kernel("Optional")
class Optional(Kernel):
    def compute(self, x=None):
        return (x,)


@kernel("OptionalGetElement")
class OptionalGetElement(Kernel):
    def compute(self, x=None):
        if x is None:
            raise ValueError("OptionalGetElement: the optional is empty")
        return (x,)


@kernel("OptionalHasElement")
class OptionalHasElement(Kernel):
    def compute(self, x=None):
        return np.array(x is not None, dtype=np.bool_)
