// Token sampler: logit bias, token mask, min_tokens, penalties, greedy, top-k, temperature, top-p,
// min-p, seeded draw; optional log-probabilities of the raw logits.
//
// Scratch is sized once for the vocabulary; sample() allocates nothing. The order of the steps
// is documented in docs/CONTRACTS.md and mirrored by the numpy reference in the tests.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace metallic {

struct SamplerParams {
  float temperature = 0.f;         // 0 → greedy
  int32_t top_k = 0;               // 0 → off
  float top_p = 1.f;               // 1 → off
  float min_p = 0.f;               // 0 → off
  float repetition_penalty = 1.f;  // 1 → off
  int32_t repetition_window = 64;  // tokens of history every penalty looks at
  uint64_t seed = 0;
  float presence_penalty = 0.f;                       // subtracted once from each token seen in the window
  float frequency_penalty = 0.f;                      // subtracted per occurrence in the window
  std::vector<std::pair<int32_t, float>> logit_bias;  // added to the raw logits
  int32_t min_tokens = 0;                             // suppress_ids are masked for the first min_tokens draws
  std::vector<int32_t> suppress_ids;                  // usually the EOS ids
  int32_t top_logprobs = -1;                          // -1: no log-probabilities; k >= 0: chosen + k best
};

class Sampler {
 public:
  static constexpr int32_t kMaxTopLogprobs = 100;

  Sampler(int64_t n_vocab, const SamplerParams& p);  // throws InvalidArgument naming the field

  // logits: (n_vocab,), not modified. Throws InvalidArgument when the mask and min_tokens leave
  // no token to draw.
  int32_t sample(const float* logits);
  void accept(int32_t token);  // push into the penalty history
  // True when the next sample() is a plain argmax of the raw logits (greedy, no logit bias, mask,
  // penalties, active min_tokens suppression or logprobs): the engine may then take the argmax
  // on the device and record it with note_device_draw() instead of calling sample().
  bool plain_greedy() const { return p_.temperature <= 0.f && nothing_to_apply(); }
  void note_device_draw() { ++drawn_; }
  // The same for a temperature draw (temperature > 0, nothing else to apply on the host): the
  // device draws from the raw logits with the uniform from take_uniform(); when it cannot (its
  // fallback), sample_with_uniform() draws on the host with that same uniform.
  bool plain_sampling() const { return p_.temperature > 0.f && nothing_to_apply(); }
  double take_uniform() { return next_uniform(); }
  int32_t sample_with_uniform(const float* logits, double u);
  void reset();  // clear history and draw count, restart the RNG from the seed
  int64_t n_vocab() const { return n_vocab_; }
  const SamplerParams& params() const { return p_; }

  // Allowed-token bitmask: bit (i % 32) of word i / 32 set = token i may be drawn. Applied by
  // sample() while mask_enabled(); words past the vocabulary's last bit are ignored.
  uint32_t* mask_words() { return mask_.data(); }
  int64_t mask_size() const { return static_cast<int64_t>(mask_.size()); }
  bool mask_enabled() const { return mask_on_; }
  void set_mask_enabled(bool on) { mask_on_ = on; }

  // After sample() with top_logprobs >= 0: entry 0 is the drawn token and its log-probability,
  // entries 1..k the k most likely tokens (descending, ties by lowest id), all log_softmax of
  // the raw logits given to sample() (before bias, mask, penalties and temperature).
  const float* logprob_values() const { return lp_val_.data(); }
  const int32_t* logprob_ids() const { return lp_id_.data(); }
  int64_t logprob_slots() const { return static_cast<int64_t>(lp_val_.size()); }

 private:
  // No logit bias, mask, penalties, active min_tokens suppression or logprobs: a draw from the raw
  // logits.
  bool nothing_to_apply() const { return !adjusts() && lp_val_.empty(); }
  // Bias, mask, suppression or penalties change the logits before the draw.
  bool adjusts() const {
    return !p_.logit_bias.empty() || mask_on_ || penalties_ || (drawn_ < p_.min_tokens && !p_.suppress_ids.empty());
  }
  double next_uniform();                           // [0, 1)
  int32_t draw(const float* logits, double u);     // u: the uniform in [0, 1) of a temperature draw
  void top_k_ids(const float* adj, int32_t* idx);  // the top_k ids (heap order) into idx
  double all_probs(const float* adj);              // every id's probability into work_; the total
  int32_t walk_all(double u) const;                // the id where work_'s running sum passes u
  static constexpr int64_t kDrawBlock = 256;       // ids per block sum (all_probs, walk_all)
  void logprobs(const float* logits, int32_t chosen);

  int64_t n_vocab_;
  SamplerParams p_;
  uint64_t state_;
  std::vector<float> work_;                      // (n_vocab,) adjusted logits, then probabilities
  std::vector<int32_t> idx_;                     // (n_vocab,) candidate ids
  std::vector<double> block_sums_;               // (n_vocab / kDrawBlock,) all_probs' block sums
  std::vector<std::pair<float, int32_t>> heap_;  // (top_k,) the best logits so far, worst on top
  std::vector<int32_t> history_;                 // ring of the last `repetition_window` tokens
  std::vector<int32_t> counts_;                  // (n_vocab,) occurrences of each token in the ring
  std::vector<uint8_t> seen_;                    // (n_vocab,) dedupe flags for the penalty pass
  std::vector<uint32_t> mask_;                   // ceil(n_vocab / 32) words
  std::vector<float> lp_val_;                    // top_logprobs + 1 (empty when off)
  std::vector<int32_t> lp_id_;
  bool mask_on_ = false;
  bool penalties_ = false;
  int64_t hist_pos_ = 0;
  int64_t hist_len_ = 0;
  int64_t drawn_ = 0;  // sample() calls since construction / reset()
};

}  // namespace metallic
