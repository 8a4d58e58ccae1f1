// Sampled-window attention (VSA) on the CPU, forward and backward (semantics in the package docstring).
//
// The sampled keys and values are never materialised for the whole map: each task bilinearly samples the wh * ww
// keys and values of one (window, head) into a small per-thread buffer, in pixel coordinates
//   x = J ww + i + (i - (ww - 1) / 2) * scale_x + offset_x * (W - 1) / (2 (W / ww))        (y likewise)
// with grid_sample's zero padding (a tap outside the map contributes nothing), then runs the window's dense
// attention from that buffer. The products run in 8 x 16 register tiles of 512-bit vectors; every other inner loop is
// an axpy over a contiguous axis or a reduction through one vector of lane sums added in lane order, so no sum depends
// on the data or the thread (deterministic) and none waits on a single dependency chain.
//
// Forward: one task per (batch, window, head); exact softmax over the window's samples, logsumexp saved.
// Backward, deterministic without atomics: one task per (batch, head) owns that head's slices of dK and dV and walks
// the windows in a fixed order. Per window it recomputes the samples and the probabilities (from the logits, so the
// saved fp32 logsumexp is not needed and fp64 stays exact), dS = P (dP - rowsum(dP o P)), writes dQ, accumulates the
// sampled-key/value gradients, scatters them through the bilinear weights into dK and dV, and turns them into the
// gradients of the sample positions, hence of the window's offsets and scales. Each task sums its bias gradient into
// its own table; the tables are summed over the batch in a fixed order at the end.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

using i64 = int64_t;

struct Geometry {
  i64 B, H, W, heads, d, wh, ww, nh, nw, N, table;
};

Geometry geometry(const at::Tensor& q, at::IntArrayRef window) {
  TORCH_CHECK(q.dim() == 5, "hiervit_sw_cpu: q must be [B, H, W, heads, d]");
  TORCH_CHECK(window.size() == 2, "hiervit_sw_cpu: window must be [wh, ww]");
  Geometry g;
  g.B = q.size(0); g.H = q.size(1); g.W = q.size(2); g.heads = q.size(3); g.d = q.size(4);
  g.wh = window[0]; g.ww = window[1];
  TORCH_CHECK(g.wh >= 1 && g.ww >= 1 && g.H % g.wh == 0 && g.W % g.ww == 0 && g.H >= 2 && g.W >= 2,
              "hiervit_sw_cpu: the map must be a multiple of the window, at least 2 x 2");
  g.nh = g.H / g.wh; g.nw = g.W / g.ww; g.N = g.wh * g.ww;
  g.table = (2 * g.wh - 1) * (2 * g.ww - 1);
  return g;
}

void check(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.device().is_cpu(), "hiervit_sw_cpu: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "hiervit_sw_cpu: ", name, " must have the dtype of q");
  TORCH_CHECK(t.sizes() == like.sizes(), "hiervit_sw_cpu: ", name, " must have the shape of q");
  TORCH_CHECK(t.stride(4) == 1, "hiervit_sw_cpu: ", name, " needs a contiguous channel axis");
}

// A [B, H, W, heads, d] map with its strides (the channel stride is 1).
template <class T>
struct Map {
  T* p;
  i64 sb, sy, sx, sh;
  Map(const at::Tensor& t)
      : p(t.data_ptr<T>()), sb(t.stride(0)), sy(t.stride(1)), sx(t.stride(2)), sh(t.stride(3)) {}
  T* at(i64 b, i64 y, i64 x, i64 h) const { return p + b * sb + y * sy + x * sx + h * sh; }
};

// One bilinear sample: the top-left tap and the fractional parts.
template <class T>
struct Sample {
  i64 x0, y0;
  T fx, fy;
};

