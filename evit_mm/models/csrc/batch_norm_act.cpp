// BatchNorm in training mode on channels-last CPU memory, with the ReLU or the residual add that follows it, in two
// passes over memory forward (statistics; normalise + ReLU or + residual) and two backward (the two reductions;
// the input gradient, the ReLU's mask recomputed from the input). See evit_mm/models/batch_norm_act.py for why.
//
// The memory of a channels-last map (B, C, H, W), or of a (M, C, 1, 1) token view, is a row-major (M, C) matrix. Its
// rows are grouped into lines of at least kMinLine elements (g rows of C channels), so that the inner loops are long
// enough to vectorise whatever C is; per-position sums are folded back to per-channel sums at the end.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kMinLine = 64;     // elements per line, at least
constexpr int64_t kBlockLines = 64;  // lines summed in the accumulation type before adding into doubles

int64_t rows_per_line(int64_t channels) {
  return std::max<int64_t>(1, (kMinLine + channels - 1) / channels);
}

// Two per-position sums over lines [0, lines) of K positions, added up in double: `line_sums(begin, end, a, b)` adds
// lines [begin, end) into a[K] and b[K] (of acc_t). The lines are split into one chunk per thread; the partial sums
// are added in chunk order, so the result does not depend on which thread ran which chunk.
template <typename acc_t, typename LineSums>
void sum_lines(int64_t lines, int64_t K, const LineSums& line_sums, std::vector<double>& first,
               std::vector<double>& second) {
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), lines));
  std::vector<double> partial_first(chunks * K, 0.0), partial_second(chunks * K, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    std::vector<acc_t> a(K), b(K);
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      const int64_t begin = lines * chunk / chunks, end = lines * (chunk + 1) / chunks;
      double* pa = partial_first.data() + chunk * K;
      double* pb = partial_second.data() + chunk * K;
      for (int64_t line = begin; line < end; line += kBlockLines) {
        std::fill(a.begin(), a.end(), acc_t(0));
        std::fill(b.begin(), b.end(), acc_t(0));
        line_sums(line, std::min(line + kBlockLines, end), a.data(), b.data());
        for (int64_t k = 0; k < K; ++k) {
          pa[k] += a[k];
          pb[k] += b[k];
        }
      }
    }
  });
  first.assign(K, 0.0);
  second.assign(K, 0.0);
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    for (int64_t k = 0; k < K; ++k) {
      first[k] += partial_first[chunk * K + k];
      second[k] += partial_second[chunk * K + k];
    }
  }
}

// Per-channel values repeated over the g rows of a line.
template <typename T>
std::vector<T> per_position(const std::vector<T>& per_channel, int64_t K) {
  const int64_t C = per_channel.size();
  std::vector<T> out(K);
  for (int64_t k = 0; k < K; ++k) out[k] = per_channel[k % C];
  return out;
}

