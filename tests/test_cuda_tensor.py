"""CUDA data-movement and indexing kernels against the CPU provider
(emulator backend everywhere with g++, GPU backend marked `cuda`)."""
import numpy as np
import pytest

from ep_cuda.testing import check, random_array

F32, F16, I64 = np.float32, np.float16, np.int64
rnd = random_array


def i64(*v):
    return np.array(v, I64)


TRANSPOSE = [((3, 4), None), ((2, 3, 4), [0, 2, 1]), ((40, 70), [1, 0]), ((2, 3, 4, 5), [3, 1, 0, 2]),
             ((2, 33, 65), [0, 2, 1]), ((2, 3, 4), [1, 0, 2]), ((0, 3), [1, 0])]


@pytest.mark.parametrize("case", TRANSPOSE, ids=[str(c) for c in TRANSPOSE])
@pytest.mark.parametrize("dtype", [F32, F16, I64, np.bool_, np.int8])
def test_transpose(backend, case, dtype):
    shape, perm = case
    check("Transpose", [rnd(shape, dtype, 0, 50)], {} if perm is None else {"perm": perm},
          backend=backend)


def test_transpose_noncontiguous(backend):
    check("Transpose", [rnd((3, 4, 5))], {"perm": [2, 0, 1]}, backend=backend, noncontig=True)


@pytest.mark.parametrize("dtype", [F32, F16, I64])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(backend, dtype, axis):
    xs = [rnd((2, 3, 4), dtype, 0, 9, k) for k in range(3)]
    xs[1] = rnd(tuple(1 if d == axis % 3 else n for d, n in enumerate((2, 3, 4))), dtype, 0, 9, 7)
    check("Concat", xs, {"axis": axis}, backend=backend, noncontig=True)


def test_concat_empty_part(backend):
    check("Concat", [rnd((2, 3)), np.zeros((2, 0), F32), rnd((2, 1))], {"axis": 1}, backend=backend)


@pytest.mark.parametrize("dtype", [F32, I64])
def test_split(backend, dtype):
    x = rnd((6, 5), dtype, 0, 9)
    check("Split", [x, i64(1, 2, 3)], {"axis": 0}, opset=13, backend=backend, n_outputs=3)
    check("Split", [x], {"axis": 1, "num_outputs": 2}, opset=18, backend=backend, n_outputs=2)
    check("Split", [x], {"axis": 0, "split": [4, 2]}, opset=11, backend=backend, n_outputs=2)


SLICES = [  # starts, ends, axes, steps
    ([1], [3], [0], [1]), ([0, 1], [2, -1], [0, 2], [1, 2]), ([-1], [-100], [1], [-1]),
    ([4], [0], [2], [-2]), ([10], [20], [0], [1]), ([0], [2**62], [1], [3]),
]


@pytest.mark.parametrize("case", range(len(SLICES)))
@pytest.mark.parametrize("dtype", [F32, F16, I64])
def test_slice(backend, case, dtype):
    s, e, a, st = SLICES[case]
    check("Slice", [rnd((4, 5, 6), dtype, 0, 9), i64(*s), i64(*e), i64(*a), i64(*st)],
          backend=backend, noncontig=True)


def test_slice_v1(backend):
    check("Slice", [rnd((4, 5))], {"starts": [1, 0], "ends": [3, 4], "axes": [0, 1]}, opset=9,
          backend=backend)


@pytest.mark.parametrize("shape,target", [((3, 1), (2, 3, 4)), ((4,), (3, 1)), ((2, 1, 3), (1, 5, 1))])
@pytest.mark.parametrize("dtype", [F32, F16, np.bool_])
def test_expand(backend, shape, target, dtype):
    check("Expand", [rnd(shape, dtype), i64(*target)], backend=backend)


@pytest.mark.parametrize("dtype", [F32, F16, I64])
def test_tile(backend, dtype):
    check("Tile", [rnd((2, 3), dtype, 0, 9), i64(2, 3)], backend=backend, noncontig=True)
    check("Tile", [rnd((2, 1, 3), dtype, 0, 9), i64(1, 4, 0)], backend=backend)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
@pytest.mark.parametrize("dtype", [F32, F16, I64])
def test_pad(backend, mode, dtype):
    x = rnd((3, 4, 5), dtype, 0, 9)
    pads = i64(0, 2, 3, 1, 1, 2)
    ins = [x, pads] + ([np.array(7, dtype)] if mode == "constant" else [])
    check("Pad", ins, {"mode": mode}, opset=19, backend=backend, noncontig=True)
    check("Pad", [x, i64(1, -1, 0, 2)] + ([np.array(1, dtype)] if mode == "constant" else [None]) +
          [i64(0, 2)], {"mode": mode}, opset=19, backend=backend)


