"""ai.onnx.ml tree ensembles: TreeEnsemble (opset 5 encoding), TreeEnsembleRegressor and
TreeEnsembleClassifier (legacy encoding). Both encodings are converted at build time into one
flat node table that is walked for all rows and trees at once."""
from __future__ import annotations

import numpy as np

from ep_core.kernel import Kernel
from ep_cpu import tree_jit
from ep_cpu.gemm import _get_pool, get_num_threads
from ep_cpu.registry import kernel

from .ml_linear import POST_TRANSFORMS, _label_array, binary_scores, pick_labels, post_transform

ML = "ai.onnx.ml"
LEQ, LT, GTE, GT, EQ, NEQ, MEMBER, LEAF = range(8)
_LEGACY_MODES = {"BRANCH_LEQ": LEQ, "BRANCH_LT": LT, "BRANCH_GTE": GTE, "BRANCH_GT": GT,
                 "BRANCH_EQ": EQ, "BRANCH_NEQ": NEQ, "BRANCH_MEMBER": MEMBER, "LEAF": LEAF}
AGGREGATES = ("AVERAGE", "SUM", "MIN", "MAX")
# Batches of at least this many (row, tree) walks take the compiled walk (`ep_cpu.tree_jit`);
# smaller ones stay in numpy, so a tiny ensemble never imports numba.
JIT_MIN_VISITS = 256


