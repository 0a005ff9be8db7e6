"""Signal processing: DFT, STFT, Hann/Hamming/Blackman windows, MelWeightMatrix.

Complex values travel as a trailing dimension of size 2 (real, imaginary); real signals have a
trailing dimension of size 1. Transforms run in single precision
(double for double inputs), as ONNX Runtime does, then cast back.
"""
from __future__ import annotations

import numpy as np

from ep_core.kernel import Kernel
from ep_core.types import np_dtype
from ep_cpu.kernels.tensor import bad_data, check_size
from ep_cpu.registry import kernel


def _scalar(x) -> int:
    return int(np.asarray(x).reshape(-1)[0])


def _work_dtype(dtype) -> tuple[np.dtype, np.dtype]:
    """(real, complex) working precision: double stays double, narrower floats use single."""
    if np.dtype(dtype) == np.float64:
        return np.dtype(np.float64), np.dtype(np.complex128)
    return np.dtype(np.float32), np.dtype(np.complex64)


def _to_complex(x: np.ndarray) -> np.ndarray:
    """[..., 1] real or [..., 2] complex -> complex array without the trailing dim."""
    real_t, cplx_t = _work_dtype(x.dtype)
    xr = np.asarray(x).astype(real_t)
    if xr.shape[-1] == 1:
        return xr[..., 0].astype(cplx_t)
    if xr.shape[-1] == 2:
        out = np.empty(xr.shape[:-1], dtype=cplx_t)
        out.real, out.imag = xr[..., 0], xr[..., 1]
        return out
    raise ValueError(f"last dimension must be 1 (real) or 2 (complex), got {xr.shape[-1]}")


def _from_complex(c: np.ndarray, dtype) -> np.ndarray:
    return np.stack([c.real, c.imag], axis=-1).astype(dtype)


def _fit_length(c: np.ndarray, axis: int, n: int) -> np.ndarray:
    """Zero-pad or truncate `c` along `axis` to length n."""
    cur = c.shape[axis]
    if cur == n:
        return c
    if cur > n:
        return np.take(c, np.arange(n), axis=axis)
    pad = [(0, 0)] * c.ndim
    pad[axis] = (0, n - cur)
    return np.pad(c, pad)


