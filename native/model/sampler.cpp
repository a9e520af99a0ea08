#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/error.h"

namespace metallic {

namespace {

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// The largest value (NaN never wins; -inf when all are -inf or NaN). Eight independent lanes
// keep the pass vectorizable.
float max_value(const float* w, int64_t n) {
  float lane[8];
  std::fill(lane, lane + 8, -INFINITY);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) lane[j] = w[i + j] > lane[j] ? w[i + j] : lane[j];
  float mx = -INFINITY;
  for (; i < n; ++i) mx = w[i] > mx ? w[i] : mx;
  for (float v : lane) mx = v > mx ? v : mx;
  return mx;
}

// First index of the largest value (NaN never wins), or -1 when all are -inf or NaN; the index
// pass stops at the first hit.
int64_t first_argmax(const float* w, int64_t n) {
  const float mx = max_value(w, n);
  if (!(mx > -INFINITY)) return -1;
  for (int64_t i = 0; i < n; ++i)
    if (w[i] == mx) return i;
  return -1;
}

constexpr const char* kNoTokenAllowed =
    "mask: expected at least one allowed token, got none (token mask and min_tokens exclude all)";

// A before B in draw order: larger value first, equal values by lower id.
bool before(float va, int32_t a, float vb, int32_t b) { return va > vb || (va == vb && a < b); }

void check_param(bool ok, const char* name, const std::string& expected, double got) {
  check(ok, ErrorCode::kInvalidArgument, "sampler",
        std::string(name) + ": expected " + expected + ", got " + std::to_string(got));
}

}  // namespace

Sampler::Sampler(int64_t n_vocab, const SamplerParams& p) : n_vocab_(n_vocab), p_(p), state_(p.seed) {
  check_param(n_vocab > 0, "n_vocab", "> 0", static_cast<double>(n_vocab));
  check_param(std::isfinite(p.temperature) && p.temperature >= 0.f, "temperature", ">= 0", p.temperature);
  check_param(p.top_k >= 0, "top_k", ">= 0", p.top_k);
  check_param(std::isfinite(p.top_p) && p.top_p > 0.f && p.top_p <= 1.f, "top_p", "in (0, 1]", p.top_p);
  check_param(std::isfinite(p.min_p) && p.min_p >= 0.f && p.min_p <= 1.f, "min_p", "in [0, 1]", p.min_p);
  check_param(std::isfinite(p.repetition_penalty) && p.repetition_penalty > 0.f, "repetition_penalty", "> 0",
              p.repetition_penalty);
  check_param(p.repetition_window >= 0 && p.repetition_window <= (1 << 20), "repetition_window", "in [0, 1048576]",
              p.repetition_window);
  check_param(std::isfinite(p.presence_penalty), "presence_penalty", "a finite value", p.presence_penalty);
  check_param(std::isfinite(p.frequency_penalty), "frequency_penalty", "a finite value", p.frequency_penalty);
  check_param(p.min_tokens >= 0, "min_tokens", ">= 0", p.min_tokens);
  check_param(p.top_logprobs >= -1 && p.top_logprobs <= kMaxTopLogprobs, "top_logprobs",
              "in [-1, " + std::to_string(kMaxTopLogprobs) + "]", p.top_logprobs);
  for (const auto& [id, bias] : p.logit_bias) {
    check_param(id >= 0 && id < n_vocab, "logit_bias", "token ids in [0, " + std::to_string(n_vocab) + ")", id);
    check_param(std::isfinite(bias), "logit_bias", "finite biases", bias);
  }
  for (int32_t id : p.suppress_ids)
    check_param(id >= 0 && id < n_vocab, "suppress_ids", "token ids in [0, " + std::to_string(n_vocab) + ")", id);
  work_.resize(static_cast<size_t>(n_vocab));
  if (p.top_k > 0 && p.top_k < n_vocab) heap_.reserve(static_cast<size_t>(p.top_k));
  idx_.resize(static_cast<size_t>(n_vocab));
  block_sums_.resize(static_cast<size_t>((n_vocab + kDrawBlock - 1) / kDrawBlock));
  seen_.assign(static_cast<size_t>(n_vocab), 0);
  counts_.assign(static_cast<size_t>(n_vocab), 0);
  history_.assign(static_cast<size_t>(p.repetition_window), 0);
  mask_.assign(static_cast<size_t>((n_vocab + 31) / 32), 0xffffffffu);
  if (p.top_logprobs >= 0) {
    lp_val_.assign(static_cast<size_t>(p.top_logprobs) + 1, -INFINITY);
    lp_id_.assign(static_cast<size_t>(p.top_logprobs) + 1, 0);
  }
  penalties_ = p.repetition_window > 0 &&
               (p.repetition_penalty != 1.f || p.presence_penalty != 0.f || p.frequency_penalty != 0.f);
}

