// CPU kernels of monai_contreg's optimisation step (compiled on first use by monai_contreg.kernels).
//
// warp_ssd: one pass over the fixed grid that samples the moving features trilinearly at x + u(x), forms the
//   residual against the fixed features, and accumulates the loss and its exact gradient with respect to u
//   (the derivative of the trilinear interpolant). Features are channels-last (H, W, D, C) so the 8 corners
//   of a sample are 8 contiguous runs of C values. The loss is summed per (h, w) row in double, then the rows
//   are summed in order, so the result does not depend on the number of threads.
// box_smooth: replicate-padded mean filters along each axis (and their exact adjoint for the backward pass), the
//   H passes in column tiles, the W and D passes fused per (W, D) plane, one kept scratch buffer.
// diffusion: the squared-forward-difference regulariser and its gradient in one pass.
//
// Coordinates: a sample position is the voxel index plus the displacement (the align_corners=False frame of
// monai_contreg.spatial.conventions, where grid_sample's unnormalised coordinate equals the voxel index).

#include <ATen/ATen.h>
#include <torch/python.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

// Position along one axis of length n: returns the lower corner, the fraction, the derivative of the
// (padded) position with respect to the displacement, and whether each corner is inside the grid.
template <typename T>
struct Axis {
  int64_t i0, i1;
  T f;
  T dpos;
  bool in0, in1;
};

template <typename T, bool ZEROS>
inline Axis<T> locate(T p, int64_t n) {
  Axis<T> a;
  if (!ZEROS) {  // border: clip the position to [0, n - 1]; the gradient is zero where it was clipped and, as in
                 // grid_sample, on the borders themselves (positions exactly 0 or n - 1 count as clipped)
    const T hi = static_cast<T>(n - 1);
    a.dpos = (p <= T(0) || p >= hi) ? T(0) : T(1);
    p = std::min(std::max(p, T(0)), hi);
    int64_t i0 = static_cast<int64_t>(p);  // p >= 0: truncation is floor
    if (i0 > n - 2) i0 = std::max<int64_t>(n - 2, 0);
    a.i0 = i0;
    a.i1 = std::min(i0 + 1, n - 1);
    a.f = (n > 1) ? p - static_cast<T>(i0) : T(0);
    a.in0 = a.in1 = true;
  } else {  // zeros: corners outside the grid read 0
    const T fl = std::floor(p);
    a.i0 = static_cast<int64_t>(fl);
    a.i1 = a.i0 + 1;
    a.f = p - fl;
    a.dpos = T(1);
    a.in0 = a.i0 >= 0 && a.i0 < n;
    a.in1 = a.i1 >= 0 && a.i1 < n;
  }
  return a;
}

// Channel counts that are a multiple of 4, float features and arithmetic: the channels of a sample are
// processed in groups of 4 (GCC/Clang vector extensions: SSE/AVX/NEON registers), so that no channel falls into
// a scalar remainder loop (12 channels = 3 groups, where an 8-wide loop leaves 4 scalar ones), and the four sums
// are reduced together by a 4 x 4 transpose.
#if defined(__GNUC__) || defined(__clang__)
typedef float v4f __attribute__((vector_size(16)));
template <typename T, typename F, int CC>
constexpr bool kQuads = std::is_same<T, float>::value && std::is_same<F, float>::value && CC > 0 && CC % 4 == 0;

