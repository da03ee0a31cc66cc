// Fused AdvDistill loss for CPU tensors, in a single pass over the logits: loss, per-response
// statistics and the gradients wrt the hidden states and the LM-head weight, holding one
// [tile tokens x V] logits tile at a time.
//
// Why one pass works: dloss/dlogp_t = c_t = a_i + b_i p_t depends only on token t and its own
// response i (a_i = -w_i / T_i, b_i = lam_i [i wrong] [p_mean_i < p_max] / (S_i (1 - p_mean_i)), lam_i the
// contrastive weight of response i; with a contrastive mask m_t, c_t = a_i + b_i m_t p_t and p_mean_i is the mean
// of p_t over the S_i tokens of i in the mask; without one, m_t = 1 and S_i = T_i).
// The caller orders the unmasked tokens by response and plans tiles of whole responses
// (backends/_tiles.py). For each tile one GEMM gives its full-vocabulary logits; one OpenMP loop
// turns them in place into exp(z - max) and the log-sum-exp; the per-response statistics give c_t; two
// GEMMs then give grad_hidden = dlogits W and grad_weight += dlogits^T h, with the per-row factor of
// dlogits = c_t (onehot(y_t) - softmax(z_t)) folded into them: 6 N d V FLOPs in all.
//
// Precision: float32 and float64 run in their own dtype. bfloat16 runs its GEMMs in bfloat16
// (fp32 accumulation inside the GEMM; logits and dlogits stored in bfloat16, as autograd does, so its
// per-row factor is applied in place rather than folded into the GEMMs) with the softmax statistics in
// float32, and grad_weight summed over tiles in float32 (add_transposed_product). float16 runs as float32
// (this CPU class has no fast float16 GEMM), its weight upcast slice by slice (for_weight_slices). GEMMs go
// to oneDNN (at::native::mkldnn_matmul) when requested, else to at::mm.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

namespace at {
namespace native {
// Exported by libtorch_cpu (oneDNN matmul, strided inputs, out = beta * out + alpha * a @ b); ATen
// ships no header for it.
void mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result, float beta, float alpha);
}  // namespace native
}  // namespace at

namespace advdistill {
namespace {

// A named scope for torch.profiler (kernels/benchmarks/profile_fused_loss.py reads the phases); when no
// profiler is active it costs one check.
#define RECORD_PHASE(name) RECORD_FUNCTION(name, std::vector<c10::IValue>())

// exp(x) for float32 written so that GCC vectorises the loops calling it (libm's expf is not
// vectorised without -ffast-math; the clamps and the underflow select need -fno-trapping-math, set by
// backends/cpp.py): x = n ln2 + r with |r| <= ln2/2, e^r by its degree-7 Taylor polynomial (relative
// error < 1e-8), 2^n assembled in the exponent bits.
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
  const float scale = __builtin_bit_cast(float, (static_cast<int32_t>(n) + 127) << 23);
  return underflow ? 0.0f : poly * scale;
}

inline double vector_exp(double x) { return std::exp(x); }

// Element conversions between the tile's dtype and the accumulation dtype. bfloat16 uses plain bit
// operations (round to nearest even; the values here are finite) so that the loops vectorise,
// which c10's conversion with its NaN branch does not.
inline float to_acc(float x) { return x; }
inline double to_acc(double x) { return x; }
inline float to_acc(at::BFloat16 x) { return __builtin_bit_cast(float, static_cast<uint32_t>(x.x) << 16); }

template <typename logit_t>
inline logit_t from_acc(float x) {
  return x;
}
template <>
inline at::BFloat16 from_acc<at::BFloat16>(float x) {
  const uint32_t bits = __builtin_bit_cast(uint32_t, x);
  return at::BFloat16(static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16), at::BFloat16::from_bits());
}
template <typename logit_t>
inline logit_t from_acc(double x) {
  return x;
}

// out = a @ b (accumulate: out += a @ b); a and b may be transposed views.
void gemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool accumulate, bool use_onednn) {
  if (use_onednn) {
    at::native::mkldnn_matmul(a, b, out, accumulate ? 1.0f : 0.0f, 1.0f);
  } else if (accumulate) {
    out.addmm_(a, b);
  } else {
    at::mm_out(const_cast<at::Tensor&>(out), a, b);
  }
}

