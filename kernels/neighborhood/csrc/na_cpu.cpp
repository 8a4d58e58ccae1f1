// Fused neighborhood attention on the CPU, forward and backward (NATTEN semantics, see the package docstring).
//
// Every call is handled as 3-D (1-D and 2-D inputs arrive with leading spatial axes of length 1). Each axis is
// reordered so that every dilation sub-grid is contiguous ("group-major": all tokens of group 0, then group 1, ...);
// a window never leaves its group, so in reordered coordinates a query's window is a plain range of k tokens.
//
// Q, K, V (and dO for the backward) are packed per (batch, head, row) channel-major, `[C][W]` with the x axis in
// the lanes, so SIMD vectors run across neighbouring queries of one row: the score of neighbour j for the N queries
// of a block is a sum over channels of one query vector times one key vector loaded at that lane's window start. For
// blocks where every lane's window starts one token after its left neighbour's (the interior of a group) that is an
// unaligned load; otherwise (shifted borders, group boundaries inside a block) it is a two-register permute of the
// loaded keys (or a gather for very large kernels). Nothing per (query, neighbour) leaves the cache: the k^n scores of
// one block live in a small per-thread buffer.
//
// Forward: exact softmax per block (all scores of a block fit in the buffer), weighted sum of V, logsumexp saved.
// Backward, deterministic without atomics:
//   pass 1, per query row: recompute P from the saved logsumexp, dP = dO.V, dS = P (dP - rowsum(dO o O)), dQ = dS K,
//           and the rpb gradient summed per (batch, head, row) into its own partial table;
//   pass 2, per key row: the inverse neighbourhood of each key (a contiguous range of queries per axis) recomputes
//           P and dS for every (query, key) pair that touches it, then dK = dS^T Q and dV = P^T dO.
// The partial rpb tables are summed in a fixed order. Parallel over batch x heads x rows with at::parallel_for.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <type_traits>
#include <climits>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

using i64 = int64_t;

// ------------------------------------------------------------------------------------------------------------------
// SIMD vectors. Each type offers the same small set of operations; the kernels are templates over the type.
//   gather2(p, idx): lane l <- p[idx[l]] for 0 <= idx[l] < 2N (two loads and a permute)
//   gather(p, idx):  the same for any non-negative idx (a hardware gather)
//   permute2(lo, idx, hi): lane l <- (lo ++ hi)[idx[l]], idx < 2N

template <class T, int NL>
struct VecG {  // portable fallback (double, or float without AVX2): plain loops the compiler may vectorise
  using scalar = T;
  static constexpr int N = NL;
  using I = std::array<int32_t, NL>;
  using M = std::array<bool, NL>;
  std::array<T, NL> v;
  static VecG load(const T* p) { VecG r; for (int l = 0; l < N; ++l) r.v[l] = p[l]; return r; }
  void store(T* p) const { for (int l = 0; l < N; ++l) p[l] = v[l]; }
  static VecG set1(T x) { VecG r; r.v.fill(x); return r; }
  static VecG zero() { return set1(T(0)); }
  static I iload(const int32_t* p) { I r; for (int l = 0; l < N; ++l) r[l] = p[l]; return r; }
  static I iadd(const I& a, int k) { I r; for (int l = 0; l < N; ++l) r[l] = a[l] + k; return r; }
  static I imax0(const I& a) { I r; for (int l = 0; l < N; ++l) r[l] = std::max(a[l], 0); return r; }
  static M lt(int t, const I& cnt) { M r; for (int l = 0; l < N; ++l) r[l] = t < cnt[l]; return r; }
  static VecG select(const M& m, const VecG& a, const VecG& b) {
    VecG r; for (int l = 0; l < N; ++l) r.v[l] = m[l] ? a.v[l] : b.v[l]; return r;
  }
  static VecG gather2(const T* p, const I& idx) { VecG r; for (int l = 0; l < N; ++l) r.v[l] = p[idx[l]]; return r; }
  static VecG gather(const T* p, const I& idx) { return gather2(p, idx); }
  static VecG permute2(const VecG& lo, const I& idx, const VecG& hi) {
    VecG r; for (int l = 0; l < N; ++l) r.v[l] = idx[l] < N ? lo.v[idx[l]] : hi.v[idx[l] - N]; return r;
  }
  static VecG fma(const VecG& a, const VecG& b, const VecG& c) {
    VecG r; for (int l = 0; l < N; ++l) r.v[l] = a.v[l] * b.v[l] + c.v[l]; return r;
  }
  static VecG max(const VecG& a, const VecG& b) {
    VecG r; for (int l = 0; l < N; ++l) r.v[l] = std::max(a.v[l], b.v[l]); return r;
  }
  static VecG exp(const VecG& a) { VecG r; for (int l = 0; l < N; ++l) r.v[l] = std::exp(a.v[l]); return r; }
  VecG operator+(const VecG& o) const { VecG r; for (int l = 0; l < N; ++l) r.v[l] = v[l] + o.v[l]; return r; }
  VecG operator-(const VecG& o) const { VecG r; for (int l = 0; l < N; ++l) r.v[l] = v[l] - o.v[l]; return r; }
  VecG operator*(const VecG& o) const { VecG r; for (int l = 0; l < N; ++l) r.v[l] = v[l] * o.v[l]; return r; }
  VecG operator/(const VecG& o) const { VecG r; for (int l = 0; l < N; ++l) r.v[l] = v[l] / o.v[l]; return r; }
};