class Forest:
    """Flat node table: per node a feature, threshold, mode, children, NaN direction; leaves carry
    (target, weight) pairs."""

    def __init__(self, feature, threshold, mode, true_idx, false_idx, missing_true, roots,
                 leaf_node, leaf_target, leaf_weight, n_targets, member_sets=None,
                 threshold_dtype=np.float32):
        self.feature = np.asarray(feature, dtype=np.int64)
        self.threshold = np.asarray(threshold, dtype=np.float64)
        self.mode = np.asarray(mode, dtype=np.int64)
        self.true_idx = np.asarray(true_idx, dtype=np.int64)
        self.false_idx = np.asarray(false_idx, dtype=np.int64)
        self.missing_true = np.asarray(missing_true, dtype=bool)
        self.roots = np.asarray(roots, dtype=np.int64)
        self.member_sets = member_sets or {}
        self.threshold_dtype = np.dtype(threshold_dtype)
        self.n_targets = int(n_targets)
        n = len(self.mode)
        node = np.asarray(leaf_node, dtype=np.int64)
        target = np.asarray(leaf_target, dtype=np.int64)
        weight = np.asarray(leaf_weight, dtype=np.float64)
        # Dense per-node tables: summed weights, and min/max weights (+-inf where absent).
        self.sum_w = np.zeros((n, self.n_targets))
        np.add.at(self.sum_w, (node, target), weight)
        self.min_w = np.full((n, self.n_targets), np.inf)
        np.minimum.at(self.min_w, (node, target), weight)
        self.max_w = np.full((n, self.n_targets), -np.inf)
        np.maximum.at(self.max_w, (node, target), weight)
        self.has_w = np.zeros((n, self.n_targets), dtype=bool)
        self.has_w[node, target] = True
        self.sum_and_votes = np.concatenate([self.sum_w, self.has_w], axis=1)
        self._prepare_walk()

    def _prepare_walk(self) -> None:
        """Tables for the fast walk, used when every branch compares with one of <=, <, >=, >
        (what converters of sklearn, xgboost and lightgbm emit): leaves loop to themselves, so
        `depth` steps of gather-compare-gather take every row to its leaf with no masking."""
        branch = self.mode != LEAF
        modes = set(self.mode[branch].tolist())
        self.uniform_op = None
        self.compiled_walk = None   # its tables for `tree_jit` (made by the first large batch)
        if len(modes) > 1 or modes - {LEQ, LT, GTE, GT}:
            return
        n = len(self.mode)
        idx = np.arange(n)
        child = np.stack([np.where(branch, self.false_idx, idx), np.where(branch, self.true_idx, idx)], 1)
        # Depth: longest chain of branches from any root (a cycle would never settle: no fast walk).
        depth, frontier = 0, np.unique(self.roots)
        while frontier.size and branch[frontier].any():
            if depth > n:
                return
            frontier = np.unique(child[frontier[branch[frontier]]].ravel())
            depth += 1
        self.depth = depth
        self.child = child.ravel()                                  # [2 * node + went_true]
        self.walk_feature = np.where(branch, self.feature, 0)
        self.feature_range = (int(self.walk_feature.min()), int(self.walk_feature.max())) if n else (0, 0)
        self.walk_threshold = self.threshold.astype(self.threshold_dtype)
        self.walk_missing = self.missing_true & branch if (self.missing_true & branch).any() else None
        self.walk_roots = np.ascontiguousarray(self.roots)
        self.uniform_op = {LEQ: np.less_equal, LT: np.less, GTE: np.greater_equal,
                           GT: np.greater}[modes.pop()] if modes else np.less_equal

    def _check_features(self, nf: int) -> None:
        lo, hi = self.feature_range
        if lo < 0 or hi >= nf:   # the flat gathers would silently read a neighbouring row
            raise ValueError(f"the trees read feature {lo if lo < 0 else hi} but the input has {nf} "
                             f"features per row")

    def _walk_uniform(self, x: np.ndarray) -> np.ndarray:
        n, nf = x.shape
        self._check_features(nf)
        xflat = np.ascontiguousarray(x, dtype=self.threshold_dtype).ravel()
        rowoff = (np.arange(n) * nf)[:, None]
        idx = np.tile(self.roots, (n, 1))
        for _ in range(self.depth):
            val = xflat.take(self.walk_feature.take(idx) + rowoff)
            went_true = self.uniform_op(val, self.walk_threshold.take(idx))
            if self.walk_missing is not None:  # NaN compares False; it goes where the node says
                went_true |= np.isnan(val) & self.walk_missing.take(idx)
            idx *= 2
            idx += went_true
            idx = self.child.take(idx)
        return idx

    def leaves(self, x: np.ndarray) -> np.ndarray:
        """[N, F] features -> [N, n_trees] leaf node indices."""
        if self.uniform_op is not None and x.shape[1]:
            return self._walk_uniform(x)
        # Compare at the thresholds' precision, as ONNX Runtime does.
        xw = x.astype(self.threshold_dtype).astype(np.float64)
        n = xw.shape[0]
        idx = np.tile(self.roots, (n, 1))
        rows = np.arange(n)[:, None]
        for _ in range(len(self.mode) + 1):
            mode = self.mode[idx]
            active = mode != LEAF
            if not active.any():
                break
            val = xw[rows, self.feature[idx]]
            th = self.threshold[idx]
            with np.errstate(invalid="ignore"):
                cond = np.select([mode == LEQ, mode == LT, mode == GTE, mode == GT, mode == EQ,
                                  mode == NEQ], [val <= th, val < th, val >= th, val > th,
                                                 val == th, val != th], False)
            for node_id in np.unique(idx[active & (mode == MEMBER)]):
                here = idx == node_id
                cond[here] = np.isin(val[here], self.member_sets.get(int(node_id), ()))
            # NaN: the node's comparison (True only for NEQ), or True where missing values
            # track the true branch (onnxruntime and the ONNX reference agree on this).
            cond |= np.isnan(val) & self.missing_true[idx]
            nxt = np.where(cond, self.true_idx[idx], self.false_idx[idx])
            idx = np.where(active, nxt, idx)
        return idx

    def aggregate(self, x: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
        """([N, n_targets] aggregated leaf weights, [N, n_targets] whether any leaf voted)."""
        if (how in ("SUM", "AVERAGE") and self.uniform_op is not None and x.shape[1]
                and tree_jit.AVAILABLE and x.shape[0] * len(self.roots) >= JIT_MIN_VISITS):
            self._check_features(x.shape[1])
            k = self.n_targets
            if self.compiled_walk is None:
                self.compiled_walk = tree_jit.Walk(
                    self.walk_roots, self.walk_feature, self.walk_threshold, self.child,
                    self.walk_missing, tree_jit.OPS[self.uniform_op], self.depth,
                    self.sum_and_votes, self.threshold_dtype)
            tot = self.compiled_walk.walk_sum(x, get_num_threads(), _get_pool)
            out, hit = tot[:, :k], tot[:, k:] > 0
            if how == "AVERAGE":
                out = out / max(len(self.roots), 1)
            return out, hit
        leaves = self.leaves(x)
        if how in ("SUM", "AVERAGE"):
            # One gather and one reduction give both the sums and the vote counts.
            k = self.n_targets
            tot = self.sum_and_votes.take(leaves.T, axis=0).sum(axis=0)  # trees outermost: fast adds
            out, hit = tot[:, :k], tot[:, k:] > 0
            if how == "AVERAGE":
                out = out / max(len(self.roots), 1)
            return out, hit
        hit = self.has_w.take(leaves, axis=0).any(axis=1)
        if leaves.shape[1]:
            table = self.min_w if how == "MIN" else self.max_w
            red = np.min if how == "MIN" else np.max
            out = np.where(hit, red(table[leaves], axis=1), 0.0)
        else:
            out = np.zeros((len(x), self.n_targets))
        return out, hit


def _rows(x) -> np.ndarray:
    x = np.asarray(x)
    return x.reshape(1, -1) if x.ndim == 1 else x.reshape(x.shape[0], -1)


def _tensor_or_list(k: Kernel, name: str, default=None):
    """Attribute `name`, preferring its double-precision `name_as_tensor` twin; plus its dtype."""
    t = k.attr(f"{name}_as_tensor")
    if t is not None:
        return np.asarray(t, dtype=np.float64).reshape(-1), np.float64
    v = k.attr(name)
    if v is None:
        return (None if default is None else np.asarray(default, dtype=np.float64)), np.float32
    return np.asarray(v, dtype=np.float32).astype(np.float64), np.float32


def _legacy_forest(k: Kernel, prefix: str, ids_name: str, n_targets: int) -> Forest:
    """Build a Forest from nodes_* plus {prefix}_treeids/_nodeids/{ids_name}/_weights."""
    tree_ids = [int(v) for v in k.attr("nodes_treeids")]
    node_ids = [int(v) for v in k.attr("nodes_nodeids")]
    where = {(t, n): i for i, (t, n) in enumerate(zip(tree_ids, node_ids))}
    modes = [_LEGACY_MODES[m] for m in k.attr("nodes_modes")]
    thresholds, th_dtype = _tensor_or_list(k, "nodes_values", [0.0] * len(modes))
    count = len(modes)
    missing = list(k.attr("nodes_missing_value_tracks_true", [])) or [0] * count
    true_ids = k.attr("nodes_truenodeids")
    false_ids = k.attr("nodes_falsenodeids")
    true_idx, false_idx = [], []
    for i, t in enumerate(tree_ids):
        if modes[i] == LEAF:
            true_idx.append(i)
            false_idx.append(i)
        else:
            true_idx.append(where[(t, int(true_ids[i]))])
            false_idx.append(where[(t, int(false_ids[i]))])
    roots, seen = [], set()
    for i, t in enumerate(tree_ids):  # a tree's root is its first node in attribute order
        if t not in seen:
            seen.add(t)
            roots.append(i)
    weights, _ = _tensor_or_list(k, f"{prefix}_weights", [])
    leaf_node = [where[(int(t), int(n))] for t, n in zip(k.attr(f"{prefix}_treeids", []),
                                                          k.attr(f"{prefix}_nodeids", []))]
    return Forest(k.attr("nodes_featureids"), thresholds, modes, true_idx, false_idx, missing,
                  roots, leaf_node, [int(v) for v in k.attr(ids_name, [])], weights, n_targets,
                  threshold_dtype=th_dtype)


@kernel("TreeEnsembleRegressor", domain=ML)
class TreeEnsembleRegressor(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.n_targets = int(self.attr("n_targets", 1))
        self.forest = _legacy_forest(self, "target", "target_ids", self.n_targets)
        self.how = self.attr("aggregate_function", "SUM").upper()
        self.base, _ = _tensor_or_list(self, "base_values")
        self.transform = self.attr("post_transform", "NONE")

    def compute(self, x):
        out, hit = self.forest.aggregate(_rows(x), self.how)
        if self.base is not None and self.base.size:
            out = out + self.base
        # A target no tree voted for stays 0, base value included (as in ONNX Runtime).
        out = np.where(hit, out, 0.0)
        return post_transform(out, self.transform).astype(np.float32)


@kernel("TreeEnsembleClassifier", domain=ML)
class TreeEnsembleClassifier(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        strs = self.attr("classlabels_strings")
        self.is_str = bool(strs)
        self.labels = list(strs) if strs else [int(v) for v in self.attr("classlabels_int64s", [])]
        n_classes = len(self.labels)
        self.forest = _legacy_forest(self, "class", "class_ids", n_classes)
        self.base, _ = _tensor_or_list(self, "base_values")
        self.transform = (self.attr("post_transform", "NONE") or "NONE").upper()
        class_ids = {int(v) for v in self.attr("class_ids", [])}
        # Two labels but weights for one class only: a single score decides between them.
        self.binary = len(class_ids) == 1
        w, _ = _tensor_or_list(self, "class_weights", [])
        self.all_positive = bool(w.size == 0 or w.min() >= 0)

    def _two_classes(self, p: np.ndarray, hit: np.ndarray):
        """ONNX Runtime's two-label rules: label from one 'positive' score, and scores laid out
        from it when only class 0 was voted for. One deliberate difference: with votes for both
        of two int64 labels onnxruntime returns its 1/0 decision flag itself; we return the
        label the flag selects."""
        p0, p1 = p[:, 0].copy(), p[:, 1].copy()
        has0, has1 = hit[:, 0], hit[:, 1]
        base = self.base if self.base is not None else np.zeros(0)
        if base.size >= 2:
            # With class-1 votes the model reads as (-score, score) around base[1].
            q1 = np.where(has1, base[1] + p0, p1 + base[1])
            p0 = np.where(has1, -q1, p0 + base[0])
            p1 = q1
        elif base.size == 1:
            p0 = p0 + base[0]
        pos = np.where(has1, p1, np.where(has0, p0, 0.0))
        threshold = 0.5 if (self.binary and self.all_positive) else 0.0
        chosen = pick_labels(self.labels, pos > threshold, self.is_str)
        single = ~has1 & (base.size < 2)  # rows left with one score (class 0's)
        pair = np.stack([np.where(has0, p0, 0.0), np.where(has1, p1, 0.0)], axis=1)
        z = post_transform(pair, self.transform)
        if single.any():
            one = binary_scores(p0, self.transform, complement=self.all_positive or not self.binary)
            z = np.where(single[:, None], one, z)
        return chosen, z

    def compute(self, x):
        scores, hit = self.forest.aggregate(_rows(x), "SUM")
        if len(self.labels) == 2:
            chosen, z = self._two_classes(scores, hit)
            return _label_array(chosen, self.is_str), z.astype(np.float32)
        if self.base is not None and self.base.size:
            scores = scores + self.base
            hit = np.ones_like(hit)
        scores = np.where(hit, scores, 0.0)
        # The winner is the best class that got a vote.
        best = np.argmax(np.where(hit, scores, -np.inf), axis=1)
        z = post_transform(scores, self.transform)
        chosen = pick_labels(self.labels, best, self.is_str)
        return _label_array(chosen, self.is_str), z.astype(np.float32)


@kernel("TreeEnsemble", domain=ML)
class TreeEnsemble(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        splits = np.asarray(self.attr("nodes_splits"))
        n_int = splits.size
        modes = np.asarray(self.attr("nodes_modes"), dtype=np.int64).reshape(-1)
        weights = np.asarray(self.attr("leaf_weights"))
        n_leaf = weights.size
        true_leaf = np.asarray(self.attr("nodes_trueleafs"), dtype=bool)
        false_leaf = np.asarray(self.attr("nodes_falseleafs"), dtype=bool)
        # Leaf ids index leaf_*; shift them past the interior nodes in the merged table.
        true_idx = np.asarray(self.attr("nodes_truenodeids"), dtype=np.int64) + np.where(true_leaf, n_int, 0)
        false_idx = (np.asarray(self.attr("nodes_falsenodeids"), dtype=np.int64)
                     + np.where(false_leaf, n_int, 0))
        missing = list(self.attr("nodes_missing_value_tracks_true", [])) or [0] * n_int
        th_dtype = splits.dtype if splits.dtype in (np.float32, np.float64) else np.float32
        member_sets = {}
        members = self.attr("membership_values")
        if members is not None:
            groups, cur = [], []
            for v in np.asarray(members, dtype=np.float64).reshape(-1):
                if np.isnan(v):
                    groups.append(cur)
                    cur = []
                else:
                    cur.append(v)
            if cur:
                groups.append(cur)
            member_nodes = np.nonzero(modes == MEMBER)[0]
            for node_i, g in zip(member_nodes, groups):
                # Stored at the comparison precision so float32 inputs match exactly.
                member_sets[int(node_i)] = np.asarray(g).astype(th_dtype).astype(np.float64)
        # Leaves become extra rows of the node table (mode LEAF, children pointing to themselves).
        leaf_nodes = np.arange(n_int, n_int + n_leaf)

        def with_leaves(values, fill, dtype):
            return np.concatenate([np.asarray(values, dtype=dtype).reshape(-1), np.full(n_leaf, fill, dtype)])
        self.forest = Forest(
            with_leaves(self.attr("nodes_featureids"), 0, np.int64),
            with_leaves(splits, 0.0, np.float64),
            with_leaves(modes, LEAF, np.int64),
            np.concatenate([true_idx, leaf_nodes]), np.concatenate([false_idx, leaf_nodes]),
            with_leaves(missing, False, bool),
            self.attr("tree_roots"), leaf_nodes, self.attr("leaf_targetids"),
            weights.astype(np.float64).reshape(-1), int(self.attr("n_targets")),
            member_sets, threshold_dtype=th_dtype)
        self.how = AGGREGATES[int(self.attr("aggregate_function", 1))]
        self.transform = POST_TRANSFORMS[int(self.attr("post_transform", 0))]

    def compute(self, x):
        x = np.asarray(x)
        out, _ = self.forest.aggregate(_rows(x), self.how)
        return post_transform(out, self.transform).astype(x.dtype)
