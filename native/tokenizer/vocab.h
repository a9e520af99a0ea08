// The token table every native tokenizer shares: pieces, their GGUF token types, a hash index
// from text to id, and the marker split that runs before any model.
//
// Markers are the tokens cut out of the text before the model sees it, kept whole: control (3)
// and unknown (2) tokens when parse_special, user-defined (4) ones always. As in llama.cpp, the
// longest marker text is cut first everywhere (ties: lower id), each left to right without
// overlapping its own previous match, and a later marker is only found in text no earlier one
// took.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace metallic::tokenizer {

// GGUF tokenizer.ggml.token_type values.
enum class TokenKind : uint8_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

// A piece of the text after the marker split: a marker token, or raw text [begin, end).
struct Fragment {
  int32_t token;  // >= 0: a marker token; -1: raw text
  size_t begin, end;
};

class TokenTable {
 public:
  // pieces: n tokens as UTF-8; kinds: n GGUF token types. Throws Error(kCorruptFile) naming
  // `source`'s tokenizer.ggml key on an empty table, a kind > 6 or duplicate pieces.
  TokenTable(std::vector<std::string> pieces, std::vector<uint8_t> kinds, const std::string& source);

  int32_t size() const { return static_cast<int32_t>(kinds_.size()); }
  std::string_view piece(int32_t id) const {  // id checked by the caller
    return std::string_view(arena_).substr(offsets_[id], offsets_[id + 1] - offsets_[id]);
  }
  TokenKind kind(int32_t id) const { return static_cast<TokenKind>(kinds_[id]); }
  bool is_marker_kind(int32_t id) const;      // control, unknown or user-defined
  int32_t find(std::string_view text) const;  // -1 when no piece is `text`
  std::vector<Fragment> partition(std::string_view text, bool parse_special) const;

 private:
  bool cut(int32_t id, bool parse_special) const;

  std::string arena_;              // every piece, back to back
  std::vector<uint32_t> offsets_;  // piece i is arena_[offsets_[i], offsets_[i + 1])
  std::vector<uint8_t> kinds_;
  std::vector<int32_t> table_;        // open addressing, piece -> id; -1 empty; size a power of two
  std::vector<int32_t> markers_;      // marker ids with text, longest first (ties: lower id)
  std::vector<int32_t> marker_rank_;  // id -> position in markers_, or -1
  // Marker trie over bytes: node 0 is the root, edges_ maps (node << 8 | byte) -> child,
  // terminal_[node] is the marker id whose text ends there, or -1.
  std::unordered_map<uint64_t, int32_t> edges_;
  std::vector<int32_t> terminal_;
};

[[noreturn]] void corrupt(const std::string& source, const std::string& key, const std::string& expected,
                          const std::string& got);

}  // namespace metallic::tokenizer