inline v4f load4(const float* p) {
  v4f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <int Q>
inline void quad_channels(const float* const* p, const float* fx, float* out, float fh_, float fw_, float fd_, float& sh,
                          float& sw, float& sd, float& sl) {
  const v4f fh = {fh_, fh_, fh_, fh_}, fw = {fw_, fw_, fw_, fw_}, fd = {fd_, fd_, fd_, fd_};
  v4f ah = {0, 0, 0, 0}, aw = ah, ad = ah, al = ah;
  for (int q = 0; q < Q; ++q) {
    const int c = 4 * q;
    const v4f m0 = load4(p[0] + c), m1 = load4(p[1] + c), m2 = load4(p[2] + c), m3 = load4(p[3] + c);
    const v4f m4 = load4(p[4] + c), m5 = load4(p[5] + c), m6 = load4(p[6] + c), m7 = load4(p[7] + c);
    const v4f d00 = m1 - m0, d01 = m3 - m2, d10 = m5 - m4, d11 = m7 - m6;
    const v4f e00 = m0 + fd * d00, e01 = m2 + fd * d01;
    const v4f e10 = m4 + fd * d10, e11 = m6 + fd * d11;
    const v4f w0 = e01 - e00, w1 = e11 - e10;
    const v4f g0 = e00 + fw * w0, g1 = e10 + fw * w1;
    const v4f q0 = d00 + fw * (d01 - d00), q1 = d10 + fw * (d11 - d10);
    const v4f v = g0 + fh * (g1 - g0);
    const v4f r = v - load4(fx + c);
    ah += r * (g1 - g0);
    aw += r * (w0 + fh * (w1 - w0));
    ad += r * (q0 + fh * (q1 - q0));
    al += r * r;
    if (out != nullptr) std::memcpy(out + c, &v, sizeof v);
  }
  typedef int v4i __attribute__((vector_size(16)));
  const v4f a = __builtin_shuffle(ah, aw, v4i{0, 4, 1, 5}) + __builtin_shuffle(ah, aw, v4i{2, 6, 3, 7});
  const v4f b = __builtin_shuffle(ad, al, v4i{0, 4, 1, 5}) + __builtin_shuffle(ad, al, v4i{2, 6, 3, 7});
  const v4f t = __builtin_shuffle(a, b, v4i{0, 1, 4, 5}) + __builtin_shuffle(a, b, v4i{2, 3, 6, 7});
  sh = t[0];
  sw = t[1];
  sd = t[2];
  sl = t[3];
}
#else
template <typename T, typename F, int CC>
constexpr bool kQuads = false;
template <int Q>
inline void quad_channels(const float* const*, const float*, float*, float, float, float, float&, float&, float&, float&) {}
#endif

// One voxel of the diffusion gradient: the forward differences present (hp, wp, kp: a next neighbour along
// H, W, D; hm, wm, km: a previous one) add to the squared sums a0..a2 and to the gradient.
template <typename T>
inline T diffusion_voxel(const T* x, int64_t idx, int64_t sh, int64_t sw, bool hp, bool hm, bool wp, bool wm, bool kp,
                         bool km, T w0, T w1, T w2, T& a0, T& a1, T& a2) {
  const T v = x[idx];
  T gv = 0;
  if (hp) { const T d = x[idx + sh] - v; a0 += d * d; gv -= w0 * d; }
  if (hm) gv += w0 * (v - x[idx - sh]);
  if (wp) { const T d = x[idx + sw] - v; a1 += d * d; gv -= w1 * d; }
  if (wm) gv += w1 * (v - x[idx - sw]);
  if (kp) { const T d = x[idx + 1] - v; a2 += d * d; gv -= w2 * d; }
  if (km) gv += w2 * (v - x[idx - 1]);
  return gv;
}


// The diffusion term fused into another per-row loop (warp_ssd's): for row (i, j) of each of the three channels
// of a contiguous (3, H, W, D) field x, g <- gs * g + wt * d diffusion / d x (g holds the row's similarity
// gradient, gs its scale, wt the regulariser's weight), and the row's squared-difference sums per axis added to
// sums[0..2] (in double; the per-row sums are summed in order by the caller). The same per-voxel operations
// as diffusion_impl (diffusion_voxel), so the gradient is the one diffusion() returns, times wt.
template <typename T>
struct DiffusionTerm {
  T w0, w1, w2;  // 2 / count_a (mean) or 2 (sum)
  T gs, wt;

  void row(const T* x_, T* g_, int64_t i, int64_t j, int64_t H, int64_t W, int64_t D, double* sums) const {
    const int64_t N = H * W * D, sh = W * D, sw = D;
    const bool hp = i + 1 < H, hm = i > 0, wp = j + 1 < W, wm = j > 0;
    double s0 = 0, s1 = 0, s2 = 0;
    for (int64_t c = 0; c < 3; ++c) {
      const T* x = x_ + c * N;
      T* g = g_ + c * N;
      const int64_t base = (i * W + j) * D;
      T a0 = 0, a1 = 0, a2 = 0;
      if (hp && hm && wp && wm && D > 2) {
        g[base] = gs * g[base] + wt * diffusion_voxel(x, base, sh, sw, true, true, true, true, true, false, w0, w1, w2, a0, a1, a2);
#pragma omp simd reduction(+ : a0, a1, a2)
        for (int64_t k = 1; k < D - 1; ++k)
          g[base + k] = gs * g[base + k] + wt * diffusion_voxel(x, base + k, sh, sw, true, true, true, true, true, true, w0, w1, w2, a0, a1, a2);
        g[base + D - 1] = gs * g[base + D - 1] + wt * diffusion_voxel(x, base + D - 1, sh, sw, true, true, true, true, false, true, w0, w1, w2, a0, a1, a2);
      } else {
        for (int64_t k = 0; k < D; ++k)
          g[base + k] = gs * g[base + k] + wt * diffusion_voxel(x, base + k, sh, sw, hp, hm, wp, wm, k + 1 < D, k > 0, w0, w1, w2, a0, a1, a2);
      }
      s0 += a0; s1 += a1; s2 += a2;
    }
    sums[0] = s0; sums[1] = s1; sums[2] = s2;
  }
};

// CC > 0: the channel count known at compile time (the 12 MIND-SSC channels), so the channel loop unrolls and
// vectorises; CC == 0: any channel count C.
// F: the features' storage type (T, or bfloat16 with arithmetic in T = float).
template <typename T, typename F, int CC, bool ZEROS>
void warp_ssd_impl(const T* ddf, const F* mov, const F* fix, T* grad, T* warped, double* row_loss,
                   int64_t H, int64_t W, int64_t D, int64_t C_, const DiffusionTerm<T>* reg = nullptr) {
  const int64_t C = CC > 0 ? CC : C_;
  const int64_t N = H * W * D;
  const std::vector<F> zero(C, F(0));
  at::parallel_for(0, H * W, 8, [&](int64_t begin, int64_t end) {
    for (int64_t hw = begin; hw < end; ++hw) {
      const int64_t i = hw / W, j = hw % W;
      double acc_row = 0.0;
      for (int64_t k = 0; k < D; ++k) {
        const int64_t idx = hw * D + k;
        const Axis<T> ah = locate<T, ZEROS>(static_cast<T>(i) + ddf[idx], H);
        const Axis<T> aw = locate<T, ZEROS>(static_cast<T>(j) + ddf[N + idx], W);
        const Axis<T> ad = locate<T, ZEROS>(static_cast<T>(k) + ddf[2 * N + idx], D);
        const int64_t hs[2] = {ah.i0, ah.i1}, ws[2] = {aw.i0, aw.i1}, ds[2] = {ad.i0, ad.i1};
        const F* p[8];
        if (ZEROS) {  // corners outside the grid read zeros
          const bool hin[2] = {ah.in0, ah.in1}, win[2] = {aw.in0, aw.in1}, din[2] = {ad.in0, ad.in1};
          for (int a = 0; a < 2; ++a)
            for (int b = 0; b < 2; ++b)
              for (int c = 0; c < 2; ++c)
                p[a * 4 + b * 2 + c] = (hin[a] && win[b] && din[c]) ? mov + ((hs[a] * W + ws[b]) * D + ds[c]) * C
                                                                     : zero.data();
        } else {  // border: every corner is inside
          const int64_t dd = (ad.i1 - ad.i0) * C;
          for (int a = 0; a < 2; ++a)
            for (int b = 0; b < 2; ++b) {
              const F* q = mov + ((hs[a] * W + ws[b]) * D + ad.i0) * C;
              p[a * 4 + b * 2] = q;
              p[a * 4 + b * 2 + 1] = q + dd;
            }
        }
        const F *p0 = p[0], *p1 = p[1], *p2 = p[2], *p3 = p[3], *p4 = p[4], *p5 = p[5], *p6 = p[6], *p7 = p[7];
        const T fh = ah.f, fw = aw.f, fd = ad.f;
        const F* fx = fix + idx * C;
        T* out = warped != nullptr ? warped + idx * C : nullptr;
        T sh = 0, sw = 0, sd = 0, sl = 0;
        if constexpr (kQuads<T, F, CC>) {
          quad_channels<CC / 4>(p, fx, out, fh, fw, fd, sh, sw, sd, sl);
        } else {
#pragma omp simd reduction(+ : sh, sw, sd, sl)
          for (int64_t ch = 0; ch < C; ++ch) {
            const T m0 = static_cast<T>(p0[ch]), m1 = static_cast<T>(p1[ch]), m2 = static_cast<T>(p2[ch]);
            const T m3 = static_cast<T>(p3[ch]), m4 = static_cast<T>(p4[ch]), m5 = static_cast<T>(p5[ch]);
            const T m6 = static_cast<T>(p6[ch]), m7 = static_cast<T>(p7[ch]);
            const T d00 = m1 - m0, d01 = m3 - m2, d10 = m5 - m4, d11 = m7 - m6;
            const T e00 = m0 + fd * d00, e01 = m2 + fd * d01;
            const T e10 = m4 + fd * d10, e11 = m6 + fd * d11;
            const T w0 = e01 - e00, w1 = e11 - e10;
            const T g0 = e00 + fw * w0, g1 = e10 + fw * w1;
            const T q0 = d00 + fw * (d01 - d00), q1 = d10 + fw * (d11 - d10);
            const T v = g0 + fh * (g1 - g0);
            const T r = v - static_cast<T>(fx[ch]);
            sh += r * (g1 - g0);
            sw += r * (w0 + fh * (w1 - w0));
            sd += r * (q0 + fh * (q1 - q0));
            sl += r * r;
          }
          if (out != nullptr) {
#pragma omp simd
            for (int64_t ch = 0; ch < C; ++ch) {
              const T m0 = static_cast<T>(p0[ch]), m1 = static_cast<T>(p1[ch]), m2 = static_cast<T>(p2[ch]);
              const T m3 = static_cast<T>(p3[ch]), m4 = static_cast<T>(p4[ch]), m5 = static_cast<T>(p5[ch]);
              const T m6 = static_cast<T>(p6[ch]), m7 = static_cast<T>(p7[ch]);
              const T e00 = m0 + fd * (m1 - m0), e01 = m2 + fd * (m3 - m2);
              const T e10 = m4 + fd * (m5 - m4), e11 = m6 + fd * (m7 - m6);
              const T g0 = e00 + fw * (e01 - e00), g1 = e10 + fw * (e11 - e10);
              out[ch] = g0 + fh * (g1 - g0);
            }
          }
        }
        grad[idx] = T(2) * sh * ah.dpos;
        grad[N + idx] = T(2) * sw * aw.dpos;
        grad[2 * N + idx] = T(2) * sd * ad.dpos;
        acc_row += static_cast<double>(sl);
      }
      row_loss[hw] = acc_row;
      if (reg != nullptr) reg->row(ddf, grad, i, j, H, W, D, row_loss + H * W + 3 * hw);
    }
  });
}

template <typename T, typename F>
void warp_ssd_dispatch(const at::Tensor& ddf, const at::Tensor& moving, const at::Tensor& fixed, at::Tensor& grad,
                       at::Tensor& warped, at::Tensor& rows, bool zeros, bool want_warped) {
  const int64_t H = ddf.size(1), W = ddf.size(2), D = ddf.size(3), C = moving.size(3);
  auto run = C == 12 ? (zeros ? &warp_ssd_impl<T, F, 12, true> : &warp_ssd_impl<T, F, 12, false>)
                     : (zeros ? &warp_ssd_impl<T, F, 0, true> : &warp_ssd_impl<T, F, 0, false>);
  run(ddf.data_ptr<T>(), moving.data_ptr<F>(), fixed.data_ptr<F>(), grad.data_ptr<T>(),
      want_warped ? warped.data_ptr<T>() : nullptr, rows.data_ptr<double>(), H, W, D, C, nullptr);
}

// ddf (3, H, W, D), moving and fixed (H, W, D, C), all contiguous; features of the ddf's dtype, or bfloat16
// features with a float32 ddf (storage only: arithmetic in float32).
// Returns (sum of squared residuals as a float64 scalar, d sum / d ddf (3, H, W, D), warped (H, W, D, C) or empty).
std::vector<at::Tensor> warp_ssd(const at::Tensor& ddf, const at::Tensor& moving, const at::Tensor& fixed,
                                 bool zeros, bool want_warped) {
  TORCH_CHECK(ddf.dim() == 4 && ddf.size(0) == 3, "warp_ssd: ddf must be (3, H, W, D)");
  TORCH_CHECK(moving.dim() == 4 && fixed.sizes() == moving.sizes(), "warp_ssd: moving and fixed must be (H, W, D, C)");
  TORCH_CHECK(moving.size(0) == ddf.size(1) && moving.size(1) == ddf.size(2) && moving.size(2) == ddf.size(3),
              "warp_ssd: features and ddf grids differ");
  TORCH_CHECK(ddf.is_contiguous() && moving.is_contiguous() && fixed.is_contiguous(), "warp_ssd: inputs must be contiguous");
  TORCH_CHECK(moving.scalar_type() == fixed.scalar_type(), "warp_ssd: moving and fixed dtypes differ");
  const bool bf16 = moving.scalar_type() == at::kBFloat16;
  TORCH_CHECK(bf16 ? ddf.scalar_type() == at::kFloat : ddf.scalar_type() == moving.scalar_type(),
              "warp_ssd: features must have the ddf's dtype, or be bfloat16 with a float32 ddf");
  const int64_t H = ddf.size(1), W = ddf.size(2), D = ddf.size(3), C = moving.size(3);
  at::Tensor grad = at::empty_like(ddf);
  at::Tensor warped = want_warped ? at::empty({H, W, D, C}, ddf.options()) : at::empty({0}, ddf.options());
  at::Tensor rows = at::empty({H * W}, ddf.options().dtype(at::kDouble));
  if (bf16) {
    warp_ssd_dispatch<float, at::BFloat16>(ddf, moving, fixed, grad, warped, rows, zeros, want_warped);
  } else {
    AT_DISPATCH_FLOATING_TYPES(ddf.scalar_type(), "warp_ssd", [&] {
      warp_ssd_dispatch<scalar_t, scalar_t>(ddf, moving, fixed, grad, warped, rows, zeros, want_warped);
    });
  }
  // ordered sum of the per-row partial sums: independent of the thread count
  const double* r = rows.data_ptr<double>();
  double total = 0.0;
  for (int64_t n = 0; n < H * W; ++n) total += r[n];
  return {at::scalar_tensor(total, ddf.options().dtype(at::kDouble)), grad, warped};
}

// Mean filters of half-width r, replicate padding.
// adjoint = false: y[m] = mean_{j=-r..r} x[clamp(m + j)].
// adjoint = true: the transpose, y[m] = (1/k) sum_i count(i, m) x[i], count(i, m) = #{j : clamp(i + j) = m}.
template <typename T>
struct Box {
  int64_t r;
  bool adjoint;
  T inv;

  int64_t count(int64_t i, int64_t m, int64_t n) const {
    const int64_t lo = (m == 0) ? INT64_MIN / 4 : m, hi = (m == n - 1) ? INT64_MAX / 4 : m;
    return std::max<int64_t>(0, std::min(r, hi - i) - std::max(-r, lo - i) + 1);
  }

  // One pass across rows: src and dst are (n, w) with row strides ss and ds (the filter runs along n, the w
  // columns are the vector lanes). Sums in the order j = -r..r, then times 1/k: the same operations for every
  // tiling and fusion below.
  void rows(const T* src, int64_t ss, T* dst, int64_t ds, int64_t n, int64_t w) const {
    for (int64_t m = 0; m < n; ++m) {
      T* d = dst + m * ds;
      const bool interior = m >= r + 1 && m + r + 1 < n;  // band sum, for the operator and its adjoint
      if (interior || !adjoint) {
        auto row = [&](int64_t j) { return src + (interior ? m + j : std::min(std::max<int64_t>(m + j, 0), n - 1)) * ss; };
        if (r == 1) {
          const T *a = row(-1), *b = row(0), *c = row(1);
#pragma omp simd
          for (int64_t t = 0; t < w; ++t) d[t] = ((a[t] + b[t]) + c[t]) * inv;
        } else {
          const T* s0 = row(-r);
#pragma omp simd
          for (int64_t t = 0; t < w; ++t) d[t] = s0[t];
          for (int64_t j = -r + 1; j <= r; ++j) {
            const T* sj = row(j);
#pragma omp simd
            for (int64_t t = 0; t < w; ++t) d[t] += sj[t];
          }
#pragma omp simd
          for (int64_t t = 0; t < w; ++t) d[t] *= inv;
        }
      } else {
        std::fill(d, d + w, T(0));
        for (int64_t i = std::max<int64_t>(0, m - r); i <= std::min(n - 1, m + r); ++i) {
          const T c = static_cast<T>(count(i, m, n));
          const T* si = src + i * ss;
#pragma omp simd
          for (int64_t t = 0; t < w; ++t) d[t] += c * si[t];
        }
#pragma omp simd
        for (int64_t t = 0; t < w; ++t) d[t] *= inv;
      }
    }
  }

  // One pass along a contiguous line of n values.
  void line(const T* x, T* y, int64_t n) const {
    for (int64_t m = 0; m < n; ++m) {
      if (m >= r + 1 && m + r + 1 < n) {  // interior run: plain band sums
        const int64_t stop = n - r - 1;
        if (r == 1) {
#pragma omp simd
          for (int64_t t = m; t < stop; ++t) y[t] = ((x[t - 1] + x[t]) + x[t + 1]) * inv;
        } else {
          for (int64_t t = m; t < stop; ++t) {
            T acc = 0;
            for (int64_t j = -r; j <= r; ++j) acc += x[t + j];
            y[t] = acc * inv;
          }
        }
        m = stop - 1;
        continue;
      }
      T acc = 0;
      if (!adjoint) {
        for (int64_t j = -r; j <= r; ++j) acc += x[std::min(std::max<int64_t>(m + j, 0), n - 1)];
      } else {
        for (int64_t i = std::max<int64_t>(0, m - r); i <= std::min(n - 1, m + r); ++i)
          acc += static_cast<T>(count(i, m, n)) * x[i];
      }
      y[m] = acc * inv;
    }
  }
};

// `passes` passes along the middle axis of contiguous (outer, n, inner) views, inner > 1: tiles of n rows x up
// to 256 columns; the first pass reads the input in place, the last writes the output in place, the passes
// between run on two tile buffers that stay in cache.
template <typename T>
void box_rows(const Box<T>& box, const T* in, T* out, int64_t outer, int64_t n, int64_t inner, int64_t passes) {
  const int64_t tc = std::min<int64_t>(inner, 256);
  const int64_t tiles = (inner + tc - 1) / tc;
  at::parallel_for(0, outer * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> a(passes > 1 ? n * tc : 0), b(passes > 2 ? n * tc : 0);
    for (int64_t ot = begin; ot < end; ++ot) {
      const int64_t o = ot / tiles, t0 = (ot % tiles) * tc, w = std::min(tc, inner - t0);
      const T* src = in + o * n * inner + t0;
      T* dst = out + o * n * inner + t0;
      const T* x = src;
      int64_t xs = inner;
      T *y = a.data(), *z = b.data();
      for (int64_t p = 0; p < passes; ++p) {
        const bool last = p + 1 == passes;
        box.rows(x, xs, last ? dst : y, last ? inner : w, n, w);
        x = y;
        xs = w;
        std::swap(y, z);
      }
    }
  });
}