#if defined(__AVX512F__)
struct Vec16f {
  using scalar = float;
  static constexpr int N = 16;
  using I = __m512i;
  using M = __mmask16;
  __m512 v;
  static Vec16f load(const float* p) { return {_mm512_loadu_ps(p)}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  static Vec16f set1(float x) { return {_mm512_set1_ps(x)}; }
  static Vec16f zero() { return {_mm512_setzero_ps()}; }
  static I iload(const int32_t* p) { return _mm512_loadu_si512(p); }
  static I iadd(I a, int k) { return _mm512_add_epi32(a, _mm512_set1_epi32(k)); }
  static I imax0(I a) { return _mm512_max_epi32(a, _mm512_setzero_si512()); }
  static M lt(int t, I cnt) { return _mm512_cmpgt_epi32_mask(cnt, _mm512_set1_epi32(t)); }
  static Vec16f select(M m, Vec16f a, Vec16f b) { return {_mm512_mask_blend_ps(m, b.v, a.v)}; }
  static Vec16f gather2(const float* p, I idx) {
    return {_mm512_permutex2var_ps(_mm512_loadu_ps(p), idx, _mm512_loadu_ps(p + 16))};
  }
  static Vec16f gather(const float* p, I idx) { return {_mm512_i32gather_ps(idx, p, 4)}; }
  static Vec16f permute2(Vec16f lo, I idx, Vec16f hi) { return {_mm512_permutex2var_ps(lo.v, idx, hi.v)}; }
  static Vec16f fma(Vec16f a, Vec16f b, Vec16f c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  static Vec16f max(Vec16f a, Vec16f b) { return {_mm512_max_ps(a.v, b.v)}; }
  static Vec16f exp(Vec16f x) {
    // Cephes expf: x = n ln2 + r, |r| <= ln2 / 2, degree-5 polynomial, scaled by 2^n (scalef underflows to 0).
    __m512 a = _mm512_max_ps(_mm512_min_ps(x.v, _mm512_set1_ps(88.5f)), _mm512_set1_ps(-104.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(a, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), a);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return {_mm512_scalef_ps(p, n)};
  }
  Vec16f operator+(Vec16f o) const { return {_mm512_add_ps(v, o.v)}; }
  Vec16f operator-(Vec16f o) const { return {_mm512_sub_ps(v, o.v)}; }
  Vec16f operator*(Vec16f o) const { return {_mm512_mul_ps(v, o.v)}; }
  Vec16f operator/(Vec16f o) const { return {_mm512_div_ps(v, o.v)}; }
};
using VecF = Vec16f;
#elif defined(__AVX2__)
struct Vec8f {
  using scalar = float;
  static constexpr int N = 8;
  using I = __m256i;
  using M = __m256;
  __m256 v;
  static Vec8f load(const float* p) { return {_mm256_loadu_ps(p)}; }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  static Vec8f set1(float x) { return {_mm256_set1_ps(x)}; }
  static Vec8f zero() { return {_mm256_setzero_ps()}; }
  static I iload(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static I iadd(I a, int k) { return _mm256_add_epi32(a, _mm256_set1_epi32(k)); }
  static I imax0(I a) { return _mm256_max_epi32(a, _mm256_setzero_si256()); }
  static M lt(int t, I cnt) { return _mm256_castsi256_ps(_mm256_cmpgt_epi32(cnt, _mm256_set1_epi32(t))); }
  static Vec8f select(M m, Vec8f a, Vec8f b) { return {_mm256_blendv_ps(b.v, a.v, m)}; }
  static Vec8f gather2(const float* p, I idx) {
    __m256 lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(p), idx);
    __m256 hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(p + 8), idx);
    return {_mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, _mm256_set1_epi32(7))))};
  }
  static Vec8f gather(const float* p, I idx) { return {_mm256_i32gather_ps(p, idx, 4)}; }
  static Vec8f permute2(Vec8f lo, I idx, Vec8f hi) {
    __m256 a = _mm256_permutevar8x32_ps(lo.v, idx), b = _mm256_permutevar8x32_ps(hi.v, idx);
    return {_mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, _mm256_set1_epi32(7))))};
  }
  static Vec8f fma(Vec8f a, Vec8f b, Vec8f c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  static Vec8f max(Vec8f a, Vec8f b) { return {_mm256_max_ps(a.v, b.v)}; }
  static Vec8f exp(Vec8f x) {
    // Cephes expf as above; 2^n built in the exponent bits, so the input is clamped to keep n in [-126, 127].
    __m256 a = _mm256_max_ps(_mm256_min_ps(x.v, _mm256_set1_ps(88.3f)), _mm256_set1_ps(-87.3f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(a, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), a);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return {_mm256_mul_ps(p, _mm256_castsi256_ps(e))};
  }
  Vec8f operator+(Vec8f o) const { return {_mm256_add_ps(v, o.v)}; }
  Vec8f operator-(Vec8f o) const { return {_mm256_sub_ps(v, o.v)}; }
  Vec8f operator*(Vec8f o) const { return {_mm256_mul_ps(v, o.v)}; }
  Vec8f operator/(Vec8f o) const { return {_mm256_div_ps(v, o.v)}; }
};
using VecF = Vec8f;
#else
using VecF = VecG<float, 8>;
#endif
using VecD = VecG<double, 8>;

#if defined(__AVX512F__)
// r[i][j] -> r[j][i] for a 16 x 16 fp32 tile in registers.
inline void transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // u[4g + m], 128-bit lane L: column 4L + m of rows 4g .. 4g + 3
  for (int g = 0; g < 4; ++g) {
    u[4 * g] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
    u[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0xEE);
    u[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
    u[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
  }
  for (int m = 0; m < 4; ++m) {
    __m512 v0 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x88), w0 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x88);
    __m512 v1 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xDD), w1 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xDD);
    r[m] = _mm512_shuffle_f32x4(v0, w0, 0x88);
    r[8 + m] = _mm512_shuffle_f32x4(v0, w0, 0xDD);
    r[4 + m] = _mm512_shuffle_f32x4(v1, w1, 0x88);
    r[12 + m] = _mm512_shuffle_f32x4(v1, w1, 0xDD);
  }
}
constexpr bool kTiles = true;
#else
constexpr bool kTiles = false;
#endif

template <class T> struct VecFor;
template <> struct VecFor<float> { using type = VecF; };
template <> struct VecFor<double> { using type = VecD; };

// How a block reads the window of each lane (lane l's window starts idx[l] after lane 0's):
//   0: idx[l] == l, windows at offset j are one unaligned load;
//   1: the block's windows at offsets 0 .. G - 1 all lie in the 2N values from the window base, loaded once into two
//      vectors and permuted per offset (idx[l] + G - 1 < 2N);
//   2: a hardware gather per window (very large kernels, or a block spanning far-apart group borders).
template <int MODE, class V>
inline V win(const typename V::scalar* p, const typename V::I& idx) {
  if constexpr (MODE == 0) {
    return V::load(p);
  } else if constexpr (MODE == 1) {
    return V::gather2(p, idx);
  } else {
    return V::gather(p, idx);
  }
}

// ------------------------------------------------------------------------------------------------------------------
// geometry

struct Axis {
  int L = 1, K = 1, D = 1;
  std::vector<int> pof;    // full coordinate -> reordered (group-major) coordinate
  std::vector<int> iof;    // reordered -> full
  std::vector<int> start;  // reordered query -> reordered first key of its window
  std::vector<int> lo;     // reordered key -> first reordered query whose window holds it
  std::vector<int> cnt;    // reordered key -> number of queries whose window holds it (contiguous from lo)
  int max_cnt = 1;

  void init(int length, int kernel, int dilation) {
    L = length;
    K = kernel;
    D = dilation;
    pof.assign(L, 0);
    iof.assign(L, 0);
    start.assign(L, 0);
    lo.assign(L, INT_MAX);
    cnt.assign(L, 0);
    std::vector<int> off(D + 1, 0);
    for (int g = 0; g < D; ++g) off[g + 1] = off[g] + (L - g + D - 1) / D;
    for (int i = 0; i < L; ++i) {
      int g = i % D, pos = i / D, len = off[g + 1] - off[g];
      int p = off[g] + pos;
      pof[i] = p;
      iof[p] = i;
      // NATTEN's window: centred (even k: k/2 before, k/2 - 1 after), shifted inwards at the group's borders.
      start[p] = off[g] + std::min(std::max(pos - K / 2, 0), len - K);
    }
    for (int p = 0; p < L; ++p) {
      for (int j = 0; j < K; ++j) {
        int key = start[p] + j;
        lo[key] = std::min(lo[key], p);
        cnt[key] += 1;
      }
    }
    max_cnt = *std::max_element(cnt.begin(), cnt.end());
  }
};