// out[c, r] = bfloat16(acc[r, c] + part[r, c]) for r < d, c < n (acc or part may be null: a zero term): the float32
// sum of grad_weight^T rounded into the bfloat16 output [n, d], transposed on the way, in blocks of 16 columns
// staged in a small float32 buffer, so that both the reads and the writes stream. Done while the last tile's
// products are in cache, it replaces a transposing copy of the whole accumulator after the tiles (68 ms of a
// 2.5 s medium step on an AVX-512 EPYC).
void store_transposed(const float* acc, int64_t acc_ld, const at::BFloat16* part, int64_t part_ld, int64_t d,
                      int64_t n, at::BFloat16* out) {
  constexpr int64_t kBlock = 16;
  std::vector<float> staged(kBlock * d);  // [column][r]
  for (int64_t c0 = 0; c0 < n; c0 += kBlock) {
    const int64_t width = std::min(kBlock, n - c0);
    for (int64_t r = 0; r < d; ++r) {
      for (int64_t k = 0; k < width; ++k) {
        const float sum = (acc != nullptr ? acc[r * acc_ld + c0 + k] : 0.0f) +
                          (part != nullptr ? to_acc(part[r * part_ld + c0 + k]) : 0.0f);
        staged[k * d + r] = sum;
      }
    }
    for (int64_t k = 0; k < width; ++k) {
      at::BFloat16* out_row = out + (c0 + k) * d;
      const float* staged_row = staged.data() + k * d;
#pragma omp simd
      for (int64_t r = 0; r < d; ++r) out_row[r] = from_acc<at::BFloat16>(staged_row[r]);
    }
  }
}

// acc_t += b^T a (accumulate false: acc_t = b^T a) for a bfloat16 tile a [rows, V] and b [rows, d] into a
// float32 acc_t [d, V], grad_weight transposed: one bfloat16 GEMM (float32 accumulation inside) per slice of the
// vocabulary into `scratch` [d, slice], then a float32 add, so the products are rounded once per tile and the sum
// over tiles is float32 (accumulating in bfloat16 rounded the running sum at every tile), at the bfloat16 GEMM
// rate and a scratch much smaller than a logits tile. Transposed because oneDNN runs b^T a at its logits-GEMM rate
// and a^T b into [V, d] slices 1.5x slower (AVX-512 EPYC, d = 512, V = 65,536). With `out` defined (the last
// tile) the sum goes, rounded and transposed, into the bfloat16 grad_weight out [V, d] instead of acc_t.
void add_transposed_product(const at::Tensor& a, const at::Tensor& b, const at::Tensor& acc_t,
                            const at::Tensor& scratch, bool accumulate, bool use_onednn, const at::Tensor& out) {
  const int64_t vocab = a.size(1);
  const int64_t d = b.size(1);
  const int64_t slice = scratch.size(1);
  const at::Tensor b_t = b.t();
  for (int64_t begin = 0; begin < vocab; begin += slice) {
    const int64_t n = std::min(slice, vocab - begin);
    const at::Tensor part = scratch.view(-1).narrow(0, 0, d * n).view({d, n});
    gemm(b_t, a.narrow(1, begin, n), part, false, use_onednn);
    // in place and without the float32 copy of the slice that a mixed-dtype add_ would allocate
    const at::BFloat16* source = part.data_ptr<at::BFloat16>();
    float* target = acc_t.data_ptr<float>() + begin;
    if (out.defined()) {
      at::BFloat16* out_rows = out.data_ptr<at::BFloat16>() + begin * d;
      at::parallel_for(0, n, 64, [&](int64_t first, int64_t last) {
        store_transposed(accumulate ? target + first : nullptr, vocab, source + first, n, d, last - first,
                         out_rows + first * d);
      });
      continue;
    }
    at::parallel_for(0, d, 1, [&](int64_t first, int64_t last) {
      for (int64_t r = first; r < last; ++r) {
        float* target_row = target + r * vocab;
        const at::BFloat16* source_row = source + r * n;
        if (accumulate) {
#pragma omp simd
          for (int64_t k = 0; k < n; ++k) target_row[k] += to_acc(source_row[k]);
        } else {
#pragma omp simd
          for (int64_t k = 0; k < n; ++k) target_row[k] = to_acc(source_row[k]);
        }
      }
    });
  }
}

// Columns of one VNNI-packed block of the batch-reduce GEMM below (AMX tiles take up to 64 bfloat16 columns).
constexpr int64_t kPackedColumns = 64;