// `passes` passes along both axes of contiguous (planes, W, D) views, fused per plane: the plane (W x D values)
// is filtered along W (rows of D lanes) and along D (contiguous lines) in two buffers that stay in cache, read
// once and written once. Forward: the W passes, then the D passes; adjoint: D, then W (the order of the
// unfused operator, so the same operations).
template <typename T>
void box_planes(const Box<T>& box, const T* in, T* out, int64_t planes, int64_t W, int64_t D, int64_t passes) {
  const int64_t P = W * D;
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> a(P), b(P);
    for (int64_t pl = begin; pl < end; ++pl) {
      const T* src = in + pl * P;
      T* dst = out + pl * P;
      // x: the current values (the input at first), y: where the next pass writes
      const T* x = src;
      T *y = a.data(), *z = b.data();
      auto along_w = [&]() {
        for (int64_t p = 0; p < passes; ++p) {
          box.rows(x, D, y, D, W, D);
          x = y;
          std::swap(y, z);
        }
      };
      auto along_d = [&]() {
        for (int64_t p = 0; p < passes; ++p) {
          for (int64_t j = 0; j < W; ++j) box.line(x + j * D, y + j * D, D);
          x = y;
          std::swap(y, z);
        }
      };
      if (box.adjoint) {
        along_d();
        along_w();
      } else {
        along_w();
        along_d();
      }
      std::copy(x, x + P, dst);
    }
  });
}