// The samples of window (I, J), head h of batch b, and the pixel-position derivatives of its grid parameters.
template <class T>
void window_samples(const Geometry& g, const T* offsets, const T* scales, i64 b, i64 h, i64 I, i64 J,
                    Sample<T>* out) {
  const i64 base = (((b * g.heads + h) * g.nh + I) * g.nw + J) * 2;
  const T sx = scales[base], sy = scales[base + 1];
  const T ox = offsets[base] * T(g.W - 1) / T(2 * g.nw), oy = offsets[base + 1] * T(g.H - 1) / T(2 * g.nh);
  for (i64 j = 0; j < g.wh; ++j) {
    for (i64 i = 0; i < g.ww; ++i) {
      T x = T(J * g.ww + i) + (T(i) - T(g.ww - 1) / 2) * sx + ox;
      T y = T(I * g.wh + j) + (T(j) - T(g.wh - 1) / 2) * sy + oy;
      // Beyond one pixel outside the map every tap is outside: clamping there changes nothing and keeps the integer
      // conversion in range for any finite position.
      x = std::min(std::max(x, T(-2)), T(g.W + 1));
      y = std::min(std::max(y, T(-2)), T(g.H + 1));
      const T xf = std::floor(x), yf = std::floor(y);
      out[j * g.ww + i] = Sample<T>{i64(xf), i64(yf), x - xf, y - yf};
    }
  }
}

// dst[c] = bilinear sample of map at s (zeros outside), for one (batch, head).
template <class T>
inline void gather(const Map<T>& m, const Geometry& g, i64 b, i64 h, const Sample<T>& s, T* dst) {
  for (i64 c = 0; c < g.d; ++c) dst[c] = T(0);
  for (int dy = 0; dy < 2; ++dy) {
    const i64 y = s.y0 + dy;
    if (y < 0 || y >= g.H) continue;
    const T wy = dy ? s.fy : T(1) - s.fy;
    for (int dx = 0; dx < 2; ++dx) {
      const i64 x = s.x0 + dx;
      if (x < 0 || x >= g.W) continue;
      const T w = wy * (dx ? s.fx : T(1) - s.fx);
      const T* src = m.at(b, y, x, h);
      for (i64 c = 0; c < g.d; ++c) dst[c] += w * src[c];
    }
  }
}

inline i64 bias_index(const Geometry& g, i64 n, i64 m) {
  return (n / g.ww - m / g.ww + g.wh - 1) * (2 * g.ww - 1) + (n % g.ww - m % g.ww + g.ww - 1);
}

// bias_index for every (query, key) pair, [N, N] (computed once per call: integer divisions in the inner loops cost
// more than the products).
std::vector<int32_t> bias_indices(const Geometry& g) {
  std::vector<int32_t> idx(g.N * g.N);
  for (i64 n = 0; n < g.N; ++n) {
    for (i64 m = 0; m < g.N; ++m) idx[n * g.N + m] = int32_t(bias_index(g, n, m));
  }
  return idx;
}

// The bias of each head as dense rows, [heads, N, ld] (columns from N on zero), added to the logits a row at a time.
template <class T>
std::vector<T> dense_bias(const Geometry& g, const T* rpb, const std::vector<int32_t>& idx, i64 ld) {
  std::vector<T> out(rpb != nullptr ? g.heads * g.N * ld : 0, T(0));
  if (rpb == nullptr) return out;
  for (i64 h = 0; h < g.heads; ++h) {
    for (i64 n = 0; n < g.N; ++n) {
      for (i64 m = 0; m < g.N; ++m) out[(h * g.N + n) * ld + m] = rpb[idx[n * g.N + m] * g.heads + h];
    }
  }
  return out;
}

constexpr i64 kRows = 8, kCols = 16;  // register tile of the window products: 8 independent accumulators

inline i64 round_up(i64 x, i64 m) { return (x + m - 1) / m * m; }

// 512-bit vectors through the compiler's vector extension (AVX-512 registers with -march=native where the CPU has
// them, pairs of AVX2 registers or plain code elsewhere).
typedef float VecF16 __attribute__((vector_size(64)));
typedef double VecD8 __attribute__((vector_size(64)));
template <class T> struct Vec;
template <> struct Vec<float> { using V = VecF16; static constexpr i64 L = 16; };
template <> struct Vec<double> { using V = VecD8; static constexpr i64 L = 8; };

// Reductions through one vector of lane accumulators, summed in lane order at the end: the order depends only on the
// length, never on the data or the thread, so results stay deterministic (and the sums do not wait on one chain).
template <class T>
inline T lane_sum(const typename Vec<T>::V& acc) {
  T s = T(0);
  for (i64 l = 0; l < Vec<T>::L; ++l) s += acc[l];
  return s;
}