template <class V>
struct Geo {
  static constexpr int N = V::N;
  i64 B = 0, H = 0, C = 0, CV = 0;
  Axis ax[3];
  int R = 0, W = 0, Wp = 0;        // rows (z * y), row length (x), packed row stride (= W)
  i64 tail = 0;                    // finite values after each packed buffer (window loads of padding lanes)
  int TZ = 1, TY = 1, TX = 1, TXp = 0;  // rpb table extents, padded x extent
  bool small_table = true;        // the rpb x extent fits two vectors (gather2), else gather
  i64 kn = 0;                      // neighbours per query

  void init(const at::Tensor& q, const at::Tensor& v, at::IntArrayRef kernel, at::IntArrayRef dilation) {
    B = q.size(0);
    H = q.size(4);
    C = q.size(5);
    CV = v.size(5);
    for (int a = 0; a < 3; ++a) ax[a].init(q.size(1 + a), kernel[a], dilation[a]);
    R = ax[0].L * ax[1].L;
    W = ax[2].L;
    // Window loads of a block read up to 2N + K values past its first window start. Lanes past the end of a row
    // read the next row's (or channel's) values, which are finite and never used; only the end of a whole buffer
    // needs a tail of zeros.
    Wp = W;
    tail = 3 * N + 2 * ax[2].K;
    TZ = 2 * ax[0].K - 1;
    TY = 2 * ax[1].K - 1;
    TX = 2 * ax[2].K - 1;
    TXp = std::max((TX + N - 1) / N * N, 2 * N);
    small_table = TX <= 2 * N;
    kn = (i64)ax[0].K * ax[1].K * ax[2].K;
  }
  // Row-major flat index (without the channel) of (b, full coords, h) in a [B, L0, L1, L2, H, *] tensor.
  i64 pos(i64 b, int row, int px, i64 h) const {
    int z = ax[0].iof[row / ax[1].L], y = ax[1].iof[row % ax[1].L], x = ax[2].iof[px];
    return (((b * ax[0].L + z) * ax[1].L + y) * ax[2].L + x) * H + h;
  }
};

template <class V>
inline V bias(const typename V::scalar* row, const typename V::I& idx, bool small) {
  return small ? V::gather2(row, idx) : V::gather(row, idx);
}

// ------------------------------------------------------------------------------------------------------------------
// Packed buffers are reused across calls of one thread (fresh allocations of this size cost a page fault per 4 KiB
// on every call); buffers above kKeepBytes are not kept.
constexpr i64 kKeepBytes = i64(256) << 20;

template <class T>
T* workspace(int slot, i64 numel, at::Tensor& hold) {
  thread_local std::array<at::Tensor, 6>* kept = new std::array<at::Tensor, 6>();  // never freed: no exit order issues
  at::Tensor& t = (*kept)[slot];
  const auto dt = c10::CppTypeToScalarType<T>::value;
  if (t.defined() && t.numel() >= numel && t.scalar_type() == dt) {
    hold = t;
  } else {
    hold = at::empty({numel}, at::TensorOptions().dtype(dt));
    t = numel * (i64)sizeof(T) <= kKeepBytes ? hold : at::Tensor();
  }
  return hold.data_ptr<T>();
}

// packing: [B, L0, L1, L2, H, C] (any strides, unit channel stride) -> [B, H, R, C, W] reordered, plus a zero tail
template <class V>
typename V::scalar* pack(const at::Tensor& src, const Geo<V>& g, double mult, int slot, at::Tensor& hold) {
  using T = typename V::scalar;
  const i64 C = src.size(5), Wp = g.Wp, W = g.W, H = g.H, R = g.R;
  const i64 total = g.B * H * R * C * Wp;
  T* d = workspace<T>(slot, total + g.tail, hold);
  std::fill(d + total, d + total + g.tail, T(0));
  const T* s = src.data_ptr<T>();
  const i64 sb = src.stride(0), sz = src.stride(1), sy = src.stride(2), sx = src.stride(3), sh = src.stride(4);
  const T m = (T)mult;
  const int L0 = g.ax[0].L, L1 = g.ax[1].L;
  at::parallel_for(0, g.B * L0 * L1, 1, [&](i64 begin, i64 end) {
    for (i64 it = begin; it < end; ++it) {
      i64 b = it / (L0 * L1);
      int z = (it / L1) % L0, y = it % L1;
      int row = g.ax[0].pof[z] * L1 + g.ax[1].pof[y];
      for (i64 h = 0; h < H; ++h) {
        T* out = d + ((b * H + h) * R + row) * C * Wp;
        const T* in = s + b * sb + z * sz + y * sy + h * sh;
#if defined(__AVX512F__)
        if constexpr (std::is_same_v<T, float>) {
          // 16 reordered positions at a time: 16 channel rows loaded, transposed, stored as 16 lane vectors.
          const __m512 mv = _mm512_set1_ps(m);
          for (i64 px0 = 0; px0 < W; px0 += 16) {
            const int nl = (int)std::min<i64>(16, W - px0);
            const __mmask16 lm = (__mmask16)((1u << nl) - 1);
            for (i64 c0 = 0; c0 < C; c0 += 16) {
              const int nc = (int)std::min<i64>(16, C - c0);
              const __mmask16 cm = (__mmask16)((1u << nc) - 1);
              __m512 r[16];
              for (int l = 0; l < 16; ++l) {
                r[l] = l < nl ? _mm512_mul_ps(_mm512_maskz_loadu_ps(cm, in + g.ax[2].iof[px0 + l] * sx + c0), mv)
                              : _mm512_setzero_ps();
              }
              transpose16(r);
              for (int c = 0; c < nc; ++c) _mm512_mask_storeu_ps(out + (c0 + c) * Wp + px0, lm, r[c]);
            }
          }
          continue;
        }
#endif
        for (int x = 0; x < W; ++x) {
          const T* e = in + x * sx;
          T* o = out + g.ax[2].pof[x];
          for (i64 c = 0; c < C; ++c) o[c * Wp] = e[c] * m;
        }
      }
    }
  });
  return d;
}

