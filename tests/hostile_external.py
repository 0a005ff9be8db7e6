"""Hostile external data: files outside the model's folder (absolute paths, traversal,
symlinks, devices, FIFOs, directories), bad offsets and lengths, odd keys, in-memory models with
and without the folder named by the session config entry, and tensors of every kind that can
point at external data (initializers, sparse values, Constant attributes, body initializers).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from hostile_base import (FOLDER_KEY, SECRET, Case, Input, _cnn_weight, _externalize, _set_external,
                          _write, base)
from onnx import helper, numpy_helper


def _secret(d: Path, size: int) -> Path:
    """A file outside the model's folder, of exactly the size a weight needs (a naive reader
    would load it without complaint)."""
    (d / "secret").mkdir(parents=True, exist_ok=True)
    path = d / "secret" / "w.bin"
    path.write_bytes((SECRET * (size // len(SECRET) + 1))[:size])
    return path


def _ext_model(d: Path, edit=None, names=("conv.w", "fc.w"), as_input: str = "path") -> Input:
    """The cnn base with `names` in model/weights.bin; `edit(model, folder)` then tampers."""
    m, feeds = base("cnn")
    folder = d / "model"
    _externalize(m, folder, list(names))
    if edit is not None:
        edit(m, folder)
    if as_input == "path":
        return Input(_write(folder, m), feeds)
    if as_input.startswith("bytes"):
        cfg = {FOLDER_KEY: str(folder)} if as_input == "bytes+folder" else {}
        return Input(m.SerializeToString(), feeds, cfg)
    cfg = {FOLDER_KEY: str(folder)} if as_input == "proto+folder" else {}
    return Input(m, feeds, cfg)


def _loc(location_of):
    """Edit: point conv.w at location_of(folder) (str), keeping offset/length."""
    def edit(m, folder):
        t = _cnn_weight(m)
        info = {e.key: e.value for e in t.external_data}
        info["location"] = location_of(folder)
        _set_external(t, **info)
    return edit


def _entries(**entries):
    def edit(m, folder):
        t = _cnn_weight(m)
        info = {e.key: e.value for e in t.external_data}
        info.update(entries)
        _set_external(t, **{k: v for k, v in info.items() if v is not None})
    return edit


def external_cases() -> list[Case]:
    W = 64 * 32 * 9 * 4   # bytes of conv.w
    E = lambda name, expect, build: Case(name, "external", expect, build)  # noqa: E731

    def secret_abs(d):
        return lambda folder: str(_secret(d, W))

    def traversal(d, rel):
        def build(d=d, rel=rel):
            _secret(d, W)
            return _ext_model(d, _loc(lambda folder: rel))
        return build()

    def with_link(d, name, target, location=None, make_dir=False):
        def edit(m, folder):
            os.symlink(target, folder / name, target_is_directory=make_dir)
            _loc(lambda f: location or name)(m, folder)
        return _ext_model(d, edit)

    def fifo(d):
        def edit(m, folder):
            os.mkfifo(folder / "pipe.bin")
            _loc(lambda f: "pipe.bin")(m, folder)
        return _ext_model(d, edit)

    def subdir(d, location):
        def edit(m, folder):
            (folder / "sub").mkdir()
            (folder / "sub" / "weights.bin").write_bytes((folder / "weights.bin").read_bytes())
            _loc(lambda f: location)(m, folder)
        return _ext_model(d, edit)

    def shorter(d):
        def edit(m, folder):
            data = (folder / "weights.bin").read_bytes()
            (folder / "weights.bin").write_bytes(data[:len(data) // 2])
        return _ext_model(d, edit)

    def with_inline(d):
        def edit(m, folder):
            _cnn_weight(m).raw_data = b"\0" * W
        return _ext_model(d, edit)

    def string_tensor(d):
        def edit(m, folder):
            t = numpy_helper.from_array(np.array(["a", "b"], dtype=object), "labels")
            _set_external(t, location="weights.bin", offset="0", length="2")
            m.graph.initializer.append(t)
        return _ext_model(d, edit)

    def dup_key(d):
        def edit(m, folder):
            e = _cnn_weight(m).external_data.add()
            e.key, e.value = "location", "../secret/w.bin"
            _secret(d, W)
        return _ext_model(d, edit)

    def optimized_meta(d, location):
        def edit(m, folder):
            helper.set_model_props(m, {"ep_core.optimized": "1"})
            _loc(lambda f: location(f))(m, folder)
        return _ext_model(d, edit)

    def small_traversal(d):
        def edit(m, folder):
            _secret(d, 40)
            t = next(t for t in m.graph.initializer if t.name == "fc.b")
            _set_external(t, location="../secret/w.bin", offset="0", length="40")
        return _ext_model(d, edit)

    def subgraph_traversal(d, as_constant: bool):
        m, feeds = base("control")
        folder = d / "model"
        folder.mkdir(parents=True)
        _secret(d, 12)
        t = numpy_helper.from_array(np.zeros(3, np.float32), "k2")
        _set_external(t, location="../secret/w.bin", offset="0", length="12")
        then_g = m.graph.node[0].attribute[0].g
        if as_constant:
            then_g.node.insert(0, helper.make_node("Constant", [], ["k2"], value=t))
        else:
            then_g.initializer.append(t)
        then_g.node[-1].input[1] = "k2"
        return Input(_write(folder, m), feeds)

    def sparse_traversal(d):
        m, feeds = base("cnn")
        folder = d / "model"
        _secret(d, 8)
        values = numpy_helper.from_array(np.ones(2, np.float32), "sp")
        _set_external(values, location="../secret/w.bin", offset="0", length="8")
        indices = numpy_helper.from_array(np.array([0, 3], np.int64), "sp_idx")
        m.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [10]))
        return Input(_write(folder, m), feeds)

    def symlinked_model_dir(d):
        inp = _ext_model(d)
        os.symlink(d / "model", d / "alias", target_is_directory=True)
        inp.model = str(d / "alias" / "model.onnx")
        return inp

    def checksum(d):
        return _ext_model(d, _entries(checksum="0123456789abcdef"))

    return [
        E("ext_ok", "run", lambda d: _ext_model(d)),
        E("ext_ok_all_weights", "run", lambda d: _ext_model(d, names=("conv.w", "conv.b", "fc.w", "fc.b"))),
        E("ext_ok_subdir", "run", lambda d: subdir(d, "sub/weights.bin")),
        E("ext_ok_symlink_inside", "run", lambda d: with_link(d, "link.bin", "weights.bin")),
        E("ext_ok_checksum_key", "run", checksum),
        E("ext_ok_symlinked_model_dir", "run", symlinked_model_dir),
        E("ext_ok_bytes_with_folder", "run", lambda d: _ext_model(d, as_input="bytes+folder")),
        E("ext_ok_proto_with_folder", "run", lambda d: _ext_model(d, as_input="proto+folder")),
        E("ext_bytes_without_folder", "refuse", lambda d: _ext_model(d, as_input="bytes")),
        E("ext_proto_without_folder", "refuse", lambda d: _ext_model(d, as_input="proto")),
        E("ext_bytes_folder_traversal", "refuse",
          lambda d: (_secret(d, W), _ext_model(d, _loc(lambda f: "../secret/w.bin"), as_input="bytes+folder"))[1]),
        E("ext_abs_passwd", "refuse", lambda d: _ext_model(d, _loc(lambda f: "/etc/passwd"))),
        E("ext_abs_secret", "refuse", lambda d: _ext_model(d, _loc(secret_abs(d)))),
        E("ext_abs_dev_zero", "refuse", lambda d: _ext_model(d, _loc(lambda f: "/dev/zero"))),
        E("ext_abs_proc_self_mem", "refuse", lambda d: _ext_model(d, _loc(lambda f: "/proc/self/mem"))),
        E("ext_traversal", "refuse", lambda d: traversal(d, "../secret/w.bin")),
        E("ext_traversal_dot", "refuse", lambda d: traversal(d, "./../secret/w.bin")),
        E("ext_traversal_deep", "refuse", lambda d: traversal(d, "sub/../../secret/w.bin")),
        E("ext_traversal_many", "refuse", lambda d: traversal(d, "../" * 12 + "etc/passwd")),
        E("ext_traversal_backslash", "refuse", lambda d: traversal(d, "..\\secret\\w.bin")),
        E("ext_dotdot_inside", "any", lambda d: subdir(d, "sub/../weights.bin")),
        E("ext_symlink_secret", "refuse", lambda d: with_link(d, "leak.bin", _secret(d, W))),
        E("ext_symlink_passwd", "refuse", lambda d: with_link(d, "leak.bin", "/etc/passwd")),
        E("ext_symlink_relative_out", "refuse",
          lambda d: (_secret(d, W), with_link(d, "leak.bin", "../secret/w.bin"))[1]),
        E("ext_symlink_dir_out", "refuse",
          lambda d: (_secret(d, W), with_link(d, "subdir", d / "secret", "subdir/w.bin", True))[1]),
        E("ext_symlink_dev_zero", "refuse", lambda d: with_link(d, "zero.bin", "/dev/zero")),
        E("ext_symlink_loop", "refuse", lambda d: with_link(d, "loop.bin", "loop.bin")),
        E("ext_symlink_dangling", "refuse", lambda d: with_link(d, "gone.bin", "nothing-here.bin")),
        E("ext_fifo", "refuse", fifo),
        E("ext_directory", "refuse", lambda d: subdir(d, "sub")),
        E("ext_location_dot", "refuse", lambda d: _ext_model(d, _loc(lambda f: "."))),
        E("ext_location_empty", "refuse", lambda d: _ext_model(d, _loc(lambda f: ""))),
        E("ext_location_nul", "any", lambda d: _ext_model(d, _loc(lambda f: "weights.bin\0/../../etc/passwd"))),
        E("ext_missing_file", "refuse", lambda d: _ext_model(d, _loc(lambda f: "nope.bin"))),
        E("ext_no_location", "refuse", lambda d: _ext_model(d, _entries(location=None))),
        E("ext_offset_beyond", "refuse", lambda d: _ext_model(d, _entries(offset=str(10 ** 6)))),
        E("ext_offset_negative", "refuse", lambda d: _ext_model(d, _entries(offset="-8"))),
        E("ext_offset_garbage", "refuse", lambda d: _ext_model(d, _entries(offset="abc"))),
        E("ext_offset_float", "refuse", lambda d: _ext_model(d, _entries(offset="1e3"))),
        E("ext_offset_hex", "refuse", lambda d: _ext_model(d, _entries(offset="0x10"))),
        E("ext_offset_space", "refuse", lambda d: _ext_model(d, _entries(offset=" 0"))),
        E("ext_offset_unicode_digit", "refuse", lambda d: _ext_model(d, _entries(offset="\u0661"))),
        E("ext_offset_overflow", "refuse", lambda d: _ext_model(d, _entries(offset=str(2 ** 64)))),
        E("ext_length_short", "refuse", lambda d: _ext_model(d, _entries(length=str(W - 4)))),
        E("ext_length_long", "refuse", lambda d: _ext_model(d, _entries(length=str(W + 4)))),
        E("ext_length_huge", "refuse", lambda d: _ext_model(d, _entries(length="9" * 30))),
        E("ext_length_zero", "any", lambda d: _ext_model(d, _entries(length="0"))),
        E("ext_file_shorter", "refuse", shorter),
        E("ext_with_inline_data", "any", with_inline),
        E("ext_string_tensor", "any", string_tensor),
        E("ext_duplicate_location", "refuse", dup_key),
        E("ext_unknown_key", "refuse", lambda d: _ext_model(d, _entries(basepath2="x"))),
        E("ext_optimized_meta_passwd", "refuse", lambda d: optimized_meta(d, lambda f: "/etc/passwd")),
        E("ext_optimized_meta_traversal", "refuse",
          lambda d: (_secret(d, W), optimized_meta(d, lambda f: "../secret/w.bin"))[1]),
        E("ext_optimized_meta_ok", "run", lambda d: optimized_meta(d, lambda f: "weights.bin")),
        E("ext_small_tensor_traversal", "refuse", small_traversal),
        E("ext_subgraph_initializer_traversal", "refuse", lambda d: subgraph_traversal(d, False)),
        E("ext_constant_attribute_traversal", "refuse", lambda d: subgraph_traversal(d, True)),
        E("ext_sparse_values_traversal", "refuse", sparse_traversal),
    ]