// The box filter's scratch tensor, kept from one call to the next: a full-size temporary allocated afresh on
// every call is page-faulted in again each time (glibc returns freed blocks of this size to the system), which
// costs about as much as the filtering itself. Kept up to kScratchKeep bytes (an `io` or `convexadam` working
// field is 14 MiB); larger ones are allocated per call. The callers hold the GIL (pybind11's default), so one
// buffer per dtype is enough; release_scratch() frees them.
constexpr int64_t kScratchKeep = int64_t(64) << 20;
std::vector<at::Tensor>& scratch_store() {
  static std::vector<at::Tensor> store;
  return store;
}

at::Tensor scratch_like(const at::Tensor& x) {
  const int64_t bytes = x.numel() * x.element_size();
  if (bytes > kScratchKeep) return at::empty_like(x);
  auto& store = scratch_store();
  for (auto& t : store) {
    if (t.scalar_type() == x.scalar_type()) {
      if (t.numel() < x.numel()) t = at::empty({x.numel()}, x.options());
      return t.narrow(0, 0, x.numel()).view(x.sizes());
    }
  }
  store.push_back(at::empty({x.numel()}, x.options()));
  return store.back().view(x.sizes());
}

void release_scratch() { scratch_store().clear(); }

// `passes` rounds of mean filters of width k along the three spatial axes of a contiguous (B, C, H, W, D)
// tensor, or the transpose of that operator (adjoint). The per-axis filters commute, so the passes are grouped
// by axis (H, W, D; reverse order for the adjoint), and the W and D groups run fused per (W, D) plane: the
// tensor is read and written twice per call (H, then W + D; adjoint: W + D, then H) whatever the passes.
at::Tensor box_smooth(const at::Tensor& x, int64_t k, int64_t passes, bool adjoint, bool inplace) {
  TORCH_CHECK(x.dim() == 5 && x.is_contiguous(), "box_smooth: x must be a contiguous (B, C, H, W, D) tensor");
  TORCH_CHECK(k >= 1 && k % 2 == 1 && passes >= 0, "box_smooth: k must be odd and positive, passes >= 0");
  if (k == 1 || passes == 0) return inplace ? x : x.clone();
  const int64_t r = k / 2;
  const int64_t BC = x.size(0) * x.size(1), H = x.size(2), W = x.size(3), D = x.size(4);
  // x -> a -> out: one scratch tensor, kept between calls (see scratch_like); in place, out is x itself
  at::Tensor a = scratch_like(x), out = inplace ? x : at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "box_smooth", [&] {
    const Box<scalar_t> box{r, adjoint, scalar_t(1) / static_cast<scalar_t>(2 * r + 1)};
    const scalar_t* px = x.data_ptr<scalar_t>();
    scalar_t *pa = a.data_ptr<scalar_t>(), *po = out.data_ptr<scalar_t>();
    if (!adjoint) {
      box_rows<scalar_t>(box, px, pa, BC, H, W * D, passes);
      box_planes<scalar_t>(box, pa, po, BC * H, W, D, passes);
    } else {
      box_planes<scalar_t>(box, px, pa, BC * H, W, D, passes);
      box_rows<scalar_t>(box, pa, po, BC, H, W * D, passes);
    }
  });
  return out;
}

