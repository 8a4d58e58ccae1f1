// Fused non-causal linear attention on the CPU, forward and backward (semantics: see the package docstring).
//
// Per (batch, head), with S = k^T v ([d, dv]), z = sum_N k, r = q . z and the temperature-scaled state M
// (t alpha S; injective: t alpha S - alpha z mean(v)^T), every mode is out = (q M) * g(r) + c with g = 1 for
// none / injective, 1 / (alpha r + eps) for sum and 1 / max(r, clamp_min) for clamp, and c = mean(v) for injective.
//
// Forward, two passes over the tokens: pass 1 accumulates S and z (and sum v) from k and v in a cache-resident
// register-blocked rank update; a small per-head step turns them into M; pass 2 reads q once and writes the normalised
// output and r. Nothing N-sized is formed besides the output and r.
// Backward, two passes, recomputing rather than reading N-sized intermediates (the saved output is not read):
//   pass A over q, dO: P = dO M^T (one GEMM-shaped product per row block), r = q . z, g, and dO . out = g q . P, so
//     dr = den'(r) (-g^2 q . P), dq = g P + dr z; it accumulates dM = q^T (g dO) and dz = q^T dr;
//   per head: dS = t alpha dM, dt = alpha sum(dM o S), the bias rows of dk and dv;
//   pass B over k, v: dk = v dS^T + dz, dv = k dS (+ the mean(v) gradient for injective).
// Deterministic: large heads are split into a fixed number of token chunks (a function of the shape only, not of
// the thread count) whose partial sums are added in chunk order; the temperature gradient is summed over the batch
// in order. Parallel over (batch x heads x chunks) with at::parallel_for. q, k, v may be any strided views with a
// unit channel stride (e.g. of a fused qkv projection); results are contiguous.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

using i64 = int64_t;

// ------------------------------------------------------------------------------------------------------------------
// SIMD vectors: the same few operations for AVX-512 float / double and a portable fallback the compiler vectorises.

template <class T, int NL>
struct VecG {
  static constexpr int L = NL;
  T v[NL];
  static VecG zero() { VecG r; for (int l = 0; l < L; ++l) r.v[l] = T(0); return r; }
  static VecG set1(T x) { VecG r; for (int l = 0; l < L; ++l) r.v[l] = x; return r; }
  static VecG load(const T* p) { VecG r; for (int l = 0; l < L; ++l) r.v[l] = p[l]; return r; }
  using Mask = int;
  static Mask mask(int n) { return n; }
  static VecG loadm(const T* p, Mask n) { VecG r; for (int l = 0; l < L; ++l) r.v[l] = l < n ? p[l] : T(0); return r; }
  static VecG loadn(const T* p, int n) { return loadm(p, n); }
  void store(T* p) const { for (int l = 0; l < L; ++l) p[l] = v[l]; }
  void storen(T* p, int n) const { for (int l = 0; l < n; ++l) p[l] = v[l]; }
  static VecG fma(const VecG& a, const VecG& b, const VecG& c) {
    VecG r; for (int l = 0; l < L; ++l) r.v[l] = a.v[l] * b.v[l] + c.v[l]; return r;
  }
  VecG operator+(const VecG& o) const { VecG r; for (int l = 0; l < L; ++l) r.v[l] = v[l] + o.v[l]; return r; }
  VecG operator*(const VecG& o) const { VecG r; for (int l = 0; l < L; ++l) r.v[l] = v[l] * o.v[l]; return r; }
  T sum() const { T s = 0; for (int l = 0; l < L; ++l) s += v[l]; return s; }
};

