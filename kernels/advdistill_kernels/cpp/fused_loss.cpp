// Fused AdvDistill loss for CPU tensors: loss, per-response statistics and the gradients wrt the
// hidden states and the LM-head weight, without ever holding more than one logits tile.
//
// Pass 1 walks [token_chunk x vocab_chunk] logits tiles (ATen matmul on the tile) and keeps an
// online log-sum-exp and the target logit per token. The per-response aggregation then gives the
// loss and c_t = dloss/dlogp_t. Pass 2 recomputes each tile, turns it in place into
// dlogits = c_t (onehot(y_t) - softmax(z_t)) and accumulates grad_hidden += dlogits W_tile and
// grad_weight_tile += dlogits^T h. The elementwise work runs in OpenMP loops; accumulation is in
// float32 (float64 for float64 inputs).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

namespace advdistill {
namespace {

// exp(x) for float32 written so that GCC vectorises the loops calling it (libm's expf is not
// vectorised without -ffast-math): x = n ln2 + r with |r| <= ln2/2, e^r by its degree-7 Taylor
// polynomial (relative error < 1e-8), 2^n assembled in the exponent bits.
inline float vector_exp(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const bool underflow = x < -87.0f;
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = (x * kLog2e + kRoundMagic) - kRoundMagic;
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  float poly = 1.0f / 5040.0f + r * (1.0f / 40320.0f);
  poly = 1.0f / 720.0f + r * poly;
  poly = 1.0f / 120.0f + r * poly;
  poly = 1.0f / 24.0f + r * poly;
  poly = 1.0f / 6.0f + r * poly;
  poly = 0.5f + r * poly;
  poly = 1.0f + r * poly;
  poly = 1.0f + r * poly;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return underflow ? 0.0f : poly * scale;
}

inline double vector_exp(double x) { return std::exp(x); }

int num_threads() { return std::max(1, at::get_num_threads()); }

struct Problem {
  at::Tensor hidden;   // [N, d] in the accumulation dtype
  at::Tensor weight;   // [V, d] in the input dtype
  const int64_t* targets;
  int64_t num_tokens, vocab_size, ignore_index, token_chunk, vocab_chunk;
  at::ScalarType acc_type;
};

// Logits of tokens [t0, t0 + rows) x vocab [v0, v0 + cols) into the contiguous buffer.
at::Tensor logits_tile(const Problem& p, const at::Tensor& weight_tile, at::Tensor& buffer, int64_t t0,
                       int64_t rows) {
  at::Tensor out = buffer.narrow(0, 0, rows * weight_tile.size(0)).view({rows, weight_tile.size(0)});
  at::mm_out(out, p.hidden.narrow(0, t0, rows), weight_tile.t());
  return out;
}

at::Tensor weight_tile(const Problem& p, int64_t v0, int64_t cols) {
  return p.weight.narrow(0, v0, cols).to(p.acc_type).contiguous();
}

// Pass 1: running max / sum of exp per token and the target logit.
template <typename acc_t>
void online_logsumexp(const Problem& p, std::vector<acc_t>& lse, std::vector<acc_t>& target_logit) {
  std::vector<acc_t> running_max(p.num_tokens, -std::numeric_limits<acc_t>::infinity());
  std::vector<acc_t> running_sum(p.num_tokens, acc_t(0));
  at::Tensor buffer = at::empty({p.token_chunk * p.vocab_chunk}, p.hidden.options());
  for (int64_t v0 = 0; v0 < p.vocab_size; v0 += p.vocab_chunk) {
    const int64_t cols = std::min(p.vocab_chunk, p.vocab_size - v0);
    const at::Tensor w_tile = weight_tile(p, v0, cols);
    for (int64_t t0 = 0; t0 < p.num_tokens; t0 += p.token_chunk) {
      const int64_t rows = std::min(p.token_chunk, p.num_tokens - t0);
      const acc_t* logits = logits_tile(p, w_tile, buffer, t0, rows).data_ptr<acc_t>();
#pragma omp parallel for schedule(static) num_threads(num_threads())
      for (int64_t r = 0; r < rows; ++r) {
        const acc_t* row = logits + r * cols;
        const int64_t t = t0 + r;
        acc_t tile_max = row[0];
#pragma omp simd reduction(max : tile_max)
        for (int64_t c = 0; c < cols; ++c) tile_max = std::max(tile_max, row[c]);
        const acc_t new_max = std::max(running_max[t], tile_max);
        acc_t tile_sum = 0;
#pragma omp simd reduction(+ : tile_sum)
        for (int64_t c = 0; c < cols; ++c) tile_sum += vector_exp(row[c] - new_max);
        running_sum[t] = running_sum[t] * vector_exp(running_max[t] - new_max) + tile_sum;
        running_max[t] = new_max;
        const int64_t y = p.targets[t];
        if (y >= v0 && y < v0 + cols) target_logit[t] = row[y - v0];
      }
    }
  }
  for (int64_t t = 0; t < p.num_tokens; ++t) lse[t] = running_max[t] + std::log(running_sum[t]);
}

struct Aggregate {
  double loss = 0.0;
  std::vector<double> ce, p_mean;
  std::vector<int64_t> counts;
};

// Per-response statistics, the loss and c_t (0 for masked tokens); see _aggregation.py.
template <typename acc_t>
Aggregate aggregate(const Problem& p, const std::vector<acc_t>& lse, const std::vector<acc_t>& target_logit,
                    const int64_t* response_index, const double* response_weights, const bool* wrong,
                    int64_t num_responses, double lam, double p_max, std::vector<acc_t>& coefficients) {
  Aggregate out;
  out.ce.assign(num_responses, 0.0);
  out.p_mean.assign(num_responses, 0.0);
  out.counts.assign(num_responses, 0);
  std::vector<double> sum_logp(num_responses, 0.0), sum_p(num_responses, 0.0);
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    if (p.targets[t] == p.ignore_index) continue;
    const int64_t i = response_index[t];
    const double logp = static_cast<double>(target_logit[t]) - static_cast<double>(lse[t]);
    out.counts[i] += 1;
    sum_logp[i] += logp;
    sum_p[i] += std::exp(logp);
  }
  std::vector<double> ce_coefficient(num_responses, 0.0), contrastive_coefficient(num_responses, 0.0);
  for (int64_t i = 0; i < num_responses; ++i) {
    if (out.counts[i] == 0) continue;
    const double count = static_cast<double>(out.counts[i]);
    out.ce[i] = -sum_logp[i] / count;
    out.p_mean[i] = sum_p[i] / count;
    out.loss += response_weights[i] * out.ce[i];
    ce_coefficient[i] = -response_weights[i] / count;
    if (wrong[i]) {
      out.loss += lam * -std::log1p(-std::min(out.p_mean[i], p_max));
      if (out.p_mean[i] < p_max) contrastive_coefficient[i] = lam / (count * (1.0 - out.p_mean[i]));
    }
  }
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    if (p.targets[t] == p.ignore_index) {
      coefficients[t] = 0;
      continue;
    }
    const int64_t i = response_index[t];
    const double logp = static_cast<double>(target_logit[t]) - static_cast<double>(lse[t]);
    coefficients[t] = static_cast<acc_t>(ce_coefficient[i] + contrastive_coefficient[i] * std::exp(logp));
  }
  return out;
}