template <typename T>
void diffusion_impl(const T* x, T* g, double* ps, int64_t BC, int64_t H, int64_t W, int64_t D, const double* inv_count) {
  const T w0 = static_cast<T>(2.0 * inv_count[0]), w1 = static_cast<T>(2.0 * inv_count[1]), w2 = static_cast<T>(2.0 * inv_count[2]);
  const int64_t sh = W * D, sw = D;
  at::parallel_for(0, BC * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t i = plane % H;
      double s0 = 0, s1 = 0, s2 = 0;
      for (int64_t j = 0; j < W; ++j) {
        const int64_t base = plane * sh + j * sw;
        const bool hp = i + 1 < H, hm = i > 0, wp = j + 1 < W, wm = j > 0;
        T a0 = 0, a1 = 0, a2 = 0;
        if (hp && hm && wp && wm && D > 2) {  // an inner row: every neighbour but the row's ends, no branches
          g[base] = diffusion_voxel(x, base, sh, sw, true, true, true, true, true, false, w0, w1, w2, a0, a1, a2);
#pragma omp simd reduction(+ : a0, a1, a2)
          for (int64_t k = 1; k < D - 1; ++k)
            g[base + k] = diffusion_voxel(x, base + k, sh, sw, true, true, true, true, true, true, w0, w1, w2, a0, a1, a2);
          g[base + D - 1] = diffusion_voxel(x, base + D - 1, sh, sw, true, true, true, true, false, true, w0, w1, w2, a0, a1, a2);
        } else {
          for (int64_t k = 0; k < D; ++k)
            g[base + k] = diffusion_voxel(x, base + k, sh, sw, hp, hm, wp, wm, k + 1 < D, k > 0, w0, w1, w2, a0, a1, a2);
        }
        s0 += a0; s1 += a1; s2 += a2;
      }
      ps[plane * 3] = s0; ps[plane * 3 + 1] = s1; ps[plane * 3 + 2] = s2;
    }
  });
}

