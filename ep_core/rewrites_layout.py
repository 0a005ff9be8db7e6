"""Level-3 layout rewrite: chains of convolutions into the CPU provider's channel-blocked layout.

A value in NCHWc is (N, ceil(C/16), H, W, 16): a position's 16 channels of a block side by side,
so a 1x1 conv's tile multiplies one broadcast input channel by whole vectors of output channels,
and a depthwise conv runs 16 channels a vector (onnxruntime's MLAS does the same, its level-3
`NchwcTransformer`). Converting pays only over a chain: the layout changes cost a copy each, at
the chain's edges (`ReorderInput`, `ReorderOutput`), so a connected group of convertible nodes
is converted only when it holds at least `MIN_CONVS` convolutions and `REORDERS_PER_CONV` of them
for every layout change it needs.

Convertible (float32, 4-D, static shapes, every node owned by a provider whose
`nchwc_block()` is 16 and that has the blocked kernels):
- Conv / FusedConv of one group (any window, padding and equal strides: 1x1, 3x3, a strided
  1x1 downsample) or 3x3 depthwise (one channel a group, padding 1, stride 1 or 2), constant
  weight and bias, no activation or Relu or a Clip that keeps
  0 (the padding channels must stay zero), a residual Z of the output's shape;
- Add of two blocked values of one shape, Relu, and Clip keeping 0, on blocked inputs.
"""
from __future__ import annotations

import numpy as np

from .graph import Graph, Node
from .graph_edit import MS_DOMAIN, OWN_DOMAIN, GraphEditor, tensor_type
from .options import GraphOptimizationLevel
from .rewrite import Rewrite, nodes_in_order
from .rewrites_fusion import activation_of

BLOCK = 16
MIN_CONVS = 2
REORDERS_PER_CONV = 4
# input channels padded to whole blocks at most this many times their number (a 3-channel stem
# conv would multiply 16: MobileNetV2's ran slower blocked)
MAX_PADDING = 2.0


def _clamp_keeps_zero(activation: str | None, params) -> bool:
    if activation in (None, "Relu"):
        return True
    if activation == "Clip":
        lo, hi = (list(params or []) + [-np.inf, np.inf])[:2]
        return lo <= 0.0 <= hi
    return False