// Whether oneDNN's batch-reduce GEMM micro-kernel (through ATen's cpublas::brgemm) runs bfloat16 products into a
// float32 sum on this CPU, with its B operand in the VNNI layout: asked once with a product of known value, because
// cpublas::could_pack (whether oneDNN wants B packed) is false on AVX-512-BF16 EPYCs, where the micro-kernel runs
// and its grad_weight took 13 % less time than the scratch path (medium size), and the call throws where it cannot
// run.
bool brgemm_probe() {
  constexpr int64_t rows = 2, depth = 2;
  const std::vector<at::BFloat16> a = {1.0f, 2.0f, 3.0f, 4.0f};  // [rows, depth]
  std::vector<at::BFloat16> b_packed(depth * kPackedColumns);      // [depth / 2][64][2]
  for (int64_t c = 0; c < kPackedColumns; ++c) {
    b_packed[2 * c] = 1.0f;
    b_packed[2 * c + 1] = static_cast<float>(c % 7);
  }
  std::vector<float> c(rows * kPackedColumns, -1.0f);
  try {
    at::native::cpublas::brgemm(rows, kPackedColumns, depth, depth, kPackedColumns, kPackedColumns, false, a.data(),
                                b_packed.data(), c.data(), true);
    at::native::cpublas::brgemm_release(true);
  } catch (const std::exception&) {
    return false;
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t col = 0; col < kPackedColumns; ++col) {
      const float expected = static_cast<float>(a[r * depth]) + static_cast<float>(a[r * depth + 1]) * (col % 7);
      if (c[r * kPackedColumns + col] != expected) return false;
    }
  }
  return true;
}

bool brgemm_runs() {
  static const bool runs = brgemm_probe();
  return runs;
}

// acc_t += b^T a like add_transposed_product, through the batch-reduce GEMM micro-kernel: the bfloat16 products go
// straight into the float32 sum, without a scratch and a second pass over it. Each thread takes 64-column blocks of
// the vocabulary: it packs its block of `a` into the VNNI layout ([rows / 2][64][2], a zero row appended when rows
// is odd: the micro-kernel takes an even depth only) and adds b^T (its zero-padded transposed copy) times the block
// into the block's columns of acc_t; with `out` defined (the last tile), it then stores the block's sum, rounded and
// transposed, into the bfloat16 grad_weight out [V, d] while it is in cache.
void brgemm_add_transposed_product(const at::Tensor& a, const at::Tensor& b, const at::Tensor& acc_t,
                                   bool accumulate, const at::Tensor& out) {
  const int64_t rows = a.size(0);
  const int64_t vocab = a.size(1);
  const int64_t d = b.size(1);
  const int64_t depth = rows + (rows & 1);
  at::Tensor b_t = at::zeros({d, depth}, b.options());
  b_t.narrow(1, 0, rows).copy_(b.t());
  const at::BFloat16* a_data = a.data_ptr<at::BFloat16>();
  const at::BFloat16* b_t_data = b_t.data_ptr<at::BFloat16>();
  float* acc_data = acc_t.data_ptr<float>();
  at::BFloat16* out_data = out.defined() ? out.data_ptr<at::BFloat16>() : nullptr;
  const int64_t blocks = (vocab + kPackedColumns - 1) / kPackedColumns;
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    std::vector<uint32_t> packed(depth / 2 * kPackedColumns);  // bfloat16 pairs (row 2k, row 2k + 1)
    for (int64_t block = first; block < last; ++block) {
      const int64_t begin = block * kPackedColumns;
      const int64_t n = std::min(kPackedColumns, vocab - begin);
      for (int64_t pair = 0; pair < depth / 2; ++pair) {
        const uint16_t* even = reinterpret_cast<const uint16_t*>(a_data + 2 * pair * vocab + begin);
        const uint16_t* odd = 2 * pair + 1 < rows ? even + vocab : nullptr;
        uint32_t* target = packed.data() + pair * kPackedColumns;
        if (odd != nullptr) {
#pragma omp simd
          for (int64_t k = 0; k < n; ++k) target[k] = static_cast<uint32_t>(even[k]) | static_cast<uint32_t>(odd[k]) << 16;
        } else {
          for (int64_t k = 0; k < n; ++k) target[k] = even[k];
        }
      }
      at::native::cpublas::brgemm(d, n, depth, depth, kPackedColumns, vocab, accumulate, b_t_data,
                                  reinterpret_cast<const at::BFloat16*>(packed.data()), acc_data + begin, true);
      if (out_data != nullptr) store_transposed(acc_data + begin, vocab, nullptr, 0, d, n, out_data + begin * d);
    }
    at::native::cpublas::brgemm_release(true);
  });
}

