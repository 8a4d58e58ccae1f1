// Fused window attention on the CPU, forward and backward (the plain window mode, see the package docstring).
//
// One task is one (window, head, image). It reads its window's tokens straight out of the heads-last maps
// `[B, H, W, heads, c]` (any strides, unit channel stride): the rolled, padded window slot (iy, ix) holds the map
// token of the per-axis source tables below, or a padding slot (zero q, k, v). The task packs its tokens into small
// per-thread buffers (Q row-major and pre-scaled, K transposed so SIMD lanes run across keys, V row-major), then
// takes blocks of QB queries: S = Q K^T (+ the head's dense bias rows), keys of another shift region (and, in the
// mask padding mode, padding keys) set to -inf, an exact softmax per row (a whole row fits the buffer), O = P V. A
// token lies in exactly one window, so every output row, and in the backward every dK / dV row, is written by one
// task only: no atomics.
//
// Backward per task, recomputing P = exp(S - lse) from the saved log-sum-exp: dP = dO V^T, D = rowsum(P o dP),
// dS = P o (dP - D), dQ = scale dS K, and accumulated over the query blocks in task-local buffers dK = dS^T (scale Q),
// dV = P^T dO. With a bias, the tasks of one (window, head) run in one thread over the images in order, each
// (window, head) summing its dS into its own partial table; the partial tables are summed in a fixed order, so the
// bias gradient is deterministic whatever the thread count. Parallel with at::parallel_for. (fp64 renormalises the
// recomputed rows exactly rather than trust the fp32 lse.)
//
// SIMD through GCC vector extensions (64-byte vectors: one AVX-512 register, two AVX2 registers, or narrower
// elsewhere); fp32 compute, fp64 for fp64 inputs (gradcheck), with std::exp there.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

using i64 = int64_t;

template <class T> struct VT;
template <> struct VT<float> {
  typedef float V __attribute__((vector_size(64)));
  typedef int32_t I __attribute__((vector_size(64)));
};
template <> struct VT<double> {
  typedef double V __attribute__((vector_size(64)));
  typedef int64_t I __attribute__((vector_size(64)));
};

template <class T> using Vec = typename VT<T>::V;
template <class T> constexpr int lanes() { return 64 / sizeof(T); }
template <class T> inline Vec<T> vload(const T* p) { Vec<T> r; std::memcpy(&r, p, sizeof r); return r; }
template <class T> inline void vstore(T* p, Vec<T> v) { std::memcpy(p, &v, sizeof v); }
template <class T> inline Vec<T> vset(T x) { return Vec<T>{} + x; }