class NchwcLayout(Rewrite):
    name = "NchwcLayout"
    level = GraphOptimizationLevel.ORT_ENABLE_LAYOUT

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        blocks: dict = {}   # provider -> whether it takes the blocked ops (asked once a graph)
        order = [n for n in nodes_in_order(graph) if ed.alive(n)]
        kinds = {}   # node -> "conv" / "eltwise" (candidates, before grouping)
        blocked: set[str] = set()   # values candidates produce (would be blocked)
        for n in order:
            if self._owner_ok(n, blocks):
                kind = self._conv_kind(ed, n)
                if kind is not None:
                    kinds[n] = kind
                    blocked.add(n.outputs[0])
                elif self._eltwise_ok(ed, n, blocked):
                    kinds[n] = "eltwise"
                    blocked.add(n.outputs[0])
        if not kinds:
            return False
        chosen = {n for g in self._groups(kinds) if self._pays(ed, g, kinds) for n in g}
        # an element-wise node whose inputs are not all blocked once small groups are dropped
        changed = True
        while changed:
            changed = False
            out_of = {m.outputs[0] for m in chosen}
            for n in list(chosen):
                if kinds[n] == "eltwise" and not all(i in out_of for i in n.inputs[:self._data_inputs(n)]):
                    chosen.discard(n)
                    changed = True
        if not chosen:
            return False
        self._convert(ed, [n for n in order if n in chosen], kinds)
        ed.commit()
        return True

    # --- which nodes ----------------------------------------------------------------------------
    def _owner_ok(self, n: Node, blocks: dict) -> bool:
        owner = self.ctx.provider_for(n) if self.ctx.assigned is not None else None
        if owner not in blocks:
            block = getattr(owner, "nchwc_block", None)   # (a duck-typed plugin may lack it)
            blocks[owner] = block is not None and block() == BLOCK
        return blocks[owner]

    def _conv_kind(self, ed: GraphEditor, n: Node) -> str | None:
        if n.op_type == "Conv" and n.domain == "":
            act = (None, [])
        elif n.op_type == "FusedConv" and n.domain in (MS_DOMAIN, OWN_DOMAIN):
            act = (n.attr("activation"), list(n.attr("activation_params") or []))
        else:
            return None
        if not _clamp_keeps_zero(*act) or n.attr("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            return None
        xs, ws = ed.shape(n.inputs[0]), ed.shape(n.inputs[1]) if len(n.inputs) > 1 else None
        ys = ed.shape(n.outputs[0])
        if (xs is None or ws is None or ys is None or len(xs) != 4 or len(ws) != 4
                or not all(isinstance(d, int) for d in list(xs) + list(ys))
                or ed.dtype(n.inputs[0]) != np.float32 or ed.const(n.inputs[1]) is None):
            return None
        if len(n.inputs) > 2 and n.inputs[2] and ed.const(n.inputs[2]) is None:
            return None
        if len(n.inputs) > 3 and n.inputs[3] and ed.shape(n.inputs[3]) != ys:
            return None
        group = int(n.attr("group", 1))
        strides = [int(s) for s in (n.attr("strides") or [1, 1])]
        pads = [int(p) for p in (n.attr("pads") or [0, 0, 0, 0])]
        dil = [int(d) for d in (n.attr("dilations") or [1, 1])]
        ks = list(ws[2:])
        if dil != [1, 1]:
            return None
        padded = -(-xs[1] // BLOCK) * BLOCK
        if group == 1 and strides[0] == strides[1] and len(pads) == 4 and padded <= MAX_PADDING * xs[1]:
            return "conv"
        if (group == xs[1] == ws[0] and ws[1] == 1 and ks == [3, 3] and pads == [1, 1, 1, 1]
                and strides in ([1, 1], [2, 2])):
            return "depthwise"
        return None

    def _pays(self, ed: GraphEditor, group: list[Node], kinds: dict) -> bool:
        """At least MIN_CONVS convolutions, and at most one layout change (a copy of a value)
        for every REORDERS_PER_CONV of them: a ResNet bottleneck's two 1x1 convs between 3x3
        ones would need three or four."""
        convs = sum(kinds[n] != "eltwise" for n in group)
        members = set(group)
        made = {n.outputs[0] for n in group}
        ins = {i for n in group for i in n.inputs[:self._data_inputs(n) if kinds[n] == "eltwise" else 1]
               if i not in made}
        ins |= {n.inputs[3] for n in group if kinds[n] != "eltwise" and len(n.inputs) > 3
                and n.inputs[3] and n.inputs[3] not in made}
        outs = {o for o in made if ed.is_output(o) or any(c not in members for c in ed.consumers(o))}
        return convs >= MIN_CONVS and (len(ins) + len(outs)) * REORDERS_PER_CONV <= convs

    @staticmethod
    def _data_inputs(n: Node) -> int:
        return 2 if n.op_type == "Add" else 1

    def _eltwise_ok(self, ed: GraphEditor, n: Node, blocked: set[str]) -> bool:
        if n.domain or len(n.outputs) != 1:
            return False
        if n.op_type == "Add" and len(n.inputs) == 2:
            a, b = n.inputs
            return a in blocked and b in blocked and ed.shape(a) == ed.shape(b) is not None
        if n.op_type in ("Relu", "Clip") and n.inputs[0] in blocked:
            found = activation_of(ed, n)
            return found is not None and _clamp_keeps_zero(*found)
        return False

    @staticmethod
    def _groups(kinds: dict[Node, str]) -> list[list[Node]]:
        """Candidates joined by the values one produces and another reads."""
        parent = {n: n for n in kinds}

        def root(n):
            while parent[n] is not n:
                parent[n] = parent[parent[n]]
                n = parent[n]
            return n
        producer = {n.outputs[0]: n for n in kinds}
        for n in kinds:
            for i in n.inputs:
                p = producer.get(i)
                if p is not None:
                    parent[root(p)] = root(n)
        groups: dict[Node, list[Node]] = {}
        for n in kinds:
            groups.setdefault(root(n), []).append(n)
        return list(groups.values())

    # --- the rewrite ----------------------------------------------------------------------------
    def _convert(self, ed: GraphEditor, nodes: list[Node], kinds: dict) -> None:
        blocked: dict[str, str] = {}   # NCHW value -> its blocked twin
        converted = set(nodes)

        def blocked_type(name: str):
            s = ed.shape(name)
            return tensor_type(np.float32, [s[0], -(-s[1] // BLOCK), s[2], s[3], BLOCK])

        def to_blocked(value: str, before: Node) -> str:
            if value in blocked:
                return blocked[value]
            out = ed.fresh(value + "_nchwc")
            ed.set_type(out, blocked_type(value))
            node = ed.make_node("ReorderInput", [value], [out], name=ed.fresh(value + "_reorder_in"),
                                domain=OWN_DOMAIN)
            self._assign(before, node)
            ed.insert(node, before)
            blocked[value] = out
            return out

        for n in nodes:
            out = n.outputs[0]
            bout = ed.fresh(out + "_nchwc")
            ed.set_type(bout, blocked_type(out))
            if kinds[n] == "eltwise":
                k = self._data_inputs(n)
                inputs = [to_blocked(i, n) for i in n.inputs[:k]] + list(n.inputs[k:])
                new = ed.make_node(n.op_type, inputs, [bout], name=ed.fresh(n.name + "_nchwc"),
                                   attrs=dict(n.attrs))
            else:
                attrs = {"kind": kinds[n], "strides": [int(s) for s in (n.attr("strides") or [1, 1])],
                         "pads": [int(p) for p in (n.attr("pads") or [0, 0, 0, 0])]}
                if n.op_type == "FusedConv" and n.attr("activation"):
                    attrs["activation"] = n.attr("activation")
                    if n.attr("activation_params"):
                        attrs["activation_params"] = [float(p) for p in n.attr("activation_params")]
                inputs = [to_blocked(n.inputs[0], n), n.inputs[1],
                          n.inputs[2] if len(n.inputs) > 2 else ""]
                if len(n.inputs) > 3 and n.inputs[3]:
                    inputs.append(to_blocked(n.inputs[3], n))
                while inputs and not inputs[-1]:
                    inputs.pop()
                new = ed.make_node("NchwcConv", inputs, [bout], name=ed.fresh(n.name + "_nchwc"),
                                   domain=OWN_DOMAIN, attrs=attrs)
            self._assign(n, new)
            ed.insert(new, n)
            blocked[out] = bout
            # readers outside the chain (and graph outputs) get the NCHW value back
            outside = [c for c in ed.consumers(out) if c not in converted] or ed.is_output(out)
            ed.remove(n)
            if outside:
                back = ed.make_node("ReorderOutput", [bout], [out], name=ed.fresh(out + "_reorder_out"),
                                    domain=OWN_DOMAIN, attrs={"channels": int(ed.shape(out)[1])})
                self._assign(n, back)
                ed.insert(back, new)
                # (inserted before `new` in its slot; moved after it below)
                self._after(ed, back, new)

    def _assign(self, anchor: Node, node: Node) -> None:
        if not self.ctx.supports(anchor, node):
            raise RuntimeError(f"NchwcLayout: the provider of '{anchor.name}' has no kernel for "
                               f"{node.op_type}")

    @staticmethod
    def _after(ed: GraphEditor, node: Node, before: Node) -> None:
        """Move `node` right after `before` within their slot."""
        k = ed.slot_of[id(before)]
        s = ed.slots[k]
        s.remove(node)
        s.insert(s.index(before) + 1, node)
