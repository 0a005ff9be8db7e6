"""CUDA reductions, softmax family and normalizations against the CPU provider
(emulator backend everywhere with g++, GPU backend marked `cuda`)."""
import numpy as np
import pytest

from ep_cuda.testing import check, random_array

F32, F16 = np.float32, np.float16
rnd = random_array


REDUCE_FLOAT = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"]
# (shape, axes): small and long rows so both the thread and the block schedules run
CASES = [((3, 4, 5), [1]), ((3, 4, 5), [0, 2]), ((3, 4, 5), None), ((2, 300), [1]),
         ((300, 3), [0]), ((2, 3, 130), [-1]), ((4, 1, 3), [1])]


@pytest.mark.parametrize("op", REDUCE_FLOAT)
@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("case", CASES, ids=[f"{s}-{a}" for s, a in CASES])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_float(backend, op, dtype, case, keepdims):
    shape, axes = case
    lo, hi = (0.5, 1.5) if op in ("ReduceLogSum", "ReduceProd") else (-2, 2)
    x = rnd(shape, dtype, lo, hi)
    inputs = [x] if axes is None else [x, np.array(axes, np.int64)]
    check(op, inputs, {"keepdims": keepdims}, opset=18, backend=backend, noncontig=True,
          rtol=5e-2 if dtype == F16 else 1e-4, atol=5e-2 if dtype == F16 else 1e-4)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd"])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_reduce_int(backend, op, dtype):
    x = rnd((3, 70), dtype, -3, 3)
    check(op, [x, np.array([1], np.int64)], opset=18, backend=backend)
    check(op, [x, np.array([0], np.int64)], opset=18, backend=backend)


def test_reduce_legacy_axes_attr(backend):
    x = rnd((3, 4, 5))
    check("ReduceMean", [x], {"axes": [0, 2]}, opset=13, backend=backend)
    check("ReduceSum", [x], {"axes": [1], "keepdims": 0}, opset=11, backend=backend)


def test_reduce_noop_and_empty(backend):
    x = rnd((3, 4))
    check("ReduceSum", [x, np.zeros(0, np.int64)], {"noop_with_empty_axes": 1}, opset=18,
          backend=backend)
    check("ReduceSum", [x, np.zeros(0, np.int64)], opset=18, backend=backend)
    e = np.zeros((0, 4), F32)
    check("ReduceSum", [e, np.array([0], np.int64)], opset=18, backend=backend)
    check("ReduceMax", [e, np.array([1], np.int64)], opset=18, backend=backend)


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("dtype", [F32, F16, np.int32, np.int64])
@pytest.mark.parametrize("shape_axis", [((3, 4, 5), 1), ((2, 200), 1), ((200, 3), 0), ((5,), 0)])
@pytest.mark.parametrize("last", [0, 1])
def test_argmax(backend, op, dtype, shape_axis, last):
    shape, axis = shape_axis
    x = rnd(shape, dtype, -3, 3)  # small integer range: many ties
    if dtype in (F32, F16):
        x = np.round(x)
    check(op, [x], {"axis": axis, "keepdims": 1, "select_last_index": last}, backend=backend)
    check(op, [x], {"axis": axis, "keepdims": 0, "select_last_index": last}, backend=backend)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("axis", [-1, 0, 1])
@pytest.mark.parametrize("opset", [11, 13])
def test_softmax(backend, op, dtype, axis, opset):
    for shape in ((3, 4, 70), (6, 2, 10)):  # long rows (a block each) and short ones (a thread)
        x = rnd(shape, dtype, -5, 5)
        if op == "Hardmax":
            x = np.round(x)
        check(op, [x], {"axis": axis}, opset=opset, backend=backend, noncontig=True)


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("axis", [-1, 1, 0])
def test_layer_norm(backend, dtype, axis):
    x = rnd((2, 3, 40), dtype)
    norm_shape = x.shape[axis:]
    s, b = rnd(norm_shape, dtype, 0.5, 1.5, 1), rnd(norm_shape, dtype, -1, 1, 2)
    check("LayerNormalization", [x, s, b], {"axis": axis}, backend=backend, n_outputs=3)
    check("LayerNormalization", [x, s], {"axis": axis, "epsilon": 1e-3}, backend=backend)


@pytest.mark.parametrize("dtype", [F32, F16])
def test_batch_norm(backend, dtype):
    x = rnd((2, 3, 4, 5), dtype)
    p = [rnd((3,), dtype, 0.5, 1.5, k) for k in range(4)]
    check("BatchNormalization", [x] + p, {"epsilon": 1e-3}, opset=15, backend=backend)
    check("BatchNormalization", [rnd((4, 3), dtype)] + p, opset=9, backend=backend)


@pytest.mark.parametrize("dtype", [F32, F16])
def test_instance_norm(backend, dtype):
    x = rnd((2, 3, 5, 6), dtype)
    check("InstanceNormalization", [x, rnd((3,), dtype, 0.5, 1.5, 1), rnd((3,), dtype, seed=2)],
          backend=backend)


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("opset", [18, 21])
def test_group_norm(backend, dtype, opset):
    x = rnd((2, 6, 4, 3), dtype)
    n = 3 if opset == 18 else 6
    check("GroupNormalization", [x, rnd((n,), dtype, 0.5, 1.5, 1), rnd((n,), dtype, seed=2)],
          {"num_groups": 3}, opset=opset, backend=backend)


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_lrn(backend, dtype, size):
    check("LRN", [rnd((2, 6, 3, 4), dtype)], {"size": size, "alpha": 0.01, "beta": 0.6, "bias": 1.5},
          backend=backend)