// e^x per lane for x <= 0 (the shifted logits; their rounding may pass 0 by an ulp); -inf (and anything below -87)
// gives exactly 0.
inline Vec<float> vexp(Vec<float> x) {
  using V = Vec<float>;
  using I = VT<float>::I;
  const V lo = vset(-87.0f);
  const I small = x < lo;
  const V a = small ? lo : x;
  // Cephes expf: a = k ln2 + r, |r| <= ln2 / 2, degree-5 polynomial for e^r, times 2^k from the exponent bits. Adding
  // 1.5 * 2^23 rounds a / ln2 to the integer k in the low mantissa bits of tm.
  const V magic = vset(12582912.0f);
  const V tm = a * 1.44269504088896341f + magic;
  const V kf = tm - magic;
  const V r = a - kf * 0.693359375f + kf * 2.12194440e-4f;
  V y = vset(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  const V e = y * (V)(((I)tm - (0x4B400000 - 127)) << 23);
  return small ? V{} : e;
}

inline Vec<double> vexp(Vec<double> x) {
  for (int l = 0; l < lanes<double>(); ++l) x[l] = std::exp(x[l]);
  return x;
}

template <class T> inline T hsum(Vec<T> v) {
  T s = 0;
  for (int l = 0; l < lanes<T>(); ++l) s += v[l];
  return s;
}

// Largest of n values (n a multiple of the lanes).
template <class T> T row_max(const T* p, int n) {
  Vec<T> m = vset(-std::numeric_limits<T>::infinity());
  for (int j = 0; j < n; j += lanes<T>()) {
    const Vec<T> x = vload(p + j);
    m = x > m ? x : m;
  }
  T r = m[0];
  for (int l = 1; l < lanes<T>(); ++l) r = std::max(r, m[l]);
  return r;
}

// p = exp(p - sub) in place over n values (a multiple of the lanes); returns their sum.
template <class T> T exp_sum(T* p, int n, T sub) {
  Vec<T> acc{};
  for (int j = 0; j < n; j += lanes<T>()) {
    const Vec<T> e = vexp(vload(p + j) - sub);
    vstore(p + j, e);
    acc += e;
  }
  return hsum<T>(acc);
}

// sum_j a[j] b[j] over n values (a multiple of the lanes).
template <class T> T row_dot(const T* a, const T* b, int n) {
  Vec<T> acc{};
  for (int j = 0; j < n; j += lanes<T>()) acc += vload(a + j) * vload(b + j);
  return hsum<T>(acc);
}

// C[r][0 : NV lanes] = sum_c A[r][c] B[c][0 : NV lanes] for 4 rows r (A row-major, B with K rows of ldb).
template <class T, int NV>
inline void nt4(const T* A, int lda, const T* B, int ldb, int K, T* C, int ldc) {
  constexpr int L = lanes<T>();
  Vec<T> acc[4][NV];
  for (int r = 0; r < 4; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = Vec<T>{};
  for (int c = 0; c < K; ++c) {
    Vec<T> b[NV];
    for (int v = 0; v < NV; ++v) b[v] = vload(B + (i64)c * ldb + v * L);
    for (int r = 0; r < 4; ++r) {
      const Vec<T> a = vset(A[(i64)r * lda + c]);
      for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < 4; ++r)
    for (int v = 0; v < NV; ++v) vstore(C + (i64)r * ldc + v * L, acc[r][v]);
}

// C[rows][cols] = A[rows][K] B^T with B given transposed, `Bt[K][cols]`; rows a multiple of 4, cols of the lanes.
template <class T>
void gemm_nt(const T* A, int lda, const T* Bt, int ldb, int K, int rows, int cols, T* C, int ldc) {
  constexpr int L = lanes<T>();
  for (int r = 0; r < rows; r += 4) {
    int j = 0;
    for (; j + 4 * L <= cols; j += 4 * L) nt4<T, 4>(A + (i64)r * lda, lda, Bt + j, ldb, K, C + (i64)r * ldc + j, ldc);
    switch ((cols - j) / L) {
      case 3: nt4<T, 3>(A + (i64)r * lda, lda, Bt + j, ldb, K, C + (i64)r * ldc + j, ldc); break;
      case 2: nt4<T, 2>(A + (i64)r * lda, lda, Bt + j, ldb, K, C + (i64)r * ldc + j, ldc); break;
      case 1: nt4<T, 1>(A + (i64)r * lda, lda, Bt + j, ldb, K, C + (i64)r * ldc + j, ldc); break;
      default: break;
    }
  }
}

// C[r][0 : NV lanes] = sum_j A[r][j] B[j][0 : NV lanes] for 8 rows r.
template <class T, int NV>
inline void nn8(const T* A, int lda, const T* B, int ldb, int K, T* C, int ldc) {
  constexpr int L = lanes<T>();
  Vec<T> acc[8][NV];
  for (int r = 0; r < 8; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = Vec<T>{};
  for (int j = 0; j < K; ++j) {
    Vec<T> b[NV];
    for (int v = 0; v < NV; ++v) b[v] = vload(B + (i64)j * ldb + v * L);
    for (int r = 0; r < 8; ++r) {
      const Vec<T> a = vset(A[(i64)r * lda + j]);
      for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < 8; ++r)
    for (int v = 0; v < NV; ++v) vstore(C + (i64)r * ldc + v * L, acc[r][v]);
}

// C[rows][cols] = A[rows][K] B[K][cols]; rows a multiple of 8, cols of the lanes.
template <class T>
void gemm_nn(const T* A, int lda, const T* B, int ldb, int K, int rows, int cols, T* C, int ldc) {
  constexpr int L = lanes<T>();
  for (int r = 0; r < rows; r += 8) {
    int j = 0;
    for (; j + 2 * L <= cols; j += 2 * L) nn8<T, 2>(A + (i64)r * lda, lda, B + j, ldb, K, C + (i64)r * ldc + j, ldc);
    if (j < cols) nn8<T, 1>(A + (i64)r * lda, lda, B + j, ldb, K, C + (i64)r * ldc + j, ldc);
  }
}

// Acc[j][0 : NV lanes] += sum_i A[i][j] B[i][0 : NV lanes] for JR columns j of A, over `rows` rows.
template <class T, int JR, int NV>
inline void tn(const T* A, int lda, const T* B, int ldb, int rows, T* Acc, int ldacc) {
  constexpr int L = lanes<T>();
  Vec<T> acc[JR][NV];
  for (int j = 0; j < JR; ++j)
    for (int v = 0; v < NV; ++v) acc[j][v] = vload(Acc + (i64)j * ldacc + v * L);
  for (int i = 0; i < rows; ++i) {
    Vec<T> b[NV];
    for (int v = 0; v < NV; ++v) b[v] = vload(B + (i64)i * ldb + v * L);
    for (int j = 0; j < JR; ++j) {
      const Vec<T> a = vset(A[(i64)i * lda + j]);
      for (int v = 0; v < NV; ++v) acc[j][v] += a * b[v];
    }
  }
  for (int j = 0; j < JR; ++j)
    for (int v = 0; v < NV; ++v) vstore(Acc + (i64)j * ldacc + v * L, acc[j][v]);
}

// Acc[cols_a][cols] += A[rows][cols_a]^T B[rows][cols]; cols_a a multiple of 4, cols of the lanes.
template <class T>
void gemm_tn_acc(const T* A, int lda, const T* B, int ldb, int rows, int cols_a, int cols, T* Acc, int ldacc) {
  constexpr int L = lanes<T>();
  for (int j = 0; j < cols; j += 2 * L) {
    const bool two = j + 2 * L <= cols;
    int ja = 0;
    for (; ja + 8 <= cols_a; ja += 8) {
      if (two) tn<T, 8, 2>(A + ja, lda, B + j, ldb, rows, Acc + (i64)ja * ldacc + j, ldacc);
      else tn<T, 8, 1>(A + ja, lda, B + j, ldb, rows, Acc + (i64)ja * ldacc + j, ldacc);
    }
    if (ja < cols_a) {
      if (two) tn<T, 4, 2>(A + ja, lda, B + j, ldb, rows, Acc + (i64)ja * ldacc + j, ldacc);
      else tn<T, 4, 1>(A + ja, lda, B + j, ldb, rows, Acc + (i64)ja * ldacc + j, ldacc);
    }
  }
}

constexpr int QB = 32;  // queries per block (a multiple of the 4- and 8-row kernels)

inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

// A heads-last map `[B, H, W, heads, c]` by its element strides.
template <class T>
struct Map {
  T* p;
  i64 sb, sy, sx, sh;
  int c;
  explicit Map(const at::Tensor& t)
      : p(static_cast<T*>(t.data_ptr())), sb(t.stride(0)), sy(t.stride(1)), sx(t.stride(2)), sh(t.stride(3)),
        c((int)t.size(4)) {}
  T* at(i64 b, i64 y, i64 x, i64 h) const { return p + b * sb + y * sy + x * sx + h * sh; }
};

// The geometry of one call: windows, slots and, per rolled coordinate of each axis, the map coordinate it holds (-1
// for padding) and its shift region.
struct Geo {
  i64 B, H, W, heads;
  int d, dv, dp, dvp, wh, ww, n, npad, nq, nwy, nwx, table;
  bool mask_pad;
  std::vector<int> ysrc, xsrc, yreg, xreg;

  template <class T>
  void init(const at::Tensor& q, const at::Tensor& v, at::IntArrayRef window, at::IntArrayRef shift,
            at::IntArrayRef pad, bool mask) {
    constexpr int L = lanes<T>();
    B = q.size(0); H = q.size(1); W = q.size(2); heads = q.size(3);
    d = (int)q.size(4); dv = (int)v.size(4);
    dp = round_up(d, L); dvp = round_up(dv, L);
    wh = (int)window[0]; ww = (int)window[1];
    n = wh * ww; npad = round_up(n, L); nq = round_up(n, QB);
    table = (2 * wh - 1) * (2 * ww - 1);
    mask_pad = mask;
    axis((int)H, wh, (int)shift[0], (int)pad[0], (int)pad[1], ysrc, yreg, nwy);
    axis((int)W, ww, (int)shift[1], (int)pad[2], (int)pad[3], xsrc, xreg, nwx);
  }

  static void axis(int len, int w, int s, int before, int after, std::vector<int>& src, std::vector<int>& reg,
                   int& windows) {
    const int lp = len + before + after;
    windows = lp / w;
    src.resize(lp);
    reg.resize(lp);
    for (int r = 0; r < lp; ++r) {
      const int y = (r + s) % lp - before;  // rolled coordinate r holds padded coordinate (r + s) mod lp
      src[r] = (y >= 0 && y < len) ? y : -1;
      reg[r] = s == 0 ? 0 : (r >= lp - w) + (r >= lp - s);  // Swin's slices [0, lp - w), [lp - w, lp - s), [lp - s, lp)
    }
  }
  i64 windows() const { return (i64)nwy * nwx; }
};

// Per-task window tokens: map coordinates of each slot (-1 for padding), query region and key code. A query attends
// to the keys whose code equals its region: padding keys in the mask mode and the lane padding never match.
struct Slots {
  std::vector<int> y, x, qreg, kcode;
  explicit Slots(const Geo& g) : y(g.n), x(g.n), qreg(g.nq, -2), kcode(g.npad, -1) {}
  void fill(const Geo& g, i64 w) {
    const int wy = (int)(w / g.nwx), wx = (int)(w % g.nwx);
    for (int iy = 0, s = 0; iy < g.wh; ++iy) {
      for (int ix = 0; ix < g.ww; ++ix, ++s) {
        const int ry = wy * g.wh + iy, rx = wx * g.ww + ix;
        const int reg = g.yreg[ry] * 3 + g.xreg[rx];
        const bool real = g.ysrc[ry] >= 0 && g.xsrc[rx] >= 0;
        y[s] = real ? g.ysrc[ry] : -1;
        x[s] = real ? g.xsrc[rx] : -1;
        qreg[s] = real ? reg : -2;
        kcode[s] = (real || !g.mask_pad) ? reg : reg + 16;
      }
    }
  }
};

// Copies the window's rows of a map into `rows[nrows][ld]` (times `mul`; zero for padding slots).
template <class T>
void pack_rows(const Map<const T>& m, const Slots& sl, const Geo& g, i64 b, i64 h, T mul, T* rows, int ld) {
  for (int s = 0; s < g.n; ++s) {
    T* o = rows + (i64)s * ld;
    if (sl.y[s] < 0) {
      std::fill(o, o + m.c, T(0));
      continue;
    }
    const T* src = m.at(b, sl.y[s], sl.x[s], h);
    for (int c = 0; c < m.c; ++c) o[c] = src[c] * mul;
  }
}

// In-register transpose of a lanes x lanes tile, r[i][c] -> r[c][i]: stage b swaps bit b of the row index with bit
// b of the column index (rows i and i + b exchange their off-diagonal b-blocks), one two-register shuffle each.
template <class T>
inline void transpose_tile(Vec<T>* r) {
  using I = typename VT<T>::I;
  constexpr int L = lanes<T>();
#pragma GCC unroll 8
  for (int b = L / 2; b >= 1; b /= 2) {
    I lo, hi;
    for (int c = 0; c < L; ++c) {
      lo[c] = (c & b) ? L + c - b : c;
      hi[c] = (c & b) ? L + c : c + b;
    }
#pragma GCC unroll 16
    for (int i = 0; i < L; ++i) {
      if (i & b) continue;
      const Vec<T> a = r[i], e = r[i + b];
      r[i] = __builtin_shuffle(a, e, lo);
      r[i + b] = __builtin_shuffle(a, e, hi);
    }
  }
}

// Copies the window's rows of a map transposed into `cols[c][ld]` (zero for padding slots): lanes x lanes tiles
// through registers, the ragged edges one value at a time.
template <class T>
void pack_cols(const Map<const T>& m, const Slots& sl, const Geo& g, i64 b, i64 h, T* cols, int ld) {
  constexpr int L = lanes<T>();
  const int c_full = m.c / L * L, s_full = g.n / L * L;
  for (int s0 = 0; s0 < s_full; s0 += L) {
    const T* src[L];
    for (int i = 0; i < L; ++i) src[i] = sl.y[s0 + i] < 0 ? nullptr : m.at(b, sl.y[s0 + i], sl.x[s0 + i], h);
    for (int c0 = 0; c0 < c_full; c0 += L) {
      Vec<T> r[L];
      for (int i = 0; i < L; ++i) r[i] = src[i] == nullptr ? Vec<T>{} : vload(src[i] + c0);
      transpose_tile<T>(r);
      for (int i = 0; i < L; ++i) vstore(cols + (i64)(c0 + i) * ld + s0, r[i]);
    }
    for (int i = 0; i < L; ++i) {
      for (int c = c_full; c < m.c; ++c) cols[(i64)c * ld + s0 + i] = src[i] == nullptr ? T(0) : src[i][c];
    }
  }
  for (int s = s_full; s < g.n; ++s) {
    if (sl.y[s] < 0) {
      for (int c = 0; c < m.c; ++c) cols[(i64)c * ld + s] = T(0);
      continue;
    }
    const T* src = m.at(b, sl.y[s], sl.x[s], h);
    for (int c = 0; c < m.c; ++c) cols[(i64)c * ld + s] = src[c];
  }
}

// Dense bias rows `[heads][n][npad]` from Swin's table `[(2wh - 1)(2ww - 1), heads]`, and the table index of each
// (query, key) slot pair: (yq - yk + wh - 1)(2ww - 1) + (xq - xk + ww - 1) = base(q) - off(k).
template <class T>
std::vector<T> dense_bias(const at::Tensor& rpb, const Geo& g) {
  std::vector<T> out((size_t)g.heads * g.n * g.npad, T(0));
  const T* t = rpb.data_ptr<T>();
  for (int i = 0; i < g.n; ++i) {
    const int base = (i / g.ww + g.wh - 1) * (2 * g.ww - 1) + i % g.ww + g.ww - 1;
    for (int j = 0; j < g.n; ++j) {
      const int idx = base - ((j / g.ww) * (2 * g.ww - 1) + j % g.ww);
      for (i64 h = 0; h < g.heads; ++h) out[((size_t)h * g.n + i) * g.npad + j] = t[(i64)idx * g.heads + h];
    }
  }
  return out;
}

// Logits of query rows [r0, r0 + rows) into S[rows][npad] (rows a multiple of 4): S = Qs K^T + bias, keys of
// another code -inf.
template <class T>
void logits(const T* Qs, int ldq, const T* Kt, const Geo& g, const Slots& sl, const T* bias, int r0, int rows,
            T* S) {
  gemm_nt<T>(Qs + (i64)r0 * ldq, ldq, Kt, g.npad, g.d, rows, g.npad, S, g.npad);
  const T ninf = -std::numeric_limits<T>::infinity();
  for (int r = 0; r < rows; ++r) {
    const int i = r0 + r;
    T* s = S + (i64)r * g.npad;
    const int qr = sl.qreg[i];
    if (bias != nullptr && i < g.n) {
      const T* br = bias + (i64)i * g.npad;
      for (int j = 0; j < g.npad; ++j) s[j] += br[j];
    }
    for (int j = 0; j < g.npad; ++j) s[j] = sl.kcode[j] == qr ? s[j] : ninf;
  }
}

template <class T>
std::vector<at::Tensor> forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const c10::optional<at::Tensor>& rpb, at::IntArrayRef window,
                                     at::IntArrayRef shift, at::IntArrayRef pad, bool mask_pad, double scale) {
  Geo g;
  g.init<T>(q, v, window, shift, pad, mask_pad);
  at::Tensor out = at::empty({g.B, g.H, g.W, g.heads, g.dv}, v.options());
  at::Tensor lse = at::empty({g.B, g.H, g.W, g.heads}, q.options().dtype(at::kFloat));
  const std::vector<T> bias = rpb.has_value() ? dense_bias<T>(*rpb, g) : std::vector<T>();
  const Map<const T> mq(q), mk(k), mv(v);
  Map<T> mo(out);
  float* lp = lse.data_ptr<float>();
  const T sc = (T)scale;
  const i64 tasks = g.windows() * g.heads * g.B;
  at::parallel_for(0, tasks, 1, [&](i64 begin, i64 end) {
    Slots sl(g);
    std::vector<T> Qs((size_t)g.nq * g.d, T(0)), Kt((size_t)g.d * g.npad, T(0)), Vr((size_t)g.npad * g.dvp, T(0));
    std::vector<T> S((size_t)QB * g.npad), O((size_t)QB * g.dvp), inv(QB);
    i64 filled = -1;
    for (i64 t = begin; t < end; ++t) {
      const i64 b = t % g.B, h = (t / g.B) % g.heads, w = t / (g.B * g.heads);
      if (w != filled) {
        sl.fill(g, w);
        filled = w;
      }
      pack_rows<T>(mq, sl, g, b, h, sc, Qs.data(), g.d);
      pack_cols<T>(mk, sl, g, b, h, Kt.data(), g.npad);
      pack_rows<T>(mv, sl, g, b, h, T(1), Vr.data(), g.dvp);
      const T* bh = bias.empty() ? nullptr : bias.data() + (size_t)h * g.n * g.npad;
      for (int r0 = 0; r0 < g.n; r0 += QB) {
        // rows of the block; the 4- and 8-row kernels run over at most 3 and 7 rows past it
        const int rows = std::min(QB, g.n - r0), r4 = round_up(rows, 4), r8 = round_up(rows, 8);
        logits<T>(Qs.data(), g.d, Kt.data(), g, sl, bh, r0, r4, S.data());
        for (int r = 0; r < r8; ++r) {
          T* s = S.data() + (i64)r * g.npad;
          const int i = r0 + r;
          if (r >= rows || sl.qreg[i] < 0) {  // padding or beyond the window: not computed, not written
            std::fill(s, s + g.npad, T(0));
            continue;
          }
          const T mx = row_max(s, g.npad);
          const T sum = exp_sum(s, g.npad, mx);
          inv[r] = T(1) / sum;
          lp[((b * g.H + sl.y[i]) * g.W + sl.x[i]) * g.heads + h] = (float)(mx + std::log(sum));
        }
        gemm_nn<T>(S.data(), g.npad, Vr.data(), g.dvp, g.n, r8, g.dvp, O.data(), g.dvp);
        for (int r = 0; r < rows; ++r) {
          const int i = r0 + r;
          if (sl.qreg[i] < 0) continue;
          T* o = mo.at(b, sl.y[i], sl.x[i], h);
          const T* src = O.data() + (i64)r * g.dvp;
          for (int c = 0; c < g.dv; ++c) o[c] = src[c] * inv[r];
        }
      }
    }
  });
  return {out, lse};
}

template <class T>
std::vector<at::Tensor> backward_impl(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v, const c10::optional<at::Tensor>& rpb,
                                      const at::Tensor& lse, at::IntArrayRef window, at::IntArrayRef shift,
                                      at::IntArrayRef pad, bool mask_pad, double scale) {
  Geo g;
  g.init<T>(q, v, window, shift, pad, mask_pad);
  at::Tensor dq = at::empty({g.B, g.H, g.W, g.heads, g.d}, q.options());
  at::Tensor dk = at::empty({g.B, g.H, g.W, g.heads, g.d}, q.options());
  at::Tensor dv = at::empty({g.B, g.H, g.W, g.heads, g.dv}, q.options());
  const bool has_rpb = rpb.has_value();
  const std::vector<T> bias = has_rpb ? dense_bias<T>(*rpb, g) : std::vector<T>();
  // one partial bias-gradient table per (window, head), summed over the images in order
  std::vector<T> part(has_rpb ? (size_t)g.windows() * g.heads * g.table : 0, T(0));
  const Map<const T> mq(q), mk(k), mv(v), mdo(dout);
  Map<T> mdq(dq), mdk(dk), mdv(dv);
  const float* lp = lse.data_ptr<float>();
  const i64 lsb = lse.stride(0), lsy = lse.stride(1), lsx = lse.stride(2), lsh = lse.stride(3);
  const T sc = (T)scale;
  const T inf = std::numeric_limits<T>::infinity();
  // with a bias, one parallel item is a (window, head) and runs its images in order; else one (window, head, image)
  const i64 per = has_rpb ? g.B : 1;
  const i64 items = g.windows() * g.heads * g.B / per;
  at::parallel_for(0, items, 1, [&](i64 begin, i64 end) {
    Slots sl(g);
    std::vector<T> Qs((size_t)g.nq * g.dp, T(0)), Kt((size_t)g.d * g.npad, T(0)), Kr((size_t)g.npad * g.dp, T(0));
    std::vector<T> Vt((size_t)g.dv * g.npad, T(0)), dO((size_t)g.nq * g.dvp, T(0)), lrow(g.nq, inf);
    std::vector<T> P((size_t)QB * g.npad), dS((size_t)QB * g.npad), G((size_t)QB * g.dp);
    std::vector<T> dKa((size_t)g.npad * g.dp), dVa((size_t)g.npad * g.dvp);
    i64 filled = -1;
    for (i64 item = begin; item < end; ++item) {
      for (i64 t = item * per; t < (item + 1) * per; ++t) {
        const i64 b = t % g.B, h = (t / g.B) % g.heads, w = t / (g.B * g.heads);
        if (w != filled) {
          sl.fill(g, w);
          filled = w;
        }
        pack_rows<T>(mq, sl, g, b, h, sc, Qs.data(), g.dp);
        pack_cols<T>(mk, sl, g, b, h, Kt.data(), g.npad);
        pack_rows<T>(mk, sl, g, b, h, T(1), Kr.data(), g.dp);
        pack_cols<T>(mv, sl, g, b, h, Vt.data(), g.npad);
        pack_rows<T>(mdo, sl, g, b, h, T(1), dO.data(), g.dvp);
        for (int s = 0; s < g.n; ++s) {
          lrow[s] = sl.qreg[s] < 0 ? inf : (T)lp[b * lsb + sl.y[s] * lsy + sl.x[s] * lsx + h * lsh];
        }
        std::fill(dKa.begin(), dKa.end(), T(0));
        std::fill(dVa.begin(), dVa.end(), T(0));
        const T* bh = bias.empty() ? nullptr : bias.data() + (size_t)h * g.n * g.npad;
        T* tab = has_rpb ? part.data() + ((size_t)w * g.heads + h) * g.table : nullptr;
        for (int r0 = 0; r0 < g.n; r0 += QB) {
          const int rows = std::min(QB, g.n - r0), r4 = round_up(rows, 4), r8 = round_up(rows, 8);
          logits<T>(Qs.data(), g.dp, Kt.data(), g, sl, bh, r0, r4, P.data());
          for (int r = 0; r < r4; ++r) {  // P = exp(S - lse): 0 for rows of padding or past the window (lse = inf)
            T* p = P.data() + (i64)r * g.npad;
            T l = lrow[r0 + r];
            // fp64 (gradcheck) renormalises its rows exactly instead: the saved fp32 lse would cost it 1e-7
            const bool exact = std::is_same<T, double>::value && l != inf;
            if (exact) l = row_max(p, g.npad);
            const T sum = exp_sum(p, g.npad, l);
            if (exact) {
              const T inv = T(1) / sum;
              for (int j = 0; j < g.npad; ++j) p[j] *= inv;
            }
          }
          gemm_nt<T>(dO.data() + (i64)r0 * g.dvp, g.dvp, Vt.data(), g.npad, g.dv, r4, g.npad, dS.data(), g.npad);
          std::fill(dS.data() + (i64)r4 * g.npad, dS.data() + (i64)r8 * g.npad, T(0));
          for (int r = 0; r < r4; ++r) {  // dS = P (dP - rowsum(P dP))
            const T* p = P.data() + (i64)r * g.npad;
            T* ds = dS.data() + (i64)r * g.npad;
            const T dsum = row_dot(p, ds, g.npad);
            for (int j = 0; j < g.npad; ++j) ds[j] = p[j] * (ds[j] - dsum);
          }
          gemm_nn<T>(dS.data(), g.npad, Kr.data(), g.dp, g.n, r8, g.dp, G.data(), g.dp);
          for (int r = 0; r < rows; ++r) {
            const int i = r0 + r;
            if (sl.qreg[i] < 0) continue;
            T* o = mdq.at(b, sl.y[i], sl.x[i], h);
            const T* src = G.data() + (i64)r * g.dp;
            for (int c = 0; c < g.d; ++c) o[c] = src[c] * sc;
            if (tab != nullptr) {
              const int base = (i / g.ww + g.wh - 1) * (2 * g.ww - 1) + i % g.ww + g.ww - 1;
              const T* ds = dS.data() + (i64)r * g.npad;
              for (int j = 0; j < g.n; ++j) tab[base - ((j / g.ww) * (2 * g.ww - 1) + j % g.ww)] += ds[j];
            }
          }
          const int ka = round_up(g.n, 4);
          gemm_tn_acc<T>(P.data(), g.npad, dO.data() + (i64)r0 * g.dvp, g.dvp, rows, ka, g.dvp, dVa.data(), g.dvp);
          gemm_tn_acc<T>(dS.data(), g.npad, Qs.data() + (i64)r0 * g.dp, g.dp, rows, ka, g.dp, dKa.data(), g.dp);
        }
        for (int s = 0; s < g.n; ++s) {
          if (sl.y[s] < 0) continue;
          T* ok = mdk.at(b, sl.y[s], sl.x[s], h);
          T* ov = mdv.at(b, sl.y[s], sl.x[s], h);
          std::copy(dKa.data() + (i64)s * g.dp, dKa.data() + (i64)s * g.dp + g.d, ok);
          std::copy(dVa.data() + (i64)s * g.dvp, dVa.data() + (i64)s * g.dvp + g.dv, ov);
        }
      }
    }
  });
  at::Tensor drpb;
  if (has_rpb) {
    // fixed summation order (windows in order) whatever the thread count: deterministic
    drpb = at::zeros({g.table, g.heads}, q.options());
    T* dr = drpb.data_ptr<T>();
    const i64 nw = g.windows();
    at::parallel_for(0, g.heads, 1, [&](i64 hb, i64 he) {
      for (i64 h = hb; h < he; ++h) {
        for (i64 w = 0; w < nw; ++w) {
          const T* src = part.data() + ((size_t)w * g.heads + h) * g.table;
          for (int e = 0; e < g.table; ++e) dr[(i64)e * g.heads + h] += src[e];
        }
      }
    });
  } else {
    drpb = at::empty({0}, q.options());
  }
  return {dq, dk, dv, drpb};
}

void check_map(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "hiervit_win_cpu: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.dim() == 5, "hiervit_win_cpu: ", name, " must be [B, H, W, heads, dim], got ", t.sizes());
  TORCH_CHECK(t.stride(4) == 1, "hiervit_win_cpu: ", name, " needs a unit channel stride");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "hiervit_win_cpu: ", name,
              " must be float32 or float64");
}

void check_call(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& rpb,
                at::IntArrayRef window, at::IntArrayRef shift, at::IntArrayRef pad) {
  check_map(q, "q");
  check_map(k, "k");
  check_map(v, "v");
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes().slice(0, 4) == q.sizes().slice(0, 4) &&
                  k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "hiervit_win_cpu: q, k, v must agree in shape (but v's head dim) and dtype");
  TORCH_CHECK(window.size() == 2 && shift.size() == 2 && pad.size() == 4,
              "hiervit_win_cpu: window and shift need 2 entries, pad 4");
  for (int a = 0; a < 2; ++a) {
    const i64 len = q.size(1 + a) + pad[2 * a] + pad[2 * a + 1];
    TORCH_CHECK(window[a] >= 1 && len % window[a] == 0 && shift[a] >= 0 && shift[a] < window[a] &&
                    pad[2 * a] >= 0 && pad[2 * a + 1] >= 0,
                "hiervit_win_cpu: invalid window, shift or padding on axis ", a);
  }
  if (rpb.has_value()) {
    TORCH_CHECK(rpb->is_contiguous() && rpb->scalar_type() == q.scalar_type() && rpb->dim() == 2 &&
                    rpb->size(0) == (2 * window[0] - 1) * (2 * window[1] - 1) && rpb->size(1) == q.size(3),
                "hiervit_win_cpu: rpb must be a contiguous [(2wh - 1)(2ww - 1), heads] table of q's dtype");
  }
}

c10::optional<at::Tensor> present(const c10::optional<at::Tensor>& rpb) {
  if (rpb.has_value() && rpb->defined()) return rpb;
  return c10::nullopt;
}

std::vector<at::Tensor> win_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const c10::optional<at::Tensor>& rpb_, at::IntArrayRef window,
                                    at::IntArrayRef shift, at::IntArrayRef pad, bool mask_pad, double scale) {
  const c10::optional<at::Tensor> rpb = present(rpb_);
  check_call(q, k, v, rpb, window, shift, pad);
  if (q.scalar_type() == at::kDouble) return forward_impl<double>(q, k, v, rpb, window, shift, pad, mask_pad, scale);
  return forward_impl<float>(q, k, v, rpb, window, shift, pad, mask_pad, scale);
}

std::vector<at::Tensor> win_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                     const at::Tensor& v, const c10::optional<at::Tensor>& rpb_,
                                     const at::Tensor& lse, at::IntArrayRef window, at::IntArrayRef shift,
                                     at::IntArrayRef pad, bool mask_pad, double scale) {
  const c10::optional<at::Tensor> rpb = present(rpb_);
  check_call(q, k, v, rpb, window, shift, pad);
  check_map(dout, "dout");
  TORCH_CHECK(dout.sizes() == v.sizes() && dout.scalar_type() == q.scalar_type(),
              "hiervit_win_cpu: dout must have v's shape and dtype");
  TORCH_CHECK(lse.scalar_type() == at::kFloat && lse.dim() == 4 && lse.sizes() == q.sizes().slice(0, 4),
              "hiervit_win_cpu: lse must be float32 [B, H, W, heads]");
  if (q.scalar_type() == at::kDouble) {
    return backward_impl<double>(dout, q, k, v, rpb, lse, window, shift, pad, mask_pad, scale);
  }
  return backward_impl<float>(dout, q, k, v, rpb, lse, window, shift, pad, mask_pad, scale);
}

}  // namespace

TORCH_LIBRARY(hiervit_win_cpu, m) {
  m.def("win_forward(Tensor q, Tensor k, Tensor v, Tensor? rpb, int[] window, int[] shift, int[] pad, bool mask_pad, "
        "float scale) -> Tensor[]");
  m.def("win_backward(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor? rpb, Tensor lse, int[] window, "
        "int[] shift, int[] pad, bool mask_pad, float scale) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(hiervit_win_cpu, CPU, m) {
  m.impl("win_forward", &win_forward);
  m.impl("win_backward", &win_backward);
}