// Per (b, h, row) lanes of a [B, L0, L1, L2, H] fp32 tensor (lse), or of rowsum(a o b) over the channel of two
// [B, L0, L1, L2, H, CV] tensors (delta = rowsum(dO o O)), as [B, H, R, Wp] in the compute type.
template <class V>
typename V::scalar* pack_rows(const at::Tensor& lse, const at::Tensor& a, const at::Tensor& bb, const Geo<V>& g,
                              int slot, at::Tensor& hold) {
  using T = typename V::scalar;
  const i64 Wp = g.Wp, W = g.W, H = g.H, R = g.R;
  const bool dot = !lse.defined();
  const i64 total = g.B * H * R * Wp;
  T* d = workspace<T>(slot, total + g.tail, hold);
  std::fill(d + total, d + total + g.tail, T(0));
  const int L0 = g.ax[0].L, L1 = g.ax[1].L;
  const T* pa = dot ? a.data_ptr<T>() : nullptr;
  const T* pb = dot ? bb.data_ptr<T>() : nullptr;
  const float* pl = dot ? nullptr : lse.data_ptr<float>();
  const at::Tensor& ref = dot ? a : lse;
  const i64 s0 = ref.stride(0), s1 = ref.stride(1), s2 = ref.stride(2), s3 = ref.stride(3), s4 = ref.stride(4);
  const i64 t0 = dot ? bb.stride(0) : 0, t1 = dot ? bb.stride(1) : 0, t2 = dot ? bb.stride(2) : 0;
  const i64 t3 = dot ? bb.stride(3) : 0, t4 = dot ? bb.stride(4) : 0;
  const i64 C = dot ? a.size(5) : 0;
  at::parallel_for(0, g.B * L0 * L1, 1, [&](i64 begin, i64 end) {
    for (i64 it = begin; it < end; ++it) {
      i64 b = it / (L0 * L1);
      int z = (it / L1) % L0, y = it % L1;
      int row = g.ax[0].pof[z] * L1 + g.ax[1].pof[y];
      for (i64 h = 0; h < H; ++h) {
        T* out = d + ((b * H + h) * R + row) * Wp;
        for (int x = 0; x < W; ++x) {
          T* o = out + g.ax[2].pof[x];
          if (dot) {
            const T* ea = pa + b * s0 + z * s1 + y * s2 + x * s3 + h * s4;
            const T* eb = pb + b * t0 + z * t1 + y * t2 + x * t3 + h * t4;
            T acc = 0;
            for (i64 c = 0; c < C; ++c) acc += ea[c] * eb[c];
            *o = acc;
          } else {
            *o = (T)pl[b * s0 + z * s1 + y * s2 + x * s3 + h * s4];
          }
        }
      }
    }
  });
  return d;
}

// ------------------------------------------------------------------------------------------------------------------
// building blocks

// out[jj] = sum_c load(A + c * ws) * window(B + c * ws + jj), jj < J: J windows at consecutive offsets share one
// load of A (and, in mode 1, the two loads of the window values).
template <class V, int MODE, int J>
inline void dots_j(const typename V::scalar* A, const typename V::scalar* B, i64 ws, i64 C,
                   const typename V::I& idx, V* out) {
  using I = typename V::I;
  V acc[J];
  I ix[J];
  for (int jj = 0; jj < J; ++jj) {
    acc[jj] = V::zero();
    ix[jj] = V::iadd(idx, jj);
  }
  for (i64 c = 0; c < C; ++c) {
    V a = V::load(A + c * ws);
    const typename V::scalar* b = B + c * ws;
    if constexpr (MODE == 0) {
      for (int jj = 0; jj < J; ++jj) acc[jj] = V::fma(a, V::load(b + jj), acc[jj]);
    } else if constexpr (MODE == 1) {
      V lo = V::load(b), hi = V::load(b + V::N);
      for (int jj = 0; jj < J; ++jj) acc[jj] = V::fma(a, V::permute2(lo, ix[jj], hi), acc[jj]);
    } else {
      for (int jj = 0; jj < J; ++jj) acc[jj] = V::fma(a, V::gather(b, ix[jj]), acc[jj]);
    }
  }
  for (int jj = 0; jj < J; ++jj) out[jj] = acc[jj];
}

template <class V, int MODE>
inline void dots(const typename V::scalar* A, const typename V::scalar* B, i64 ws, i64 C, const typename V::I& idx,
                 int n, V* out) {
  int j = 0;
  for (; j + 8 <= n; j += 8) dots_j<V, MODE, 8>(A, B + j, ws, C, idx, out + j);
  switch (n - j) {
    case 7: dots_j<V, MODE, 7>(A, B + j, ws, C, idx, out + j); break;
    case 6: dots_j<V, MODE, 6>(A, B + j, ws, C, idx, out + j); break;
    case 5: dots_j<V, MODE, 5>(A, B + j, ws, C, idx, out + j); break;
    case 4: dots_j<V, MODE, 4>(A, B + j, ws, C, idx, out + j); break;
    case 3: dots_j<V, MODE, 3>(A, B + j, ws, C, idx, out + j); break;
    case 2: dots_j<V, MODE, 2>(A, B + j, ws, C, idx, out + j); break;
    case 1: dots_j<V, MODE, 1>(A, B + j, ws, C, idx, out + j); break;
    default: break;
  }
}

// For channels [c0, c0 + CH): acc[ch] = sum over groups g and offsets j < G of w[g * G + j] * window(base[g] +
// (c0 + ch) * ws + j); then store(c0, CH, acc). (A group is one key row of a query block, or one query row of a key
// block; its G terms are windows at consecutive offsets.)
template <class V, int MODE, int CH, class Store>
inline void wsum_ch(const typename V::scalar* w, const typename V::scalar* const* base, i64 ngroups, int G, i64 ws,
                    i64 c0, const typename V::I& idx, Store& store) {
  constexpr int N = V::N;
  using T = typename V::scalar;
  V acc[CH];
  for (int ch = 0; ch < CH; ++ch) acc[ch] = V::zero();
  for (i64 grp = 0; grp < ngroups; ++grp) {
    const T* b = base[grp] + c0 * ws;
    const T* wg = w + grp * G * N;
    if constexpr (MODE == 1) {
      V lo[CH], hi[CH];
      for (int ch = 0; ch < CH; ++ch) {
        lo[ch] = V::load(b + ch * ws);
        hi[ch] = V::load(b + ch * ws + N);
      }
      for (int j = 0; j < G; ++j) {
        V p = V::load(wg + j * N);
        typename V::I ixj = V::iadd(idx, j);
        for (int ch = 0; ch < CH; ++ch) acc[ch] = V::fma(p, V::permute2(lo[ch], ixj, hi[ch]), acc[ch]);
      }
    } else if constexpr (MODE == 0) {
      for (int j = 0; j < G; ++j) {
        V p = V::load(wg + j * N);
        for (int ch = 0; ch < CH; ++ch) acc[ch] = V::fma(p, V::load(b + ch * ws + j), acc[ch]);
      }
    } else {
      for (int j = 0; j < G; ++j) {
        V p = V::load(wg + j * N);
        typename V::I ixj = V::iadd(idx, j);
        for (int ch = 0; ch < CH; ++ch) acc[ch] = V::fma(p, V::gather(b + ch * ws, ixj), acc[ch]);
      }
    }
  }
  store(c0, CH, acc);
}

