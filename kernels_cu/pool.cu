// MaxPool (with optional Indices) and AveragePool on contiguous NC(D)(H)W tensors, one thread per
// output element. 1-D/2-D pools run as 3-D with size-1 leading spatial dims (see conv.cu).
#include "common.cuh"

struct PoolInfo {
  i64 in[3], out[3], k[3];
  i64 stride[3], pad[3], pad_end[3], dil[3];
};

// y[i] = max over the window; idx (may be NULL) gets the flat input index of the first maximum,
// row-major over (N, C, D, H, W), or with column-major spatial order when storage_order = 1.
template <typename T>
__global__ void maxpool_k(const T* __restrict__ x, T* __restrict__ y, i64* __restrict__ idx,
                          i64 n, PoolInfo p, int storage_order) {
  const i64 in_sp = p.in[0] * p.in[1] * p.in[2];
  EP_LOOP(i, n) {
    i64 t = i;
    const i64 ow = t % p.out[2]; t /= p.out[2];
    const i64 oh = t % p.out[1]; t /= p.out[1];
    const i64 od = t % p.out[0]; t /= p.out[0];
    const i64 nc = t;
    const T* xc = x + nc * in_sp;
    float best = Lim<float>::lowest();
    i64 bd = -1, bh = 0, bw = 0;
    for (i64 kd = 0; kd < p.k[0]; ++kd) {
      const i64 id = od * p.stride[0] - p.pad[0] + kd * p.dil[0];
      if (id < 0 || id >= p.in[0]) continue;
      for (i64 kh = 0; kh < p.k[1]; ++kh) {
        const i64 ih = oh * p.stride[1] - p.pad[1] + kh * p.dil[1];
        if (ih < 0 || ih >= p.in[1]) continue;
        for (i64 kw = 0; kw < p.k[2]; ++kw) {
          const i64 iw = ow * p.stride[2] - p.pad[2] + kw * p.dil[2];
          if (iw < 0 || iw >= p.in[2]) continue;
          const float v = cvt<float>(xc[(id * p.in[1] + ih) * p.in[2] + iw]);
          if (bd < 0 || v > best) { best = v; bd = id; bh = ih; bw = iw; }
        }
      }
    }
    y[i] = cvt<T>(best);
    if (idx) {
      if (bd < 0) bd = 0;
      const i64 local = storage_order ? bd + bh * p.in[0] + bw * p.in[0] * p.in[1]
                                      : (bd * p.in[1] + bh) * p.in[2] + bw;
      idx[i] = nc * in_sp + local;
    }
  }
}

// Average over the window. count_include_pad: divide by the number of window positions inside
// the padded extent [-pad, in + pad_end); otherwise by the number inside the input.
template <typename T>
__global__ void avgpool_k(const T* __restrict__ x, T* __restrict__ y, i64 n, PoolInfo p,
                          int count_include_pad) {
  const i64 in_sp = p.in[0] * p.in[1] * p.in[2];
  EP_LOOP(i, n) {
    i64 t = i;
    const i64 ow = t % p.out[2]; t /= p.out[2];
    const i64 oh = t % p.out[1]; t /= p.out[1];
    const i64 od = t % p.out[0]; t /= p.out[0];
    const T* xc = x + t * in_sp;
    float s = 0.0f;
    i64 valid = 0, padded = 0;
    for (i64 kd = 0; kd < p.k[0]; ++kd) {
      const i64 id = od * p.stride[0] - p.pad[0] + kd * p.dil[0];
      if (id < -p.pad[0] || id >= p.in[0] + p.pad_end[0]) continue;
      const bool din = id >= 0 && id < p.in[0];
      for (i64 kh = 0; kh < p.k[1]; ++kh) {
        const i64 ih = oh * p.stride[1] - p.pad[1] + kh * p.dil[1];
        if (ih < -p.pad[1] || ih >= p.in[1] + p.pad_end[1]) continue;
        const bool hin = din && ih >= 0 && ih < p.in[1];
        for (i64 kw = 0; kw < p.k[2]; ++kw) {
          const i64 iw = ow * p.stride[2] - p.pad[2] + kw * p.dil[2];
          if (iw < -p.pad[2] || iw >= p.in[2] + p.pad_end[2]) continue;
          ++padded;
          if (hin && iw >= 0 && iw < p.in[2]) {
            s += cvt<float>(xc[(id * p.in[1] + ih) * p.in[2] + iw]);
            ++valid;
          }
        }
      }
    }
    const i64 cnt = count_include_pad ? padded : valid;
    y[i] = cvt<T>(cnt > 0 ? s / (float)cnt : 0.0f);
  }
}