// sum_c a[c] b[c] over n entries (any n: whole vectors, then the tail).
template <class T>
inline T dot(const T* a, const T* b, i64 n) {
  using V = typename Vec<T>::V;
  constexpr i64 L = Vec<T>::L;
  V acc = V{};
  i64 c = 0;
  for (; c + L <= n; c += L) {
    V x, y;
    std::memcpy(&x, a + c, sizeof(V));
    std::memcpy(&y, b + c, sizeof(V));
    acc += x * y;
  }
  T s = lane_sum<T>(acc);
  for (; c < n; ++c) s += a[c] * b[c];
  return s;
}

typedef int32_t VecI16 __attribute__((vector_size(64)));

// row[m] = exp(row[m] - shift) over row[0, n), n a multiple of 16, for logits at most their row maximum `shift`, 16
// lanes at a time: 2^t = 2^floor(t) * 2^f, 2^f on [0, 1) by a degree-7 Taylor polynomial of e^(f ln 2) (relative
// error below 2e-7, the float rounding level). t is clamped at -126 so that 2^floor(t) stays a normal float: below
// that e^x is under 2^-125, and an exponent field of zero or less would give 0, -inf or a large negative number.
// floor is the truncation, less one where that rounded up (exact on [-126, 0]). Doubles (gradcheck) use std::exp.
inline void exp_row(float* row, i64 n, float shift) {
  const VecF16 lo = VecF16{} - 126.0f;
  for (i64 c = 0; c < n; c += 16) {
    VecF16 x;
    std::memcpy(&x, row + c, sizeof(x));
    VecF16 t = (x - shift) * 1.44269504088896341f;
    t = t < lo ? lo : t;
    VecF16 fi = __builtin_convertvector(__builtin_convertvector(t, VecI16), VecF16);
    fi = fi > t ? fi - 1.0f : fi;
    const VecF16 f = (t - fi) * 0.693147180559945309f;
    VecF16 p = VecF16{} + 1.0f / 5040.0f;
    p = p * f + 1.0f / 720.0f;
    p = p * f + 1.0f / 120.0f;
    p = p * f + 1.0f / 24.0f;
    p = p * f + 1.0f / 6.0f;
    p = p * f + 0.5f;
    p = p * f + 1.0f;
    p = p * f + 1.0f;
    const VecI16 bits = (__builtin_convertvector(fi, VecI16) + 127) << 23;
    VecF16 scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    const VecF16 out = p * scale;
    std::memcpy(row + c, &out, sizeof(out));
  }
}

inline void exp_row(double* row, i64 n, double shift) {
  for (i64 m = 0; m < n; ++m) row[m] = std::exp(row[m] - shift);
}

// The lane-wise sums of row[0, n), n a multiple of the vector length.
template <class T>
inline typename Vec<T>::V vector_sum(const T* row, i64 n) {
  using V = typename Vec<T>::V;
  V acc = V{};
  for (i64 c = 0; c < n; c += Vec<T>::L) {
    V x;
    std::memcpy(&x, row + c, sizeof(V));
    acc += x;
  }
  return acc;
}

// max_m row[m] over n entries, n a multiple of the vector length.
template <class T>
inline T row_max(const T* row, i64 n) {
  using V = typename Vec<T>::V;
  constexpr i64 L = Vec<T>::L;
  V acc = V{} - std::numeric_limits<T>::infinity();
  for (i64 c = 0; c < n; c += L) {
    V x;
    std::memcpy(&x, row + c, sizeof(V));
    acc = x > acc ? x : acc;
  }
  T mx = acc[0];
  for (i64 l = 1; l < L; ++l) mx = std::max(mx, acc[l]);
  return mx;
}

