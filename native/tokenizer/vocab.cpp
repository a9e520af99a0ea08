#include "tokenizer/vocab.h"

#include <algorithm>

#include "core/error.h"

namespace metallic::tokenizer {

namespace {

uint64_t hash_bytes(std::string_view s) {  // FNV-1a
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

}  // namespace

void corrupt(const std::string& source, const std::string& key, const std::string& expected, const std::string& got) {
  fail(ErrorCode::kCorruptFile, "tokenizer",
       source + ": tokenizer.ggml." + key + ": expected " + expected + ", got " + got);
}

TokenTable::TokenTable(std::vector<std::string> pieces, std::vector<uint8_t> kinds, const std::string& source)
    : kinds_(std::move(kinds)) {
  const size_t n = pieces.size();
  if (n == 0 || n > (1u << 30)) corrupt(source, "tokens", "between 1 and 2^30 tokens", std::to_string(n));
  if (kinds_.size() != n) corrupt(source, "token_type", std::to_string(n) + " entries", std::to_string(kinds_.size()));
  size_t total = 0;
  for (const auto& p : pieces) total += p.size();
  if (total >= (1ull << 32)) corrupt(source, "tokens", "under 4 GiB of text", std::to_string(total) + " bytes");
  arena_.reserve(total);
  offsets_.reserve(n + 1);
  offsets_.push_back(0);
  for (size_t i = 0; i < n; ++i) {
    if (kinds_[i] > static_cast<uint8_t>(TokenKind::kByte))
      corrupt(source, "token_type[" + std::to_string(i) + "]", "an integer in 0..6", std::to_string(kinds_[i]));
    arena_ += pieces[i];
    offsets_.push_back(static_cast<uint32_t>(arena_.size()));
  }
  pieces.clear();
  pieces.shrink_to_fit();

  size_t cap = 16;
  while (cap < 2 * n) cap <<= 1;
  table_.assign(cap, -1);
  for (size_t i = 0; i < n; ++i) {
    const std::string_view p = piece(static_cast<int32_t>(i));
    for (size_t h = hash_bytes(p) & (cap - 1);; h = (h + 1) & (cap - 1)) {
      if (table_[h] < 0) {
        table_[h] = static_cast<int32_t>(i);
        break;
      }
      if (piece(table_[h]) == p) corrupt(source, "tokens", "unique tokens", "'" + std::string(p) + "' twice");
    }
  }

  for (size_t i = 0; i < n; ++i)
    if (is_marker_kind(static_cast<int32_t>(i)) && offsets_[i + 1] > offsets_[i])
      markers_.push_back(static_cast<int32_t>(i));
  std::stable_sort(markers_.begin(), markers_.end(),
                   [&](int32_t a, int32_t b) { return piece(a).size() > piece(b).size(); });
  marker_rank_.assign(n, -1);
  terminal_.assign(1, -1);
  for (size_t r = 0; r < markers_.size(); ++r) {
    marker_rank_[markers_[r]] = static_cast<int32_t>(r);
    int32_t node = 0;
    for (unsigned char c : piece(markers_[r])) {
      auto [it, added] =
          edges_.try_emplace(static_cast<uint64_t>(node) << 8 | c, static_cast<int32_t>(terminal_.size()));
      if (added) terminal_.push_back(-1);
      node = it->second;
    }
    terminal_[node] = markers_[r];
  }
}

int32_t TokenTable::find(std::string_view text) const {
  const size_t mask = table_.size() - 1;
  for (size_t h = hash_bytes(text) & mask;; h = (h + 1) & mask) {
    const int32_t id = table_[h];
    if (id < 0 || piece(id) == text) return id;
  }
}

bool TokenTable::is_marker_kind(int32_t id) const {
  switch (kind(id)) {
    case TokenKind::kControl:
    case TokenKind::kUnknown:
    case TokenKind::kUserDefined: return true;
    case TokenKind::kUndefined:
    case TokenKind::kNormal:
    case TokenKind::kUnused:
    case TokenKind::kByte: return false;
  }
  return false;
}

bool TokenTable::cut(int32_t id, bool parse_special) const {
  switch (kind(id)) {
    case TokenKind::kUserDefined: return true;
    case TokenKind::kControl:
    case TokenKind::kUnknown: return parse_special;
    case TokenKind::kUndefined:
    case TokenKind::kNormal:
    case TokenKind::kUnused:
    case TokenKind::kByte: return false;
  }
  return false;
}

std::vector<Fragment> TokenTable::partition(std::string_view text, bool parse_special) const {
  struct Hit {
    int32_t rank;
    size_t begin, end;
  };
  std::vector<Hit> hits;
  if (!markers_.empty()) {
    for (size_t i = 0; i < text.size(); ++i) {
      int32_t node = 0;
      for (size_t j = i; j < text.size(); ++j) {
        const auto it = edges_.find(static_cast<uint64_t>(node) << 8 | static_cast<unsigned char>(text[j]));
        if (it == edges_.end()) break;
        node = it->second;
        const int32_t id = terminal_[node];
        if (id >= 0 && cut(id, parse_special)) hits.push_back({marker_rank_[id], i, j + 1});
      }
    }
  }
  std::sort(hits.begin(), hits.end(),
            [](const Hit& a, const Hit& b) { return a.rank != b.rank ? a.rank < b.rank : a.begin < b.begin; });
  std::vector<uint8_t> taken(hits.empty() ? 0 : text.size(), 0);
  std::vector<Fragment> cuts;
  for (size_t k = 0; k < hits.size();) {
    size_t last_end = 0;
    const int32_t rank = hits[k].rank;
    for (; k < hits.size() && hits[k].rank == rank; ++k) {
      const Hit& h = hits[k];
      if (h.begin < last_end) continue;
      if (std::any_of(taken.begin() + h.begin, taken.begin() + h.end, [](uint8_t t) { return t != 0; })) continue;
      std::fill(taken.begin() + h.begin, taken.begin() + h.end, uint8_t{1});
      last_end = h.end;
      cuts.push_back({markers_[rank], h.begin, h.end});
    }
  }
  std::sort(cuts.begin(), cuts.end(), [](const Fragment& a, const Fragment& b) { return a.begin < b.begin; });
  std::vector<Fragment> out;
  size_t pos = 0;
  for (const Fragment& c : cuts) {
    if (c.begin > pos) out.push_back({-1, pos, c.begin});
    out.push_back(c);
    pos = c.end;
  }
  if (pos < text.size()) out.push_back({-1, pos, text.size()});
  return out;
}

}  // namespace metallic::tokenizer