// Diffusion regulariser of a contiguous (B, C, H, W, D) field: S_a = sum of squared forward differences along
// axis a; the loss is sum_a S_a / count_a (count_a = number of differences along a for "mean", 1 for "sum").
// Returns (loss as a float64 scalar, d loss / d u). Per-(b, c, h) plane partial sums, summed in order.
std::vector<at::Tensor> diffusion(const at::Tensor& u, bool mean) {
  TORCH_CHECK(u.dim() == 5 && u.is_contiguous(), "diffusion: u must be a contiguous (B, C, H, W, D) tensor");
  const int64_t BC = u.size(0) * u.size(1), H = u.size(2), W = u.size(3), D = u.size(4);
  const int64_t n[3] = {H, W, D};
  double inv_count[3];
  for (int a = 0; a < 3; ++a) {
    const int64_t count = n[a] > 1 ? BC * H * W * D / n[a] * (n[a] - 1) : 0;
    inv_count[a] = count == 0 ? 0.0 : (mean ? 1.0 / static_cast<double>(count) : 1.0);
  }
  at::Tensor grad = at::empty_like(u);
  at::Tensor parts = at::zeros({BC * H, 3}, u.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "diffusion", [&] {
    diffusion_impl<scalar_t>(u.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), parts.data_ptr<double>(), BC, H, W, D, inv_count);
  });
  const double* ps = parts.data_ptr<double>();
  double sums[3] = {0, 0, 0};
  for (int64_t p = 0; p < BC * H; ++p)
    for (int a = 0; a < 3; ++a) sums[a] += ps[p * 3 + a];
  const double loss = sums[0] * inv_count[0] + sums[1] * inv_count[1] + sums[2] * inv_count[2];
  return {at::scalar_tensor(loss, u.options().dtype(at::kDouble)), grad};
}

