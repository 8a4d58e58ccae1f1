// Fused routed (gathered-block) attention on the CPU, forward and backward (semantics: see the package docstring).
//
// Layout: q [BH, Nq, Tq, d], k [BH, Nk, Tk, d], v [BH, Nk, Tk, dv], idx [BH, Nq, topk] (int64), all contiguous.
// One item is one query block of one (batch, head): its routed K/V blocks are copied into per-thread buffers
// (`topk * Tk` rows, and transposed where they are the right operand of a product; with topk = 1 the untransposed
// block is used in place), the scores of a tile of its query rows against them are one small matrix product, the
// exact row softmax runs in that cache-resident buffer, and the weighted sum is a second product. Nothing of the size
// of the gathered K/V or of the scores of all items is ever written to memory. The products run on a register-blocked
// AVX-512 kernel for fp32 (see mm_block), else on the BLAS that libtorch exports (MKL on x86 wheels; ATen's cpublas
// wrapper is not an exported symbol).
//
// Forward: parallel over items; saves the output and the log-sum-exp.
// Backward, deterministic without atomics: parallel over (batch, head); one thread owns the dK/dV of its
// (batch, head) and walks its query blocks in order, recomputing P from the saved log-sum-exp:
//   dV_g += P^T dO,  dS = P (dO V_g^T - rowsum(dO o O)),  dQ = scale dS K_g,  dK_g += scale dS^T Q,
// then adds the gathered-block gradients into the blocks they were copied from (with topk = 1 the GEMMs accumulate
// into dK/dV directly).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

// Fortran BLAS, as exported by libtorch_cpu (LP64: 32-bit integers).
extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc);
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
}

namespace {

using i64 = int64_t;

void blas_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
               const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
               const int* ldc) {
  sgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void blas_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
               const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
               const int* ldc) {
  dgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// Scores of at most this many elements per query-row tile (a per-thread buffer that stays in L2).
constexpr i64 kTileElements = 16384;
// A (batch, head)'s K (or V) is transposed once into a per-thread buffer of at most this many elements when query
// blocks route to several key blocks (each key block then serves topk query blocks on average).
constexpr i64 kTransposedElements = 1 << 20;

// Row-major C[M, N] = alpha op(A)[M, K] B[K, N] (+ C if accumulate), op(A) = A^T if ta; B is row-major (callers
// pass transposed copies where a product needs B^T). On the column-major BLAS: C^T = B^T op(A)^T. Every extent is
// per item and checked to fit an int in geometry().
template <class T>
void mm(bool ta, i64 M, i64 N, i64 K, T alpha, const T* A, i64 lda, const T* B, i64 ldb, bool accumulate, T* C,
        i64 ldc) {
  const char a = ta ? 'T' : 'N', b = 'N';
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
  const T beta = accumulate ? T(1) : T(0);
  blas_gemm(&b, &a, &m, &n, &k, &alpha, B, &la, A, &lb, &beta, C, &lc);
}

#if defined(__AVX512F__)
// fp32 with AVX-512: a register-blocked kernel instead of BLAS, whose per-call overhead and packing dominate at these
// extents (64 x 64 x 32 and smaller). A may be either way round, as its elements are broadcast one at a time. R rows
// of C times NV vectors of 16 columns live in registers for the whole K loop; the last vector of a row is masked.
template <int R, int NV>
inline void mm_block(i64 K, float alpha, const float* A, i64 ars, i64 acs, const float* B, i64 ldb, bool accumulate,
                     float* C, i64 ldc, __mmask16 last) {
  // every loop over r and v is unrolled completely, so that acc is scalarised into registers (not spilled)
  __m512 acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (i64 k = 0; k < K; ++k) {
    const float* b = B + k * ldb;
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV - 1; ++v) bv[v] = _mm512_loadu_ps(b + 16 * v);
    bv[NV - 1] = _mm512_maskz_loadu_ps(last, b + 16 * (NV - 1));
    const float* a = A + k * acs;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 ar = _mm512_set1_ps(a[r * ars]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(ar, bv[v], acc[r][v]);
    }
  }
  const __m512 al = _mm512_set1_ps(alpha);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    float* c = C + r * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const __mmask16 m = v == NV - 1 ? last : static_cast<__mmask16>(0xFFFF);
      __m512 x = _mm512_mul_ps(acc[r][v], al);
      if (accumulate) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, c + 16 * v));
      _mm512_mask_storeu_ps(c + 16 * v, m, x);
    }
  }
}