def test_pad_reflect_wide(backend):
    check("Pad", [rnd((1, 3)), i64(0, 5, 0, 4)], {"mode": "reflect"}, opset=18, backend=backend)
    check("Pad", [rnd((2, 3)), i64(0, 7, 0, 8)], {"mode": "wrap"}, opset=19, backend=backend)


def test_pad_v2(backend):
    check("Pad", [rnd((2, 3))], {"pads": [1, 0, 0, 2], "value": 1.5}, opset=2, backend=backend)


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("dtype", [F32, F16, I64, np.bool_])
@pytest.mark.parametrize("itype", [np.int32, I64])
def test_gather(backend, axis, dtype, itype):
    x = rnd((4, 5, 6), dtype, 0, 9)
    n = x.shape[axis]
    idx = np.array([[0, n - 1], [-1, 1], [2, -n]], itype)
    check("Gather", [x, idx], {"axis": axis}, backend=backend, noncontig=True)
    check("Gather", [x, np.array(-2, itype)], {"axis": axis}, backend=backend)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("itype", [np.int32, I64])
def test_gather_elements(backend, axis, itype):
    x = rnd((3, 4, 5))
    shape = [2 if d == axis else n for d, n in enumerate(x.shape)]
    idx = np.random.default_rng(1).integers(-x.shape[axis], x.shape[axis], shape).astype(itype)
    check("GatherElements", [x, idx], {"axis": axis}, backend=backend)


@pytest.mark.parametrize("batch_dims", [0, 1])
@pytest.mark.parametrize("dtype", [F32, I64])
def test_gather_nd(backend, batch_dims, dtype):
    x = rnd((2, 3, 4, 5), dtype, 0, 9)
    if batch_dims == 0:
        idx = np.array([[[0, 1], [1, -1]], [[1, 2], [0, 0]]], I64)
    else:
        idx = np.array([[[1, 2], [0, -1]], [[2, 3], [1, 0]]], I64)
    check("GatherND", [x, idx], {"batch_dims": batch_dims}, backend=backend)
    check("GatherND", [x, idx[..., :1]], {"batch_dims": batch_dims}, backend=backend)


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
@pytest.mark.parametrize("dtype", [F32, F16, np.int32, I64])
def test_scatter_elements(backend, reduction, dtype):
    x = rnd((4, 5), dtype, 1, 3)
    idx = np.array([[0, 1, 2], [3, 0, 1]], I64)
    if reduction != "none":
        idx = np.array([[0, 0, 2], [0, 0, 1]], I64)  # duplicates exercise the atomics
    upd = rnd((2, 3), dtype, 1, 3, 1)
    check("ScatterElements", [x, idx, upd], {"axis": 0, "reduction": reduction}, opset=18,
          backend=backend)
    check("ScatterElements", [x, -1 - idx.T[:, :2], upd.T[:, :2]],
          {"axis": 1, "reduction": reduction}, opset=18, backend=backend)


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
@pytest.mark.parametrize("dtype", [F32, F16, I64])
def test_scatter_nd(backend, reduction, dtype):
    x = rnd((4, 3, 2), dtype, 1, 3)
    if reduction == "none":
        idx = np.array([[1], [3]], I64)
    else:
        idx = np.array([[1], [1], [-1]], I64)
    upd = rnd(idx.shape[:1] + (3, 2), dtype, 1, 3, 1)
    check("ScatterND", [x, idx, upd], {"reduction": reduction}, opset=18, backend=backend)
    idx2 = np.array([[0, 1], [2, 2]], I64)
    check("ScatterND", [x, idx2, rnd((2, 2), dtype, 1, 3, 2)], {"reduction": reduction}, opset=18,
          backend=backend)


@pytest.mark.parametrize("dtype", [F32, F16, np.int32, I64])
@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("largest", [0, 1])
def test_topk(backend, dtype, axis, largest):
    x = np.round(rnd((6, 7), dtype, -3, 3)).astype(dtype)  # ties: lower index first
    check("TopK", [x, i64(3)], {"axis": axis, "largest": largest}, opset=11, backend=backend,
          n_outputs=2)
    check("TopK", [x, i64(0)], {"axis": axis}, opset=11, backend=backend, n_outputs=2)


@pytest.mark.parametrize("dtype", [F32, F16, np.int32, I64, np.bool_, np.uint8])
@pytest.mark.parametrize("shape", [(3, 4), (700,), (2, 3, 90), (0, 3)])
def test_nonzero(backend, dtype, shape):
    x = rnd(shape, dtype, 0, 1)
    if dtype in (F32, F16):
        x = np.round(x)
    check("NonZero", [x], backend=backend, noncontig=True)


@pytest.mark.parametrize("dtype", [F32, F16, np.int32, I64])
@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
def test_cumsum(backend, dtype, exclusive, reverse):
    x = rnd((3, 4, 5), dtype, -3, 3)
    for axis in (0, 1, -1):
        check("CumSum", [x, np.array(axis, I64)], {"exclusive": exclusive, "reverse": reverse},
              backend=backend)