template <class V, int MODE, class Store>
inline void wsum(const typename V::scalar* w, const typename V::scalar* const* base, i64 ngroups, int G, i64 ws,
                 i64 C, const typename V::I& idx, Store& store) {
  i64 c = 0;
  for (; c + 8 <= C; c += 8) wsum_ch<V, MODE, 8>(w, base, ngroups, G, ws, c, idx, store);
  switch (C - c) {
    case 7: wsum_ch<V, MODE, 7>(w, base, ngroups, G, ws, c, idx, store); break;
    case 6: wsum_ch<V, MODE, 6>(w, base, ngroups, G, ws, c, idx, store); break;
    case 5: wsum_ch<V, MODE, 5>(w, base, ngroups, G, ws, c, idx, store); break;
    case 4: wsum_ch<V, MODE, 4>(w, base, ngroups, G, ws, c, idx, store); break;
    case 3: wsum_ch<V, MODE, 3>(w, base, ngroups, G, ws, c, idx, store); break;
    case 2: wsum_ch<V, MODE, 2>(w, base, ngroups, G, ws, c, idx, store); break;
    case 1: wsum_ch<V, MODE, 1>(w, base, ngroups, G, ws, c, idx, store); break;
    default: break;
  }
  store.flush();
}

// Stores CH channel vectors (times `mul`) into a heads-last tensor at the valid lanes' positions. With AVX-512 the
// channels are buffered into a 16-row tile that is transposed and written as one 16-channel row per lane; call
// flush() after the last channel.
template <class V>
struct LaneStore {
  using T = typename V::scalar;
  static constexpr int N = V::N;
  T* dst;
  const i64* pos;  // per lane: flat (b, z, y, x, h) index
  int nvalid;
  i64 C;
  V mul;
  static constexpr bool tiled = kTiles && std::is_same_v<T, float> && N == 16;
  alignas(64) T tile[16 * N];
  i64 tile_c0 = 0;
  int filled = 0;

  void operator()(i64 c0, int CH, const V* acc) {
    if constexpr (tiled) {
      if (filled + CH > 16) flush();
      if (filled == 0) tile_c0 = c0;
      for (int ch = 0; ch < CH; ++ch) (acc[ch] * mul).store(tile + (filled + ch) * N);
      filled += CH;
    } else {
      alignas(64) T tmp[8 * N];
      for (int ch = 0; ch < CH; ++ch) (acc[ch] * mul).store(tmp + ch * N);
      for (int l = 0; l < nvalid; ++l) {
        T* o = dst + pos[l] * C + c0;
        for (int ch = 0; ch < CH; ++ch) o[ch] = tmp[ch * N + l];
      }
    }
  }
  void flush() {
#if defined(__AVX512F__)
    if constexpr (tiled) {
      if (filled == 0) return;
      __m512 r[16];
      for (int i = 0; i < 16; ++i) r[i] = i < filled ? _mm512_load_ps(tile + i * 16) : _mm512_setzero_ps();
      transpose16(r);
      const __mmask16 cm = (__mmask16)((1u << filled) - 1);
      for (int l = 0; l < nvalid; ++l) _mm512_mask_storeu_ps(dst + pos[l] * C + tile_c0, cm, r[l]);
      filled = 0;
    }
#endif
  }
};

// Lane set-up of a query block: lane l holds reordered query x0 + l; its window starts at idx[l] past lane 0's.
template <class V>
struct QueryBlock {
  static constexpr int N = V::N;
  int x0, nvalid, sx0, mode;
  alignas(64) int32_t idx[N];
  alignas(64) int32_t rel[N];  // rpb x index of neighbour 0: start - query + K - 1
  i64 pos[N];

  void init(const Geo<V>& g, i64 b, int row, i64 h, int x0_) {
    const Axis& a = g.ax[2];
    x0 = x0_;
    nvalid = std::min(N, g.W - x0);
    sx0 = a.start[x0];
    bool ident = true;
    int top = 0;
    for (int l = 0; l < N; ++l) {
      if (l < nvalid) {
        int p = x0 + l;
        idx[l] = a.start[p] - sx0;
        rel[l] = a.start[p] - p + a.K - 1;
        pos[l] = g.pos(b, row, p, h);
      } else {
        idx[l] = l;
        rel[l] = a.K - 1;
        pos[l] = 0;
      }
      ident = ident && idx[l] == l;
      top = std::max(top, idx[l]);
    }
    mode = ident ? 0 : (top + a.K - 1 < 2 * N ? 1 : 2);
  }
};

// What every block kernel starts from: the geometry, its axes, and the packed rows of its (batch, head).
template <class V>
struct Site {
  const Geo<V>& g;
  const Axis &az, &ay, &ax;
  const i64 C, CV, Wp, bh;

  Site(const Geo<V>& geo, i64 b, i64 h)
      : g(geo), az(geo.ax[0]), ay(geo.ax[1]), ax(geo.ax[2]), C(geo.C), CV(geo.CV), Wp(geo.Wp), bh(b * geo.H + h) {}
  // Packed row `row` (reordered z * y) of a buffer with `ch` channels per row (1 for lse / delta), from lane x.
  template <class T>
  const T* at(const T* base, i64 row, i64 ch, i64 x) const { return base + (bh * g.R + row) * ch * Wp + x; }
};

// Runs kernel(mode, scratch, b, h, row, block) for every lane block of every (batch, head, row), in parallel over
// (batch, head, row) with at::parallel_for. `mode` is the block's window-load mode (see win()) as a
// std::integral_constant, so each kernel is instantiated per mode; `scratch` is made once per thread.
template <class V, class Block, class MakeScratch, class Kernel>
void for_each_block(const Geo<V>& g, MakeScratch make_scratch, Kernel kernel) {
  at::parallel_for(0, g.B * g.H * g.R, 1, [&](i64 begin, i64 end) {
    auto scratch = make_scratch();
    Block blk;
    for (i64 it = begin; it < end; ++it) {
      const i64 b = it / (g.H * g.R), h = (it / g.R) % g.H;
      const int row = it % g.R;
      for (int x0 = 0; x0 < g.W; x0 += V::N) {
        blk.init(g, b, row, h, x0);
        switch (blk.mode) {
          case 0: kernel(std::integral_constant<int, 0>{}, scratch, b, h, row, blk); break;
          case 1: kernel(std::integral_constant<int, 1>{}, scratch, b, h, row, blk); break;
          default: kernel(std::integral_constant<int, 2>{}, scratch, b, h, row, blk);
        }
      }
    }
  });
}

// The rpb table `[H, TZ, TY, TX]` with its x extent zero-padded to TXp (whole vectors for the bias loads).
template <class V>
at::Tensor padded_rpb(const at::Tensor& rpb, const Geo<V>& g) {
  at::Tensor rp = at::zeros({g.H, g.TZ, g.TY, g.TXp}, rpb.options());
  rp.narrow(3, 0, g.TX).copy_(rpb.view({g.H, g.TZ, g.TY, g.TX}));
  return rp;
}

