#include "tokenizer/bpe.h"

#include <queue>

#include "tokenizer/utf8.h"

namespace metallic::tokenizer {

namespace {

uint64_t pair_key(int32_t a, int32_t b) { return static_cast<uint64_t>(a) << 32 | static_cast<uint32_t>(b); }

}  // namespace

BpeVocab::BpeVocab(std::vector<std::string> pieces, std::vector<uint8_t> kinds, const std::vector<std::string>& merges,
                   PreTokenizer pre, bool ignore_merges, const std::string& source)
    : table_(std::move(pieces), std::move(kinds), source), pre_(pre), ignore_merges_(ignore_merges) {
  char_byte_.fill(-1);
  uint32_t extra = 0x100;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    const uint32_t cp = printable ? b : extra++;
    char_byte_[cp] = static_cast<int16_t>(b);
    append_utf8(byte_char_[b], cp);
    byte_ids_[b] = table_.find(byte_char_[b]);
  }
  merges_.reserve(merges.size());
  for (size_t r = 0; r < merges.size(); ++r) {
    const std::string& m = merges[r];
    const size_t cut = m.find(' ');
    int32_t a = -1, b = -1, ab = -1;
    if (cut != std::string::npos) {
      const std::string_view left = std::string_view(m).substr(0, cut), right = std::string_view(m).substr(cut + 1);
      a = table_.find(left);
      b = table_.find(right);
      std::string joined(left);
      joined += right;
      ab = table_.find(joined);
    }
    if (a < 0 || b < 0 || ab < 0)
      corrupt(source, "merges[" + std::to_string(r) + "]", "'left right' with both and their join in tokens",
              "'" + m + "'");
    merges_.try_emplace(pair_key(a, b), Merge{static_cast<int32_t>(r), ab});  // a repeat keeps the first rank
  }
}

std::string BpeVocab::token_bytes(int32_t id) const {
  const std::string_view p = table_.piece(id);
  if (table_.is_marker_kind(id)) return std::string(p);
  std::string out;
  out.reserve(p.size());
  for (size_t i = 0; i < p.size();) {
    uint32_t cp = 0;
    const size_t len = decode_utf8(p, i, cp);
    if (len == 0) {  // not reached: pieces come from Python str
      out += p[i++];
    } else {
      if (cp < char_byte_.size() && char_byte_[cp] >= 0)
        out += static_cast<char>(char_byte_[cp]);
      else
        out += p.substr(i, len);
      i += len;
    }
  }
  return out;
}

void BpeVocab::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (ignore_merges_) {
    std::string chars;
    for (unsigned char c : word) chars += byte_char_[c];
    if (const int32_t id = table_.find(chars); id >= 0) {
      out.push_back(id);
      return;
    }
  }
  struct Symbol {
    int32_t id, prev, next;
  };
  std::vector<Symbol> sym;
  sym.reserve(word.size());
  for (unsigned char c : word) {
    if (byte_ids_[c] < 0) continue;  // no token for this byte: dropped, as HF's BPE does
    const auto i = static_cast<int32_t>(sym.size());
    sym.push_back({byte_ids_[c], i - 1, i + 1});
  }
  if (sym.empty()) return;
  sym.back().next = -1;
  struct Pair {
    int32_t rank, left, right, id;
  };
  // Lowest rank first; equal ranks (the same merge): leftmost first.
  auto later = [](const Pair& a, const Pair& b) { return a.rank != b.rank ? a.rank > b.rank : a.left > b.left; };
  std::priority_queue<Pair, std::vector<Pair>, decltype(later)> queue(later);
  auto try_pair = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const auto it = merges_.find(pair_key(sym[left].id, sym[right].id));
    if (it != merges_.end()) queue.push({it->second.rank, left, right, it->second.id});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(sym.size()); ++i) try_pair(i, i + 1);
  while (!queue.empty()) {
    const Pair p = queue.top();
    queue.pop();
    Symbol& l = sym[p.left];
    if (l.id < 0 || l.next != p.right) continue;  // merged away, or the neighbour changed
    const auto it = merges_.find(pair_key(l.id, sym[p.right].id));
    if (it == merges_.end() || it->second.rank != p.rank) continue;  // a side merged since
    Symbol& r = sym[p.right];
    l.id = p.id;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = p.left;
    r.id = -1;
    try_pair(l.prev, p.left);
    try_pair(p.left, l.next);
  }
  for (int32_t i = 0; i >= 0; i = sym[i].next) out.push_back(sym[i].id);
}

std::vector<int32_t> BpeVocab::encode(std::string_view text, bool parse_special) const {
  std::vector<int32_t> out;
  for (const Fragment& f : table_.partition(text, parse_special)) {
    if (f.token >= 0) {
      out.push_back(f.token);
      continue;
    }
    const std::string_view frag = text.substr(f.begin, f.end - f.begin);
    for (const auto& [b, e] : pre_tokenize(pre_, frag)) encode_word(frag.substr(b, e - b), out);
  }
  return out;
}

}  // namespace metallic::tokenizer