// Pass 2: recompute each tile, overwrite it with dlogits and accumulate both gradients.
template <typename acc_t>
void accumulate_gradients(const Problem& p, const std::vector<acc_t>& lse, const std::vector<acc_t>& coefficients,
                          at::Tensor& grad_hidden_acc, at::Tensor& grad_weight, bool need_hidden, bool need_weight) {
  const int64_t hidden_dim = p.hidden.size(1);
  std::vector<char> tile_has_gradient;
  for (int64_t t0 = 0; t0 < p.num_tokens; t0 += p.token_chunk) {
    const int64_t rows = std::min(p.token_chunk, p.num_tokens - t0);
    const bool any = std::any_of(coefficients.begin() + t0, coefficients.begin() + t0 + rows,
                                 [](acc_t c) { return c != acc_t(0); });
    tile_has_gradient.push_back(any);
  }
  const bool weight_in_acc_type = grad_weight.defined() && grad_weight.scalar_type() == p.acc_type;
  at::Tensor buffer = at::empty({p.token_chunk * p.vocab_chunk}, p.hidden.options());
  for (int64_t v0 = 0; v0 < p.vocab_size; v0 += p.vocab_chunk) {
    const int64_t cols = std::min(p.vocab_chunk, p.vocab_size - v0);
    const at::Tensor w_tile = weight_tile(p, v0, cols);
    at::Tensor grad_w_tile;
    if (need_weight) {
      grad_w_tile = weight_in_acc_type ? grad_weight.narrow(0, v0, cols)
                                       : at::zeros({cols, hidden_dim}, p.hidden.options());
    }
    for (int64_t t0 = 0, tile = 0; t0 < p.num_tokens; t0 += p.token_chunk, ++tile) {
      if (!tile_has_gradient[tile]) continue;
      const int64_t rows = std::min(p.token_chunk, p.num_tokens - t0);
      at::Tensor logits = logits_tile(p, w_tile, buffer, t0, rows);
      acc_t* data = logits.data_ptr<acc_t>();
#pragma omp parallel for schedule(static) num_threads(num_threads())
      for (int64_t r = 0; r < rows; ++r) {
        acc_t* row = data + r * cols;
        const int64_t t = t0 + r;
        const acc_t c = coefficients[t];
        if (c == acc_t(0)) {
          std::fill(row, row + cols, acc_t(0));
          continue;
        }
        const acc_t row_lse = lse[t];
#pragma omp simd
        for (int64_t col = 0; col < cols; ++col) row[col] = -c * vector_exp(row[col] - row_lse);
        const int64_t y = p.targets[t];
        if (y >= v0 && y < v0 + cols) row[y - v0] += c;
      }
      if (need_hidden) grad_hidden_acc.narrow(0, t0, rows).addmm_(logits, w_tile);
      if (need_weight) grad_w_tile.addmm_(logits.t(), p.hidden.narrow(0, t0, rows));
    }
    if (need_weight && !weight_in_acc_type) grad_weight.narrow(0, v0, cols).copy_(grad_w_tile);
  }
}