// C[M, Nc] = alpha * A B for small row-major buffers, a kRows x kCols register tile at a time: A[i, k] = A[i * a_rs +
// k * a_cs] (so A may be a transposed view), B rows contiguous. M must be a multiple of kRows and Nc of kCols; the
// buffers carry zero padding up to those sizes.
template <class T>
void small_mm(i64 M, i64 Nc, i64 K, T alpha, const T* A, i64 a_rs, i64 a_cs, const T* B, i64 ldb, T* C,
              i64 ldc) {
  using V = typename Vec<T>::V;
  constexpr i64 L = Vec<T>::L, NV = kCols / L;
  for (i64 i0 = 0; i0 < M; i0 += kRows) {
    for (i64 j0 = 0; j0 < Nc; j0 += kCols) {
      V acc[kRows][NV];
      for (i64 r = 0; r < kRows; ++r) {
        for (i64 v = 0; v < NV; ++v) acc[r][v] = V{};
      }
      for (i64 k = 0; k < K; ++k) {
        V bv[NV];
        for (i64 v = 0; v < NV; ++v) std::memcpy(&bv[v], B + k * ldb + j0 + v * L, sizeof(V));
        for (i64 r = 0; r < kRows; ++r) {
          const V a = V{} + A[(i0 + r) * a_rs + k * a_cs];
          for (i64 v = 0; v < NV; ++v) acc[r][v] += a * bv[v];
        }
      }
      for (i64 r = 0; r < kRows; ++r) {
        for (i64 v = 0; v < NV; ++v) {
          const V out = acc[r][v] * alpha;
          std::memcpy(C + (i0 + r) * ldc + j0 + v * L, &out, sizeof(V));
        }
      }
    }
  }
}

// Per-thread buffers of one window, zero-padded: [Np, dp] rows of queries, sampled keys and values (and their
// gradients), their [dp, Np] transposes, [Np, Np] probabilities and score gradients (Np, dp: N and d rounded up to
// 16; padding rows and columns stay zero, so they add nothing to any product).
template <class T>
struct Buffers {
  i64 Mr, Np, dp;
  std::vector<Sample<T>> samples;
  std::vector<T> qs, ks, kt, vs, vt, o, p, dp_, dks, dvs;
  explicit Buffers(const Geometry& g, bool backward)
      : Mr(round_up(g.N, kRows)), Np(round_up(g.N, kCols)), dp(round_up(g.d, kCols)), samples(g.N),
        qs(Np * dp), ks(Np * dp), kt(dp * Np), vs(Np * dp), vt(backward ? dp * Np : 0), o(Np * dp), p(Np * Np),
        dp_(backward ? Np * Np : 0), dks(backward ? Np * dp : 0), dvs(backward ? Np * dp : 0) {}
};

// Copies the window's rows of a map into (to = true) or out of (to = false) a [Np, dp] buffer.
template <class T>
inline void window_rows(const Geometry& g, const Map<T>& m, i64 b, i64 h, i64 I, i64 J, T* buf, i64 ld, bool to) {
  for (i64 n = 0; n < g.N; ++n) {
    T* row = m.at(b, I * g.wh + n / g.ww, J * g.ww + n % g.ww, h);
    if (to) std::copy(row, row + g.d, buf + n * ld);
    else std::copy(buf + n * ld, buf + n * ld + g.d, row);
  }
}

// Samples K and V of window (I, J), gathers its queries, and leaves the softmax probabilities in buf.p (the log-sum-
// exp of each query in lse, if given). bias: head h's dense bias rows [N, Np] (dense_bias), or null.
template <class T>
void attend(const Geometry& g, const Map<T>& Q, const Map<T>& K, const Map<T>& V, const T* offsets, const T* scales,
            const T* bias, T scale, i64 b, i64 h, i64 I, i64 J, Buffers<T>& buf, T* lse) {
  const i64 Np = buf.Np, dp = buf.dp;
  window_samples(g, offsets, scales, b, h, I, J, buf.samples.data());
  for (i64 m = 0; m < g.N; ++m) {
    gather(K, g, b, h, buf.samples[m], buf.ks.data() + m * dp);
    gather(V, g, b, h, buf.samples[m], buf.vs.data() + m * dp);
  }
  for (i64 m = 0; m < g.N; ++m) {
    for (i64 c = 0; c < g.d; ++c) {
      buf.kt[c * Np + m] = buf.ks[m * dp + c];
      if (!buf.vt.empty()) buf.vt[c * Np + m] = buf.vs[m * dp + c];
    }
  }
  window_rows(g, Q, b, h, I, J, buf.qs.data(), dp, true);
  T* P = buf.p.data();
  small_mm<T>(buf.Mr, Np, g.d, scale, buf.qs.data(), dp, 1, buf.kt.data(), Np, P, Np);
  for (i64 n = 0; n < g.N; ++n) {
    T* row = P + n * Np;
    if (bias != nullptr) {
      const T* brow = bias + n * Np;
      for (i64 m = 0; m < g.N; ++m) row[m] += brow[m];
    }
    // whole vectors over the padded row: the padding columns are kept out of the maximum, then zeroed for the sum
    for (i64 m = g.N; m < Np; ++m) row[m] = -std::numeric_limits<T>::infinity();
    const T mx = row_max(row, Np);
    exp_row(row, Np, mx);
    for (i64 m = g.N; m < Np; ++m) row[m] = T(0);
    const T sum = lane_sum<T>(vector_sum(row, Np));
    const T inv = T(1) / sum;
    for (i64 m = 0; m < g.N; ++m) row[m] *= inv;
    if (lse != nullptr) lse[n] = mx + std::log(sum);
  }
}

