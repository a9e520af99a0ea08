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
  work_.resize(static_cast<size_t>(n_vocab));
  idx_.resize(static_cast<size_t>(n_vocab));
  seen_.assign(static_cast<size_t>(n_vocab), 0);
  history_.assign(static_cast<size_t>(p.repetition_window), 0);
}

void Sampler::reset() {
  state_ = p_.seed;
  hist_pos_ = 0;
  hist_len_ = 0;
}

void Sampler::accept(int32_t token) {
  if (history_.empty() || token < 0 || token >= n_vocab_) return;
  history_[static_cast<size_t>(hist_pos_)] = token;
  hist_pos_ = (hist_pos_ + 1) % static_cast<int64_t>(history_.size());
  hist_len_ = std::min<int64_t>(hist_len_ + 1, static_cast<int64_t>(history_.size()));
}

double Sampler::next_uniform() { return static_cast<double>(splitmix64(state_) >> 11) * 0x1.0p-53; }

int32_t Sampler::sample(const float* logits) {
  const int64_t n = n_vocab_;
  float* w = work_.data();
  std::copy(logits, logits + n, w);
  if (p_.repetition_penalty != 1.f) {
    for (int64_t i = 0; i < hist_len_; ++i) {
      const int32_t t = history_[static_cast<size_t>(i)];
      if (seen_[static_cast<size_t>(t)]) continue;
      seen_[static_cast<size_t>(t)] = 1;
      w[t] = w[t] > 0.f ? w[t] / p_.repetition_penalty : w[t] * p_.repetition_penalty;
    }
    for (int64_t i = 0; i < hist_len_; ++i) seen_[static_cast<size_t>(history_[static_cast<size_t>(i)])] = 0;
  }
  if (p_.temperature <= 0.f) {  // greedy: first index of the maximum
    int64_t best = 0;
    for (int64_t i = 1; i < n; ++i)
      if (w[i] > w[best]) best = i;
    return static_cast<int32_t>(best);
  }
  // Candidates: all ids, or the top_k by logit.
  int32_t* idx = idx_.data();
  int64_t m = n;
  for (int64_t i = 0; i < n; ++i) idx[i] = static_cast<int32_t>(i);
  auto by_logit = [w](int32_t a, int32_t b) { return w[a] > w[b] || (w[a] == w[b] && a < b); };
  if (p_.top_k > 0 && p_.top_k < n) {
    std::nth_element(idx, idx + p_.top_k, idx + n, by_logit);
    m = p_.top_k;
  }
  float mx = -INFINITY;
  for (int64_t i = 0; i < m; ++i) mx = std::max(mx, w[idx[i]]);
  const float inv_t = 1.f / p_.temperature;
  double total = 0.0;
  for (int64_t i = 0; i < m; ++i) {
    const float pr = std::exp((w[idx[i]] - mx) * inv_t);
    w[idx[i]] = pr;  // w now holds unnormalised probabilities of the candidates
    total += pr;
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
      for (int64_t i = 0; i < m; ++i)
        if (w[idx[i]] >= thr) {
          std::swap(idx[k], idx[i]);
          mass += w[idx[k]];
          ++k;
        }
      if (mass >= target || thr == 0.f) break;
      thr = thr > 1e-30f ? thr * 1e-3f : 0.f;
    }
    auto by_prob = [w](int32_t a, int32_t b) { return w[a] > w[b] || (w[a] == w[b] && a < b); };
    std::sort(idx, idx + k, by_prob);
    double mass = 0.0;
    int64_t cut = k;
    for (int64_t i = 0; i < k; ++i) {
      mass += w[idx[i]];
      if (mass >= target) {
        cut = i + 1;
        break;
      }
    }
    m = cut;
    total = mass;
  }
  // min_p: drop candidates below min_p * p_max (p_max = 1 after the shift by mx).
  if (p_.min_p > 0.f) {
    int64_t k = 0;
    double kept = 0.0;
    for (int64_t i = 0; i < m; ++i)
      if (w[idx[i]] >= p_.min_p) {
        idx[k++] = idx[i];
        kept += w[idx[i]];
      }
    m = k;
    total = kept;
  }
  const double u = next_uniform() * total;
  double c = 0.0;
  for (int64_t i = 0; i < m; ++i) {
    c += w[idx[i]];
    if (u < c) return idx[i];
  }
  return idx[m - 1];
}

}  // namespace metallic
