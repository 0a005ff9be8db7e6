// Element-wise op codes and their scalar math (binop/unop), shared by elementwise.cu and the
// generated fused kernels, so fused and unfused results are computed by the same code.
// Binary op codes (mirrored in ep_cuda/kernels/elementwise.py)
#define B_ADD 0
#define B_SUB 1
#define B_MUL 2
#define B_DIV 3
#define B_POW 4
#define B_MOD 5      // integer Mod, fmod=0: result takes the divisor's sign (Python %)
#define B_FMOD 6     // fmod=1: C remainder, the dividend's sign
#define B_MAX 7
#define B_MIN 8
#define B_EQ 9
#define B_LT 10
#define B_GT 11
#define B_LE 12
#define B_GE 13
#define B_AND 14
#define B_OR 15
#define B_XOR 16
#define B_BAND 17
#define B_BOR 18
#define B_BXOR 19
#define B_SHL 20
#define B_SHR 21

template <int OP, typename C, typename O> __device__ __forceinline__ O binop(C a, C b) {
  if constexpr (OP == B_ADD) return cvt<O>(a + b);
  else if constexpr (OP == B_SUB) return cvt<O>(a - b);
  else if constexpr (OP == B_MUL) return cvt<O>(a * b);
  else if constexpr (OP == B_DIV) {
    if constexpr (IsFloat<C>::value) return cvt<O>(a / b);
    else return cvt<O>(b == C(0) ? C(0) : a / b);  // integer division truncates; x/0 -> 0
  } else if constexpr (OP == B_POW) return cvt<O>(powf(a, b));
  else if constexpr (OP == B_MOD) {
    if constexpr (IsFloat<C>::value) {
      C r = fmodf(a, b);  // NaN when b == 0, like numpy
      if (r != C(0) && ((r < C(0)) != (b < C(0)))) r += b;
      return cvt<O>(r);
    } else {
      if (b == C(0)) return cvt<O>(C(0));
      C r = a % b;
      if (r != C(0) && ((r < C(0)) != (b < C(0)))) r += b;
      return cvt<O>(r);
    }
  } else if constexpr (OP == B_FMOD) {
    if constexpr (IsFloat<C>::value) return cvt<O>(fmodf(a, b));
    else return cvt<O>(b == C(0) ? C(0) : a % b);
  } else if constexpr (OP == B_MAX) return cvt<O>((a > b || a != a) ? a : b);  // NaN propagates
  else if constexpr (OP == B_MIN) return cvt<O>((a < b || a != a) ? a : b);
  else if constexpr (OP == B_EQ) return (O)(a == b);
  else if constexpr (OP == B_LT) return (O)(a < b);
  else if constexpr (OP == B_GT) return (O)(a > b);
  else if constexpr (OP == B_LE) return (O)(a <= b);
  else if constexpr (OP == B_GE) return (O)(a >= b);
  else if constexpr (OP == B_AND) return (O)(a && b);
  else if constexpr (OP == B_OR) return (O)(a || b);
  else if constexpr (OP == B_XOR) return (O)((bool)a != (bool)b);
  else if constexpr (OP == B_BAND) return cvt<O>(a & b);
  else if constexpr (OP == B_BOR) return cvt<O>(a | b);
  else if constexpr (OP == B_BXOR) return cvt<O>(a ^ b);
  else if constexpr (OP == B_SHL) {  // unsigned only; shifting by >= 64 gives 0 like numpy
    const u64 ua = (u64)a, ub = (u64)b;
    return cvt<O>(ub >= 64 ? (u64)0 : (ua << ub));
  } else {
    static_assert(OP == B_SHR, "unknown binary op");
    const u64 ua = (u64)a, ub = (u64)b;
    return cvt<O>(ub >= 64 ? (u64)0 : (ua >> ub));
  }
}

// Unary op codes (mirrored in ep_cuda/kernels/elementwise.py)
#define U_ABS 0
#define U_NEG 1
#define U_EXP 2
#define U_LOG 3
#define U_SQRT 4
#define U_RECIP 5
#define U_FLOOR 6
#define U_CEIL 7
#define U_ROUND 8    // half to even
#define U_SIGN 9
#define U_SIN 10
#define U_COS 11
#define U_TAN 12
#define U_ASIN 13
#define U_ACOS 14
#define U_ATAN 15
#define U_SINH 16
#define U_COSH 17
#define U_ASINH 18
#define U_ACOSH 19
#define U_ATANH 20
#define U_NOT 21
#define U_BNOT 22
#define U_ISNAN 23
#define U_ISINF 24   // p0: detect_negative, p1: detect_positive
#define U_CLIP 25    // p0: min, p1: max
#define U_SCALE 26   // x * p0 (Mean = Sum / n)

template <int OP, typename C, typename O> __device__ __forceinline__ O unop(C x, float p0, float p1) {
  if constexpr (OP == U_ABS) {
    if constexpr (IsFloat<C>::value) return cvt<O>(fabsf(x));
    else return cvt<O>(x < C(0) ? C(0) - x : x);
  } else if constexpr (OP == U_NEG) return cvt<O>(-x);
  else if constexpr (OP == U_EXP) return cvt<O>(expf(x));
  else if constexpr (OP == U_LOG) return cvt<O>(logf(x));
  else if constexpr (OP == U_SQRT) return cvt<O>(sqrtf(x));
  else if constexpr (OP == U_RECIP) return cvt<O>(1.0f / x);
  else if constexpr (OP == U_FLOOR) return cvt<O>(floorf(x));
  else if constexpr (OP == U_CEIL) return cvt<O>(ceilf(x));
  else if constexpr (OP == U_ROUND) return cvt<O>(rintf(x));
  else if constexpr (OP == U_SIGN) {
    if (x != x) return cvt<O>(x);  // NaN stays NaN
    return cvt<O>(x > C(0) ? C(1) : (x < C(0) ? C(-1) : C(0)));
  } else if constexpr (OP == U_SIN) return cvt<O>(sinf(x));
  else if constexpr (OP == U_COS) return cvt<O>(cosf(x));
  else if constexpr (OP == U_TAN) return cvt<O>(tanf(x));
  else if constexpr (OP == U_ASIN) return cvt<O>(asinf(x));
  else if constexpr (OP == U_ACOS) return cvt<O>(acosf(x));
  else if constexpr (OP == U_ATAN) return cvt<O>(atanf(x));
  else if constexpr (OP == U_SINH) return cvt<O>(sinhf(x));
  else if constexpr (OP == U_COSH) return cvt<O>(coshf(x));
  else if constexpr (OP == U_ASINH) return cvt<O>(asinhf(x));
  else if constexpr (OP == U_ACOSH) return cvt<O>(acoshf(x));
  else if constexpr (OP == U_ATANH) return cvt<O>(atanhf(x));
  else if constexpr (OP == U_NOT) return (O)(!x);
  else if constexpr (OP == U_BNOT) return cvt<O>(~x);
  else if constexpr (OP == U_ISNAN) return (O)(x != x);
  else if constexpr (OP == U_ISINF) {
    return (O)((p0 != 0.0f && x == -ep_inf()) || (p1 != 0.0f && x == ep_inf()));
  } else if constexpr (OP == U_CLIP) {
    // min(max(x, lo), hi) like numpy: hi wins when lo > hi; NaN passes through
    const C lo = x < p0 ? (C)p0 : x;
    return cvt<O>(lo > p1 ? (C)p1 : lo);
  } else {
    static_assert(OP == U_SCALE, "unknown unary op");
    return cvt<O>(x * p0);
  }
}