template <int R>
inline void mm_rows(i64 N, i64 K, float alpha, const float* A, i64 ars, i64 acs, const float* B, i64 ldb,
                    bool accumulate, float* C, i64 ldc) {
  for (i64 n0 = 0; n0 < N; n0 += 64) {
    const i64 w = std::min<i64>(64, N - n0);
    const int nv = static_cast<int>((w + 15) / 16);
    const __mmask16 last = w % 16 ? static_cast<__mmask16>((1u << (w % 16)) - 1u) : static_cast<__mmask16>(0xFFFF);
    switch (nv) {
      case 1: mm_block<R, 1>(K, alpha, A, ars, acs, B + n0, ldb, accumulate, C + n0, ldc, last); break;
      case 2: mm_block<R, 2>(K, alpha, A, ars, acs, B + n0, ldb, accumulate, C + n0, ldc, last); break;
      case 3: mm_block<R, 3>(K, alpha, A, ars, acs, B + n0, ldb, accumulate, C + n0, ldc, last); break;
      default: mm_block<R, 4>(K, alpha, A, ars, acs, B + n0, ldb, accumulate, C + n0, ldc, last); break;
    }
  }
}

// C in blocks of RB rows (the tail of M in one smaller block).
template <int RB>
void mm_all(i64 M, i64 N, i64 K, float alpha, const float* A, i64 ars, i64 acs, const float* B, i64 ldb,
            bool accumulate, float* C, i64 ldc) {
  i64 m0 = 0;
  for (; m0 + RB <= M; m0 += RB)
    mm_rows<RB>(N, K, alpha, A + m0 * ars, ars, acs, B, ldb, accumulate, C + m0 * ldc, ldc);
  A += m0 * ars;
  C += m0 * ldc;
  switch (M - m0) {
    case 7: mm_rows<7>(N, K, alpha, A, ars, acs, B, ldb, accumulate, C, ldc); break;
    case 6: mm_rows<6>(N, K, alpha, A, ars, acs, B, ldb, accumulate, C, ldc); break;
    case 5: mm_rows<5>(N, K, alpha, A, ars, acs, B, ldb, accumulate, C, ldc); break;
    case 4: mm_rows<4>(N, K, alpha, A, ars, acs, B, ldb, accumulate, C, ldc); break;
    case 3: mm_rows<3>(N, K, alpha, A, ars, acs, B, ldb, accumulate, C, ldc); break;
    case 2: mm_rows<2>(N, K, alpha, A, ars, acs, B, ldb, accumulate, C, ldc); break;
    case 1: mm_rows<1>(N, K, alpha, A, ars, acs, B, ldb, accumulate, C, ldc); break;
    default: break;
  }
}

template <>
void mm<float>(bool ta, i64 M, i64 N, i64 K, float alpha, const float* A, i64 lda, const float* B, i64 ldb,
               bool accumulate, float* C, i64 ldc) {
  const i64 ars = ta ? 1 : lda, acs = ta ? lda : 1;  // element (m, k) of op(A) is A[m * ars + k * acs]
  // 16-24 accumulators: 6 rows of 64 columns, or 8 rows where C has at most 32 (fewer leave the FMA latency exposed;
  // measured at 64 x 64 x 32 and 64 x 32 x 64: 175 and 165 GFLOP/s on one core, MKL's sgemm 60)
  if (N > 32)
    mm_all<6>(M, N, K, alpha, A, ars, acs, B, ldb, accumulate, C, ldc);
  else
    mm_all<8>(M, N, K, alpha, A, ars, acs, B, ldb, accumulate, C, ldc);
}
#endif

// x[i] <- exp(x[i] - shift) for i < n; returns the sum of the new values.
template <class T>
T exp_shift_sum(T* x, i64 n, T shift) {
  T sum = 0;
  for (i64 i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - shift);
    sum += x[i];
  }
  return sum;
}