template <class T>
std::vector<at::Tensor> forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& offsets, const at::Tensor& scales,
                                     const c10::optional<at::Tensor>& rpb, const Geometry& g, double scale_) {
  auto out = at::empty({g.B, g.H, g.W, g.heads, g.d}, q.options());
  auto lse = at::empty({g.B, g.H, g.W, g.heads}, q.options().dtype(at::kFloat));
  const Map<T> Q(q), K(k), V(v), O(out);
  const T* off = offsets.data_ptr<T>();
  const T* sc = scales.data_ptr<T>();
  const std::vector<T> bias = dense_bias(g, rpb.has_value() ? rpb->data_ptr<T>() : nullptr, bias_indices(g),
                                          round_up(g.N, kCols));
  float* lse_p = lse.data_ptr<float>();
  const T scale = T(scale_);
  at::parallel_for(0, g.B * g.nh * g.nw * g.heads, 1, [&](i64 begin, i64 end) {
    Buffers<T> buf(g, false);
    std::vector<T> wlse(g.N);
    for (i64 t = begin; t < end; ++t) {
      const i64 h = t % g.heads, J = (t / g.heads) % g.nw, I = (t / (g.heads * g.nw)) % g.nh;
      const i64 b = t / (g.heads * g.nw * g.nh);
      const T* hbias = bias.empty() ? nullptr : bias.data() + h * g.N * buf.Np;
      attend(g, Q, K, V, off, sc, hbias, scale, b, h, I, J, buf, wlse.data());
      small_mm<T>(buf.Mr, buf.dp, g.N, T(1), buf.p.data(), buf.Np, 1, buf.vs.data(), buf.dp, buf.o.data(), buf.dp);
      window_rows(g, O, b, h, I, J, buf.o.data(), buf.dp, false);
      for (i64 n = 0; n < g.N; ++n) {
        const i64 y = I * g.wh + n / g.ww, x = J * g.ww + n % g.ww;
        lse_p[((b * g.H + y) * g.W + x) * g.heads + h] = float(wlse[n]);
      }
    }
  });
  return {out, lse};
}

