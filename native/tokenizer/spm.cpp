#include "tokenizer/spm.h"

#include <algorithm>
#include <cmath>
#include <queue>

#include "core/error.h"

namespace metallic::tokenizer {

namespace {

constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's visible space

uint64_t hash_bytes(std::string_view s) {  // FNV-1a
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// Length of the UTF-8 sequence a lead byte starts (a continuation byte counts as 1), as llama.cpp.
size_t utf8_len(unsigned char lead) {
  static constexpr uint8_t kLen[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLen[lead >> 4];
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// The byte b of "<0xHH>" (either case), or -1.
int byte_of_piece(std::string_view p) {
  if (p.size() != 6 || p.substr(0, 3) != "<0x" || p[5] != '>') return -1;
  const int hi = hex_digit(p[3]), lo = hex_digit(p[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

std::string byte_piece(int b) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  return std::string{'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>'};
}

[[noreturn]] void corrupt(const std::string& source, const std::string& key, const std::string& expected,
                          const std::string& got) {
  fail(ErrorCode::kCorruptFile, "tokenizer",
       source + ": tokenizer.ggml." + key + ": expected " + expected + ", got " + got);
}

}  // namespace

SpmVocab::SpmVocab(std::vector<std::string> pieces, std::vector<float> scores, std::vector<uint8_t> kinds,
                   int32_t unk_id, bool add_space_prefix, const std::string& source)
    : scores_(std::move(scores)), kinds_(std::move(kinds)), unk_id_(unk_id), add_space_prefix_(add_space_prefix) {
  const size_t n = pieces.size();
  if (n == 0 || n > (1u << 30)) corrupt(source, "tokens", "between 1 and 2^30 tokens", std::to_string(n));
  if (scores_.size() != n) corrupt(source, "scores", std::to_string(n) + " entries", std::to_string(scores_.size()));
  if (kinds_.size() != n) corrupt(source, "token_type", std::to_string(n) + " entries", std::to_string(kinds_.size()));
  if (unk_id < 0 || static_cast<size_t>(unk_id) >= n)
    corrupt(source, "unknown_token_id", "a token id in [0, " + std::to_string(n) + ")", std::to_string(unk_id));
  size_t total = 0;
  for (const auto& p : pieces) total += p.size();
  if (total >= (1ull << 32)) corrupt(source, "tokens", "under 4 GiB of text", std::to_string(total) + " bytes");
  arena_.reserve(total);
  offsets_.reserve(n + 1);
  offsets_.push_back(0);
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(scores_[i]))
      corrupt(source, "scores[" + std::to_string(i) + "]", "a finite number", std::to_string(scores_[i]));
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

  // Byte tokens: those typed 6 are "<0xHH>" (upper case, as llama.cpp's converter writes them),
  // all 256 or none. Byte fallback needs all 256 texts, whatever their type (llama.cpp finds byte
  // tokens by their text).
  int typed = 0;
  for (size_t i = 0; i < n; ++i) {
    if (kinds_[i] != static_cast<uint8_t>(TokenKind::kByte)) continue;
    const std::string_view p = piece(static_cast<int32_t>(i));
    const int b = byte_of_piece(p);
    if (b < 0 || byte_piece(b) != p)
      corrupt(source, "tokens[" + std::to_string(i) + "]", "a byte token '<0xXX>' (type 6)",
              "'" + std::string(p) + "'");
    ++typed;
  }
  byte_fallback_ = true;
  for (int b = 0; b < 256; ++b) {
    byte_ids_[b] = find(byte_piece(b));
    byte_fallback_ = byte_fallback_ && byte_ids_[b] >= 0;
  }
  if (typed > 0 && typed < 256) {
    int missing = 0;
    while (byte_ids_[missing] >= 0 && kinds_[byte_ids_[missing]] == static_cast<uint8_t>(TokenKind::kByte)) ++missing;
    corrupt(source, "tokens", "all 256 byte tokens <0x00>..<0xFF> (type 6)",
            std::to_string(typed) + " (" + byte_piece(missing) + " missing)");
  }

  // Markers, longest text first (ties: lower id), and the trie that finds them.
  for (size_t i = 0; i < n; ++i) {
    const auto k = static_cast<TokenKind>(kinds_[i]);
    const bool marker = k == TokenKind::kControl || k == TokenKind::kUnknown || k == TokenKind::kUserDefined;
    if (marker && offsets_[i + 1] > offsets_[i]) markers_.push_back(static_cast<int32_t>(i));
  }
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

std::string_view SpmVocab::piece(int32_t id) const {
  return std::string_view(arena_).substr(offsets_[id], offsets_[id + 1] - offsets_[id]);
}

int32_t SpmVocab::find(std::string_view text) const {
  const size_t mask = table_.size() - 1;
  for (size_t h = hash_bytes(text) & mask;; h = (h + 1) & mask) {
    const int32_t id = table_[h];
    if (id < 0 || piece(id) == text) return id;
  }
}

bool SpmVocab::is_marker(int32_t id, bool parse_special) const {
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

std::string SpmVocab::token_bytes(int32_t id) const {
  const std::string_view p = piece(id);
  switch (kind(id)) {
    case TokenKind::kControl:
    case TokenKind::kUnknown:
    case TokenKind::kUserDefined: return std::string(p);
    case TokenKind::kUndefined:
    case TokenKind::kNormal:
    case TokenKind::kUnused:
    case TokenKind::kByte: break;
  }
  if (const int b = byte_of_piece(p); b >= 0) return std::string(1, static_cast<char>(b));
  std::string out;
  out.reserve(p.size());
  for (size_t i = 0; i < p.size();) {
    if (p.substr(i, kSpace.size()) == kSpace) {
      out += ' ';
      i += kSpace.size();
    } else {
      out += p[i++];
    }
  }
  return out;
}

std::vector<SpmVocab::Fragment> SpmVocab::partition(std::string_view text, bool parse_special) const {
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
        if (id >= 0 && is_marker(id, parse_special)) hits.push_back({marker_rank_[id], i, j + 1});
      }
    }
  }
  // llama.cpp's order: marker by marker (longest first), each found left to right in the text
  // no earlier marker took, without overlapping its own previous match.
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

void SpmVocab::encode_fragment(std::string_view s, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t prev, next;
    size_t begin, n;
  };
  std::vector<Symbol> sym;
  for (size_t i = 0; i < s.size();) {
    const size_t len = std::min(utf8_len(static_cast<unsigned char>(s[i])), s.size() - i);
    const auto idx = static_cast<int32_t>(sym.size());
    sym.push_back({idx - 1, i + len < s.size() ? idx + 1 : -1, i, len});
    i += len;
  }
  struct Bigram {
    float score;
    int32_t left, right;
    size_t size;
  };
  // Best score first; equal scores: leftmost first.
  auto worse = [](const Bigram& a, const Bigram& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Bigram, std::vector<Bigram>, decltype(worse)> queue(worse);
  auto try_pair = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const size_t size = sym[left].n + sym[right].n;
    const int32_t id = find(s.substr(sym[left].begin, size));
    if (id >= 0) queue.push({scores_[id], left, right, size});
  };
  for (size_t i = 1; i < sym.size(); ++i) try_pair(static_cast<int32_t>(i - 1), static_cast<int32_t>(i));
  while (!queue.empty()) {
    const Bigram b = queue.top();
    queue.pop();
    Symbol& l = sym[b.left];
    Symbol& r = sym[b.right];
    if (l.n == 0 || r.n == 0 || l.n + r.n != b.size) continue;  // a side merged since
    l.n += r.n;
    r.n = 0;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = b.left;
    try_pair(l.prev, b.left);
    try_pair(b.left, l.next);
  }
  bool unk_run = false;
  for (int32_t i = sym.empty() ? -1 : 0; i >= 0; i = sym[i].next) {
    const std::string_view text = s.substr(sym[i].begin, sym[i].n);
    const int32_t id = find(text);
    if (id >= 0) {
      out.push_back(id);
      unk_run = false;
    } else if (byte_fallback_) {
      for (unsigned char c : text) out.push_back(byte_ids_[c]);
      unk_run = false;
    } else if (!unk_run) {
      out.push_back(unk_id_);
      unk_run = true;
    }
  }
}

std::vector<int32_t> SpmVocab::encode(std::string_view text, bool parse_special) const {
  std::vector<int32_t> out;
  std::string normalized;
  bool after_marker = true;  // the start of the text counts as "after a marker"
  for (const Fragment& f : partition(text, parse_special)) {
    if (f.token >= 0) {
      out.push_back(f.token);
      after_marker = true;
      continue;
    }
    normalized.clear();
    if (add_space_prefix_ && after_marker) normalized += kSpace;
    for (char c : text.substr(f.begin, f.end - f.begin)) {
      if (c == ' ')
        normalized += kSpace;
      else
        normalized += c;
    }
    encode_fragment(normalized, out);
    after_marker = false;
  }
  return out;
}

}  // namespace metallic::tokenizer