#if defined(__AVX512F__)
// exp on 16 lanes: x = m ln2 + r with |r| <= ln2 / 2 (ln2 split in two for exactness), Cephes' degree-7 polynomial
// for e^r, then scaled by 2^m (scalef flushes to 0 below the float range).
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.5f)), _mm512_set1_ps(-104.0f));
  const __m512 m = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(m, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(m, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, m);
}

template <>
float exp_shift_sum<float>(float* x, i64 n, float shift) {
  const __m512 s = _mm512_set1_ps(shift);
  __m512 acc = _mm512_setzero_ps();
  i64 i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), s));
    _mm512_storeu_ps(x + i, e);
    acc = _mm512_add_ps(acc, e);
  }
  if (i < n) {
    const __mmask16 tail = static_cast<__mmask16>((1u << (n - i)) - 1u);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, x + i), s));
    _mm512_mask_storeu_ps(x + i, tail, e);
    acc = _mm512_mask_add_ps(acc, tail, acc, e);
  }
  return _mm512_reduce_add_ps(acc);
}
#elif defined(__AVX2__)
// The same exp on 8 lanes; 2^m is built in the exponent bits (the clamp keeps m within the normal range).
inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3f)), _mm256_set1_ps(-87.3f));
  const __m256 m = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(m, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(m, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(m), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

template <>
float exp_shift_sum<float>(float* x, i64 n, float shift) {
  const __m256 s = _mm256_set1_ps(shift);
  __m256 acc = _mm256_setzero_ps();
  i64 i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
    _mm256_storeu_ps(x + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  float sum = 0.f;
  for (int l = 0; l < 8; ++l) sum += lanes[l];
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - shift);
    sum += x[i];
  }
  return sum;
}
#endif

struct Geometry {
  i64 BH, Nq, Tq, Nk, Tk, d, dv, topk;
  i64 nk() const { return topk * Tk; }
  // query rows per score tile: the whole block when it fits the tile budget
  i64 rows() const { return std::max<i64>(1, std::min<i64>(Tq, kTileElements / nk())); }
};

Geometry geometry(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& idx) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && idx.dim() == 3,
              "routed_cpu: expects q, k, v as [BH, blocks, tokens, dim] and idx as [BH, Nq, topk]");
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous() && idx.is_contiguous(),
              "routed_cpu: inputs must be contiguous");
  TORCH_CHECK(idx.scalar_type() == at::kLong, "routed_cpu: idx must be int64");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "routed_cpu: q, k, v must share a dtype");
  Geometry g{q.size(0), q.size(1), q.size(2), k.size(1), k.size(2), q.size(3), v.size(3), idx.size(2)};
  TORCH_CHECK(k.size(0) == g.BH && v.size(0) == g.BH && idx.size(0) == g.BH && idx.size(1) == g.Nq &&
                  k.size(3) == g.d && v.size(1) == g.Nk && v.size(2) == g.Tk,
              "routed_cpu: mismatched shapes");
  TORCH_CHECK(g.nk() * std::max(g.d, g.dv) <= std::numeric_limits<int>::max() &&
                  g.Tq * std::max(g.d, g.dv) <= std::numeric_limits<int>::max(),
              "routed_cpu: one query block's routed keys exceed the 32-bit BLAS extents");
  // bounds are checked here too (the op checks them already) so that a direct call cannot read out of range
  const i64* ip = idx.data_ptr<i64>();
  for (i64 i = 0, n = idx.numel(); i < n; ++i)
    TORCH_CHECK(ip[i] >= 0 && ip[i] < g.Nk, "routed_cpu: idx values must be in [0, Nk=", g.Nk, "), got ", ip[i]);
  return g;
}