template <typename scalar_t>
std::vector<at::Tensor> forward_impl(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                     at::Tensor& running_mean, at::Tensor& running_var, double momentum, double eps,
                                     bool relu, const c10::optional<at::Tensor>& residual) {
  // float sums over a block of lines, then double: the blocks are short, the totals long
  using acc_t = scalar_t;
  const int64_t C = x.size(1), M = x.numel() / C;
  const int64_t g = rows_per_line(C), K = g * C, lines = M / g;
  const scalar_t* xp = x.data_ptr<scalar_t>();
  // sums of x - shift, shift = the first row: the variance as E[d^2] - E[d]^2 then loses nothing to a large mean
  std::vector<scalar_t> shift_c(xp, xp + C);
  const std::vector<scalar_t> shift = per_position(shift_c, K);
  const scalar_t* sh = shift.data();
  std::vector<double> sum_k, square_k;
  sum_lines<acc_t>(lines, K, [&](int64_t begin, int64_t end, acc_t* a, acc_t* b) {
    for (int64_t line = begin; line < end; ++line) {
      const scalar_t* p = xp + line * K;
#pragma omp simd
      for (int64_t k = 0; k < K; ++k) {
        const acc_t d = p[k] - sh[k];
        a[k] += d;
        b[k] += d * d;
      }
    }
  }, sum_k, square_k);
  std::vector<double> sum(C, 0.0), square(C, 0.0);
  for (int64_t k = 0; k < K; ++k) {
    sum[k % C] += sum_k[k];
    square[k % C] += square_k[k];
  }
  for (int64_t i = lines * K; i < M * C; ++i) {  // the last rows, fewer than a line
    const double d = static_cast<double>(xp[i]) - shift_c[i % C];
    sum[i % C] += d;
    square[i % C] += d * d;
  }

  auto mean = at::empty({C}, x.options());
  auto invstd = at::empty({C}, x.options());
  scalar_t* mean_p = mean.data_ptr<scalar_t>();
  scalar_t* invstd_p = invstd.data_ptr<scalar_t>();
  scalar_t* running_mean_p = running_mean.data_ptr<scalar_t>();
  scalar_t* running_var_p = running_var.data_ptr<scalar_t>();
  const scalar_t* w = weight.data_ptr<scalar_t>();
  const scalar_t* bi = bias.data_ptr<scalar_t>();
  std::vector<scalar_t> scale_c(C), shift_out_c(C);
  for (int64_t c = 0; c < C; ++c) {
    const double centred = sum[c] / M;
    const double var = std::max(0.0, square[c] / M - centred * centred);
    const double m = shift_c[c] + centred;
    mean_p[c] = static_cast<scalar_t>(m);
    invstd_p[c] = static_cast<scalar_t>(1.0 / std::sqrt(var + eps));
    running_mean_p[c] = static_cast<scalar_t>((1 - momentum) * running_mean_p[c] + momentum * m);
    running_var_p[c] = static_cast<scalar_t>((1 - momentum) * running_var_p[c] + momentum * var * M / (M - 1));
    // y = x * scale + shift, as torch's CPU kernel computes it (alpha = invstd * weight, beta = bias - mean * alpha)
    scale_c[c] = invstd_p[c] * w[c];
    shift_out_c[c] = bi[c] - mean_p[c] * scale_c[c];
  }

  auto out = at::empty_like(x);
  scalar_t* op = out.data_ptr<scalar_t>();
  const scalar_t* rp = residual.has_value() ? residual->data_ptr<scalar_t>() : nullptr;
  const std::vector<scalar_t> scale = per_position(scale_c, K), shift_out = per_position(shift_out_c, K);
  const scalar_t* s = scale.data();
  const scalar_t* t = shift_out.data();
  at::parallel_for(0, lines, std::max<int64_t>(1, 32768 / K), [&](int64_t begin, int64_t end) {
    for (int64_t line = begin; line < end; ++line) {
      const scalar_t* p = xp + line * K;
      scalar_t* o = op + line * K;
      if (rp != nullptr) {
        const scalar_t* r = rp + line * K;
#pragma omp simd
        for (int64_t k = 0; k < K; ++k) o[k] = p[k] * s[k] + t[k] + r[k];
      } else if (relu) {
#pragma omp simd
        for (int64_t k = 0; k < K; ++k) o[k] = std::max(p[k] * s[k] + t[k], scalar_t(0));
      } else {
#pragma omp simd
        for (int64_t k = 0; k < K; ++k) o[k] = p[k] * s[k] + t[k];
      }
    }
  });
  for (int64_t i = lines * K; i < M * C; ++i) {
    const scalar_t y = xp[i] * scale_c[i % C] + shift_out_c[i % C];
    op[i] = rp != nullptr ? y + rp[i] : relu ? std::max(y, scalar_t(0)) : y;
  }
  return {out, mean, invstd};
}

