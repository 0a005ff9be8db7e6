"""onnxruntime's Tokenizer contrib op (`com.microsoft`).

Regular expressions are RE2's in onnxruntime and Python's `re` here; they agree on the usual
separators and token patterns (classes, alternation, greedy repetition), not on RE2-only or
Python-only syntax.
"""
from __future__ import annotations

import re

import numpy as np

from ep_core.errors import InvalidArgument
from ep_core.kernel import Kernel
from ep_cpu.registry import kernel

from .contrib_common import MS, required
from .string import _as_str

START, END = "\x02", "\x03"


@kernel("Tokenizer", domain=MS)
class Tokenizer(Kernel):
    """Splits each string of X ([C] or [N, C]) into tokens along a new last axis: at `separators`
    (regexes; empty tokens dropped) or as the matches of `tokenexp`; [""] / "." mean one token per
    character. Tokens shorter than `mincharnum` are dropped; `mark` wraps each row's tokens in
    \\x02 ... \\x03; rows are padded with `pad_value` to the longest. When no string yields a
    token the last axis is empty."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.mark = bool(required(self, "mark"))
        self.pad = _as_str(required(self, "pad_value"))
        self.min_chars = int(required(self, "mincharnum"))
        seps = [_as_str(s) for s in (self.attr("separators") or [])]
        exp = self.attr("tokenexp")
        exp = None if exp is None else _as_str(exp)
        if (exp is None) == (not seps):
            raise InvalidArgument(f"{node.describe()}: exactly one of separators and tokenexp must be set")
        self.chars = seps == [""] or exp == "."
        try:
            if self.chars:
                self.regex = None
            elif exp is not None:
                self.regex, self.split = re.compile(exp), False
            else:
                self.regex, self.split = re.compile("|".join(f"(?:{s})" for s in seps)), True
        except re.error as e:
            raise InvalidArgument(f"{node.describe()}: bad regular expression: {e}") from None

    def tokens(self, text: str) -> list[str]:
        if self.chars:
            found = list(text)
        elif self.split:
            found = [t for t in self.regex.split(text) if t]
        else:
            found = [m.group(0) for m in self.regex.finditer(text) if m.group(0)]
        return [t for t in found if len(t) >= self.min_chars]

    def compute(self, x):
        if x.ndim not in (1, 2):
            raise InvalidArgument(f"{self.node.describe()}: input must be [C] or [N, C], got {x.shape}")
        rows = [self.tokens(_as_str(v)) for v in x.reshape(-1)]
        width = max((len(r) for r in rows), default=0)
        if width:
            width += 2 * self.mark
        self.ctx.check_output_size(self.node, x.shape + (width,), object)
        out = np.full((len(rows), width), self.pad, dtype=object)
        if width:
            for i, r in enumerate(rows):
                r = [START] + r + [END] if self.mark else r
                out[i, :len(r)] = r
        return out.reshape(x.shape + (width,))