void Sampler::reset() {
  state_ = p_.seed;
  for (int64_t i = 0; i < hist_len_; ++i) counts_[static_cast<size_t>(history_[static_cast<size_t>(i)])] = 0;
  hist_pos_ = 0;
  hist_len_ = 0;
  drawn_ = 0;
}

void Sampler::accept(int32_t token) {
  if (history_.empty() || token < 0 || token >= n_vocab_) return;
  const int64_t cap = static_cast<int64_t>(history_.size());
  int32_t& slot = history_[static_cast<size_t>(hist_pos_)];
  if (hist_len_ == cap) --counts_[static_cast<size_t>(slot)];  // the oldest token leaves the window
  slot = token;
  ++counts_[static_cast<size_t>(token)];
  hist_pos_ = (hist_pos_ + 1) % cap;
  hist_len_ = std::min<int64_t>(hist_len_ + 1, cap);
}

double Sampler::next_uniform() { return static_cast<double>(splitmix64(state_) >> 11) * 0x1.0p-53; }

int32_t Sampler::sample(const float* logits) {
  return sample_with_uniform(logits, p_.temperature > 0.f ? next_uniform() : 0.0);  // greedy draws none
}

int32_t Sampler::sample_with_uniform(const float* logits, double u) {
  const int32_t token = draw(logits, u);
  ++drawn_;
  if (!lp_val_.empty()) logprobs(logits, token);
  return token;
}

void Sampler::logprobs(const float* logits, int32_t chosen) {
  const int64_t n = n_vocab_;
  float mx = -INFINITY;
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, logits[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(std::exp(logits[i] - mx));
  const double lse = static_cast<double>(mx) + std::log(sum);
  lp_val_[0] = static_cast<float>(static_cast<double>(logits[chosen]) - lse);
  lp_id_[0] = chosen;
  // Top k by one scan with a sorted insertion window; ascending ids keep ties by lowest id.
  const int64_t k = static_cast<int64_t>(lp_val_.size()) - 1;
  if (k == 0) return;
  float* val = lp_val_.data() + 1;
  int32_t* ids = lp_id_.data() + 1;
  int64_t filled = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float x = logits[i];
    if (filled == k && !(x > val[k - 1])) continue;
    int64_t j = filled < k ? filled++ : k - 1;
    while (j > 0 && x > val[j - 1]) {
      val[j] = val[j - 1];
      ids[j] = ids[j - 1];
      --j;
    }
    val[j] = x;
    ids[j] = static_cast<int32_t>(i);
  }
  for (int64_t j = 0; j < k; ++j) val[j] = static_cast<float>(static_cast<double>(val[j]) - lse);
}