// ------------------------------------------------------------------------------------------------------------------
// forward

template <class V>
struct FwdArgs {
  using T = typename V::scalar;
  const Geo<V>* g;
  const T *q, *k, *v, *rpb;  // packed, rpb padded [H, TZ, TY, TXp] or null
  T* out;
  float* lse;
};

template <class V, int MODE>
void fwd_block(const FwdArgs<V>& A, i64 b, i64 h, int row, const QueryBlock<V>& qb, typename V::scalar* sbuf,
               const typename V::scalar** vbase) {
  using T = typename V::scalar;
  constexpr int N = V::N;
  const Site<V> site(*A.g, b, h);
  const Geo<V>& g = site.g;
  const Axis &az = site.az, &ay = site.ay, &ax = site.ax;
  const T* qrow = site.at(A.q, row, site.C, qb.x0);
  const typename V::I idx = V::iload(qb.idx), rel0 = V::iload(qb.rel);
  const int pz = row / ay.L, py = row % ay.L;
  V m = V::set1(-INFINITY);
  V s[8];
  i64 n = 0, ngroups = 0;
  for (int iz = 0; iz < az.K; ++iz) {
    const int kz = az.start[pz] + iz, rz = kz - pz + az.K - 1;
    for (int iy = 0; iy < ay.K; ++iy) {
      const int ky = ay.start[py] + iy, ry = ky - py + ay.K - 1;
      const i64 krow = (i64)kz * ay.L + ky;
      const T* kb = site.at(A.k, krow, site.C, qb.sx0);
      const T* trow = A.rpb ? A.rpb + ((h * g.TZ + rz) * g.TY + ry) * g.TXp : nullptr;
      vbase[ngroups++] = site.at(A.v, krow, site.CV, qb.sx0);
      for (int j0 = 0; j0 < ax.K; j0 += 8) {
        const int nj = std::min(8, ax.K - j0);
        dots<V, MODE>(qrow, kb + j0, site.Wp, site.C, idx, nj, s);
        for (int jj = 0; jj < nj; ++jj) {
          V sc = trow ? s[jj] + bias<V>(trow, V::iadd(rel0, j0 + jj), g.small_table) : s[jj];
          sc.store(sbuf + (n + jj) * N);
          m = V::max(m, sc);
        }
        n += nj;
      }
    }
  }
  V sum = V::zero();
  for (i64 i = 0; i < n; ++i) {
    V e = V::exp(V::load(sbuf + i * N) - m);
    e.store(sbuf + i * N);
    sum = sum + e;
  }
  alignas(64) T mv[N], sv[N];
  m.store(mv);
  sum.store(sv);
  for (int l = 0; l < qb.nvalid; ++l) A.lse[qb.pos[l]] = (float)(mv[l] + std::log(sv[l]));
  LaneStore<V> st{A.out, qb.pos, qb.nvalid, site.CV, V::set1(T(1)) / sum};
  wsum<V, MODE>(sbuf, vbase, ngroups, ax.K, site.Wp, site.CV, idx, st);
}

template <class T>
std::vector<at::Tensor> forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const c10::optional<at::Tensor>& rpb, at::IntArrayRef kernel,
                                     at::IntArrayRef dilation, double scale) {
  using V = typename VecFor<T>::type;
  constexpr int N = V::N;
  Geo<V> g;
  g.init(q, v, kernel, dilation);
  at::Tensor hq, hk, hv;
  const T* qp = pack<V>(q, g, scale, 0, hq);
  const T* kp = pack<V>(k, g, 1.0, 1, hk);
  const T* vp = pack<V>(v, g, 1.0, 2, hv);
  const at::Tensor rp = rpb.has_value() ? padded_rpb(*rpb, g) : at::Tensor();
  at::Tensor out = at::empty({q.size(0), q.size(1), q.size(2), q.size(3), q.size(4), v.size(5)}, v.options());
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2), q.size(3), q.size(4)}, q.options().dtype(at::kFloat));
  FwdArgs<V> A{&g, qp, kp, vp, rp.defined() ? rp.data_ptr<T>() : nullptr,
               out.data_ptr<T>(), lse.data_ptr<float>()};
  struct Scratch {
    std::vector<T> scores;
    std::vector<const T*> vbase;
  };
  for_each_block<V, QueryBlock<V>>(
      g, [&] { return Scratch{std::vector<T>(g.kn * N + N), std::vector<const T*>(g.kn / g.ax[2].K)}; },
      [&](auto mode, Scratch& w, i64 b, i64 h, int row, const QueryBlock<V>& qb) {
        fwd_block<V, decltype(mode)::value>(A, b, h, row, qb, w.scores.data(), w.vbase.data());
      });
  return {out, lse};
}

// ------------------------------------------------------------------------------------------------------------------
// backward

template <class V>
struct BwdArgs {
  using T = typename V::scalar;
  const Geo<V>* g;
  const T *q, *k, *v, *dout, *lse, *delta, *rpb;  // packed
  T *dq, *dk, *dv;
  T* part;  // [B, H, R, TZ * TY * TX] rpb gradient per row, or null
  T scale;
};

// Pass 1 (query-centric): dQ and the per-row rpb gradient of one query block.
template <class V, int MODE>
void bwd_q_block(const BwdArgs<V>& A, i64 b, i64 h, int row, const QueryBlock<V>& qb, typename V::scalar* dsbuf,
                 const typename V::scalar** kbase) {
  using T = typename V::scalar;
  constexpr int N = V::N;
  const Site<V> site(*A.g, b, h);
  const Geo<V>& g = site.g;
  const Axis &az = site.az, &ay = site.ay, &ax = site.ax;
  const T* qrow = site.at(A.q, row, site.C, qb.x0);
  const T* dorow = site.at(A.dout, row, site.CV, qb.x0);
  const V lsev = V::load(site.at(A.lse, row, 1, qb.x0));
  const V delv = V::load(site.at(A.delta, row, 1, qb.x0));
  const typename V::I idx = V::iload(qb.idx), rel0 = V::iload(qb.rel);
  const int pz = row / ay.L, py = row % ay.L;
  T* part = A.part ? A.part + (site.bh * g.R + row) * g.TZ * g.TY * g.TX : nullptr;
  V s[8], dp[8];
  i64 n = 0, ngroups = 0;
  for (int iz = 0; iz < az.K; ++iz) {
    const int kz = az.start[pz] + iz, rz = kz - pz + az.K - 1;
    for (int iy = 0; iy < ay.K; ++iy) {
      const int ky = ay.start[py] + iy, ry = ky - py + ay.K - 1;
      const i64 krow = (i64)kz * ay.L + ky;
      const T* kb = site.at(A.k, krow, site.C, qb.sx0);
      const T* vb = site.at(A.v, krow, site.CV, qb.sx0);
      const T* trow = A.rpb ? A.rpb + ((h * g.TZ + rz) * g.TY + ry) * g.TXp : nullptr;
      kbase[ngroups++] = kb;
      for (int j0 = 0; j0 < ax.K; j0 += 8) {
        const int nj = std::min(8, ax.K - j0);
        dots<V, MODE>(qrow, kb + j0, site.Wp, site.C, idx, nj, s);
        dots<V, MODE>(dorow, vb + j0, site.Wp, site.CV, idx, nj, dp);
        for (int jj = 0; jj < nj; ++jj) {
          V sc = trow ? s[jj] + bias<V>(trow, V::iadd(rel0, j0 + jj), g.small_table) : s[jj];
          V p = V::exp(sc - lsev);
          V ds = p * (dp[jj] - delv);
          ds.store(dsbuf + (n + jj) * N);
        }
        if (part) {
          T* prow = part + (rz * g.TY + ry) * g.TX + j0;
          for (int jj = 0; jj < nj; ++jj) {
            const T* d = dsbuf + (n + jj) * N;
            for (int l = 0; l < qb.nvalid; ++l) prow[qb.rel[l] + jj] += d[l];
          }
        }
        n += nj;
      }
    }
  }
  LaneStore<V> st{A.dq, qb.pos, qb.nvalid, site.C, V::set1(A.scale)};  // dQ = scale * dS K (Q was packed scaled)
  wsum<V, MODE>(dsbuf, kbase, ngroups, ax.K, site.Wp, site.C, idx, st);
}