// Positions [begin, end) of the response-ordered tokens processed as one logits tile.
struct Tile {
  int64_t begin, end;
  bool accumulate_stats;   // add this tile's logp and p to its responses' sums
  bool compute_gradients;  // turn the logits into dlogits and run the two gradient GEMMs
  bool last_gradients;     // the last tile with gradients: bfloat16 grad_weight is finished into its output here
};

struct Problem {
  at::Tensor rows;    // [M, d] unmasked hidden states ordered by response, in the GEMM dtype
  at::Tensor weight;  // [V, d] in the GEMM dtype, or float16 where weight_slice is defined
  at::Tensor weight_slice;  // float16 inputs: [slice, d] float32, the weight upcast into it slice by slice
  std::vector<int64_t> targets, responses;  // [M], ordered like rows
  std::vector<uint8_t> in_mask;             // [M], ordered like rows: m_t (1 without a contrastive mask)
  std::vector<int64_t> counts;              // T_i
  std::vector<int64_t> contrastive_counts;  // S_i, the tokens of i in the contrastive mask
  std::vector<double> response_weights;     // w_i
  std::vector<bool> contrastive;            // wrong[i] && lam_i != 0
  std::vector<double> lam;                  // lam_i, the contrastive weight of each response
  double p_max;
  int64_t vocab_size;
  bool use_onednn;
  bool use_brgemm;  // bfloat16 grad_weight through brgemm_add_transposed_product (oneDNN provider only)
};

// use(begin, n, w) for the vocabulary rows [begin, begin + n) of the weight in the GEMM dtype: all of it at once,
// or for float16 inputs slice by slice, each upcast into weight_slice just before use, because a float32 copy of
// the whole weight was the largest buffer of a float16 step.
template <typename Use>
void for_weight_slices(const Problem& pr, Use&& use) {
  if (!pr.weight_slice.defined()) {
    use(0, pr.vocab_size, pr.weight);
    return;
  }
  const int64_t slice = pr.weight_slice.size(0);
  for (int64_t begin = 0; begin < pr.vocab_size; begin += slice) {
    const int64_t n = std::min(slice, pr.vocab_size - begin);
    const at::Tensor w = pr.weight_slice.narrow(0, 0, n);
    w.copy_(pr.weight.narrow(0, begin, n));
    use(begin, n, w);
  }
}

// Whether response i's c_t has a contrastive part b_i m_t p_t at all (b_i itself waits for its p_mean_i).
bool has_contrastive_term(const Problem& pr, int64_t i) {
  return pr.contrastive[i] && pr.contrastive_counts[i] != 0;
}

// Running per-response sums and the coefficients c_t = a_i + b_i p_t derived from them.
struct ResponseSums {
  std::vector<double> logp, p;

  double contrastive_factor(const Problem& pr, int64_t i) const {
    if (!has_contrastive_term(pr, i)) return 0.0;
    const double count = static_cast<double>(pr.contrastive_counts[i]);
    const double p_mean = p[i] / count;
    if (!(p_mean < pr.p_max)) return 0.0;
    return pr.lam[i] / (count * (1.0 - p_mean));
  }
};

