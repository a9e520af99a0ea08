#include "tokenizer/spm.h"

#include <algorithm>
#include <cmath>
#include <queue>

#include "core/error.h"

namespace metallic::tokenizer {

namespace {

constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's visible space

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

}  // namespace

SpmVocab::SpmVocab(std::vector<std::string> pieces, std::vector<float> scores, std::vector<uint8_t> kinds,
                   int32_t unk_id, bool add_space_prefix, const std::string& source)
    : table_(std::move(pieces), std::move(kinds), source),
      scores_(std::move(scores)),
      unk_id_(unk_id),
      add_space_prefix_(add_space_prefix) {
  const int32_t n = table_.size();
  if (scores_.size() != static_cast<size_t>(n))
    corrupt(source, "scores", std::to_string(n) + " entries", std::to_string(scores_.size()));
  for (int32_t i = 0; i < n; ++i)
    if (!std::isfinite(scores_[i]))
      corrupt(source, "scores[" + std::to_string(i) + "]", "a finite number", std::to_string(scores_[i]));
  if (unk_id < 0 || unk_id >= n)
    corrupt(source, "unknown_token_id", "a token id in [0, " + std::to_string(n) + ")", std::to_string(unk_id));

  // Byte tokens: those typed 6 are "<0xHH>" (upper case, as llama.cpp's converter writes them),
  // all 256 or none. Byte fallback needs all 256 texts, whatever their type (llama.cpp finds byte
  // tokens by their text).
  int typed = 0;
  for (int32_t i = 0; i < n; ++i) {
    if (table_.kind(i) != TokenKind::kByte) continue;
    const std::string_view p = table_.piece(i);
    const int b = byte_of_piece(p);
    if (b < 0 || byte_piece(b) != p)
      corrupt(source, "tokens[" + std::to_string(i) + "]", "a byte token '<0xXX>' (type 6)",
              "'" + std::string(p) + "'");
    ++typed;
  }
  byte_fallback_ = true;
  for (int b = 0; b < 256; ++b) {
    byte_ids_[b] = table_.find(byte_piece(b));
    byte_fallback_ = byte_fallback_ && byte_ids_[b] >= 0;
  }
  if (typed > 0 && typed < 256) {
    int missing = 0;
    while (byte_ids_[missing] >= 0 && table_.kind(byte_ids_[missing]) == TokenKind::kByte) ++missing;
    corrupt(source, "tokens", "all 256 byte tokens <0x00>..<0xFF> (type 6)",
            std::to_string(typed) + " (" + byte_piece(missing) + " missing)");
  }
}

std::string SpmVocab::token_bytes(int32_t id) const {
  const std::string_view p = table_.piece(id);
  switch (table_.kind(id)) {
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
    const int32_t id = table_.find(s.substr(sym[left].begin, size));
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
    const int32_t id = table_.find(text);
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
  for (const Fragment& f : table_.partition(text, parse_special)) {
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
