// Activation functions shared by activation.cu, the GEMM/conv epilogues and generated fused
// kernels: act<OP>(x, p0, p1) in fp32, and act_rt(code, ...) selecting OP at run time.
#define A_RELU 0
#define A_LEAKY 1       // p0 alpha
#define A_SIGMOID 2
#define A_HSIGMOID 3    // p0 alpha, p1 beta
#define A_TANH 4
#define A_ELU 5         // p0 alpha
#define A_SELU 6        // p0 alpha, p1 gamma
#define A_CELU 7        // p0 alpha
#define A_GELU 8        // exact (erf)
#define A_GELU_TANH 9   // tanh approximation
#define A_ERF 10
#define A_SOFTPLUS 11
#define A_SOFTSIGN 12
#define A_HSWISH 13
#define A_MISH 14
#define A_THRELU 15     // p0 alpha
#define A_SILU 16       // x * sigmoid(x) (used by fused graphs)
#define A_CLIP 17       // p0 min, p1 max (epilogues only)

__device__ __forceinline__ float sigmoidf(float x) {
  // two branches keep exp's argument <= 0: no overflow for large |x|
  if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
  const float e = expf(x);
  return e / (1.0f + e);
}

__device__ __forceinline__ float softplusf(float x) {
  // log(1 + e^x) = max(x, 0) + log1p(e^-|x|): exact formula without overflow
  return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x)));
}

template <int OP> __device__ __forceinline__ float act(float x, float p0, float p1) {
  if constexpr (OP == A_RELU) return x > 0.0f ? x : (x != x ? x : 0.0f);
  else if constexpr (OP == A_LEAKY) return x >= 0.0f ? x : x * p0;
  else if constexpr (OP == A_SIGMOID) return sigmoidf(x);
  else if constexpr (OP == A_HSIGMOID) return fmaxf(0.0f, fminf(1.0f, p0 * x + p1));
  else if constexpr (OP == A_TANH) return tanhf(x);
  else if constexpr (OP == A_ELU) return x >= 0.0f ? x : p0 * (expf(x) - 1.0f);
  else if constexpr (OP == A_SELU) return x > 0.0f ? p1 * x : p1 * p0 * (expf(x) - 1.0f);
  else if constexpr (OP == A_CELU) return fmaxf(0.0f, x) + fminf(0.0f, p0 * (expf(x / p0) - 1.0f));
  else if constexpr (OP == A_GELU) return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
  else if constexpr (OP == A_GELU_TANH) {
    const float k = 0.79788456080286536f;  // sqrt(2/pi)
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
  } else if constexpr (OP == A_ERF) return erff(x);
  else if constexpr (OP == A_SOFTPLUS) return softplusf(x);
  else if constexpr (OP == A_SOFTSIGN) return x / (1.0f + fabsf(x));
  else if constexpr (OP == A_HSWISH) return x * fmaxf(0.0f, fminf(1.0f, x * (1.0f / 6.0f) + 0.5f));
  else if constexpr (OP == A_MISH) return x * tanhf(softplusf(x));
  else if constexpr (OP == A_THRELU) return x > p0 ? x : 0.0f;
  else {
    static_assert(OP == A_SILU, "unknown activation");
    return x * sigmoidf(x);
  }
}

#define A_NONE -1       // no activation (epilogues)

// act<OP> selected at run time (a uniform branch per launch: epilogues take the code as an argument
// instead of multiplying template instantiations).
__device__ __noinline__ float act_rt(int op, float x, float p0, float p1) {
  switch (op) {
    case A_RELU: return act<A_RELU>(x, p0, p1);
    case A_LEAKY: return act<A_LEAKY>(x, p0, p1);
    case A_SIGMOID: return act<A_SIGMOID>(x, p0, p1);
    case A_HSIGMOID: return act<A_HSIGMOID>(x, p0, p1);
    case A_TANH: return act<A_TANH>(x, p0, p1);
    case A_ELU: return act<A_ELU>(x, p0, p1);
    case A_SELU: return act<A_SELU>(x, p0, p1);
    case A_CELU: return act<A_CELU>(x, p0, p1);
    case A_GELU: return act<A_GELU>(x, p0, p1);
    case A_GELU_TANH: return act<A_GELU_TANH>(x, p0, p1);
    case A_ERF: return act<A_ERF>(x, p0, p1);
    case A_SOFTPLUS: return act<A_SOFTPLUS>(x, p0, p1);
    case A_SOFTSIGN: return act<A_SOFTSIGN>(x, p0, p1);
    case A_HSWISH: return act<A_HSWISH>(x, p0, p1);
    case A_MISH: return act<A_MISH>(x, p0, p1);
    case A_THRELU: return act<A_THRELU>(x, p0, p1);
    case A_SILU: return act<A_SILU>(x, p0, p1);
    case A_CLIP: {  // min(max(x, p0), p1) with NaN passing through, like Clip
      const float lo = x < p0 ? p0 : x;
      return lo > p1 ? p1 : lo;
    }
    default: return x;
  }
}
