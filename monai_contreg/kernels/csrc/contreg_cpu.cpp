// CPU kernels of monai_contreg's optimisation step (compiled on first use by monai_contreg.kernels).
//
// warp_ssd: one pass over the fixed grid that samples the moving features trilinearly at x + u(x), forms the
//   residual against the fixed features, and accumulates the loss and its exact gradient with respect to u
//   (the derivative of the trilinear interpolant). Features are channels-last (H, W, D, C) so the 8 corners
//   of a sample are 8 contiguous runs of C values. The loss is summed per (h, w) row in double, then the rows
//   are summed in order, so the result does not depend on the number of threads.
// box_smooth: replicate-padded mean filters along each axis (and their exact adjoint for the backward pass).
// diffusion: the squared-forward-difference regulariser and its gradient in one pass.
//
// Coordinates: a sample position is the voxel index plus the displacement (the align_corners=False frame of
// monai_contreg.spatial.conventions, where grid_sample's unnormalised coordinate equals the voxel index).

#include <ATen/ATen.h>
#include <torch/python.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
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

// CC > 0: the channel count known at compile time (the 12 MIND-SSC channels), so the channel loop unrolls and
// vectorises; CC == 0: any channel count C.
// F: the features' storage type (T, or bfloat16 with arithmetic in T = float).
template <typename T, typename F, int CC, bool ZEROS>
void warp_ssd_impl(const T* ddf, const F* mov, const F* fix, T* grad, T* warped, double* row_loss,
                   int64_t H, int64_t W, int64_t D, int64_t C_) {
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
        grad[idx] = T(2) * sh * ah.dpos;
        grad[N + idx] = T(2) * sw * aw.dpos;
        grad[2 * N + idx] = T(2) * sd * ad.dpos;
        acc_row += static_cast<double>(sl);
      }
      row_loss[hw] = acc_row;
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
      want_warped ? warped.data_ptr<T>() : nullptr, rows.data_ptr<double>(), H, W, D, C);
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

// Mean filters of half-width r along the middle axis of a contiguous (outer, n, inner) view, `passes` times.
// adjoint = false: y[m] = mean_{j=-r..r} x[clamp(m + j)] (replicate padding).
// adjoint = true: the transpose, y[m] = (1/k) sum_i count(i, m) x[i], count(i, m) = #{j : clamp(i + j) = m}.
// The passes along one axis are applied to a tile (n x up to 256 inner columns) held in two small buffers, so
// the tensor is read and written once per axis whatever the number of passes.
template <typename T>
void box_axis(const T* in, T* out, int64_t outer, int64_t n, int64_t inner, int64_t r, int64_t passes, bool adjoint) {
  const T inv = T(1) / static_cast<T>(2 * r + 1);
  const int64_t tc = std::min<int64_t>(inner, 256);
  const int64_t tiles = (inner + tc - 1) / tc;
  auto count = [&](int64_t i, int64_t m) -> int64_t {
    const int64_t lo = (m == 0) ? INT64_MIN / 4 : m, hi = (m == n - 1) ? INT64_MAX / 4 : m;
    return std::max<int64_t>(0, std::min(r, hi - i) - std::max(-r, lo - i) + 1);
  };
  // one pass on a tile: src, dst are (n, w) with row stride w
  auto pass = [&](const T* src, T* dst, int64_t w) {
    for (int64_t m = 0; m < n; ++m) {
      T* d = dst + m * w;
      const bool interior = m >= r + 1 && m + r + 1 < n;  // band sum, for the operator and its adjoint
      if (interior || !adjoint) {
        const T* s0 = src + (interior ? m - r : std::min(std::max<int64_t>(m - r, 0), n - 1)) * w;
#pragma omp simd
        for (int64_t t = 0; t < w; ++t) d[t] = s0[t];
        for (int64_t j = -r + 1; j <= r; ++j) {
          const T* sj = src + (interior ? m + j : std::min(std::max<int64_t>(m + j, 0), n - 1)) * w;
#pragma omp simd
          for (int64_t t = 0; t < w; ++t) d[t] += sj[t];
        }
      } else {
        std::fill(d, d + w, T(0));
        for (int64_t i = std::max<int64_t>(0, m - r); i <= std::min(n - 1, m + r); ++i) {
          const T c = static_cast<T>(count(i, m));
          const T* si = src + i * w;
#pragma omp simd
          for (int64_t t = 0; t < w; ++t) d[t] += c * si[t];
        }
      }
#pragma omp simd
      for (int64_t t = 0; t < w; ++t) d[t] *= inv;
    }
  };
  if (inner == 1) {  // contiguous lines: the whole line stays in two small buffers
    at::parallel_for(0, outer, std::max<int64_t>(1, 4096 / n), [&](int64_t begin, int64_t end) {
      std::vector<T> a(n), b(n);
      for (int64_t o = begin; o < end; ++o) {
        std::copy(in + o * n, in + o * n + n, a.data());
        T *x = a.data(), *y = b.data();
        for (int64_t p = 0; p < passes; ++p) {
          for (int64_t m = 0; m < n; ++m) {
            if (m >= r + 1 && m + r + 1 < n) {  // interior run: plain band sums
              const int64_t stop = n - r - 1;
              if (r == 1) {
#pragma omp simd
                for (int64_t t = m; t < stop; ++t) y[t] = (x[t - 1] + x[t] + x[t + 1]) * inv;
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
                acc += static_cast<T>(count(i, m)) * x[i];
            }
            y[m] = acc * inv;
          }
          std::swap(x, y);
        }
        std::copy(x, x + n, out + o * n);
      }
    });
    return;
  }
  at::parallel_for(0, outer * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> a(n * tc), b(n * tc);
    for (int64_t ot = begin; ot < end; ++ot) {
      const int64_t o = ot / tiles, t0 = (ot % tiles) * tc, w = std::min(tc, inner - t0);
      const T* src = in + o * n * inner + t0;
      for (int64_t m = 0; m < n; ++m) std::copy(src + m * inner, src + m * inner + w, a.data() + m * w);
      T *x = a.data(), *y = b.data();
      for (int64_t p = 0; p < passes; ++p) {
        pass(x, y, w);
        std::swap(x, y);
      }
      T* dst = out + o * n * inner + t0;
      for (int64_t m = 0; m < n; ++m) std::copy(x + m * w, x + m * w + w, dst + m * inner);
    }
  });
}

