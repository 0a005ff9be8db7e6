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
  1x1 downsample; a conv of few channels, an image's stem, reading its input in NCHW: "plain")
  or 3x3 depthwise (one channel a group, padding 1, stride 1 or 2), constant
  weight and bias, an activation that keeps 0 (the padding channels must stay zero): none,
  Relu, a Clip around 0, Silu, Tanh or Gelu; a residual Z of the output's shape;
- on blocked inputs: Add of two values of one shape, Relu, Clip keeping 0; Concat and Split on
  the channels where every part but the last is whole blocks (a YOLO C2f block's halves); MaxPool
  (no dilations, floor rounding); GlobalAveragePool; Resize of H and W only (nearest, not
  tf_crop_and_resize).
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
# A conv with fewer channels (an image's stem) reads its plain NCHW input as it is, one value
# a k step, where its window holds at most this many values (ResNet's 7x7 over 3 channels: 147)
PLAIN_MAX_WINDOW = 256
PLAIN_STRIDES = (1, 2)   # (the strides the CPU provider's plain-image tiles are compiled for)


# activations with f(0) = 0 the blocked conv applies after its clamp (Relu and Clip are clamps)
STORED_ACTIVATIONS = ("Silu", "Tanh", "Gelu")


def _keeps_zero(activation: str | None, params) -> bool:
    if activation in (None, "Relu") or activation in STORED_ACTIVATIONS:
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
        kinds = {}   # node -> "conv" / "plain" / "depthwise" / "layout" (candidates, before grouping)
        blocked: set[str] = set()   # values candidates produce (would be blocked)
        for n in order:
            if self._owner_ok(n, blocks):
                kind = self._conv_kind(ed, n)
                if kind == "plain" and n.inputs[0] in blocked:
                    kind = None   # (its input stays blocked: no plain form of it is kept)
                if kind is None and self._layout_ok(ed, n, blocked):
                    kind = "layout"
                if kind is not None:
                    kinds[n] = kind
                    blocked.update(o for o in n.outputs if o)
        if not kinds:
            return False
        chosen = {n for g in self._groups(kinds) if self._pays(ed, g, kinds) for n in g}
        # a layout node whose data inputs are not all blocked once small groups are dropped
        changed = True
        while changed:
            changed = False
            out_of = {o for m in chosen for o in m.outputs}
            for n in list(chosen):
                if kinds[n] == "layout" and not all(i in out_of for i in self._data_inputs(n)):
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
        if not _keeps_zero(*act) or n.attr("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
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
        if group == 1 and strides[0] == strides[1] and len(pads) == 4:
            if padded <= MAX_PADDING * xs[1]:
                return "conv"
            if xs[1] * ks[0] * ks[1] <= PLAIN_MAX_WINDOW and strides[0] in PLAIN_STRIDES:
                return "plain"
        if (group == xs[1] == ws[0] and ws[1] == 1 and ks == [3, 3] and pads == [1, 1, 1, 1]
                and strides in ([1, 1], [2, 2])):
            return "depthwise"
        return None

    def _pays(self, ed: GraphEditor, group: list[Node], kinds: dict) -> bool:
        """At least MIN_CONVS convolutions, and at most one layout change (a copy of a value;
        one of a 1x1 map is free) for every REORDERS_PER_CONV of them: a ResNet bottleneck's
        two 1x1 convs between 3x3 ones would need three or four."""
        convs = sum(kinds[n] != "layout" for n in group)
        members = set(group)
        made = {o for n in group for o in n.outputs if o}
        # (a plain conv reads its input as it is)
        ins = {i for n in group if kinds[n] != "plain" for i in self._data_inputs(n) if i not in made}
        ins |= {n.inputs[3] for n in group if kinds[n] != "layout" and len(n.inputs) > 3
                and n.inputs[3] and n.inputs[3] not in made}
        outs = {o for o in made if ed.is_output(o) or any(c not in members for c in ed.consumers(o))}
        # (a value of one position, a global pool's, changes layout for next to nothing)
        changes = [v for v in ins | outs if (ed.shape(v) or [0, 0, 2])[2:] != [1, 1]]
        return convs >= MIN_CONVS and len(changes) * REORDERS_PER_CONV <= convs

    @staticmethod
    def _data_inputs(n: Node) -> list[str]:
        """The inputs of a node that are blocked values (the rest are the node's constants)."""
        if n.op_type == "Concat":
            return list(n.inputs)
        if n.op_type == "Add" and n.domain == "":
            return list(n.inputs[:2])
        return list(n.inputs[:1])

    def _layout_ok(self, ed: GraphEditor, n: Node, blocked: set[str]) -> bool:
        """Whether `n` computes the same on blocked inputs (its padding channels staying zero)."""
        if n.domain or not n.inputs or not all(i in blocked for i in self._data_inputs(n)):
            return False
        shapes = [ed.shape(v) for v in list(n.inputs[:1]) + list(n.outputs)]
        if any(s is None or len(s) != 4 or not all(isinstance(d, int) for d in s) for s in shapes):
            return False
        op = n.op_type
        if op == "Add" and len(n.inputs) == 2 and len(n.outputs) == 1:
            return ed.shape(n.inputs[0]) == ed.shape(n.inputs[1])
        if op in ("Relu", "Clip") and len(n.outputs) == 1:
            found = activation_of(ed, n)
            return found is not None and _keeps_zero(*found)
        if op in ("Concat", "Split") and int(n.attr("axis", 0)) % 4 == 1:
            parts = n.inputs if op == "Concat" else n.outputs
            dims = [ed.shape(v) for v in parts]
            # every part but the last whole blocks: the padding channels stay at the end
            return (all(d is not None and len(d) == 4 for d in dims) and "" not in parts
                    and all(d[1] % BLOCK == 0 for d in dims[:-1]))
        if op == "MaxPool" and len([o for o in n.outputs if o]) == 1 and n.outputs[0]:
            return (n.attr("auto_pad", "NOTSET") in ("NOTSET", b"NOTSET") and not n.attr("ceil_mode", 0)
                    and all(int(d) == 1 for d in (n.attr("dilations") or [1, 1]))
                    and len(n.attr("kernel_shape") or []) == 2)
        if op == "GlobalAveragePool" and len(n.outputs) == 1:
            return True
        if op == "Resize" and n.since_version >= 11 and len(n.outputs) == 1:
            return self._resize_scales(ed, n) is not None
        return False

    @staticmethod
    def _resize_scales(ed: GraphEditor, n: Node) -> tuple[str, np.ndarray] | None:
        """("scales" or "sizes", the blocked value's 5 entries) of a Resize of H and W only."""
        def text(v):
            return v.decode() if isinstance(v, bytes) else v
        if (text(n.attr("mode", "nearest")) != "nearest" or n.attr("axes") is not None
                or text(n.attr("coordinate_transformation_mode", "half_pixel")) == "tf_crop_and_resize"
                or int(n.attr("antialias", 0))
                or text(n.attr("keep_aspect_ratio_policy", "stretch")) != "stretch"):
            return None
        xs, ys = ed.shape(n.inputs[0]), ed.shape(n.outputs[0])
        scales = ed.const(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] else None
        sizes = ed.const(n.inputs[3]) if len(n.inputs) > 3 and n.inputs[3] else None
        if scales is not None and np.size(scales) == 4:
            sc = np.asarray(scales, np.float32).reshape(-1)
            if sc[0] == sc[1] == 1.0:
                return "scales", np.concatenate([sc, np.ones(1, np.float32)])
        elif sizes is not None and np.size(sizes) == 4:
            sz = np.asarray(sizes, np.int64).reshape(-1)
            if list(sz[:2]) == list(xs[:2]):
                return "sizes", np.array([ys[0], -(-ys[1] // BLOCK), ys[2], ys[3], BLOCK], np.int64)
        return None

    @staticmethod
    def _groups(kinds: dict[Node, str]) -> list[list[Node]]:
        """Candidates joined by the values one produces and another reads."""
        parent = {n: n for n in kinds}

        def root(n):
            while parent[n] is not n:
                parent[n] = parent[parent[n]]
                n = parent[n]
            return n
        producer = {o: n for n in kinds for o in n.outputs if o}
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
            outs = []
            for o in n.outputs:
                bo = ed.fresh(o + "_nchwc")
                ed.set_type(bo, blocked_type(o))
                outs.append(bo)
            if kinds[n] == "layout":
                new = self._blocked_layout_node(ed, n, [to_blocked(i, n) for i in self._data_inputs(n)], outs)
            else:
                attrs = {"kind": kinds[n], "strides": [int(s) for s in (n.attr("strides") or [1, 1])],
                         "pads": [int(p) for p in (n.attr("pads") or [0, 0, 0, 0])]}
                if n.op_type == "FusedConv" and n.attr("activation"):
                    attrs["activation"] = n.attr("activation")
                    if n.attr("activation_params"):
                        attrs["activation_params"] = [float(p) for p in n.attr("activation_params")]
                x = n.inputs[0] if kinds[n] == "plain" else to_blocked(n.inputs[0], n)
                inputs = [x, n.inputs[1], n.inputs[2] if len(n.inputs) > 2 else ""]
                if len(n.inputs) > 3 and n.inputs[3]:
                    inputs.append(to_blocked(n.inputs[3], n))
                while inputs and not inputs[-1]:
                    inputs.pop()
                new = ed.make_node("NchwcConv", inputs, outs, name=ed.fresh(n.name + "_nchwc"),
                                   domain=OWN_DOMAIN, attrs=attrs)
            self._assign(n, new)
            ed.insert(new, n)
            blocked.update(zip(n.outputs, outs))
            # readers outside the chain (and graph outputs) get the NCHW values back
            backs = [(o, bo) for o, bo in zip(n.outputs, outs)
                     if [c for c in ed.consumers(o) if c not in converted] or ed.is_output(o)]
            ed.remove(n)
            last = new
            for o, bo in backs:
                back = ed.make_node("ReorderOutput", [bo], [o], name=ed.fresh(o + "_reorder_out"),
                                    domain=OWN_DOMAIN, attrs={"channels": int(ed.shape(o)[1])})
                self._assign(n, back)
                ed.insert(back, new)
                # (inserted before `new` in its slot; moved after it below)
                self._after(ed, back, last)
                last = back

    def _blocked_layout_node(self, ed: GraphEditor, n: Node, inputs: list[str], outs: list[str]) -> Node:
        """`n` on blocked inputs `inputs`, writing `outs`."""
        name = ed.fresh(n.name + "_nchwc")
        op = n.op_type
        if op in ("Add", "Relu", "Clip"):
            return ed.make_node(op, inputs + list(n.inputs[len(inputs):]), outs, name=name,
                                attrs=dict(n.attrs))
        if op == "Concat":
            return ed.make_node(op, inputs, outs, name=name, attrs={"axis": 1})
        if op == "Split":
            parts = [-(-ed.shape(o)[1] // BLOCK) for o in n.outputs]
            if n.since_version >= 13:
                split = ed.add_initializer(n.name + "_nchwc_split", np.array(parts, np.int64))
                return ed.make_node(op, inputs + [split], outs, name=name, attrs={"axis": 1})
            return ed.make_node(op, inputs, outs, name=name, attrs={"axis": 1, "split": parts})
        if op == "MaxPool":
            attrs = {"kernel_shape": [int(k) for k in n.attr("kernel_shape")],
                     "strides": [int(s) for s in (n.attr("strides") or [1, 1])],
                     "pads": [int(p) for p in (n.attr("pads") or [0, 0, 0, 0])]}
            return ed.make_node("NchwcMaxPool", inputs, outs, name=name, domain=OWN_DOMAIN, attrs=attrs)
        if op == "GlobalAveragePool":
            return ed.make_node("NchwcGlobalAveragePool", inputs, outs, name=name, domain=OWN_DOMAIN)
        if op == "Resize":
            which, values = self._resize_scales(ed, n)
            const = ed.add_initializer(n.name + "_nchwc_" + which, values)
            roi = n.inputs[1] if len(n.inputs) > 1 else ""   # (unused; Resize-11 needs one)
            extra = [roi, const] if which == "scales" else [roi, "", const]
            return ed.make_node(op, inputs + extra, outs, name=name, attrs=dict(n.attrs))
        raise AssertionError(f"NchwcLayout: no blocked form of {op}")

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