// Pointers to the routed K and V rows of one item: the block itself for topk = 1, else copies in kg / vg (a null
// buffer is not filled: its pointer is not used).
template <class T>
void gather(const Geometry& g, const T* k, const T* v, const i64* sel, T* kg, T* vg, const T** K, const T** V,
            i64 bh) {
  const i64 kb = g.Tk * g.d, vb = g.Tk * g.dv;
  if (g.topk == 1) {
    *K = k + (bh * g.Nk + sel[0]) * kb;
    *V = v + (bh * g.Nk + sel[0]) * vb;
    return;
  }
  for (i64 j = 0; j < g.topk; ++j) {
    if (kg) std::memcpy(kg + j * kb, k + (bh * g.Nk + sel[j]) * kb, sizeof(T) * kb);
    if (vg) std::memcpy(vg + j * vb, v + (bh * g.Nk + sel[j]) * vb, sizeof(T) * vb);
  }
  *K = kg;
  *V = vg;
}

// dst[0:n] = src[0:n] for the short runs of gather_t (a memcpy call per run of 4 floats cost more than the products).
template <class T>
inline void copy_run(T* dst, const T* src, i64 n) {
  for (i64 i = 0; i < n; ++i) dst[i] = src[i];
}

#if defined(__AVX512F__)
template <>
inline void copy_run<float>(float* dst, const float* src, i64 n) {
  i64 i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, _mm512_loadu_ps(src + i));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1u);
    _mm512_mask_storeu_ps(dst + i, m, _mm512_maskz_loadu_ps(m, src + i));
  }
}
#endif

// The routed rows of x (`[BH, Nk, Tk, c]`) transposed, `[c, topk * Tk]`: the row-major right operand of Q K^T / dO V^T.
// From x itself (`whole` null), or as runs of Tk columns of `whole`, the (batch, head)'s x transposed (`[c, Nk * Tk]`,
// see transpose_bh): with small blocks the element-wise transpose costs more than the products.
template <class T>
void gather_t(const Geometry& g, const T* x, i64 c, const i64* sel, i64 bh, const T* whole, T* xt) {
  const i64 nk = g.nk(), nt = g.Nk * g.Tk;
  if (whole) {
    for (i64 ch = 0; ch < c; ++ch)
      for (i64 j = 0; j < g.topk; ++j)
        copy_run(xt + ch * nk + j * g.Tk, whole + ch * nt + sel[j] * g.Tk, g.Tk);
    return;
  }
  for (i64 j = 0; j < g.topk; ++j) {
    const T* blk = x + (bh * g.Nk + sel[j]) * g.Tk * c;
    for (i64 t = 0; t < g.Tk; ++t)
      for (i64 ch = 0; ch < c; ++ch) xt[ch * nk + j * g.Tk + t] = blk[t * c + ch];
  }
}

// x[bh] (`[Nk * Tk, c]`) transposed into xt `[c, Nk * Tk]`.
template <class T>
void transpose_bh(const Geometry& g, const T* x, i64 c, i64 bh, T* xt) {
  const i64 nt = g.Nk * g.Tk;
  const T* src = x + bh * nt * c;
  for (i64 t = 0; t < nt; ++t)
    for (i64 ch = 0; ch < c; ++ch) xt[ch * nt + t] = src[t * c + ch];
}

bool transpose_whole(const Geometry& g) {
  return g.topk > 1 && g.Nk * g.Tk * std::max(g.d, g.dv) <= kTransposedElements;
}