// The gradient half of one optimisation step of a smoothed displacement field, into buffers kept for the run
// (no allocation: full-size temporaries allocated afresh each step are page-faulted in each time above glibc's
// mmap threshold, 32 MiB):
//   ddf = box(param)                       (box_smooth's operator, written to ddf)
//   grad = d/d ddf [ SSD(ddf) / N + wt * diffusion(ddf) ]   (warp_ssd and the diffusion term in one pass)
//   grad <- box^T(grad)                    (the adjoint, in place: the parameter's gradient)
// param, ddf, grad, scratch: contiguous (1, 3, H, W, D) of one float dtype; moving, fixed: (H, W, D, C)
// features as warp_ssd takes them; rows: float64 with at least 4 * H * W values; losses: float64 (2,) receives
// (similarity = mean over voxels of the summed squared residuals, diffusion loss (mean reduction)). The same
// operations as box_smooth, warp_ssd and diffusion chained by autograd, except for the order of a few float
// additions (the gradient's scale and the regulariser's term are applied in one expression per voxel) and of
// the loss sums.
void field_step_grad(const at::Tensor& param, at::Tensor& ddf, at::Tensor& grad, at::Tensor& scratch,
                     const at::Tensor& moving, const at::Tensor& fixed, at::Tensor& rows, at::Tensor& losses,
                     bool zeros, int64_t k, int64_t passes, double reg_weight) {
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&param, &ddf, &grad, &scratch}) {
    TORCH_CHECK(t->dim() == 5 && t->size(0) == 1 && t->size(1) == 3 && t->is_contiguous() && t->sizes() == param.sizes() &&
                t->scalar_type() == param.scalar_type(), "field_step_grad: param, ddf, grad, scratch must be contiguous (1, 3, H, W, D) of one dtype");
  }
  TORCH_CHECK(k >= 1 && k % 2 == 1 && passes >= 0, "field_step_grad: k must be odd and positive, passes >= 0");
  const int64_t H = param.size(2), W = param.size(3), D = param.size(4), C = moving.size(3);
  TORCH_CHECK(moving.dim() == 4 && fixed.sizes() == moving.sizes() && moving.size(0) == H && moving.size(1) == W &&
              moving.size(2) == D && moving.is_contiguous() && fixed.is_contiguous(),
              "field_step_grad: moving and fixed must be contiguous (H, W, D, C) on the field's grid");
  const bool bf16 = moving.scalar_type() == at::kBFloat16;
  TORCH_CHECK(moving.scalar_type() == fixed.scalar_type() &&
              (bf16 ? param.scalar_type() == at::kFloat : moving.scalar_type() == param.scalar_type()),
              "field_step_grad: features must have the field's dtype, or be bfloat16 with a float32 field");
  TORCH_CHECK(rows.scalar_type() == at::kDouble && rows.is_contiguous() && rows.numel() >= 4 * H * W,
              "field_step_grad: rows must be a contiguous float64 tensor of at least 4 * H * W values");
  TORCH_CHECK(losses.scalar_type() == at::kDouble && losses.is_contiguous() && losses.numel() >= 2,
              "field_step_grad: losses must be a contiguous float64 tensor of 2 values");
  const int64_t n[3] = {H, W, D};
  double inv_count[3];
  for (int a = 0; a < 3; ++a) {
    const int64_t count = n[a] > 1 ? 3 * H * W * D / n[a] * (n[a] - 1) : 0;
    inv_count[a] = count == 0 ? 0.0 : 1.0 / static_cast<double>(count);
  }
  const double scale = 1.0 / static_cast<double>(H * W * D);
  double* r = rows.data_ptr<double>();
  std::fill(r, r + 4 * H * W, 0.0);
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "field_step_grad", [&] {
    using T = scalar_t;
    const int64_t rad = k / 2;
    const bool smooth = k > 1 && passes > 0;
    const Box<T> fwd{rad, false, T(1) / static_cast<T>(2 * rad + 1)}, adj{rad, true, T(1) / static_cast<T>(2 * rad + 1)};
    if (smooth) {
      box_rows<T>(fwd, param.data_ptr<T>(), scratch.data_ptr<T>(), 3, H, W * D, passes);
      box_planes<T>(fwd, scratch.data_ptr<T>(), ddf.data_ptr<T>(), 3 * H, W, D, passes);
    } else {
      ddf.copy_(param);
    }
    // the factors autograd would apply: the loss's 1/N and the regulariser's weight, both rounded to T
    DiffusionTerm<T> term{static_cast<T>(2.0 * inv_count[0]), static_cast<T>(2.0 * inv_count[1]),
                          static_cast<T>(2.0 * inv_count[2]), static_cast<T>(scale), static_cast<T>(reg_weight)};
    const at::Tensor d4 = ddf[0];
    if (bf16) {  // T is float here (checked above)
      const DiffusionTerm<float> fterm{static_cast<float>(term.w0), static_cast<float>(term.w1), static_cast<float>(term.w2),
                                       static_cast<float>(term.gs), static_cast<float>(term.wt)};
      auto run = C == 12 ? (zeros ? &warp_ssd_impl<float, at::BFloat16, 12, true> : &warp_ssd_impl<float, at::BFloat16, 12, false>)
                         : (zeros ? &warp_ssd_impl<float, at::BFloat16, 0, true> : &warp_ssd_impl<float, at::BFloat16, 0, false>);
      run(reinterpret_cast<const float*>(d4.data_ptr<T>()), moving.data_ptr<at::BFloat16>(), fixed.data_ptr<at::BFloat16>(),
          reinterpret_cast<float*>(grad.data_ptr<T>()), nullptr, r, H, W, D, C, &fterm);
    }
    if (!bf16) {
      auto run = C == 12 ? (zeros ? &warp_ssd_impl<T, T, 12, true> : &warp_ssd_impl<T, T, 12, false>)
                         : (zeros ? &warp_ssd_impl<T, T, 0, true> : &warp_ssd_impl<T, T, 0, false>);
      run(d4.data_ptr<T>(), moving.data_ptr<T>(), fixed.data_ptr<T>(), grad.data_ptr<T>(), nullptr, r, H, W, D, C, &term);
    }
    if (smooth) {
      box_planes<T>(adj, grad.data_ptr<T>(), scratch.data_ptr<T>(), 3 * H, W, D, passes);
      box_rows<T>(adj, scratch.data_ptr<T>(), grad.data_ptr<T>(), 3, H, W * D, passes);
    }
  });
  // ordered sums of the per-row partial sums: independent of the thread count
  double total = 0.0, sums[3] = {0, 0, 0};
  for (int64_t m = 0; m < H * W; ++m) total += r[m];
  for (int64_t m = 0; m < H * W; ++m)
    for (int a = 0; a < 3; ++a) sums[a] += r[H * W + 3 * m + a];
  double* out = losses.data_ptr<double>();
  out[0] = total * scale;
  out[1] = sums[0] * inv_count[0] + sums[1] * inv_count[1] + sums[2] * inv_count[2];
}

