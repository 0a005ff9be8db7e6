"""Image ops: ImageDecoder (opset 20), decoding with Pillow.

Pillow is an optional dependency: it is imported lazily on first decode so that ep_cpu imports
(and every other kernel works) without it.
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np

from ep_core.kernel import Kernel
from ep_cpu.kernels.tensor import check_size
from ep_cpu.registry import kernel

_PIXEL_FORMATS = ("RGB", "BGR", "Grayscale")
_SUPPORTED = "BMP, JPEG, JPEG2000, TIFF, PNG, WebP, PBM/PGM/PPM/PNM"
_pil_image: Any = None


def _pil() -> Any:
    """Import PIL.Image once, on first use."""
    global _pil_image
    if _pil_image is None:
        try:
            import PIL.Image  # noqa: PLC0415 - lazy on purpose: Pillow is optional
        except ImportError as e:
            raise ImportError(
                "ImageDecoder needs Pillow to decode images; install it with `pip install pillow`"
            ) from e
        _pil_image = PIL.Image
    return _pil_image


def _head(data: bytes) -> str:
    return data[:8].hex(" ") if data else "<empty>"


def _to_8bit(img: Any) -> Any:
    """High-bit-depth single-channel modes ('I;16*', 'I', 'F'): Pillow's convert() clips them to
    0..255, which whitens nearly every 16-bit image, so rescale 16-bit data by >> 8 instead
    (what libpng/OpenCV do when asked for 8 bits) and clip 32-bit int / float data."""
    pil = _pil()
    mode = img.mode
    if mode.startswith("I;16"):
        a = np.asarray(img).astype(np.uint16) >> 8
    elif mode in ("I", "F"):
        a = np.asarray(img)
        # Pillow reads 16-bit PNG grayscale as 'I' holding 0..65535
        if mode == "I" and a.size and a.max() > 255 and a.min() >= 0 and a.max() <= 65535:
            a = a >> 8
        a = np.clip(np.rint(a) if mode == "F" else a, 0, 255)
    else:
        return img
    return pil.fromarray(np.asarray(a, dtype=np.uint8), mode="L")


def decode_image(data: bytes, pixel_format: str, check_shape: Any = None) -> np.ndarray:
    """Decode an encoded image to an HWC uint8 array (C=3 for RGB/BGR, 1 for Grayscale).

    Raises ValueError naming the problem when the stream is not a decodable image."""
    pil = _pil()
    if not data:
        raise ValueError("ImageDecoder: encoded_stream is empty; expected an encoded image "
                         f"({_SUPPORTED})")
    try:
        img = pil.open(io.BytesIO(data))
    except pil.UnidentifiedImageError as e:
        raise ValueError(
            f"ImageDecoder: unrecognized image format ({len(data)} bytes, header {_head(data)}); "
            f"supported: {_SUPPORTED}") from e
    except Exception as e:  # a format plugin rejected a header it recognized (truncated, corrupt)
        raise ValueError(
            f"ImageDecoder: invalid image header ({len(data)} bytes, header {_head(data)}): "
            f"{type(e).__name__}: {e}") from e
    fmt = img.format or "unknown"
    if check_shape is not None:   # the header gives the size: refuse a bomb before decoding it
        check_shape((img.size[1], img.size[0], 1 if pixel_format == "Grayscale" else 3))
    try:
        img.load()  # open() only reads the header; decode now so corrupt/truncated data fails here
        img = _to_8bit(img)
        # Grayscale from colour uses Pillow's ITU-R 601-2 luma (L = 0.299R + 0.587G + 0.114B)
        img = img.convert("L" if pixel_format == "Grayscale" else "RGB")
    except Exception as e:
        raise ValueError(
            f"ImageDecoder: failed to decode {fmt} image ({len(data)} bytes, mode "
            f"{getattr(img, 'mode', '?')}): {type(e).__name__}: {e}") from e
    out = np.asarray(img, dtype=np.uint8)
    if pixel_format == "Grayscale":
        out = out[:, :, np.newaxis]
    elif pixel_format == "BGR":
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out, dtype=np.uint8)


@kernel("ImageDecoder", since=20)
class ImageDecoder(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        fmt = self.attr("pixel_format", "RGB")
        self.pixel_format = fmt.decode("utf-8") if isinstance(fmt, bytes) else str(fmt)
        if self.pixel_format not in _PIXEL_FORMATS:
            raise ValueError(f"ImageDecoder: pixel_format must be one of {_PIXEL_FORMATS}, "
                             f"got {self.pixel_format!r}")

    def compute(self, encoded_stream):
        x = np.asarray(encoded_stream)
        if x.dtype != np.uint8:
            raise TypeError(f"ImageDecoder: encoded_stream must be uint8, got {x.dtype}")
        return decode_image(x.tobytes(), self.pixel_format,
                            lambda shape: check_size(self, shape, np.uint8))