int32_t Sampler::draw(const float* logits, double uniform) {
  const int64_t n = n_vocab_;
  float* w = work_.data();
  // The adjusted logits: a copy in w when bias, mask, suppression or penalties change them, else
  // the input itself (no pass over the vocabulary: 1 MB a token at Gemma 3's 262k ids).
  const float* adj = logits;
  if (adjusts()) {
    std::copy(logits, logits + n, w);
    adj = w;
    for (const auto& [id, bias] : p_.logit_bias) w[id] += bias;
    if (mask_on_) {
      const int64_t words = static_cast<int64_t>(mask_.size());
      for (int64_t wi = 0; wi < words; ++wi) {
        const uint32_t m = mask_[static_cast<size_t>(wi)];
        if (m == 0xffffffffu) continue;
        const int64_t base = wi * 32;
        const int64_t end = std::min<int64_t>(32, n - base);
        for (int64_t b = 0; b < end; ++b)
          if (!((m >> b) & 1u)) w[base + b] = -INFINITY;
      }
    }
    if (drawn_ < p_.min_tokens)
      for (int32_t id : p_.suppress_ids) w[id] = -INFINITY;
    if (penalties_) {
      // Each distinct token of the window once: repetition (llama.cpp rule: logit > 0 → /p, else
      // *p), then presence and frequency (OpenAI: - presence - frequency * count).
      for (int64_t i = 0; i < hist_len_; ++i) {
        const auto t = static_cast<size_t>(history_[static_cast<size_t>(i)]);
        if (seen_[t]) continue;
        seen_[t] = 1;
        if (p_.repetition_penalty != 1.f)
          w[t] = w[t] > 0.f ? w[t] / p_.repetition_penalty : w[t] * p_.repetition_penalty;
        w[t] -= p_.presence_penalty + p_.frequency_penalty * static_cast<float>(counts_[t]);
      }
      for (int64_t i = 0; i < hist_len_; ++i) seen_[static_cast<size_t>(history_[static_cast<size_t>(i)])] = 0;
    }
  }
  if (p_.temperature <= 0.f) {  // greedy: first index of the maximum
    const int64_t best = first_argmax(adj, n);
    check(best >= 0, ErrorCode::kInvalidArgument, "sampler", kNoTokenAllowed);
    return static_cast<int32_t>(best);
  }
  // Candidates: all ids (in id order), or the top_k by logit, sorted (larger logit first, ties by
  // lower id) so that the draw order (below) is specified: the Metal sampler (shaders/sample.h)
  // walks the same order and picks the same token for the same uniform (top_k: top_k_ids).
  int32_t* idx = idx_.data();
  const bool all = p_.top_k == 0 || p_.top_k >= n;
  bool listed = !all;  // idx[0, m) holds the candidates (all ids are implied until a cut lists them)
  int64_t m = n;
  double total = 0.0;
  // Draw order: larger value first, ties by lower id (of the adjusted logits here, of the
  // probabilities in w below).
  auto by_logit = [adj](int32_t a, int32_t b) { return before(adj[a], a, adj[b], b); };
  auto by_value = [w](int32_t a, int32_t b) { return before(w[a], a, w[b], b); };
  if (all) {
    total = all_probs(adj);
    if (p_.top_p >= 1.f && p_.min_p <= 0.f) return walk_all(uniform * total);
  } else {
    top_k_ids(adj, idx);
    std::sort(idx, idx + p_.top_k, by_logit);
    m = p_.top_k;
    float mx = -INFINITY;
    for (int64_t i = 0; i < m; ++i) mx = std::max(mx, adj[idx[i]]);
    check(mx > -INFINITY, ErrorCode::kInvalidArgument, "sampler", kNoTokenAllowed);
    const float inv_t = 1.f / p_.temperature;
    for (int64_t i = 0; i < m; ++i) {
      const float pr = std::exp((adj[idx[i]] - mx) * inv_t);
      w[idx[i]] = pr;  // w now holds unnormalised probabilities of the candidates
      total += pr;
    }
  }
  // top_p: the smallest prefix of the sorted candidates whose mass reaches top_p. Only the
  // candidates above a probability threshold are sorted; the threshold drops until they hold
  // enough mass, so the prefix is exact without sorting the whole vocabulary.
  if (p_.top_p < 1.f && m > 1) {
    const double target = static_cast<double>(p_.top_p) * total;
    float thr = 1e-3f;
    int64_t k = 0;
    for (;;) {
      k = 0;
      double mass = 0.0;
      if (listed) {
        for (int64_t i = 0; i < m; ++i)
          if (w[idx[i]] >= thr) {
            std::swap(idx[k], idx[i]);
            mass += w[idx[k]];
            ++k;
          }
      } else {  // every id: the ones above thr listed in id order (the set is what counts)
        for (int64_t i = 0; i < n; ++i)
          if (w[i] >= thr) {
            idx[k++] = static_cast<int32_t>(i);
            mass += w[i];
          }
      }
      if (mass >= target || thr == 0.f) break;
      thr = thr > 1e-30f ? thr * 1e-3f : 0.f;
    }
    // The prefix in sorted order, taken from a heap one candidate at a time: only the cut is
    // ordered (the same order a full sort gives, so the same prefix).
    auto after = [&](int32_t a, int32_t b) { return by_value(b, a); };  // heap top: most likely
    std::make_heap(idx, idx + k, after);
    double mass = 0.0;
    int64_t cut = 0;
    while (cut < k) {
      std::pop_heap(idx, idx + (k - cut), after);  // most likely left -> idx[k - cut - 1]
      ++cut;
      mass += w[idx[k - cut]];
      if (mass >= target) break;
    }
    std::reverse(idx + (k - cut), idx + k);  // popped in order at the back, most likely last
    std::copy(idx + (k - cut), idx + k, idx);
    m = cut;
    total = mass;
    listed = true;
  }
  // min_p: drop candidates below min_p * p_max (p_max = 1 after the shift by mx).
  if (p_.min_p > 0.f) {
    int64_t k = 0;
    double kept = 0.0;
    for (int64_t i = 0; i < m; ++i) {
      const int32_t id = listed ? idx[i] : static_cast<int32_t>(i);
      if (w[id] >= p_.min_p) {
        idx[k++] = id;
        kept += w[id];
      }
    }
    m = k;
    total = kept;
    listed = true;
  }
  if (!listed) return walk_all(uniform * total);  // top_p cut nothing (m == 1)
  const double u = uniform * total;
  double c = 0.0;
  for (int64_t i = 0; i < m; ++i) {
    c += w[idx[i]];
    if (u < c) return idx[i];
  }
  // Rounding left u at or past the running sum: the last candidate with non-zero probability
  // (never a masked or underflowed one).
  for (int64_t i = m - 1; i > 0; --i)
    if (w[idx[i]] > 0.f) return idx[i];
  return idx[0];
}