// The ReLU's mask as a template parameter: a run-time flag inside the loops kept GCC from vectorising them (the
// backward pass ran 4-40x slower).
template <typename scalar_t, bool relu>
std::vector<at::Tensor> backward_impl(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                      const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& invstd) {
  using acc_t = scalar_t;
  const int64_t C = x.size(1), M = x.numel() / C;
  const int64_t g = rows_per_line(C), K = g * C, lines = M / g;
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const scalar_t* gp = grad.data_ptr<scalar_t>();
  const scalar_t* mean_p = mean.data_ptr<scalar_t>();
  const scalar_t* invstd_p = invstd.data_ptr<scalar_t>();
  const scalar_t* w = weight.data_ptr<scalar_t>();
  const scalar_t* bi = bias.data_ptr<scalar_t>();
  std::vector<scalar_t> scale_c(C), shift_out_c(C), mean_c(mean_p, mean_p + C);
  for (int64_t c = 0; c < C; ++c) {  // the forward pass's y, bit for bit: the ReLU's mask
    scale_c[c] = invstd_p[c] * w[c];
    shift_out_c[c] = bi[c] - mean_p[c] * scale_c[c];
  }
  const std::vector<scalar_t> scale = per_position(scale_c, K), shift_out = per_position(shift_out_c, K);
  const std::vector<scalar_t> mean_k = per_position(mean_c, K);
  const scalar_t* s = scale.data();
  const scalar_t* t = shift_out.data();
  const scalar_t* mk = mean_k.data();
  // sum of dy and of dy * (x - mean), dy the gradient through the ReLU
  std::vector<double> grad_sum_k, dot_k;
  sum_lines<acc_t>(lines, K, [&](int64_t begin, int64_t end, acc_t* a, acc_t* b) {
    for (int64_t line = begin; line < end; ++line) {
      const scalar_t* p = xp + line * K;
      const scalar_t* q = gp + line * K;
#pragma omp simd
      for (int64_t k = 0; k < K; ++k) {
        const scalar_t dy = (relu && !(p[k] * s[k] + t[k] > scalar_t(0))) ? scalar_t(0) : q[k];
        a[k] += dy;
        b[k] += dy * (p[k] - mk[k]);
      }
    }
  }, grad_sum_k, dot_k);
  std::vector<double> grad_sum(C, 0.0), dot(C, 0.0);
  for (int64_t k = 0; k < K; ++k) {
    grad_sum[k % C] += grad_sum_k[k];
    dot[k % C] += dot_k[k];
  }
  for (int64_t i = lines * K; i < M * C; ++i) {
    const int64_t c = i % C;
    const scalar_t dy = (relu && !(xp[i] * scale_c[c] + shift_out_c[c] > scalar_t(0))) ? scalar_t(0) : gp[i];
    grad_sum[c] += dy;
    dot[c] += static_cast<double>(dy) * (xp[i] - mean_c[c]);
  }

  auto grad_weight = at::empty({C}, x.options());
  auto grad_bias = at::empty({C}, x.options());
  scalar_t* gw = grad_weight.data_ptr<scalar_t>();
  scalar_t* gb = grad_bias.data_ptr<scalar_t>();
  // dx = weight * invstd * (dy - mean(dy) - (x - mean) * invstd^2 * mean(dy * (x - mean))), as torch computes it
  std::vector<scalar_t> gain_c(C), grad_mean_c(C), proj_c(C);
  for (int64_t c = 0; c < C; ++c) {
    const double is = invstd_p[c];
    gb[c] = static_cast<scalar_t>(grad_sum[c]);
    gw[c] = static_cast<scalar_t>(dot[c] * is);
    gain_c[c] = static_cast<scalar_t>(w[c] * is);
    grad_mean_c[c] = static_cast<scalar_t>(grad_sum[c] / M);
    proj_c[c] = static_cast<scalar_t>(dot[c] / M * is * is);
  }
  auto grad_input = at::empty_like(x);
  scalar_t* dx = grad_input.data_ptr<scalar_t>();
  const std::vector<scalar_t> gain = per_position(gain_c, K), grad_mean = per_position(grad_mean_c, K),
                              proj = per_position(proj_c, K);
  const scalar_t* ga = gain.data();
  const scalar_t* gm = grad_mean.data();
  const scalar_t* pr = proj.data();
  at::parallel_for(0, lines, std::max<int64_t>(1, 32768 / K), [&](int64_t begin, int64_t end) {
    for (int64_t line = begin; line < end; ++line) {
      const scalar_t* p = xp + line * K;
      const scalar_t* q = gp + line * K;
      scalar_t* d = dx + line * K;
#pragma omp simd
      for (int64_t k = 0; k < K; ++k) {
        const scalar_t dy = (relu && !(p[k] * s[k] + t[k] > scalar_t(0))) ? scalar_t(0) : q[k];
        d[k] = ga[k] * (dy - gm[k] - (p[k] - mk[k]) * pr[k]);
      }
    }
  });
  for (int64_t i = lines * K; i < M * C; ++i) {
    const int64_t c = i % C;
    const scalar_t dy = (relu && !(xp[i] * scale_c[c] + shift_out_c[c] > scalar_t(0))) ? scalar_t(0) : gp[i];
    dx[i] = gain_c[c] * (dy - grad_mean_c[c] - (xp[i] - mean_c[c]) * proj_c[c]);
  }
  return {grad_input, grad_weight, grad_bias};
}

std::vector<at::Tensor> forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                at::Tensor running_mean, at::Tensor running_var, double momentum, double eps,
                                bool relu, const c10::optional<at::Tensor>& residual) {
  TORCH_CHECK(x.numel() / x.size(1) > 1, "batch_norm_act: expected more than 1 value per channel when training");
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_act_forward", [&] {
    return forward_impl<scalar_t>(x, weight, bias, running_mean, running_var, momentum, eps, relu, residual);
  });
}

std::vector<at::Tensor> backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                 const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& invstd,
                                 bool relu) {
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_act_backward", [&] {
    return relu ? backward_impl<scalar_t, true>(grad, x, weight, bias, mean, invstd)
                : backward_impl<scalar_t, false>(grad, x, weight, bias, mean, invstd);
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "BatchNorm (training) + ReLU or + residual, channels-last CPU memory");
  m.def("backward", &backward, "its input, weight and bias gradients");
}