template <typename acc_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> run(
    const Problem& p, const at::Tensor& hidden, const at::Tensor& response_index, const at::Tensor& response_weights,
    const at::Tensor& wrong, double lam, double p_max, bool need_hidden, bool need_weight) {
  const int64_t num_responses = response_weights.size(0);
  std::vector<acc_t> lse(p.num_tokens), target_logit(p.num_tokens, acc_t(0)), coefficients(p.num_tokens);
  online_logsumexp<acc_t>(p, lse, target_logit);

  const at::Tensor weights_f64 = response_weights.to(at::kDouble).contiguous();
  const at::Tensor wrong_bool = wrong.contiguous();
  const Aggregate agg = aggregate<acc_t>(p, lse, target_logit, response_index.data_ptr<int64_t>(),
                                         weights_f64.data_ptr<double>(), wrong_bool.data_ptr<bool>(),
                                         num_responses, lam, p_max, coefficients);

  at::Tensor grad_hidden = at::empty({0}, hidden.options());
  at::Tensor grad_weight = at::empty({0}, p.weight.options());
  if (need_hidden || need_weight) {
    at::Tensor grad_hidden_acc = need_hidden ? at::zeros_like(p.hidden) : at::Tensor();
    if (need_weight) {
      grad_weight = p.weight.scalar_type() == p.acc_type ? at::zeros_like(p.weight) : at::empty_like(p.weight);
    }
    accumulate_gradients<acc_t>(p, lse, coefficients, grad_hidden_acc, grad_weight, need_hidden, need_weight);
    if (need_hidden) grad_hidden = grad_hidden_acc.to(hidden.scalar_type());
  }

  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  at::Tensor loss = at::scalar_tensor(agg.loss, f64).to(p.acc_type);
  at::Tensor ce = at::tensor(agg.ce, f64).to(p.acc_type);
  at::Tensor p_mean = at::tensor(agg.p_mean, f64).to(p.acc_type);
  at::Tensor counts = at::tensor(agg.counts, at::TensorOptions().dtype(at::kLong));
  return {loss, grad_hidden, grad_weight, ce, p_mean, counts};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_loss(
    const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets, const at::Tensor& response_index,
    const at::Tensor& response_weights, const at::Tensor& wrong, double lam, double p_max, int64_t ignore_index,
    int64_t token_chunk, int64_t vocab_chunk, bool need_hidden, bool need_weight) {
  for (const at::Tensor* t : {&hidden, &weight, &targets, &response_index, &response_weights, &wrong}) {
    TORCH_CHECK(t->device().is_cpu(), "advdistill cpp backend: expected CPU tensors, got ", t->device());
  }
  TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2 && hidden.size(1) == weight.size(1),
              "advdistill cpp backend: expected hidden [N, d] and weight [V, d], got ", hidden.sizes(), " and ",
              weight.sizes());
  TORCH_CHECK(targets.scalar_type() == at::kLong && response_index.scalar_type() == at::kLong,
              "advdistill cpp backend: expected int64 targets and response_index");
  TORCH_CHECK(wrong.scalar_type() == at::kBool, "advdistill cpp backend: expected bool wrong, got ",
              wrong.scalar_type());
  TORCH_CHECK(token_chunk > 0 && vocab_chunk > 0, "advdistill cpp backend: chunk sizes must be positive, got ",
              token_chunk, " and ", vocab_chunk);

  const at::ScalarType acc_type = hidden.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor targets_c = targets.contiguous();
  const at::Tensor response_index_c = response_index.contiguous();
  Problem p{hidden.to(acc_type).contiguous(),
            weight.contiguous(),
            targets_c.data_ptr<int64_t>(),
            hidden.size(0),
            weight.size(0),
            ignore_index,
            std::min(token_chunk, std::max<int64_t>(hidden.size(0), 1)),
            std::min(vocab_chunk, weight.size(0)),
            acc_type};
  if (acc_type == at::kDouble) {
    return run<double>(p, hidden, response_index_c, response_weights, wrong, lam, p_max, need_hidden, need_weight);
  }
  return run<float>(p, hidden, response_index_c, response_weights, wrong, lam, p_max, need_hidden, need_weight);
}

}  // namespace
}  // namespace advdistill

TORCH_LIBRARY(advdistill_kernels, m) {
  m.def(
      "fused_loss(Tensor hidden, Tensor weight, Tensor targets, Tensor response_index, Tensor response_weights, "
      "Tensor wrong, float lam, float p_max, int ignore_index, int token_chunk, int vocab_chunk, "
      "bool need_hidden_grad, bool need_weight_grad) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
      &advdistill::fused_loss);
}