template <typename acc_t, typename logit_t>
void process_tile(const Problem& pr, const Tile& tile, at::Tensor& buffer, std::vector<acc_t>& token_logp,
                  ResponseSums& sums, const at::Tensor& grad_rows, const at::Tensor& grad_weight,
                  bool& grad_weight_written, const at::Tensor& weight_scratch, const at::Tensor& grad_weight_out) {
  const int64_t rows = tile.end - tile.begin;
  const int64_t vocab = pr.vocab_size;
  const at::Tensor hidden_tile = pr.rows.narrow(0, tile.begin, rows);
  at::Tensor logits = buffer.narrow(0, 0, rows * vocab).view({rows, vocab});
  {
    RECORD_PHASE("advdistill::logits_gemm");
    for_weight_slices(pr, [&](int64_t begin, int64_t n, const at::Tensor& w) {
      gemm(hidden_tile, w.t(), logits.narrow(1, begin, n), false, pr.use_onednn);
    });
  }
  logit_t* data = logits.data_ptr<logit_t>();
  // per row: sum_v exp(z_v - max) and the scale s_t = -c_t / sum of its exp row (dlogits = s_t E'_t)
  std::vector<acc_t> row_sum(rows), row_scale(rows);
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));

  // dlogits_t = c_t (onehot(y_t) - E_t / sum_t) = s_t E'_t, s_t = -c_t / sum_t, E'_t = E_t - sum_t onehot(y_t)
  const auto set_row_scale = [&](int64_t r) {
    const int64_t i = pr.responses[tile.begin + r];
    const double p = std::exp(static_cast<double>(token_logp[tile.begin + r]));
    const double coefficient = -pr.response_weights[i] / static_cast<double>(pr.counts[i]) +
                               (pr.in_mask[tile.begin + r] ? sums.contrastive_factor(pr, i) * p : 0.0);
    row_scale[r] = static_cast<acc_t>(-coefficient / static_cast<double>(row_sum[r]));
  };
  // bfloat16: dlogits in place, rounded once as autograd's are (a folded s_t would round both gradients twice)
  const auto bfloat16_dlogits_row = [&](int64_t r) {
    logit_t* row = data + r * vocab;
    const acc_t scale = row_scale[r];
    const int64_t y = pr.targets[tile.begin + r];
    const acc_t target_gradient = scale * (to_acc(row[y]) - row_sum[r]);
#pragma omp simd
    for (int64_t col = 0; col < vocab; ++col) row[col] = from_acc<logit_t>(scale * to_acc(row[col]));
    row[y] = from_acc<logit_t>(target_gradient);
  };
  // A bfloat16 row whose c_t does not wait for this tile's statistics (its response has no contrastive term, the
  // token is outside the contrastive mask, or the statistics are complete: a second pass) becomes dlogits right
  // after its exponentials, while it is in cache, instead of in a second pass over the whole tile.
  constexpr bool kRoundedTile = !std::is_same_v<logit_t, acc_t>;
  const auto dlogits_in_exp_pass = [&](int64_t r) {
    const int64_t t = tile.begin + r;
    return kRoundedTile && tile.compute_gradients &&
           (!tile.accumulate_stats || !pr.in_mask[t] || !has_contrastive_term(pr, pr.responses[t]));
  };
  std::vector<uint8_t> scaled(rows, 0);

  // Each row is overwritten with E = exp(z - max) while its log-sum-exp is taken: one read-only pass
  // for the max, one read-write pass for the exponentials.
  {
    RECORD_PHASE("advdistill::exp_rows");
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < rows; ++r) {
      logit_t* row = data + r * vocab;
      acc_t row_max = -std::numeric_limits<acc_t>::infinity();
#pragma omp simd reduction(max : row_max)
      for (int64_t c = 0; c < vocab; ++c) row_max = std::max(row_max, to_acc(row[c]));
      const acc_t target_logit = to_acc(row[pr.targets[tile.begin + r]]);
      acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t c = 0; c < vocab; ++c) {
        const acc_t shifted_exp = vector_exp(to_acc(row[c]) - row_max);
        row[c] = from_acc<logit_t>(shifted_exp);
        sum += shifted_exp;
      }
      row_sum[r] = sum;
      token_logp[tile.begin + r] = target_logit - row_max - std::log(sum);
      if (dlogits_in_exp_pass(r)) {
        set_row_scale(r);
        bfloat16_dlogits_row(r);
        scaled[r] = 1;
      }
    }
  }
  if (tile.accumulate_stats) {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = pr.responses[tile.begin + r];
      const double logp = static_cast<double>(token_logp[tile.begin + r]);
      sums.logp[i] += logp;
      if (pr.in_mask[tile.begin + r]) sums.p[i] += std::exp(logp);
    }
  }
  if (!tile.compute_gradients) return;

  for (int64_t r = 0; r < rows; ++r) {
    if (!scaled[r]) set_row_scale(r);
  }
  if constexpr (std::is_same_v<logit_t, acc_t>) {
    // float32/float64: the tile becomes E' (one element per row) and s_t is folded into the GEMMs
    // (grad_hidden rows scaled after E' W; grad_weight += E'^T (s h)) instead of rescaling the tile, a
    // pass that would read and write every logit once more.
    for (int64_t r = 0; r < rows; ++r) data[r * vocab + pr.targets[tile.begin + r]] -= row_sum[r];
    const at::Tensor scale =
        at::from_blob(row_scale.data(), {rows, 1}, at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
    if (grad_rows.defined()) {
      RECORD_PHASE("advdistill::grad_hidden_gemm");
      at::Tensor grad_rows_tile = grad_rows.narrow(0, tile.begin, rows);
      for_weight_slices(pr, [&](int64_t begin, int64_t n, const at::Tensor& w) {
        gemm(logits.narrow(1, begin, n), w, grad_rows_tile, begin > 0, pr.use_onednn);
      });
      grad_rows_tile.mul_(scale);
    }
    if (grad_weight.defined()) {
      RECORD_PHASE("advdistill::grad_weight_gemm");
      gemm(logits.t(), hidden_tile * scale, grad_weight, grad_weight_written, pr.use_onednn);
      grad_weight_written = true;
    }
    return;
  }
  {
    RECORD_PHASE("advdistill::dlogits");
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < rows; ++r) {
      if (!scaled[r]) bfloat16_dlogits_row(r);
    }
  }
  if (grad_rows.defined()) {
    RECORD_PHASE("advdistill::grad_hidden_gemm");
    gemm(logits, pr.weight, grad_rows.narrow(0, tile.begin, rows), false, pr.use_onednn);
  }
  if (grad_weight.defined()) {
    RECORD_PHASE("advdistill::grad_weight_gemm");
    const at::Tensor out = tile.last_gradients ? grad_weight_out : at::Tensor();
    if (pr.use_brgemm) {
      brgemm_add_transposed_product(logits, hidden_tile, grad_weight, grad_weight_written, out);
    } else {
      add_transposed_product(logits, hidden_tile, grad_weight, weight_scratch, grad_weight_written, pr.use_onednn,
                             out);
    }
    grad_weight_written = true;
  }
}