// `passes` rounds of mean filters of width k along the three spatial axes of a contiguous (B, C, H, W, D)
// tensor, or the transpose of that operator (adjoint). The per-axis filters commute, so the passes are grouped
// by axis (H, W, D; reverse order for the adjoint).
at::Tensor box_smooth(const at::Tensor& x, int64_t k, int64_t passes, bool adjoint, bool inplace) {
  TORCH_CHECK(x.dim() == 5 && x.is_contiguous(), "box_smooth: x must be a contiguous (B, C, H, W, D) tensor");
  TORCH_CHECK(k >= 1 && k % 2 == 1 && passes >= 0, "box_smooth: k must be odd and positive, passes >= 0");
  if (k == 1 || passes == 0) return inplace ? x : x.clone();
  const int64_t r = k / 2;
  const int64_t BC = x.size(0) * x.size(1), H = x.size(2), W = x.size(3), D = x.size(4);
  // x -> a -> b -> a; in place, b is x itself (one scratch tensor) and a is copied back into x at the end
  at::Tensor a = at::empty_like(x), b = inplace ? x : at::empty_like(x);
  const int64_t views[3][3] = {{BC, H, W * D}, {BC * H, W, D}, {BC * H * W, D, 1}};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "box_smooth", [&] {
    const int order[3] = {adjoint ? 2 : 0, 1, adjoint ? 0 : 2};
    const scalar_t* src[3] = {x.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>()};
    scalar_t* dst[3] = {a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), a.data_ptr<scalar_t>()};
    for (int s = 0; s < 3; ++s) {
      const int64_t* v = views[order[s]];
      box_axis<scalar_t>(src[s], dst[s], v[0], v[1], v[2], r, passes, adjoint);
    }
  });
  if (inplace) {
    x.copy_(a);
    return x;
  }
  return a;
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
        T a0 = 0, a1 = 0, a2 = 0;
#pragma omp simd reduction(+ : a0, a1, a2)
        for (int64_t k = 0; k < D; ++k) {
          const int64_t idx = base + k;
          const T v = x[idx];
          T gv = 0;
          if (i + 1 < H) { const T d = x[idx + sh] - v; a0 += d * d; gv -= w0 * d; }
          if (i > 0) gv += w0 * (v - x[idx - sh]);
          if (j + 1 < W) { const T d = x[idx + sw] - v; a1 += d * d; gv -= w1 * d; }
          if (j > 0) gv += w1 * (v - x[idx - sw]);
          if (k + 1 < D) { const T d = x[idx + 1] - v; a2 += d * d; gv -= w2 * d; }
          if (k > 0) gv += w2 * (v - x[idx - 1]);
          g[idx] = gv;
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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("warp_ssd", &warp_ssd, "fused trilinear warp + SSD loss + gradient (CPU)");
  m.def("diffusion", &diffusion, "diffusion regulariser and its gradient (CPU)");
  m.def("box_smooth", &box_smooth, "separable replicate-padded mean filters and their adjoint (CPU)");
}