// The top_k ids by adjusted logit into idx (in heap order): one scan that keeps the best k in a
// heap (worst on top); most logits fail the first comparison.
void Sampler::top_k_ids(const float* adj, int32_t* idx) {
  const auto k = static_cast<size_t>(p_.top_k);
  auto worse_on_top = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return before(a.first, a.second, b.first, b.second);
  };
  heap_.clear();
  int64_t i = 0;
  for (; i < n_vocab_ && heap_.size() < k; ++i) {
    heap_.emplace_back(adj[i], static_cast<int32_t>(i));
    std::push_heap(heap_.begin(), heap_.end(), worse_on_top);
  }
  float worst = heap_.front().first;  // k >= 1 here (top_k < n_vocab)
  auto offer = [&](int64_t j) {
    if (adj[j] > worst) {  // equal values come later, so they rank lower
      std::pop_heap(heap_.begin(), heap_.end(), worse_on_top);
      heap_.back() = {adj[j], static_cast<int32_t>(j)};
      std::push_heap(heap_.begin(), heap_.end(), worse_on_top);
      worst = heap_.front().first;
    }
  };
  for (; i + 8 <= n_vocab_; i += 8) {  // eight at a time past the ones that cannot enter
    bool any = false;
    for (int j = 0; j < 8; ++j) any |= adj[i + j] > worst;
    if (any)
      for (int j = 0; j < 8; ++j) offer(i + j);
  }
  for (; i < n_vocab_; ++i) offer(i);
  for (size_t j = 0; j < k; ++j) idx[j] = heap_[j].second;
}

// Every id a candidate, in id order (no top_k): the probabilities of draw's other path (the same
// float expression) straight into w, without its index array; their total in four interleaved
// float64 chains (one chain waits ~4 cycles an id) and per block of kDrawBlock ids for walk_all.
// Sums differ from one chain's only by rounding, so a draw can differ only for a uniform within
// rounding of a CDF boundary (as between devices). Returns the total.
double Sampler::all_probs(const float* adj) {
  const int64_t n = n_vocab_;
  float* w = work_.data();
  double* blk = block_sums_.data();
  const float mx = max_value(adj, n);
  check(mx > -INFINITY, ErrorCode::kInvalidArgument, "sampler", kNoTokenAllowed);
  const float inv_t = 1.f / p_.temperature;
  const auto blocks = static_cast<int64_t>(block_sums_.size());
  double total = 0.0;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t i1 = std::min(n, (b + 1) * kDrawBlock);
    auto p = [&](int64_t k) { return w[k] = std::exp((adj[k] - mx) * inv_t); };
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    int64_t i = b * kDrawBlock;
    for (; i + 4 <= i1; i += 4) {
      s0 += p(i);
      s1 += p(i + 1);
      s2 += p(i + 2);
      s3 += p(i + 3);
    }
    for (; i < i1; ++i) s0 += p(i);
    blk[b] = (s0 + s1) + (s2 + s3);
    total += blk[b];
  }
  return total;
}

// The first id whose running sum of w exceeds u, skipping whole blocks by all_probs' sums.
int32_t Sampler::walk_all(double u) const {
  const int64_t n = n_vocab_;
  const float* w = work_.data();
  const double* blk = block_sums_.data();
  const auto blocks = static_cast<int64_t>(block_sums_.size());
  double c = 0.0;
  for (int64_t b = 0; b < blocks; ++b) {
    if (c + blk[b] <= u) {
      c += blk[b];
      continue;
    }
    const int64_t i1 = std::min(n, (b + 1) * kDrawBlock);
    for (int64_t i = b * kDrawBlock; i < i1; ++i) {
      c += w[i];
      if (u < c) return static_cast<int32_t>(i);
    }
  }
  for (int64_t i = n - 1; i > 0; --i)  // rounding left u at or past the sum: the last id with p > 0
    if (w[i] > 0.f) return static_cast<int32_t>(i);
  return 0;
}

}  // namespace metallic
