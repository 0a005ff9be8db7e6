"""Optimizers of domain ai.onnx.preview.training: Adagrad, Adam, Momentum.

Variadic inputs are grouped per role: (R, T, X_1..X_n, G_1..G_n, <state_1..n>...), and outputs
follow the same grouping (X_new_1..n, <state_new_1..n>...).
"""
from __future__ import annotations

import numpy as np

from ep_core.kernel import Kernel
from ep_cpu.registry import kernel

DOMAIN = "ai.onnx.preview.training"


def _groups(tensors: tuple, n_roles: int) -> list[list[np.ndarray]]:
    if len(tensors) % n_roles:
        raise ValueError(f"expected a multiple of {n_roles} tensors, got {len(tensors)}")
    n = len(tensors) // n_roles
    return [list(tensors[k * n:(k + 1) * n]) for k in range(n_roles)]


def _scalar(x) -> float:
    return float(np.asarray(x).reshape(-1)[0])


@kernel("Adagrad", domain=DOMAIN)
class Adagrad(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.norm = float(self.attr("norm_coefficient", 0.0))
        self.decay = float(self.attr("decay_factor", 0.0))
        self.eps = float(self.attr("epsilon", 1e-6))

    def compute(self, r, t, *tensors):
        xs, gs, hs = _groups(tensors, 3)
        rate = _scalar(r) / (1 + _scalar(t) * self.decay)
        new_x, new_h = [], []
        for x, g, h in zip(xs, gs, hs):
            dt = x.dtype.type
            g_reg = dt(self.norm) * x + g
            h_new = h + g_reg * g_reg
            new_h.append(h_new.astype(h.dtype))
            new_x.append((x - dt(rate) * g_reg / (np.sqrt(h_new) + dt(self.eps))).astype(x.dtype))
        return tuple(new_x + new_h)


@kernel("Adam", domain=DOMAIN)
class Adam(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.alpha = float(self.attr("alpha", 0.9))
        self.beta = float(self.attr("beta", 0.999))
        self.eps = float(self.attr("epsilon", 1e-6))
        self.norm = float(self.attr("norm_coefficient", 0.0))
        self.norm_post = float(self.attr("norm_coefficient_post", 0.0))

    def compute(self, r, t, *tensors):
        xs, gs, vs, hs = _groups(tensors, 4)
        rate, step = _scalar(r), _scalar(t)
        if step > 0:
            rate = rate * np.sqrt(1 - self.beta ** step) / (1 - self.alpha ** step)
        new_x, new_v, new_h = [], [], []
        for x, g, v, h in zip(xs, gs, vs, hs):
            dt = x.dtype.type
            g_reg = dt(self.norm) * x + g
            v_new = dt(self.alpha) * v + dt(1 - self.alpha) * g_reg
            h_new = dt(self.beta) * h + dt(1 - self.beta) * g_reg * g_reg
            x_new = x - dt(rate) * v_new / (np.sqrt(h_new) + dt(self.eps))
            new_x.append((dt(1 - self.norm_post) * x_new).astype(x.dtype))
            new_v.append(v_new.astype(v.dtype))
            new_h.append(h_new.astype(h.dtype))
        return tuple(new_x + new_v + new_h)


@kernel("Momentum", domain=DOMAIN)
class Momentum(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.alpha = float(self.attr("alpha"))
        self.beta = float(self.attr("beta"))
        self.norm = float(self.attr("norm_coefficient"))
        self.nesterov = self.attr("mode", "standard") == "nesterov"

    def compute(self, r, t, *tensors):
        xs, gs, vs = _groups(tensors, 3)
        rate = _scalar(r)
        beta = self.beta if _scalar(t) > 0 else 1.0
        new_x, new_v = [], []
        for x, g, v in zip(xs, gs, vs):
            dt = x.dtype.type
            g_reg = dt(self.norm) * x + g
            v_new = dt(self.alpha) * v + dt(beta) * g_reg
            if self.nesterov:
                x_new = x - dt(rate) * (g_reg + dt(self.alpha) * v_new)
            else:
                x_new = x - dt(rate) * v_new
            new_x.append(x_new.astype(x.dtype))
            new_v.append(v_new.astype(v.dtype))
        return tuple(new_x + new_v)