template <class T>
std::vector<at::Tensor> backward_impl(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v, const at::Tensor& offsets, const at::Tensor& scales,
                                      const c10::optional<at::Tensor>& rpb, const Geometry& g, double scale_) {
  auto dq = at::empty({g.B, g.H, g.W, g.heads, g.d}, q.options());
  auto dk = at::zeros({g.B, g.H, g.W, g.heads, g.d}, q.options());
  auto dv = at::zeros({g.B, g.H, g.W, g.heads, g.d}, q.options());
  auto doffsets = at::empty(offsets.sizes(), offsets.options());
  auto dscales = at::empty(scales.sizes(), scales.options());
  auto partial = at::zeros({g.B, g.heads, rpb.has_value() ? g.table : 0}, q.options());
  const Map<T> Q(q), K(k), V(v), dO(dout), dQ(dq), dK(dk), dV(dv);
  const T* off = offsets.data_ptr<T>();
  const T* sc = scales.data_ptr<T>();
  T* doff = doffsets.data_ptr<T>();
  T* dsc = dscales.data_ptr<T>();
  const std::vector<int32_t> idx = bias_indices(g);
  const std::vector<T> bias = dense_bias(g, rpb.has_value() ? rpb->data_ptr<T>() : nullptr, idx, round_up(g.N, kCols));
  T* part = partial.data_ptr<T>();
  const T scale = T(scale_);
  const T ux = T(g.W - 1) / T(2 * g.nw), uy = T(g.H - 1) / T(2 * g.nh);  // d pixel / d offset per axis
  at::parallel_for(0, g.B * g.heads, 1, [&](i64 begin, i64 end) {
    Buffers<T> buf(g, true);
    for (i64 t = begin; t < end; ++t) {
      const i64 b = t / g.heads, h = t % g.heads;
      T* dbias = bias.empty() ? nullptr : part + t * g.table;
      const T* hbias = bias.empty() ? nullptr : bias.data() + h * g.N * buf.Np;
      for (i64 I = 0; I < g.nh; ++I) {
        for (i64 J = 0; J < g.nw; ++J) {
          attend(g, Q, K, V, off, sc, hbias, scale, b, h, I, J, buf, static_cast<T*>(nullptr));
          const i64 Np = buf.Np, dp = buf.dp, Mr = buf.Mr;
          const T* P = buf.p.data();
          T* dS = buf.dp_.data();
          T* dOw = buf.o.data();
          window_rows(g, dO, b, h, I, J, dOw, dp, true);
          small_mm<T>(Mr, Np, g.d, T(1), dOw, dp, 1, buf.vt.data(), Np, dS, Np);  // dP = dO Vs^T
          for (i64 n = 0; n < g.N; ++n) {
            const T* prow = P + n * Np;
            T* row = dS + n * Np;
            const T rowsum = dot(prow, row, Np);  // the padding columns of P are zero
            for (i64 m = 0; m < Np; ++m) row[m] = prow[m] * (row[m] - rowsum);
            if (dbias != nullptr) {
              const int32_t* irow = idx.data() + n * g.N;
              for (i64 m = 0; m < g.N; ++m) dbias[irow[m]] += row[m];
            }
          }
          // dVs = P^T dO, dKs = scale dS^T Q, then dQ = scale dS Ks into the query buffer (no longer needed).
          small_mm<T>(Mr, dp, g.N, T(1), P, 1, Np, dOw, dp, buf.dvs.data(), dp);
          small_mm<T>(Mr, dp, g.N, scale, dS, 1, Np, buf.qs.data(), dp, buf.dks.data(), dp);
          small_mm<T>(Mr, dp, g.N, scale, dS, Np, 1, buf.ks.data(), dp, buf.qs.data(), dp);
          window_rows(g, dQ, b, h, I, J, buf.qs.data(), dp, false);
          // Scatter the sampled gradients through the bilinear taps; the position gradient of each sample is the
          // sum over taps of d(weight)/d(position) times <d sample, tap value>.
          T gsx = T(0), gsy = T(0), gox = T(0), goy = T(0);
          for (i64 m = 0; m < g.N; ++m) {
            const Sample<T>& s = buf.samples[m];
            const T* dkrow = buf.dks.data() + m * dp;
            const T* dvrow = buf.dvs.data() + m * dp;
            T gx = T(0), gy = T(0);
            for (int dy = 0; dy < 2; ++dy) {
              const i64 yy = s.y0 + dy;
              if (yy < 0 || yy >= g.H) continue;
              const T wy = dy ? s.fy : T(1) - s.fy;
              for (int dx = 0; dx < 2; ++dx) {
                const i64 xx = s.x0 + dx;
                if (xx < 0 || xx >= g.W) continue;
                const T wx = dx ? s.fx : T(1) - s.fx;
                const T w = wy * wx;
                const T* krow = K.at(b, yy, xx, h);
                const T* vrow = V.at(b, yy, xx, h);
                T* dk_out = dK.at(b, yy, xx, h);
                T* dv_out = dV.at(b, yy, xx, h);
                const T tap = dot(dkrow, krow, g.d) + dot(dvrow, vrow, g.d);
                for (i64 c = 0; c < g.d; ++c) dk_out[c] += w * dkrow[c];
                for (i64 c = 0; c < g.d; ++c) dv_out[c] += w * dvrow[c];
                gx += (dx ? wy : -wy) * tap;
                gy += (dy ? wx : -wx) * tap;
              }
            }
            const i64 i = m % g.ww, j = m / g.ww;
            gsx += gx * (T(i) - T(g.ww - 1) / 2);
            gsy += gy * (T(j) - T(g.wh - 1) / 2);
            gox += gx;
            goy += gy;
          }
          const i64 base = (((b * g.heads + h) * g.nh + I) * g.nw + J) * 2;
          dsc[base] = gsx;
          dsc[base + 1] = gsy;
          doff[base] = gox * ux;
          doff[base + 1] = goy * uy;
        }
      }
    }
  });
  std::vector<at::Tensor> result = {dq, dk, dv, doffsets, dscales};
  if (rpb.has_value()) {
    auto drpb = at::zeros({g.table, g.heads}, q.options());
    T* dr = drpb.data_ptr<T>();
    for (i64 b = 0; b < g.B; ++b) {  // fixed order: deterministic
      for (i64 h = 0; h < g.heads; ++h) {
        const T* src = part + (b * g.heads + h) * g.table;
        for (i64 e = 0; e < g.table; ++e) dr[e * g.heads + h] += src[e];
      }
    }
    result.push_back(drpb);
  }
  return result;
}