template <typename T>
void adam_impl(T* p, const T* g, T* m, T* v, int64_t H, int64_t W, int64_t D, double lr, double beta1, double beta2,
             double eps, double bc1, double bc2, bool clamp, int64_t* counts) {
  const int64_t planes = 3 * H, rowlen = W * D;
  const T b1c = static_cast<T>(1.0 - beta1), b2 = static_cast<T>(beta2), b2c = static_cast<T>(1.0 - beta2);
  const T step_size = static_cast<T>(lr / bc1), bc2_sqrt = static_cast<T>(std::sqrt(bc2)), e = static_cast<T>(eps);
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t c = plane / H, i = plane % H;
      const int64_t off = plane * rowlen;
      int64_t changed_plane = 0;
      for (int64_t j = 0; j < W; ++j) {
        int64_t changed = 0;
        const int64_t base = off + j * D;
        // the bound of component c depends on the voxel's index along axis c only
        const T lo_h = -static_cast<T>(i), hi_h = static_cast<T>(H - 1) - static_cast<T>(i);
        const T lo_w = -static_cast<T>(j), hi_w = static_cast<T>(W - 1) - static_cast<T>(j);
#pragma omp simd reduction(+ : changed)
        for (int64_t t = 0; t < D; ++t) {
          const int64_t idx = base + t;
          const T gv = g[idx];
          const T mo = m[idx];
          const T mn = mo + b1c * (gv - mo);  // lerp(m, g, 1 - beta1), weight < 0.5
          const T vn = v[idx] * b2 + b2c * gv * gv;
          m[idx] = mn;
          v[idx] = vn;
          const T denom = std::sqrt(vn) / bc2_sqrt + e;
          T pn = p[idx] - step_size * mn / denom;
          if (clamp) {
            const T lo = c == 0 ? lo_h : (c == 1 ? lo_w : -static_cast<T>(t));
            const T hi = c == 0 ? hi_h : (c == 1 ? hi_w : static_cast<T>(D - 1) - static_cast<T>(t));
            const bool out = pn < lo || pn > hi;
            changed += out ? 1 : 0;
            pn = pn < lo ? lo : (pn > hi ? hi : pn);
          }
          p[idx] = pn;
        }
        changed_plane += changed;
      }
      counts[plane] = changed_plane;
    }
  });
}

// One Adam step (Kingma & Ba 2015, torch.optim.Adam's update without weight decay / amsgrad / maximize, in the
// order of torch's fused CPU kernel) of a contiguous (1, 3, H, W, D) displacement parameter, with the in-image
// bound in the same pass when clamp is set: component a at voxel x is clamped to [-x_a, n_a - 1 - x_a]
// (working-grid voxels), as DisplacementField.clamp_to_image_. The number of clamped values is written to
// count (int64, 1 value; no host read). step: the step number after this update (bias corrections).
void adam_clamp(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, double lr,
                double beta1, double beta2, double eps, double step, bool clamp, at::Tensor& count) {
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&param, &grad, &exp_avg, &exp_avg_sq}) {
    TORCH_CHECK(t->is_contiguous() && t->sizes() == param.sizes() && t->scalar_type() == param.scalar_type(),
                "adam_clamp: param, grad, exp_avg, exp_avg_sq must be contiguous tensors of one shape and dtype");
  }
  TORCH_CHECK(param.dim() == 5 && param.size(0) == 1 && param.size(1) == 3, "adam_clamp: param must be (1, 3, H, W, D)");
  TORCH_CHECK(count.scalar_type() == at::kLong && count.numel() >= 1, "adam_clamp: count must be an int64 tensor");
  const int64_t H = param.size(2), W = param.size(3), D = param.size(4), planes = 3 * H;
  const double bc1 = 1.0 - std::pow(beta1, step), bc2 = 1.0 - std::pow(beta2, step);
  std::vector<int64_t> counts(planes, 0);
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "adam_clamp", [&] {
    adam_impl<scalar_t>(param.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), exp_avg.data_ptr<scalar_t>(),
                        exp_avg_sq.data_ptr<scalar_t>(), H, W, D, lr, beta1, beta2, eps, bc1, bc2, clamp, counts.data());
  });
  int64_t total = 0;
  for (int64_t c : counts) total += c;
  count.data_ptr<int64_t>()[0] = total;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("warp_ssd", &warp_ssd, "fused trilinear warp + SSD loss + gradient (CPU)");
  m.def("diffusion", &diffusion, "diffusion regulariser and its gradient (CPU)");
  m.def("box_smooth", &box_smooth, "separable replicate-padded mean filters and their adjoint (CPU)");
  m.def("field_step_grad", &field_step_grad, "smoothed field, warp + SSD + diffusion gradient, adjoint smoothing into kept buffers (CPU)");
  m.def("adam_clamp", &adam_clamp, "one Adam step with the in-image bound in the same pass (CPU)");
  m.def("release_scratch", &release_scratch, "free the box filter's kept scratch buffers");
}