template <class T>
void forward_kernel(const Geometry& g, const T* q, const T* k, const T* v, const i64* idx, T scale, T* out, T* lse) {
  const i64 nk = g.nk(), rows = g.rows();
  at::parallel_for(0, g.BH * g.Nq, 1, [&](i64 begin, i64 end) {
    const bool whole = transpose_whole(g);
    std::vector<T> kt(g.d * nk), vg(g.topk > 1 ? nk * g.dv : 0), s(rows * nk), inv(rows);
    std::vector<T> k_bh(whole ? g.d * g.Nk * g.Tk : 0);
    i64 cached = -1;  // the (batch, head) whose K^T is in k_bh (items of one chunk are consecutive)
    for (i64 item = begin; item < end; ++item) {
      const i64* sel = idx + item * g.topk;
      const i64 bh = item / g.Nq;
      if (whole && bh != cached) {
        transpose_bh(g, k, g.d, bh, k_bh.data());
        cached = bh;
      }
      const T *K, *V;
      gather<T>(g, k, v, sel, nullptr, vg.data(), &K, &V, bh);  // only V: the scores take K transposed
      gather_t(g, k, g.d, sel, bh, whole ? k_bh.data() : nullptr, kt.data());
      for (i64 r0 = 0; r0 < g.Tq; r0 += rows) {
        const i64 nr = std::min(rows, g.Tq - r0);
        const i64 row = item * g.Tq + r0;  // flat query row
        mm<T>(false, nr, nk, g.d, scale, q + row * g.d, g.d, kt.data(), nk, false, s.data(), nk);  // [nr, nk]
        T* o = out + row * g.dv;
        T* l = lse + row;
        for (i64 r = 0; r < nr; ++r) {
          T* sr = s.data() + r * nk;
          const T m = *std::max_element(sr, sr + nk);
          const T sum = exp_shift_sum(sr, nk, m);
          inv[r] = T(1) / sum;
          l[r] = m + std::log(sum);
        }
        mm<T>(false, nr, g.dv, nk, T(1), s.data(), nk, V, g.dv, false, o, g.dv);  // [nr, dv]
        for (i64 r = 0; r < nr; ++r)
          for (i64 c = 0; c < g.dv; ++c) o[r * g.dv + c] *= inv[r];
      }
    }
  });
}

template <class T>
void backward_kernel(const Geometry& g, const T* dout, const T* q, const T* k, const T* v, const i64* idx,
                     const T* out, const T* lse, T scale, T* dq, T* dk, T* dv) {
  const i64 nk = g.nk(), rows = g.rows(), kb = g.Tk * g.d, vb = g.Tk * g.dv;
  const bool direct = g.topk == 1;  // the gathered gradients are one block: accumulate into dK / dV in place
  at::parallel_for(0, g.BH, 1, [&](i64 begin, i64 end) {
    std::vector<T> kg(direct ? 0 : nk * g.d), kt(g.d * nk), vt(g.dv * nk);
    std::vector<T> dkg(direct ? 0 : nk * g.d), dvg(direct ? 0 : nk * g.dv);
    std::vector<T> p(rows * nk), dp(rows * nk), delta(rows);
    const bool whole = transpose_whole(g);
    std::vector<T> k_bh(whole ? g.d * g.Nk * g.Tk : 0), v_bh(whole ? g.dv * g.Nk * g.Tk : 0);
    for (i64 bh = begin; bh < end; ++bh) {
      if (whole) {
        transpose_bh(g, k, g.d, bh, k_bh.data());
        transpose_bh(g, v, g.dv, bh, v_bh.data());
      }
      std::fill(dk + bh * g.Nk * kb, dk + (bh + 1) * g.Nk * kb, T(0));
      std::fill(dv + bh * g.Nk * vb, dv + (bh + 1) * g.Nk * vb, T(0));
      for (i64 i = 0; i < g.Nq; ++i) {
        const i64 item = bh * g.Nq + i;
        const i64* sel = idx + item * g.topk;
        const T *K, *V;
        gather<T>(g, k, v, sel, kg.data(), nullptr, &K, &V, bh);
        gather_t(g, k, g.d, sel, bh, whole ? k_bh.data() : nullptr, kt.data());
        gather_t(g, v, g.dv, sel, bh, whole ? v_bh.data() : nullptr, vt.data());
        T* DK = direct ? dk + (bh * g.Nk + sel[0]) * kb : dkg.data();
        T* DV = direct ? dv + (bh * g.Nk + sel[0]) * vb : dvg.data();
        for (i64 r0 = 0; r0 < g.Tq; r0 += rows) {
          const i64 nr = std::min(rows, g.Tq - r0);
          const i64 row = item * g.Tq + r0;
          const T* Q = q + row * g.d;
          const T* dO = dout + row * g.dv;
          const T* O = out + row * g.dv;
          const bool accumulate = direct || r0 > 0;
          mm<T>(false, nr, nk, g.d, scale, Q, g.d, kt.data(), nk, false, p.data(), nk);
          for (i64 r = 0; r < nr; ++r) {
            T* pr = p.data() + r * nk;
            exp_shift_sum(pr, nk, lse[row + r]);  // P, recomputed from the saved log-sum-exp
            T acc = 0;
            for (i64 c = 0; c < g.dv; ++c) acc += dO[r * g.dv + c] * O[r * g.dv + c];
            delta[r] = acc;
          }
          mm<T>(true, nk, g.dv, nr, T(1), p.data(), nk, dO, g.dv, accumulate, DV, g.dv);  // dV_g += P^T dO
          mm<T>(false, nr, nk, g.dv, T(1), dO, g.dv, vt.data(), nk, false, dp.data(), nk);  // dP = dO V_g^T
          for (i64 r = 0; r < nr; ++r) {
            T* dr = dp.data() + r * nk;
            const T* pr = p.data() + r * nk;
            for (i64 c = 0; c < nk; ++c) dr[c] = pr[c] * (dr[c] - delta[r]);  // dS / scale
          }
          mm<T>(false, nr, g.d, nk, scale, dp.data(), nk, K, g.d, false, dq + row * g.d, g.d);
          mm<T>(true, nk, g.d, nr, scale, dp.data(), nk, Q, g.d, accumulate, DK, g.d);
        }
        if (!direct) {
          for (i64 j = 0; j < g.topk; ++j) {  // adjoint of the gather (a block listed twice gets both sums)
            T* dkb = dk + (bh * g.Nk + sel[j]) * kb;
            T* dvb = dv + (bh * g.Nk + sel[j]) * vb;
            const T* sk = dkg.data() + j * kb;
            const T* sv = dvg.data() + j * vb;
            for (i64 c = 0; c < kb; ++c) dkb[c] += sk[c];
            for (i64 c = 0; c < vb; ++c) dvb[c] += sv[c];
          }
        }
      }
    }
  });
}