def dft(x: np.ndarray, axis: int, dft_length: int | None, inverse: bool, onesided: bool) -> np.ndarray:
    """DFT over `axis` of the signal dims of x (x carries the trailing real/imag dim)."""
    rank = x.ndim
    if axis < 0:
        axis += rank
    if not 0 <= axis <= rank - 2:
        raise ValueError(f"DFT axis {axis} out of range for rank {rank}")
    c = _to_complex(x)
    if onesided and inverse:
        # IRFFT: the input holds the non-redundant half; the output is a real signal.
        n = dft_length if dft_length is not None else 2 * (c.shape[axis] - 1)
        real = np.fft.irfft(c, n=n, axis=axis)
        return real[..., None].astype(x.dtype)
    n = dft_length if dft_length is not None else c.shape[axis]
    c = _fit_length(c, axis, n)
    out = np.fft.ifft(c, axis=axis) if inverse else np.fft.fft(c, axis=axis)
    if onesided:
        out = np.take(out, np.arange(n // 2 + 1), axis=axis)
    return _from_complex(out, x.dtype)


@kernel("DFT")
class DFT(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.inverse = bool(self.attr("inverse", 0))
        self.onesided = bool(self.attr("onesided", 0))
        self.axis_attr = int(self.attr("axis", 1))  # opset 17: attribute; opset 20: input

    def compute(self, x, dft_length=None, axis=None):
        n = _scalar(dft_length) if dft_length is not None and np.size(dft_length) else None
        if self.node.since_version >= 20:
            ax = _scalar(axis) if axis is not None and np.size(axis) else -2
        else:
            ax = self.axis_attr
        x = np.asarray(x)
        if n is not None:
            if n <= 0:
                raise bad_data(self, f"dft_length {n} must be positive")
            if -x.ndim <= ax < x.ndim:
                shape = list(x.shape[:-1]) + [2]
                shape[ax] = n
                check_size(self, shape, np.complex128)   # the complex transform before the cast
        return dft(x, ax, n, self.inverse, self.onesided)


@kernel("STFT")
class STFT(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.onesided = bool(self.attr("onesided", 1))

    def compute(self, signal, frame_step, window=None, frame_length=None):
        signal = np.asarray(signal)
        c = _to_complex(signal)  # [batch, length]
        step = _scalar(frame_step)
        if frame_length is not None and np.size(frame_length):
            flen = _scalar(frame_length)
        elif window is not None:
            flen = int(np.shape(window)[0])
        else:
            flen = c.shape[1]
        if step <= 0 or flen <= 0:
            raise bad_data(self, f"frame_step {step} and frame_length {flen} must be positive")
        frames = (c.shape[1] - flen) // step + 1
        check_size(self, (c.shape[0], max(frames, 0), flen), np.complex128)   # the framed signal
        if window is not None and int(np.shape(window)[0]) != flen:
            raise ValueError(f"STFT: window length {np.shape(window)[0]} != frame_length {flen}")
        real_t, _ = _work_dtype(signal.dtype)
        w = np.ones(flen, real_t) if window is None else np.asarray(window).astype(real_t)
        frames = (c.shape[1] - flen) // step + 1
        if frames <= 0:
            raise ValueError("STFT: signal shorter than one frame")
        starts = np.arange(frames) * step
        framed = c[:, starts[:, None] + np.arange(flen)[None, :]] * w  # [batch, frames, flen]
        spec = np.fft.fft(framed, axis=-1)
        if self.onesided:
            spec = spec[..., :flen // 2 + 1]
        return _from_complex(spec, signal.dtype)


_WINDOW_COEFFS = {
    "HannWindow": (0.5, 0.5, 0.0),
    "HammingWindow": (25.0 / 46.0, 21.0 / 46.0, 0.0),
    "BlackmanWindow": (0.42, 0.5, 0.08),
}


@kernel(["HannWindow", "HammingWindow", "BlackmanWindow"])
class CosineWindow(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.a0, self.a1, self.a2 = _WINDOW_COEFFS[node.op_type]
        self.periodic = bool(self.attr("periodic", 1))
        self.dtype = np_dtype(int(self.attr("output_datatype", 1)))

    def compute(self, size):
        n = _scalar(size)
        if n < 0:
            raise bad_data(self, f"size {n} is negative")
        check_size(self, (n,), np.float64)
        denom = n if self.periodic else n - 1
        if denom <= 0:
            return np.ones(max(n, 0), dtype=self.dtype)
        k = np.arange(n, dtype=np.float64)
        # a0 + a2 first: Blackman's peak then sums to exactly 1.0 (matters for integer outputs).
        w = (self.a0 + self.a2 * np.cos(4 * np.pi * k / denom)) - self.a1 * np.cos(2 * np.pi * k / denom)
        return w.astype(self.dtype)


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


@kernel("MelWeightMatrix")
class MelWeightMatrix(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.dtype = np_dtype(int(self.attr("output_datatype", 1)))

    def compute(self, num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz):
        bins = _scalar(num_mel_bins)
        n_fft = _scalar(dft_length)
        rate = _scalar(sample_rate)
        low = float(np.asarray(lower_edge_hertz).reshape(-1)[0])
        high = float(np.asarray(upper_edge_hertz).reshape(-1)[0])
        if bins < 0 or n_fft < 0 or rate <= 0:
            raise bad_data(self, f"num_mel_bins {bins}, dft_length {n_fft} and sample_rate {rate} must "
                                f"be non-negative (the rate positive)")
        n_spec = n_fft // 2 + 1
        check_size(self, (n_spec, bins), np.float64)
        # bins + 2 mel points from `low`, mapped to DFT bin indices. The step is range/(bins + 2),
        # as in ONNX Runtime and the ONNX test data (so the top point stops short of `high`).
        mel_low, mel_high = _hz_to_mel(low), _hz_to_mel(high)
        mel_points = mel_low + (mel_high - mel_low) * np.arange(bins + 2) / (bins + 2)
        edges = np.floor((n_fft + 1) * _mel_to_hz(mel_points) / rate).astype(np.int64)
        out = np.zeros((n_spec, bins), dtype=np.float64)
        for i in range(bins):
            left, center, right = int(edges[i]), int(edges[i + 1]), int(edges[i + 2])
            if center == left:
                if 0 <= center < n_spec:
                    out[center, i] = 1.0
            else:
                for j in range(left, center + 1):
                    if 0 <= j < n_spec:
                        out[j, i] = (j - left) / (center - left)
            for j in range(center, right):
                if 0 <= j < n_spec and right > center:
                    out[j, i] = (right - j) / (right - center)
        return out.astype(self.dtype)