void check_params(const at::Tensor& q, const at::Tensor& offsets, const at::Tensor& scales,
                  const c10::optional<at::Tensor>& rpb, const Geometry& g) {
  for (const at::Tensor* t : {&offsets, &scales}) {
    TORCH_CHECK(t->scalar_type() == q.scalar_type() && t->is_contiguous() &&
                t->sizes() == at::IntArrayRef({g.B, g.heads, g.nh, g.nw, 2}),
                "hiervit_sw_cpu: offsets and scales must be contiguous [B, heads, H / wh, W / ww, 2] of q's dtype");
  }
  if (rpb.has_value()) {
    TORCH_CHECK(rpb->scalar_type() == q.scalar_type() && rpb->is_contiguous() &&
                rpb->sizes() == at::IntArrayRef({g.table, g.heads}),
                "hiervit_sw_cpu: rpb must be a contiguous [(2wh - 1)(2ww - 1), heads] table of q's dtype");
  }
}

c10::optional<at::Tensor> defined(const c10::optional<at::Tensor>& t) {
  if (t.has_value() && t->defined()) return t;
  return c10::nullopt;
}

std::vector<at::Tensor> sw_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& offsets, const at::Tensor& scales,
                                   const c10::optional<at::Tensor>& rpb_, at::IntArrayRef window, double scale) {
  const Geometry g = geometry(q, window);
  check(q, "q", q);
  check(k, "k", q);
  check(v, "v", q);
  const auto rpb = defined(rpb_);
  check_params(q, offsets, scales, rpb, g);
  if (q.scalar_type() == at::kDouble) return forward_impl<double>(q, k, v, offsets, scales, rpb, g, scale);
  TORCH_CHECK(q.scalar_type() == at::kFloat, "hiervit_sw_cpu: float32 or float64 inputs");
  return forward_impl<float>(q, k, v, offsets, scales, rpb, g, scale);
}

std::vector<at::Tensor> sw_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                    const at::Tensor& v, const at::Tensor& offsets, const at::Tensor& scales,
                                    const c10::optional<at::Tensor>& rpb_, at::IntArrayRef window, double scale) {
  const Geometry g = geometry(q, window);
  check(dout, "dout", q);
  check(q, "q", q);
  check(k, "k", q);
  check(v, "v", q);
  const auto rpb = defined(rpb_);
  check_params(q, offsets, scales, rpb, g);
  if (q.scalar_type() == at::kDouble) return backward_impl<double>(dout, q, k, v, offsets, scales, rpb, g, scale);
  TORCH_CHECK(q.scalar_type() == at::kFloat, "hiervit_sw_cpu: float32 or float64 inputs");
  return backward_impl<float>(dout, q, k, v, offsets, scales, rpb, g, scale);
}

}  // namespace

TORCH_LIBRARY(hiervit_sw_cpu, m) {
  m.def("sw_forward(Tensor q, Tensor k, Tensor v, Tensor offsets, Tensor scales, Tensor? rpb, int[] window, "
        "float scale) -> Tensor[]");
  m.def("sw_backward(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor offsets, Tensor scales, Tensor? rpb, "
        "int[] window, float scale) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(hiervit_sw_cpu, CPU, m) {
  m.impl("sw_forward", &sw_forward);
  m.impl("sw_backward", &sw_backward);
}