@pytest.mark.parametrize("dtype,args", [(F32, (0.5, 3.2, 0.4)), (I64, (10, -3, -3)),
                                        (np.int32, (2, 20, 5)), (F32, (1, 0, 1))])
def test_range(backend, dtype, args):
    check("Range", [np.array(a, dtype) for a in args], backend=backend, consts=(0, 1, 2))


RESIZE = [  # attrs, scales or None, sizes or None
    ({"mode": "nearest"}, [1, 1, 2, 3], None),
    ({"mode": "nearest", "nearest_mode": "floor", "coordinate_transformation_mode": "asymmetric"},
     [1, 1, 0.6, 1.7], None),
    ({"mode": "nearest", "nearest_mode": "round_prefer_ceil",
      "coordinate_transformation_mode": "align_corners"}, None, [1, 2, 7, 4]),
    ({"mode": "linear"}, [1, 1, 2, 0.5], None),
    ({"mode": "linear", "coordinate_transformation_mode": "align_corners"}, None, [1, 2, 3, 8]),
    ({"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}, [1, 1, 0.5, 2.5], None),
    ({"mode": "cubic"}, [1, 1, 1.5, 2], None),
    ({"mode": "cubic", "exclude_outside": 1, "cubic_coeff_a": -0.5}, None, [1, 2, 3, 9]),
    ({"mode": "cubic", "coordinate_transformation_mode": "asymmetric"}, [1, 1, 0.8, 1.3], None),
    ({"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric"}, [1, 1, 1.7, 0.6], None),
    ({"mode": "linear", "keep_aspect_ratio_policy": "not_larger", "axes": [2, 3]}, None, [7, 9]),
]


@pytest.mark.parametrize("case", range(len(RESIZE)))
@pytest.mark.parametrize("dtype", [F32, F16])
def test_resize(backend, case, dtype):
    attrs, scales, sizes = RESIZE[case]
    x = rnd((1, 2, 5, 6), dtype)
    ins = [x, None, np.array(scales, F32) if scales else None,
           i64(*sizes) if sizes else None]
    while ins[-1] is None:
        ins.pop()
    check("Resize", ins, attrs, opset=19, backend=backend, consts=(1, 2, 3),
          rtol=3e-2 if dtype == F16 else 1e-4, atol=3e-2 if dtype == F16 else 1e-5)


def test_resize_v10(backend):
    check("Resize", [rnd((1, 1, 3, 4)), np.array([1, 1, 2, 1.5], F32)], {"mode": "nearest"},
          opset=10, backend=backend, consts=(1,))
    check("Resize", [rnd((1, 1, 3, 4)), np.array([1, 1, 0.7, 2], F32)], {"mode": "linear"},
          opset=10, backend=backend, consts=(1,))


def test_views(backend):
    x = rnd((2, 3, 4))
    check("Reshape", [x, i64(4, 0, -1)], backend=backend, noncontig=True)
    check("Reshape", [x, i64(0, 12)], {"allowzero": 0}, opset=14, backend=backend)
    check("Reshape", [np.zeros((0, 3), F32), i64(3, 0)], {"allowzero": 1}, opset=14, backend=backend)
    check("Flatten", [x], {"axis": 2}, backend=backend)
    check("Flatten", [x], {"axis": 0}, backend=backend, noncontig=True)
    check("Squeeze", [rnd((1, 3, 1, 2)), i64(0, -2)], opset=13, backend=backend)
    check("Squeeze", [rnd((1, 3, 1, 2))], opset=13, backend=backend)
    check("Unsqueeze", [x, i64(0, -1)], opset=13, backend=backend)
    check("Unsqueeze", [x], {"axes": [1]}, opset=11, backend=backend)
    check("Identity", [x], backend=backend)
    check("Dropout", [x], backend=backend, n_outputs=2)


def test_depth_space(backend):
    x = rnd((1, 8, 2, 3))
    check("DepthToSpace", [x], {"blocksize": 2}, backend=backend)
    check("DepthToSpace", [x], {"blocksize": 2, "mode": "CRD"}, backend=backend)
    check("SpaceToDepth", [rnd((1, 2, 4, 6))], {"blocksize": 2}, backend=backend)


def test_shape_size_constant(backend):
    x = rnd((2, 3, 4))
    check("Shape", [x], backend=backend)
    check("Shape", [x], {"start": 1, "end": -1}, opset=15, backend=backend)
    check("Size", [x], backend=backend)
    from onnx import numpy_helper
    for v in (np.array([2.5], F32), np.array([7], I64), np.array([True]), np.array([1.5], F16)):
        check("ConstantOfShape", [i64(2, 3)], {"value": numpy_helper.from_array(v)},
              backend=backend, consts=(0,))