at::ScalarType gemm_type(at::ScalarType input) {
  return input == at::kHalf ? at::kFloat : input;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_loss(
    const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets, const at::Tensor& response_index,
    const at::Tensor& response_weights, const at::Tensor& wrong, const at::Tensor& lam, double p_max,
    const std::optional<at::Tensor>& contrastive_mask, const at::Tensor& order,
    const at::Tensor& tile_plan, bool need_hidden, bool need_weight, bool use_onednn) {
  for (const at::Tensor* t : {&hidden, &weight, &targets, &response_index, &response_weights, &wrong, &lam, &order,
                              &tile_plan}) {
    TORCH_CHECK(t->device().is_cpu(), "advdistill cpp backend: expected CPU tensors, got ", t->device());
  }
  TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2 && hidden.size(1) == weight.size(1),
              "advdistill cpp backend: expected hidden [N, d] and weight [V, d], got ", hidden.sizes(), " and ",
              weight.sizes());
  for (const at::Tensor* t : {&targets, &response_index, &order, &tile_plan}) {
    TORCH_CHECK(t->scalar_type() == at::kLong, "advdistill cpp backend: expected int64 targets, response_index, "
                "order and tile plan, got ", t->scalar_type());
  }
  TORCH_CHECK(wrong.scalar_type() == at::kBool, "advdistill cpp backend: expected bool wrong, got ",
              wrong.scalar_type());
  if (contrastive_mask.has_value()) {
    TORCH_CHECK(contrastive_mask->device().is_cpu() && contrastive_mask->scalar_type() == at::kBool &&
                    contrastive_mask->dim() == 1 && contrastive_mask->size(0) == hidden.size(0),
                "advdistill cpp backend: expected a bool CPU contrastive_mask [N], got ", contrastive_mask->sizes());
  }
  TORCH_CHECK(lam.dim() == 1 && lam.size(0) == response_weights.size(0),
              "advdistill cpp backend: expected lam [R] (one per response), got ", lam.sizes());
  TORCH_CHECK(tile_plan.dim() == 2 && tile_plan.size(1) == 4,
              "advdistill cpp backend: expected a tile plan [T, 4], got ", tile_plan.sizes());

  const at::ScalarType input_type = hidden.scalar_type();
  const at::ScalarType compute_type = gemm_type(input_type);
  const int64_t num_tokens = hidden.size(0);
  const int64_t num_responses = response_weights.size(0);
  const at::Tensor targets_c = targets.contiguous();
  const at::Tensor response_c = response_index.contiguous();
  const at::Tensor order_c = order.contiguous();
  const int64_t* target_ptr = targets_c.data_ptr<int64_t>();
  const int64_t* response_ptr = response_c.data_ptr<int64_t>();
  const int64_t valid_tokens = order_c.size(0);
  const int64_t* order_ptr = order_c.data_ptr<int64_t>();
  bool identity = valid_tokens == num_tokens;
  for (int64_t m = 0; identity && m < valid_tokens; ++m) identity = order_ptr[m] == m;

  std::vector<Tile> tiles;
  const at::Tensor plan_c = tile_plan.contiguous();
  const int64_t* plan_ptr = plan_c.data_ptr<int64_t>();
  int64_t largest_tile = 0;
  bool need_gradients = false;
  for (int64_t k = 0; k < plan_c.size(0); ++k) {
    const int64_t* row = plan_ptr + 4 * k;
    TORCH_CHECK(0 <= row[0] && row[0] < row[1] && row[1] <= valid_tokens,
                "advdistill cpp backend: tile ", k, " [", row[0], ", ", row[1], ") outside [0, ", valid_tokens, ")");
    tiles.push_back({row[0], row[1], row[2] != 0, row[3] != 0 && (need_hidden || need_weight), false});
    largest_tile = std::max(largest_tile, row[1] - row[0]);
    need_gradients = need_gradients || tiles.back().compute_gradients;
  }
  for (auto tile = tiles.rbegin(); tile != tiles.rend(); ++tile) {
    if (tile->compute_gradients) {
      tile->last_gradients = true;
      break;
    }
  }

  Problem pr;
  pr.vocab_size = weight.size(0);
  pr.p_max = p_max;
  pr.use_onednn = use_onednn && compute_type != at::kDouble;
  pr.use_brgemm = pr.use_onednn && compute_type == at::kBFloat16 && brgemm_runs();
  pr.weight = input_type == at::kHalf ? weight.contiguous() : weight.to(compute_type).contiguous();
  pr.rows = identity ? hidden.to(compute_type).contiguous() : hidden.index_select(0, order_c).to(compute_type);
  pr.counts.assign(num_responses, 0);
  pr.contrastive_counts.assign(num_responses, 0);
  at::Tensor mask_c;
  if (contrastive_mask.has_value()) mask_c = contrastive_mask->contiguous();
  const bool* mask_ptr = mask_c.defined() ? mask_c.data_ptr<bool>() : nullptr;
  for (int64_t m = 0; m < valid_tokens; ++m) {
    pr.targets.push_back(target_ptr[order_ptr[m]]);
    pr.responses.push_back(response_ptr[order_ptr[m]]);
    pr.in_mask.push_back(mask_ptr == nullptr || mask_ptr[order_ptr[m]] ? 1 : 0);
    pr.counts[pr.responses.back()] += 1;
    pr.contrastive_counts[pr.responses.back()] += pr.in_mask.back();
  }
  const at::Tensor weights_f64 = response_weights.to(at::kDouble).contiguous();
  pr.response_weights.assign(weights_f64.data_ptr<double>(), weights_f64.data_ptr<double>() + num_responses);
  const at::Tensor lam_f64 = lam.to(at::kDouble).contiguous();
  pr.lam.assign(lam_f64.data_ptr<double>(), lam_f64.data_ptr<double>() + num_responses);
  const at::Tensor wrong_c = wrong.contiguous();
  for (int64_t i = 0; i < num_responses; ++i) {
    pr.contrastive.push_back(wrong_c.data_ptr<bool>()[i] && pr.lam[i] != 0.0);
  }

  const at::TensorOptions compute_options = pr.rows.options();
  at::Tensor buffer = at::empty({largest_tile * pr.vocab_size}, compute_options);
  const int64_t d = weight.size(1);
  // vocabulary entries of a [entries, d] scratch that holds a 1/parts share of a logits tile's elements
  const auto vocabulary_slice = [&](int64_t parts) {
    return std::clamp<int64_t>(largest_tile * pr.vocab_size / (parts * d), 1, pr.vocab_size);
  };
  if (input_type == at::kHalf) pr.weight_slice = at::empty({vocabulary_slice(16), d}, compute_options);
  at::Tensor grad_rows, grad_weight_acc;
  if (need_hidden && need_gradients) grad_rows = at::empty({valid_tokens, d}, compute_options);
  // grad_weight accumulates across tiles in float32 (float64 for float64 inputs), bfloat16 included, where it is
  // kept transposed (add_transposed_product); the first tile with gradients writes it, so it starts empty
  at::Tensor weight_scratch, grad_weight_out;  // grad_weight_out: bfloat16 inputs, finished by the last tile
  if (need_weight && need_gradients) {
    const auto accumulator_options = compute_options.dtype(compute_type == at::kDouble ? at::kDouble : at::kFloat);
    if (compute_type == at::kBFloat16) {
      grad_weight_acc = at::empty({d, pr.vocab_size}, accumulator_options);
      grad_weight_out = at::empty(weight.sizes(), weight.options());
      if (!pr.use_brgemm) weight_scratch = at::empty({d, vocabulary_slice(4)}, compute_options);
    } else {
      grad_weight_acc = at::empty(weight.sizes(), accumulator_options);
    }
  }

  ResponseSums sums{std::vector<double>(num_responses, 0.0), std::vector<double>(num_responses, 0.0)};
  auto run_tiles = [&](auto acc_zero, auto logit_zero) {
    using acc_t = decltype(acc_zero);
    using logit_t = decltype(logit_zero);
    std::vector<acc_t> token_logp(valid_tokens);
    bool grad_weight_written = false;
    for (const Tile& tile : tiles) {
      process_tile<acc_t, logit_t>(pr, tile, buffer, token_logp, sums, grad_rows, grad_weight_acc,
                                   grad_weight_written, weight_scratch, grad_weight_out);
    }
  };
  if (compute_type == at::kDouble) {
    run_tiles(0.0, 0.0);
  } else if (compute_type == at::kBFloat16) {
    run_tiles(0.0f, at::BFloat16(0.0f));
  } else {
    run_tiles(0.0f, 0.0f);
  }
  // the logits tile, the slice scratch and a finished accumulator are freed before the other outputs are allocated,
  // so that the step's peak is the larger of the tiles phase and the outputs phase, not their sum
  buffer.reset();
  weight_scratch.reset();
  pr.weight_slice.reset();
  if (grad_weight_out.defined()) grad_weight_acc.reset();

  const at::ScalarType stats_type = input_type == at::kDouble ? at::kDouble : at::kFloat;
  std::vector<double> ce(num_responses, 0.0), p_mean(num_responses, 0.0);
  double loss = 0.0;
  for (int64_t i = 0; i < num_responses; ++i) {
    if (pr.counts[i] == 0) continue;
    const double count = static_cast<double>(pr.counts[i]);
    ce[i] = -sums.logp[i] / count;
    loss += pr.response_weights[i] * ce[i];
    if (pr.contrastive_counts[i] == 0) continue;  // no token in the contrastive mask: no contrastive term
    p_mean[i] = sums.p[i] / static_cast<double>(pr.contrastive_counts[i]);
    if (wrong_c.data_ptr<bool>()[i]) loss += pr.lam[i] * -std::log1p(-std::min(p_mean[i], p_max));
  }

  at::Tensor grad_hidden = at::empty({0}, hidden.options());
  if (need_hidden) {
    if (!grad_rows.defined()) {
      grad_hidden = at::zeros_like(hidden);
    } else {
      grad_hidden = identity ? grad_rows.to(input_type)
                             : at::zeros_like(hidden).index_copy_(0, order_c, grad_rows.to(input_type));
    }
  }
  at::Tensor grad_weight = at::empty({0}, weight.options());
  if (need_weight) {
    if (grad_weight_out.defined()) {
      grad_weight = grad_weight_out;
    } else if (grad_weight_acc.defined()) {
      grad_weight = grad_weight_acc.to(input_type);
    } else {
      grad_weight = at::zeros_like(weight);
    }
  }
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  return {at::scalar_tensor(loss, f64).to(stats_type), grad_hidden, grad_weight,
          at::tensor(ce, f64).to(stats_type), at::tensor(p_mean, f64).to(stats_type),
          at::tensor(pr.counts, at::TensorOptions().dtype(at::kLong)),
          at::tensor(pr.contrastive_counts, at::TensorOptions().dtype(at::kLong))};
}

void gemm_op(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool accumulate, bool use_onednn) {
  gemm(a, b, out, accumulate, use_onednn);
}

}  // namespace
}  // namespace advdistill

TORCH_LIBRARY(advdistill_kernels, m) {
  m.def(
      "fused_loss(Tensor hidden, Tensor weight, Tensor targets, Tensor response_index, Tensor response_weights, "
      "Tensor wrong, Tensor lam, float p_max, Tensor? contrastive_mask, Tensor order, Tensor tile_plan, "
      "bool need_hidden_grad, bool need_weight_grad, bool use_onednn) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
      &advdistill::fused_loss);
  m.def("gemm(Tensor a, Tensor b, Tensor(a!) out, bool accumulate, bool use_onednn) -> ()", &advdistill::gemm_op);
  m.def("brgemm_runs() -> bool", &advdistill::brgemm_runs);
}