std::vector<at::Tensor> routed_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       const at::Tensor& idx, double scale) {
  const Geometry g = geometry(q, k, v, idx);
  auto out = at::empty({g.BH, g.Nq, g.Tq, g.dv}, q.options());
  auto lse = at::empty({g.BH, g.Nq, g.Tq}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "routed_forward", [&] {
    forward_kernel<scalar_t>(g, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                             idx.data_ptr<i64>(), static_cast<scalar_t>(scale), out.data_ptr<scalar_t>(),
                             lse.data_ptr<scalar_t>());
  });
  return {out, lse};
}

std::vector<at::Tensor> routed_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                        const at::Tensor& v, const at::Tensor& idx, const at::Tensor& out,
                                        const at::Tensor& lse, double scale) {
  const Geometry g = geometry(q, k, v, idx);
  TORCH_CHECK(dout.is_contiguous() && out.is_contiguous() && lse.is_contiguous(),
              "routed_cpu: dout, out, lse must be contiguous");
  TORCH_CHECK(dout.sizes() == out.sizes() && out.size(0) == g.BH && out.size(1) == g.Nq && out.size(2) == g.Tq &&
                  out.size(3) == g.dv && lse.numel() == g.BH * g.Nq * g.Tq,
              "routed_cpu: dout, out, lse do not match q and v");
  TORCH_CHECK(dout.scalar_type() == q.scalar_type() && out.scalar_type() == q.scalar_type() &&
                  lse.scalar_type() == q.scalar_type(),
              "routed_cpu: dout, out, lse must have the dtype of q");
  auto dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "routed_backward", [&] {
    backward_kernel<scalar_t>(g, dout.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                              v.data_ptr<scalar_t>(), idx.data_ptr<i64>(), out.data_ptr<scalar_t>(),
                              lse.data_ptr<scalar_t>(), static_cast<scalar_t>(scale), dq.data_ptr<scalar_t>(),
                              dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>());
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY(hiervit_routed_cpu, m) {
  m.def("routed_forward(Tensor q, Tensor k, Tensor v, Tensor idx, float scale) -> Tensor[]");
  m.def("routed_backward(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor idx, Tensor out, Tensor lse, "
        "float scale) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(hiervit_routed_cpu, CPU, m) {
  m.impl("routed_forward", &routed_forward);
  m.impl("routed_backward", &routed_backward);
}
