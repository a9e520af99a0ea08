// Token sampler: repetition penalty, greedy, top-k, temperature, top-p, min-p, seeded draw.
//
// Scratch is sized once for the vocabulary; sample() allocates nothing. The order of the steps
// is documented in docs/CONTRACTS.md and mirrored by the numpy reference in the tests.
#pragma once

#include <cstdint>
#include <vector>

namespace metallic {

struct SamplerParams {
  float temperature = 0.f;         // 0 → greedy
  int32_t top_k = 0;               // 0 → off
  float top_p = 1.f;               // 1 → off
  float min_p = 0.f;               // 0 → off
  float repetition_penalty = 1.f;  // 1 → off
  int32_t repetition_window = 64;  // tokens of history the penalty looks at
  uint64_t seed = 0;
};

class Sampler {
 public:
  Sampler(int64_t n_vocab, const SamplerParams& p);  // throws InvalidArgument naming the field

  int32_t sample(const float* logits);  // logits: (n_vocab,), not modified
  void accept(int32_t token);           // push into the penalty history
  void reset();                         // clear history, restart the RNG from the seed
  int64_t n_vocab() const { return n_vocab_; }
  const SamplerParams& params() const { return p_; }

 private:
  double next_uniform();  // [0, 1)

  int64_t n_vocab_;
  SamplerParams p_;
  uint64_t state_;
  std::vector<float> work_;       // (n_vocab,) penalised logits, then probabilities
  std::vector<int32_t> idx_;      // (n_vocab,) candidate ids
  std::vector<int32_t> history_;  // ring of the last `repetition_window` tokens
  std::vector<uint8_t> seen_;     // (n_vocab,) dedupe flags for the penalty
  int64_t hist_pos_ = 0;
  int64_t hist_len_ = 0;
};

}  // namespace metallic