// Lane set-up of a key block: lane l holds reordered key x0 + l, seen by queries lo[l] .. lo[l] + cnt[l] - 1.
template <class V>
struct KeyBlock {
  static constexpr int N = V::N;
  int x0, nvalid, lo0, mode, tmax;
  alignas(64) int32_t idx[N];  // lo[l] - lo0
  alignas(64) int32_t cnt[N];  // 0 for padding lanes
  alignas(64) int32_t rel[N];  // rpb x index of slot 0: key - lo + K - 1
  i64 pos[N];

  void init(const Geo<V>& g, i64 b, int row, i64 h, int x0_) {
    const Axis& a = g.ax[2];
    x0 = x0_;
    nvalid = std::min(N, g.W - x0);
    lo0 = a.lo[x0];
    bool ident = true;
    int top = 0;
    tmax = 0;
    for (int l = 0; l < N; ++l) {
      if (l < nvalid) {
        int p = x0 + l;
        idx[l] = a.lo[p] - lo0;
        cnt[l] = a.cnt[p];
        rel[l] = p - a.lo[p] + a.K - 1;
        pos[l] = g.pos(b, row, p, h);
        tmax = std::max(tmax, cnt[l]);
      } else {
        idx[l] = l;
        cnt[l] = 0;
        rel[l] = a.K - 1;
        pos[l] = 0;
      }
      ident = ident && idx[l] == l;
      top = std::max(top, idx[l]);
    }
    mode = ident ? 0 : (top + tmax - 1 < 2 * N ? 1 : 2);
  }
};

// Pass 2 (key-centric): dK and dV of one key block from every (query, key) pair that touches it.
template <class V, int MODE>
void bwd_kv_block(const BwdArgs<V>& A, i64 b, i64 h, int row, const KeyBlock<V>& kb, typename V::scalar* pbuf,
                  typename V::scalar* dsbuf, const typename V::scalar** qbase, const typename V::scalar** dobase) {
  using T = typename V::scalar;
  constexpr int N = V::N;
  const Site<V> site(*A.g, b, h);
  const Geo<V>& g = site.g;
  const Axis &az = site.az, &ay = site.ay, &ax = site.ax;
  const T* kblk = site.at(A.k, row, site.C, kb.x0);
  const T* vblk = site.at(A.v, row, site.CV, kb.x0);
  const typename V::I idx = V::iload(kb.idx), cntv = V::iload(kb.cnt), rel0 = V::iload(kb.rel);
  const int kz = row / ay.L, ky = row % ay.L;
  V s[8], dp[8];
  i64 n = 0, ngroups = 0;
  for (int qz = az.lo[kz]; qz < az.lo[kz] + az.cnt[kz]; ++qz) {
    const int rz = kz - qz + az.K - 1;
    for (int qy = ay.lo[ky]; qy < ay.lo[ky] + ay.cnt[ky]; ++qy) {
      const int ry = ky - qy + ay.K - 1;
      const i64 qrow = (i64)qz * ay.L + qy;
      const T* qb = site.at(A.q, qrow, site.C, kb.lo0);
      const T* dob = site.at(A.dout, qrow, site.CV, kb.lo0);
      const T* lb = site.at(A.lse, qrow, 1, kb.lo0);
      const T* db = site.at(A.delta, qrow, 1, kb.lo0);
      const T* trow = A.rpb ? A.rpb + ((h * g.TZ + rz) * g.TY + ry) * g.TXp : nullptr;
      qbase[ngroups] = qb;
      dobase[ngroups++] = dob;
      for (int t0 = 0; t0 < kb.tmax; t0 += 8) {
        const int nt = std::min(8, kb.tmax - t0);
        dots<V, MODE>(kblk, qb + t0, site.Wp, site.C, idx, nt, s);
        dots<V, MODE>(vblk, dob + t0, site.Wp, site.CV, idx, nt, dp);
        for (int tt = 0; tt < nt; ++tt) {
          const int t = t0 + tt;
          V sc = trow ? s[tt] + bias<V>(trow, V::imax0(V::iadd(rel0, -t)), g.small_table) : s[tt];
          V p = V::exp(sc - win<MODE, V>(lb + t, idx));
          p = V::select(V::lt(t, cntv), p, V::zero());
          V ds = p * (dp[tt] - win<MODE, V>(db + t, idx));
          p.store(pbuf + n * N);
          ds.store(dsbuf + n * N);
          ++n;
        }
      }
    }
  }
  LaneStore<V> sv{A.dv, kb.pos, kb.nvalid, site.CV, V::set1(T(1))};
  wsum<V, MODE>(pbuf, dobase, ngroups, kb.tmax, site.Wp, site.CV, idx, sv);
  LaneStore<V> sk{A.dk, kb.pos, kb.nvalid, site.C, V::set1(T(1))};
  wsum<V, MODE>(dsbuf, qbase, ngroups, kb.tmax, site.Wp, site.C, idx, sk);
}