#if defined(__AVX512F__)
struct VecF {
  static constexpr int L = 16;
  __m512 v;
  using Mask = __mmask16;
  static Mask mask(int n) { return static_cast<Mask>(n >= 16 ? 0xFFFF : (1u << n) - 1); }
  static VecF loadm(const float* p, Mask k) { return {_mm512_maskz_loadu_ps(k, p)}; }
  static VecF zero() { return {_mm512_setzero_ps()}; }
  static VecF set1(float x) { return {_mm512_set1_ps(x)}; }
  static VecF load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static VecF loadn(const float* p, int n) { return {_mm512_maskz_loadu_ps(mask(n), p)}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  void storen(float* p, int n) const { _mm512_mask_storeu_ps(p, mask(n), v); }
  static VecF fma(const VecF& a, const VecF& b, const VecF& c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  VecF operator+(const VecF& o) const { return {_mm512_add_ps(v, o.v)}; }
  VecF operator*(const VecF& o) const { return {_mm512_mul_ps(v, o.v)}; }
  float sum() const { return _mm512_reduce_add_ps(v); }
};

struct VecD {
  static constexpr int L = 8;
  __m512d v;
  using Mask = __mmask8;
  static Mask mask(int n) { return static_cast<Mask>(n >= 8 ? 0xFF : (1u << n) - 1); }
  static VecD loadm(const double* p, Mask k) { return {_mm512_maskz_loadu_pd(k, p)}; }
  static VecD zero() { return {_mm512_setzero_pd()}; }
  static VecD set1(double x) { return {_mm512_set1_pd(x)}; }
  static VecD load(const double* p) { return {_mm512_loadu_pd(p)}; }
  static VecD loadn(const double* p, int n) { return {_mm512_maskz_loadu_pd(mask(n), p)}; }
  void store(double* p) const { _mm512_storeu_pd(p, v); }
  void storen(double* p, int n) const { _mm512_mask_storeu_pd(p, mask(n), v); }
  static VecD fma(const VecD& a, const VecD& b, const VecD& c) { return {_mm512_fmadd_pd(a.v, b.v, c.v)}; }
  VecD operator+(const VecD& o) const { return {_mm512_add_pd(v, o.v)}; }
  VecD operator*(const VecD& o) const { return {_mm512_mul_pd(v, o.v)}; }
  double sum() const { return _mm512_reduce_add_pd(v); }
};
#else
using VecF = VecG<float, 8>;
using VecD = VecG<double, 4>;
#endif

template <class T> struct VecOf;
template <> struct VecOf<float> { using type = VecF; };
template <> struct VecOf<double> { using type = VecD; };

// Lanes padded to whole vectors: the row stride of every scratch matrix (so their loads need no mask).
template <class T>
i64 padded(i64 n) {
  constexpr int L = VecOf<T>::type::L;
  return (n + L - 1) / L * L;
}

// ------------------------------------------------------------------------------------------------------------------
// Vector helpers over one row of n values.

template <class T>
T dot(const T* a, const T* b, int n) {
  using V = typename VecOf<T>::type;
  V acc = V::zero();
  for (int j = 0; j < n; j += V::L) acc = V::fma(V::loadn(a + j, n - j), V::loadn(b + j, n - j), acc);
  return acc.sum();
}

// y[0:n] += a * x[0:n]; y is a padded scratch row (whole vectors).
template <class T>
void axpy(T* y, T a, const T* x, int n) {
  using V = typename VecOf<T>::type;
  const V va = V::set1(a);
  for (int j = 0; j < n; j += V::L) V::fma(va, V::loadn(x + j, n - j), V::load(y + j)).store(y + j);
}

// y[0:n] += sum of `rows` rows of x (row stride ldx); y is a padded scratch row.
template <class T>
void colsum(T* y, const T* x, i64 ldx, int rows, int n) {
  using V = typename VecOf<T>::type;
  for (int j = 0; j < n; j += V::L) {
    const typename V::Mask mk = V::mask(n - j);
    V acc = V::load(y + j);
    for (int r = 0; r < rows; ++r) acc = acc + V::loadm(x + r * ldx + j, mk);
    acc.store(y + j);
  }
}

// ------------------------------------------------------------------------------------------------------------------
// Micro-kernels.
//
// apply: Y[rows, 0:m] = X[rows, 0:p] A[0:p, 0:m] for up to 8 rows, X rows strided (ldx), A a padded scratch matrix
// (row stride lda, zero-padded lanes), Y a scratch tile (ldt). Registers: 8 rows x 2 vectors of accumulators.

template <class T, int RB, int MB>
void apply_block(const T* X, i64 ldx, int p, const T* A, i64 lda, T* Y, i64 ldt, int j0) {
  using V = typename VecOf<T>::type;
  V acc[RB][MB];
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 2
    for (int c = 0; c < MB; ++c) acc[r][c] = V::zero();
  const T* a = A + j0;
  for (int i = 0; i < p; ++i, a += lda) {
    V av[MB];
#pragma GCC unroll 2
    for (int c = 0; c < MB; ++c) av[c] = V::load(a + c * V::L);
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) {
      const V x = V::set1(X[r * ldx + i]);
#pragma GCC unroll 2
      for (int c = 0; c < MB; ++c) acc[r][c] = V::fma(x, av[c], acc[r][c]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 2
    for (int c = 0; c < MB; ++c) acc[r][c].store(Y + r * ldt + j0 + c * V::L);
}

template <class T, int RB>
void apply_rows(const T* X, i64 ldx, int p, const T* A, i64 lda, int m, T* Y, i64 ldt) {
  constexpr int L = VecOf<T>::type::L;
  const int nv = (m + L - 1) / L;
  int c = 0;
  for (; c + 2 <= nv; c += 2) apply_block<T, RB, 2>(X, ldx, p, A, lda, Y, ldt, c * L);
  if (c < nv) apply_block<T, RB, 1>(X, ldx, p, A, lda, Y, ldt, c * L);
}

template <class T>
void apply(const T* X, i64 ldx, int rows, int p, const T* A, i64 lda, int m, T* Y, i64 ldt) {
  switch (rows) {
    case 8: apply_rows<T, 8>(X, ldx, p, A, lda, m, Y, ldt); break;
    case 7: apply_rows<T, 7>(X, ldx, p, A, lda, m, Y, ldt); break;
    case 6: apply_rows<T, 6>(X, ldx, p, A, lda, m, Y, ldt); break;
    case 5: apply_rows<T, 5>(X, ldx, p, A, lda, m, Y, ldt); break;
    case 4: apply_rows<T, 4>(X, ldx, p, A, lda, m, Y, ldt); break;
    case 3: apply_rows<T, 3>(X, ldx, p, A, lda, m, Y, ldt); break;
    case 2: apply_rows<T, 2>(X, ldx, p, A, lda, m, Y, ldt); break;
    default: apply_rows<T, 1>(X, ldx, p, A, lda, m, Y, ldt); break;
  }
}

// rank update: C[0:p, 0:m] += X[rows, 0:p]^T Y[rows, 0:m], X and Y rows strided (Y rows unpadded: masked loads),
// C a padded scratch matrix (ldc). Blocks of 8 rows of C x 2 vectors stay in registers over all the rows.

template <class T, int IB, int MB>
void rank_block(const T* X, i64 ldx, const T* Y, i64 ldy, int rows, int m, T* C, i64 ldc, int i0, int j0) {
  using V = typename VecOf<T>::type;
  typename V::Mask mk[MB];
  for (int c = 0; c < MB; ++c) mk[c] = V::mask(m - j0 - c * V::L);  // outside the row loop: keeps acc in registers
  V acc[IB][MB];
#pragma GCC unroll 8
  for (int i = 0; i < IB; ++i)
#pragma GCC unroll 2
    for (int c = 0; c < MB; ++c) acc[i][c] = V::load(C + (i0 + i) * ldc + j0 + c * V::L);
  const T* y = Y + j0;
  const T* x = X + i0;
  for (int n = 0; n < rows; ++n, y += ldy, x += ldx) {
    V yv[MB];
#pragma GCC unroll 2
    for (int c = 0; c < MB; ++c) yv[c] = V::loadm(y + c * V::L, mk[c]);
#pragma GCC unroll 8
    for (int i = 0; i < IB; ++i) {
      const V xv = V::set1(x[i]);
#pragma GCC unroll 2
      for (int c = 0; c < MB; ++c) acc[i][c] = V::fma(xv, yv[c], acc[i][c]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < IB; ++i)
#pragma GCC unroll 2
    for (int c = 0; c < MB; ++c) acc[i][c].store(C + (i0 + i) * ldc + j0 + c * V::L);
}

template <class T, int IB>
void rank_cols(const T* X, i64 ldx, const T* Y, i64 ldy, int rows, int m, T* C, i64 ldc, int i0) {
  constexpr int L = VecOf<T>::type::L;
  const int nv = (m + L - 1) / L;
  int c = 0;
  for (; c + 2 <= nv; c += 2) rank_block<T, IB, 2>(X, ldx, Y, ldy, rows, m, C, ldc, i0, c * L);
  if (c < nv) rank_block<T, IB, 1>(X, ldx, Y, ldy, rows, m, C, ldc, i0, c * L);
}

template <class T>
void rank_update(const T* X, i64 ldx, int p, const T* Y, i64 ldy, int m, int rows, T* C, i64 ldc) {
  for (int i0 = 0; i0 < p; i0 += 8) {
    switch (std::min(8, p - i0)) {
      case 8: rank_cols<T, 8>(X, ldx, Y, ldy, rows, m, C, ldc, i0); break;
      case 7: rank_cols<T, 7>(X, ldx, Y, ldy, rows, m, C, ldc, i0); break;
      case 6: rank_cols<T, 6>(X, ldx, Y, ldy, rows, m, C, ldc, i0); break;
      case 5: rank_cols<T, 5>(X, ldx, Y, ldy, rows, m, C, ldc, i0); break;
      case 4: rank_cols<T, 4>(X, ldx, Y, ldy, rows, m, C, ldc, i0); break;
      case 3: rank_cols<T, 3>(X, ldx, Y, ldy, rows, m, C, ldc, i0); break;
      case 2: rank_cols<T, 2>(X, ldx, Y, ldy, rows, m, C, ldc, i0); break;
      default: rank_cols<T, 1>(X, ldx, Y, ldy, rows, m, C, ldc, i0); break;
    }
  }
}

// ------------------------------------------------------------------------------------------------------------------
// Problem geometry.

enum Mode : int64_t { kNone = 0, kSum = 1, kClamp = 2, kInjective = 3 };

// A [B, H, N, c] tensor as base pointer and element strides (unit channel stride).
template <class T>
struct Rows {
  const T* p;
  i64 sb, sh, sn;
  Rows(const at::Tensor& t)
      : p(t.data_ptr<T>()), sb(t.stride(0)), sh(t.stride(1)), sn(t.stride(2)) {}
  const T* at(i64 b, i64 h, i64 n) const { return p + b * sb + h * sh + n * sn; }
};

struct Geom {
  i64 B, H, N;
  int d, dv;
  i64 ldd, ldv;  // padded row lengths of d- and dv-wide scratch rows
  i64 chunks, chunk_rows;

  template <class T>
  static Geom make(const at::Tensor& q, const at::Tensor& v) {
    Geom g;
    g.B = q.size(0);
    g.H = q.size(1);
    g.N = q.size(2);
    g.d = static_cast<int>(q.size(3));
    g.dv = static_cast<int>(v.size(3));
    g.ldd = padded<T>(g.d);
    g.ldv = padded<T>(g.dv);
    // Token chunks only when there are few heads to spread over the threads; a function of the shape alone, so the
    // summation order (and every bit of the result) does not depend on the thread count.
    const i64 BH = g.B * g.H;
    g.chunks = BH >= 16 ? 1 : std::max<i64>(1, std::min<i64>((16 + BH - 1) / BH, g.N / 256));
    g.chunk_rows = (g.N + g.chunks - 1) / g.chunks;
    return g;
  }
  i64 row0(i64 c) const { return std::min(N, c * chunk_rows); }
  i64 row1(i64 c) const { return std::min(N, (c + 1) * chunk_rows); }
};

// parallel_for grain for items of `work` multiply-adds each: small calls run inline in the calling thread (waking the
// pool costs more than they do, and far more on a loaded machine).
inline i64 grain(i64 work) { return std::max<i64>(1, (i64(1) << 16) / std::max<i64>(1, work)); }

// Rows per rank-update block: X and Y rows of a block stay in L1 across the register blocks.
template <class T>
int rank_rows(const Geom& g) {
  const i64 bytes = static_cast<i64>(sizeof(T)) * (g.ldd + g.ldv);
  return static_cast<int>(std::max<i64>(8, std::min<i64>(128, (16 * 1024 / bytes) / 8 * 8)));
}

// Den factor g(r) and its derivative factor den'(r) for the row-normalised modes.
template <class T>
inline T row_scale(int64_t mode, T r, T alpha, T eps, T cmin) {
  if (mode == kSum) return T(1) / (alpha * r + eps);
  if (mode == kClamp) return T(1) / std::max(r, cmin);
  return T(1);
}

template <class T>
inline T den_slope(int64_t mode, T r, T alpha, T cmin) {
  if (mode == kSum) return alpha;
  return r >= cmin ? T(1) : T(0);  // clamp: no gradient below the bound
}

// ------------------------------------------------------------------------------------------------------------------
// Scheduling. Each op is token passes over (head, chunk) items with a per-head step between them. With one chunk per
// head (enough heads to share out) every head runs all its stages in one task, so its rows are still in cache for
// the second pass and the pool is woken once; otherwise each stage is its own parallel loop over its items.

template <class Scratch, class... Stages>
void schedule(const Geom& g, i64 head_work, i64 row_work, const Stages&... stages) {
  const i64 BH = g.B * g.H;
  if (g.chunks == 1) {
    at::parallel_for(0, BH, grain(head_work + g.N * row_work), [&](i64 begin, i64 end) {
      Scratch scratch;
      for (i64 bh = begin; bh < end; ++bh) (stages(bh, 0, scratch), ...);
    });
    return;
  }
  auto run = [&](const auto& stage) {
    // per-head steps are called with c = -1 over heads, token passes with c >= 0 over (head, chunk) items
    if (stage.per_head) {
      at::parallel_for(0, BH, grain(head_work), [&](i64 begin, i64 end) {
        Scratch scratch;
        for (i64 bh = begin; bh < end; ++bh) stage(bh, 0, scratch);
      });
    } else {
      at::parallel_for(0, BH * g.chunks, grain(g.chunk_rows * row_work), [&](i64 begin, i64 end) {
        Scratch scratch;
        for (i64 it = begin; it < end; ++it) stage(it / g.chunks, it % g.chunks, scratch);
      });
    }
  };
  (run(stages), ...);
}

// A stage: a callable (bh, chunk, scratch) and whether it is a per-head step (its chunk argument is then 0).
template <class F>
struct Stage {
  F f;
  bool per_head;
  template <class S>
  void operator()(i64 bh, i64 c, S& s) const { f(bh, c, s); }
};
template <class F>
Stage<F> pass(F f) { return {f, false}; }
template <class F>
Stage<F> per_head(F f) { return {f, true}; }

// Sum of a head's chunk partials in chunk order into the first chunk's partial (a no-op for one chunk).
template <class T>
T* reduce_chunks(const Geom& g, T* first, i64 part) {
  for (i64 c = 1; c < g.chunks; ++c) {
    const T* src = first + c * part;
    for (i64 e = 0; e < part; ++e) first[e] += src[e];
  }
  return first;
}

// Per-task scratch. With one chunk per head a head's state and partial sums live here (a few KiB per thread); with
// several chunks they are shared between the stages' tasks and live in one buffer per call.
template <class T>
struct Scratch {
  std::vector<T> tile, w, state, part;
};

template <class T>
struct Shared {
  const Geom& g;
  i64 size;
  at::Tensor buf;
  Shared(const Geom& geom, i64 per_item, i64 items, const at::TensorOptions& opts)
      : g(geom), size(per_item), buf(g.chunks > 1 ? at::empty({items * per_item}, opts) : at::Tensor()) {}
  T* at(i64 item, std::vector<T>& local) const {
    if (g.chunks == 1) {
      local.resize(size);
      return local.data();
    }
    return buf.data_ptr<T>() + item * size;
  }
};

// ------------------------------------------------------------------------------------------------------------------
// Forward.

template <class T>
std::vector<at::Tensor> forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const c10::optional<at::Tensor>& temperature, int64_t mode, double alpha_,
                                     double eps_, double cmin_) {
  using V = typename VecOf<T>::type;
  const Geom g = Geom::make<T>(q, v);
  const T alpha = static_cast<T>(alpha_), eps = static_cast<T>(eps_), cmin = static_cast<T>(cmin_);
  const i64 d = g.d, dv = g.dv, ldd = g.ldd, ldv = g.ldv;
  const bool inj = mode == kInjective;
  const Rows<T> Q(q), K(k), Vr(v);
  auto opts = q.options();
  at::Tensor out = at::empty({g.B, g.H, g.N, dv}, opts);
  at::Tensor kv = at::empty({g.B, g.H, d, dv}, opts);
  at::Tensor ksum = at::empty({g.B, g.H, d}, opts);
  at::Tensor rr = at::empty({g.B, g.H, g.N}, opts);
  // per (head, chunk): S [d, ldv], z [ldd], sum v [ldv]; the per-head step sums them into the first chunk's
  // partial, then replaces it by the state: M [d, ldv], z [ldd], c [ldv]
  const i64 part = d * ldv + ldd + ldv;
  const Shared<T> parts(g, part, g.B * g.H * g.chunks, opts);
  const int rb = rank_rows<T>(g);
  const T* tp = temperature.has_value() ? temperature->data_ptr<T>() : nullptr;
  T* kvp = kv.data_ptr<T>();
  T* ksp = ksum.data_ptr<T>();
  T* op = out.data_ptr<T>();
  T* rp = rr.data_ptr<T>();

  auto accumulate = pass([&](i64 bh, i64 c, Scratch<T>& s) {  // S, z, sum v of one chunk
    const i64 b = bh / g.H, h = bh % g.H;
    T* S = parts.at(bh * g.chunks + c, s.part);
    T* z = S + d * ldv;
    T* vs = z + ldd;
    std::fill(S, S + part, T(0));
    for (i64 n0 = g.row0(c); n0 < g.row1(c); n0 += rb) {
      const int rows = static_cast<int>(std::min<i64>(rb, g.row1(c) - n0));
      const T* kr = K.at(b, h, n0);
      const T* vr = Vr.at(b, h, n0);
      rank_update<T>(kr, K.sn, d, vr, Vr.sn, dv, rows, S, ldv);
      colsum<T>(z, kr, K.sn, rows, d);
      if (inj) colsum<T>(vs, vr, Vr.sn, rows, dv);
    }
  });
  auto state = per_head([&](i64 bh, i64, Scratch<T>& s) {  // save k^T v and sum k, build M and c in place
    T* S = reduce_chunks<T>(g, parts.at(bh * g.chunks, s.part), part);
    T* z = S + d * ldv;
    T* cs = z + ldd;
    const T ta = alpha * (tp ? tp[bh % g.H] : T(1));
    for (i64 i = 0; i < d; ++i) std::copy(S + i * ldv, S + i * ldv + dv, kvp + (bh * d + i) * dv);
    std::copy(z, z + d, ksp + bh * d);
    const V vta = V::set1(ta);
    if (inj) {
      for (i64 j = 0; j < dv; ++j) cs[j] /= static_cast<T>(g.N);
      for (i64 i = 0; i < d; ++i) {
        const V az = V::set1(-alpha * z[i]);
        for (i64 j = 0; j < ldv; j += V::L)
          V::fma(az, V::load(cs + j), vta * V::load(S + i * ldv + j)).store(S + i * ldv + j);
      }
    } else {
      std::fill(cs, cs + ldv, T(0));
      for (i64 e = 0; e < d * ldv; e += V::L) (vta * V::load(S + e)).store(S + e);
    }
  });
  auto apply_q = pass([&](i64 bh, i64 c, Scratch<T>& s) {  // out = (q M) g(r) + c, and r
    const i64 b = bh / g.H, h = bh % g.H;
    const T* M = parts.at(bh * g.chunks, s.part);
    const T* zs = M + d * ldv;
    const T* cs = zs + ldd;
    s.tile.resize(8 * ldv);
    for (i64 n0 = g.row0(c); n0 < g.row1(c); n0 += 8) {
      const int rows = static_cast<int>(std::min<i64>(8, g.row1(c) - n0));
      const T* qr = Q.at(b, h, n0);
      apply<T>(qr, Q.sn, rows, d, M, ldv, dv, s.tile.data(), ldv);
      for (int n = 0; n < rows; ++n) {
        const T r = dot<T>(qr + n * Q.sn, zs, d);
        rp[bh * g.N + n0 + n] = r;
        const V sc = V::set1(row_scale<T>(mode, r, alpha, eps, cmin));
        T* o = op + (bh * g.N + n0 + n) * dv;
        const T* y = s.tile.data() + n * ldv;
        for (int j = 0; j < dv; j += V::L) V::fma(V::load(y + j), sc, V::load(cs + j)).storen(o + j, dv - j);
      }
    }
  });
  schedule<Scratch<T>>(g, g.chunks * d * dv, 2 * d * dv, accumulate, state, apply_q);
  return {out, kv, ksum, rr};
}

// ------------------------------------------------------------------------------------------------------------------
// Backward.

template <class T>
std::vector<at::Tensor> backward_impl(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v, const c10::optional<at::Tensor>& temperature,
                                      const at::Tensor& kv, const at::Tensor& ksum, int64_t mode, double alpha_,
                                      double eps_, double cmin_) {
  using V = typename VecOf<T>::type;
  const Geom g = Geom::make<T>(q, v);
  const T alpha = static_cast<T>(alpha_), eps = static_cast<T>(eps_), cmin = static_cast<T>(cmin_);
  const i64 BH = g.B * g.H, d = g.d, dv = g.dv, ldd = g.ldd, ldv = g.ldv;
  const bool inj = mode == kInjective, rownorm = mode == kSum || mode == kClamp;
  const Rows<T> Q(q), K(k), Vr(v), DO(dout);
  auto opts = q.options();
  at::Tensor dq = at::empty({g.B, g.H, g.N, d}, opts);
  at::Tensor dk = at::empty({g.B, g.H, g.N, d}, opts);
  at::Tensor dvv = at::empty({g.B, g.H, g.N, dv}, opts);
  at::Tensor dtb = at::empty({BH}, opts);
  const T* tp = temperature.has_value() ? temperature->data_ptr<T>() : nullptr;
  const T* kvp = kv.data_ptr<T>();
  const T* ksp = ksum.data_ptr<T>();
  const int rb = rank_rows<T>(g);
  // per head: M [d, ldv] (then dS), M^T [dv, ldd] (then dS^T), z [ldd], mean v [ldv], dk bias [ldd], dv bias [ldv]
  const i64 state = d * ldv + dv * ldd + 2 * ldd + 2 * ldv;
  const Shared<T> states(g, state, BH, opts);
  // per (head, chunk): dM [d, ldv], dz [ldd], sum dO [ldv]
  const i64 part = d * ldv + ldd + ldv;
  const Shared<T> parts(g, part, BH * g.chunks, opts);
  T* dqp = dq.data_ptr<T>();
  T* dkp = dk.data_ptr<T>();
  T* dvp = dvv.data_ptr<T>();
  T* dtp = dtb.data_ptr<T>();

  auto build = per_head([&](i64 bh, i64, Scratch<T>& s) {  // M, M^T from the saved state (mean v: one pass over v)
    T* M = states.at(bh, s.state);
    T* MT = M + d * ldv;
    T* zs = MT + dv * ldd;
    T* cs = zs + ldd;
    std::fill(M, M + state, T(0));
    if (inj) {
      colsum<T>(cs, Vr.at(bh / g.H, bh % g.H, 0), Vr.sn, static_cast<int>(g.N), dv);
      for (i64 j = 0; j < dv; ++j) cs[j] /= static_cast<T>(g.N);
    }
    const T ta = alpha * (tp ? tp[bh % g.H] : T(1));
    std::copy(ksp + bh * d, ksp + (bh + 1) * d, zs);
    for (i64 i = 0; i < d; ++i) {
      const T* kvi = kvp + (bh * d + i) * dv;
      const T az = inj ? alpha * zs[i] : T(0);
      for (i64 j = 0; j < dv; ++j) M[i * ldv + j] = ta * kvi[j] - az * cs[j];
      for (i64 j = 0; j < dv; ++j) MT[j * ldd + i] = M[i * ldv + j];
    }
  });
  auto grad_q = pass([&](i64 bh, i64 c, Scratch<T>& s) {  // dq; partial dM, dz, sum dO
    const i64 b = bh / g.H, h = bh % g.H;
    const T* MT = states.at(bh, s.state) + d * ldv;
    const T* zs = MT + dv * ldd;
    T* dM = parts.at(bh * g.chunks + c, s.part);
    T* dz = dM + d * ldv;
    T* dos = dz + ldd;
    std::fill(dM, dM + part, T(0));
    s.tile.resize(8 * ldd);
    s.w.resize(static_cast<size_t>(rb) * ldv);
    for (i64 n0 = g.row0(c); n0 < g.row1(c); n0 += rb) {
      const int rows = static_cast<int>(std::min<i64>(rb, g.row1(c) - n0));
      const T* qr = Q.at(b, h, n0);
      const T* gr = DO.at(b, h, n0);
      for (int s0 = 0; s0 < rows; s0 += 8) {
        const int sr = std::min(8, rows - s0);
        apply<T>(gr + s0 * DO.sn, DO.sn, sr, dv, MT, ldd, d, s.tile.data(), ldd);  // P = dO M^T
        for (int n = s0; n < s0 + sr; ++n) {
          const T* qn = qr + n * Q.sn;
          const T* gn = gr + n * DO.sn;
          const T* pn = s.tile.data() + (n - s0) * ldd;
          T* dqn = dqp + (bh * g.N + n0 + n) * d;
          T* wn = s.w.data() + n * ldv;
          if (rownorm) {
            const T r = dot<T>(qn, zs, d);
            const T gs = row_scale<T>(mode, r, alpha, eps, cmin);
            const T dr = -den_slope<T>(mode, r, alpha, cmin) * gs * gs * dot<T>(qn, pn, d);
            const V vg = V::set1(gs), vr = V::set1(dr);
            for (int j = 0; j < d; j += V::L)
              V::fma(vg, V::load(pn + j), vr * V::load(zs + j)).storen(dqn + j, d - j);
            for (int j = 0; j < dv; j += V::L) (vg * V::loadn(gn + j, dv - j)).store(wn + j);
            axpy<T>(dz, dr, qn, d);
          } else {
            for (int j = 0; j < d; j += V::L) V::load(pn + j).storen(dqn + j, d - j);
            for (int j = 0; j < dv; j += V::L) V::loadn(gn + j, dv - j).store(wn + j);
          }
        }
      }
      if (inj) colsum<T>(dos, gr, DO.sn, rows, dv);
      rank_update<T>(qr, Q.sn, d, s.w.data(), ldv, dv, rows, dM, ldv);  // dM += q^T W
    }
  });
  auto grad_state = per_head([&](i64 bh, i64, Scratch<T>& s) {  // dS, dS^T, bias rows, temperature gradient
    const T* dM = reduce_chunks<T>(g, parts.at(bh * g.chunks, s.part), part);
    const T* dz = dM + d * ldv;
    const T* dos = dz + ldd;
    T* dS = states.at(bh, s.state);
    T* dST = dS + d * ldv;
    const T* zs = dST + dv * ldd;
    const T* cs = zs + ldd;
    T* kb = const_cast<T*>(cs) + ldv;
    T* vb = kb + ldd;
    const T ta = alpha * (tp ? tp[bh % g.H] : T(1));
    T dt = 0;
    for (i64 i = 0; i < d; ++i) {
      dt += dot<T>(dM + i * ldv, kvp + (bh * d + i) * dv, static_cast<int>(dv));
      for (i64 j = 0; j < dv; ++j) dS[i * ldv + j] = ta * dM[i * ldv + j];
      for (i64 j = 0; j < dv; ++j) dST[j * ldd + i] = dS[i * ldv + j];
    }
    dtp[bh] = alpha * dt;
    if (rownorm) {
      std::copy(dz, dz + d, kb);
    } else if (inj) {
      for (i64 i = 0; i < d; ++i) kb[i] = -alpha * dot<T>(dM + i * ldv, cs, static_cast<int>(dv));
      for (i64 j = 0; j < dv; ++j) {
        T sum = 0;
        for (i64 i = 0; i < d; ++i) sum += dM[i * ldv + j] * zs[i];
        vb[j] = (dos[j] - alpha * sum) / static_cast<T>(g.N);
      }
    }
  });
  auto grad_kv = pass([&](i64 bh, i64 c, Scratch<T>& s) {  // dk = v dS^T + dk bias, dv = k dS + dv bias
    const i64 b = bh / g.H, h = bh % g.H;
    const T* dS = states.at(bh, s.state);
    const T* dST = dS + d * ldv;
    const T* kb = dST + dv * ldd + ldd + ldv;
    const T* vb = kb + ldd;
    s.tile.resize(8 * std::max(ldd, ldv));
    for (i64 n0 = g.row0(c); n0 < g.row1(c); n0 += 8) {
      const int rows = static_cast<int>(std::min<i64>(8, g.row1(c) - n0));
      apply<T>(Vr.at(b, h, n0), Vr.sn, rows, dv, dST, ldd, d, s.tile.data(), ldd);
      for (int n = 0; n < rows; ++n) {
        T* o = dkp + (bh * g.N + n0 + n) * d;
        const T* y = s.tile.data() + n * ldd;
        for (int j = 0; j < d; j += V::L) (V::load(y + j) + V::load(kb + j)).storen(o + j, d - j);
      }
      apply<T>(K.at(b, h, n0), K.sn, rows, d, dS, ldv, dv, s.tile.data(), ldv);
      for (int n = 0; n < rows; ++n) {
        T* o = dvp + (bh * g.N + n0 + n) * dv;
        const T* y = s.tile.data() + n * ldv;
        for (int j = 0; j < dv; j += V::L) (V::load(y + j) + V::load(vb + j)).storen(o + j, dv - j);
      }
    }
  });
  schedule<Scratch<T>>(g, g.chunks * d * dv + (inj ? g.N * dv : 0), 4 * d * dv, build, grad_q, grad_state, grad_kv);

  at::Tensor dt;
  if (tp) {  // summed over the batch in order
    dt = at::zeros({g.H}, opts);
    T* o = dt.data_ptr<T>();
    for (i64 b = 0; b < g.B; ++b)
      for (i64 h = 0; h < g.H; ++h) o[h] += dtp[b * g.H + h];
  } else {
    dt = at::empty({0}, opts);
  }
  return {dq, dk, dvv, dt};
}

// ------------------------------------------------------------------------------------------------------------------
// entry points

void check(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu(), "hiervit_linear_cpu: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.dim() == 4, "hiervit_linear_cpu: ", name, " must be [B, heads, N, dim], got ", t.sizes());
  TORCH_CHECK(t.stride(3) == 1, "hiervit_linear_cpu: ", name, " needs a unit channel stride");
  TORCH_CHECK(t.scalar_type() == dtype, "hiervit_linear_cpu: ", name, " must be ", dtype, ", got ", t.scalar_type());
}

void check_call(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const c10::optional<at::Tensor>& temperature, int64_t mode) {
  const at::ScalarType dt = q.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "hiervit_linear_cpu: q must be float32 or float64");
  check(q, "q", dt);
  check(k, "k", dt);
  check(v, "v", dt);
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes().slice(0, 3) == q.sizes().slice(0, 3),
              "hiervit_linear_cpu: q, k [B, heads, N, d] and v [B, heads, N, dv] must agree");
  TORCH_CHECK(mode >= kNone && mode <= kInjective, "hiervit_linear_cpu: unknown mode ", mode);
  if (temperature.has_value()) {
    TORCH_CHECK(temperature->scalar_type() == dt && temperature->is_contiguous() &&
                    temperature->numel() == q.size(1),
                "hiervit_linear_cpu: temperature must be a contiguous [heads] tensor of q's dtype");
  }
}

c10::optional<at::Tensor> present(const c10::optional<at::Tensor>& t) {
  if (t.has_value() && t->defined()) return t;
  return c10::nullopt;
}

std::vector<at::Tensor> linear_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       const c10::optional<at::Tensor>& temperature, int64_t mode, double alpha,
                                       double eps, double clamp_min) {
  const c10::optional<at::Tensor> t = present(temperature);
  check_call(q, k, v, t, mode);
  if (q.scalar_type() == at::kDouble) return forward_impl<double>(q, k, v, t, mode, alpha, eps, clamp_min);
  return forward_impl<float>(q, k, v, t, mode, alpha, eps, clamp_min);
}

std::vector<at::Tensor> linear_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                        const at::Tensor& v, const c10::optional<at::Tensor>& temperature,
                                        const at::Tensor& kv, const at::Tensor& ksum, int64_t mode, double alpha,
                                        double eps, double clamp_min) {
  const c10::optional<at::Tensor> t = present(temperature);
  check_call(q, k, v, t, mode);
  check(dout, "dout", q.scalar_type());
  TORCH_CHECK(dout.sizes() == v.sizes(), "hiervit_linear_cpu: dout must have v's shape");
  TORCH_CHECK(kv.scalar_type() == q.scalar_type() && kv.is_contiguous() && ksum.scalar_type() == q.scalar_type() &&
                  ksum.is_contiguous(),
              "hiervit_linear_cpu: kv and ksum must be contiguous in q's dtype");
  TORCH_CHECK(kv.numel() == q.size(0) * q.size(1) * q.size(3) * v.size(3) &&
                  ksum.numel() == q.size(0) * q.size(1) * q.size(3),
              "hiervit_linear_cpu: kv must be [B, heads, d, dv] and ksum [B, heads, d]");
  if (q.scalar_type() == at::kDouble) {
    return backward_impl<double>(dout, q, k, v, t, kv, ksum, mode, alpha, eps, clamp_min);
  }
  return backward_impl<float>(dout, q, k, v, t, kv, ksum, mode, alpha, eps, clamp_min);
}

int64_t simd_width() { return VecF::L; }

}  // namespace

TORCH_LIBRARY(hiervit_linear_cpu, m) {
  m.def("linear_forward(Tensor q, Tensor k, Tensor v, Tensor? temperature, int mode, float alpha, float eps, "
        "float clamp_min) -> Tensor[]");
  m.def("linear_backward(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor? temperature, Tensor kv, Tensor ksum, "
        "int mode, float alpha, float eps, float clamp_min) -> Tensor[]");
  m.def("simd_width", &simd_width);
}

TORCH_LIBRARY_IMPL(hiervit_linear_cpu, CPU, m) {
  m.impl("linear_forward", &linear_forward);
  m.impl("linear_backward", &linear_backward);
}