template <class T>
std::vector<at::Tensor> backward_impl(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v, const c10::optional<at::Tensor>& rpb, const at::Tensor& out,
                                      const at::Tensor& lse, at::IntArrayRef kernel, at::IntArrayRef dilation,
                                      double scale) {
  using V = typename VecFor<T>::type;
  constexpr int N = V::N;
  Geo<V> g;
  g.init(q, v, kernel, dilation);
  at::Tensor hq, hk, hv, hdo, hl, hd;
  const T* qp = pack<V>(q, g, scale, 0, hq);
  const T* kp = pack<V>(k, g, 1.0, 1, hk);
  const T* vp = pack<V>(v, g, 1.0, 2, hv);
  const T* dop = pack<V>(dout, g, 1.0, 3, hdo);
  const T* lsep = pack_rows<V>(lse, at::Tensor(), at::Tensor(), g, 4, hl);
  const T* delp = pack_rows<V>(at::Tensor(), dout, out, g, 5, hd);
  const i64 TT = (i64)g.TZ * g.TY * g.TX;
  const at::Tensor rp = rpb.has_value() ? padded_rpb(*rpb, g) : at::Tensor();
  const at::Tensor part = rpb.has_value() ? at::zeros({g.B, g.H, g.R, TT}, q.options()) : at::Tensor();
  at::Tensor dq = at::empty(q.sizes(), q.options()), dk = at::empty(k.sizes(), k.options());
  at::Tensor dv = at::empty(v.sizes(), v.options());
  BwdArgs<V> A{&g, qp, kp, vp, dop, lsep, delp, rp.defined() ? rp.data_ptr<T>() : nullptr, dq.data_ptr<T>(),
               dk.data_ptr<T>(), dv.data_ptr<T>(), part.defined() ? part.data_ptr<T>() : nullptr, (T)scale};
  struct QScratch {
    std::vector<T> ds;
    std::vector<const T*> kbase;
  };
  for_each_block<V, QueryBlock<V>>(
      g, [&] { return QScratch{std::vector<T>(g.kn * N + N), std::vector<const T*>(g.kn / g.ax[2].K)}; },
      [&](auto mode, QScratch& w, i64 b, i64 h, int row, const QueryBlock<V>& qb) {
        bwd_q_block<V, decltype(mode)::value>(A, b, h, row, qb, w.ds.data(), w.kbase.data());
      });
  const i64 pairs = (i64)g.ax[0].max_cnt * g.ax[1].max_cnt * g.ax[2].max_cnt + 8;
  struct KScratch {
    std::vector<T> p, ds;
    std::vector<const T*> qbase, dobase;
  };
  for_each_block<V, KeyBlock<V>>(
      g,
      [&] {
        return KScratch{std::vector<T>(pairs * N), std::vector<T>(pairs * N), std::vector<const T*>(pairs),
                        std::vector<const T*>(pairs)};
      },
      [&](auto mode, KScratch& w, i64 b, i64 h, int row, const KeyBlock<V>& kb) {
        bwd_kv_block<V, decltype(mode)::value>(A, b, h, row, kb, w.p.data(), w.ds.data(), w.qbase.data(),
                                               w.dobase.data());
      });
  at::Tensor drpb;
  if (part.defined()) {
    // Fixed summation order (batch, then rows) whatever the thread count: the rpb gradient is deterministic.
    drpb = at::empty({g.H, g.TZ, g.TY, g.TX}, q.options());
    const T* pp = part.data_ptr<T>();
    T* dr = drpb.data_ptr<T>();
    at::parallel_for(0, g.H, 1, [&](i64 begin, i64 end) {
      for (i64 h = begin; h < end; ++h) {
        T* o = dr + h * TT;
        std::fill(o, o + TT, T(0));
        for (i64 b = 0; b < g.B; ++b) {
          for (i64 r = 0; r < g.R; ++r) {
            const T* src = pp + ((b * g.H + h) * g.R + r) * TT;
            for (i64 t = 0; t < TT; ++t) o[t] += src[t];
          }
        }
      }
    });
  } else {
    drpb = at::empty({0}, q.options());
  }
  return {dq, dk, dv, drpb};
}

// ------------------------------------------------------------------------------------------------------------------
// entry points

void check(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "hiervit_cpp: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.dim() == 6, "hiervit_cpp: ", name, " must be [B, L0, L1, L2, heads, dim], got ", t.sizes());
  TORCH_CHECK(t.stride(5) == 1, "hiervit_cpp: ", name, " needs a unit channel stride");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "hiervit_cpp: ", name,
              " must be float32 or float64");
}

// An absent or undefined rpb as nullopt, else a contiguous copy (view) of it.
c10::optional<at::Tensor> contiguous_bias(const c10::optional<at::Tensor>& rpb) {
  if (rpb.has_value() && rpb->defined()) return rpb->contiguous();
  return c10::nullopt;
}

void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::IntArrayRef kernel,
               at::IntArrayRef dilation) {
  check(q, "q");
  check(k, "k");
  check(v, "v");
  TORCH_CHECK(kernel.size() == 3 && dilation.size() == 3, "hiervit_cpp: kernel and dilation need 3 entries");
  for (int a = 0; a < 3; ++a) {
    TORCH_CHECK(kernel[a] >= 1 && dilation[a] >= 1 && kernel[a] * dilation[a] <= q.size(1 + a),
                "hiervit_cpp: kernel * dilation must not exceed the axis length on axis ", a);
  }
}

std::vector<at::Tensor> na_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const c10::optional<at::Tensor>& rpb, at::IntArrayRef kernel,
                                   at::IntArrayRef dilation, double scale) {
  check_qkv(q, k, v, kernel, dilation);
  const c10::optional<at::Tensor> bias = contiguous_bias(rpb);
  if (q.scalar_type() == at::kDouble) return forward_impl<double>(q, k, v, bias, kernel, dilation, scale);
  return forward_impl<float>(q, k, v, bias, kernel, dilation, scale);
}

std::vector<at::Tensor> na_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                    const at::Tensor& v, const c10::optional<at::Tensor>& rpb, const at::Tensor& out,
                                    const at::Tensor& lse, at::IntArrayRef kernel, at::IntArrayRef dilation,
                                    double scale) {
  check_qkv(q, k, v, kernel, dilation);
  check(dout, "dout");
  check(out, "out");
  TORCH_CHECK(lse.scalar_type() == at::kFloat && lse.dim() == 5,
              "hiervit_cpp: lse must be float32 [B, L0, L1, L2, heads]");
  const c10::optional<at::Tensor> bias = contiguous_bias(rpb);
  if (q.scalar_type() == at::kDouble) {
    return backward_impl<double>(dout, q, k, v, bias, out, lse, kernel, dilation, scale);
  }
  return backward_impl<float>(dout, q, k, v, bias, out, lse, kernel, dilation, scale);
}

int64_t simd_width() { return VecF::N; }

}  // namespace

TORCH_LIBRARY(hiervit_cpp, m) {
  m.def("na_forward(Tensor q, Tensor k, Tensor v, Tensor? rpb, int[] kernel, int[] dilation, float scale) "
        "-> Tensor[]");
  m.def("na_backward(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor? rpb, Tensor out, Tensor lse, int[] kernel, "
        "int[] dilation, float scale) -> Tensor[]");
  m.def("simd_width", &simd_width);
}

TORCH_LIBRARY_IMPL(hiervit_cpp, CPU, m) {
  m.impl("na_forward", &na_forward);
  m.impl("na_backward", &na_backward);
}
