// SentencePiece vocabularies from GGUF (tokenizer.ggml.model == "llama"): Llama 2, Mistral v0.1,
// Phi-3, Gemma. The tokenizer llama.cpp runs on such files, natively, built in milliseconds from
// the token table (the equivalent HF `tokenizers` object took 2.6 s for Gemma's 262k tokens).
//
// encode(text, parse_special):
//  1. Marker tokens are cut out of the text first and kept whole: control (3) and unknown (2)
//     tokens when parse_special, user-defined (4) ones always. As in llama.cpp, the longest marker
//     text is cut first everywhere (ties: lower id), each left to right without overlap, and a
//     later marker is only found inside text no earlier one took.
//  2. Each remaining fragment gets "▁" (U+2581) prepended when add_space_prefix and it starts the
//     text or follows a marker; every ' ' becomes "▁".
//  3. The fragment is split into UTF-8 characters (a stray continuation byte is one symbol); the
//     adjacent pair whose concatenation is the best-scoring vocabulary entry merges (leftmost on
//     ties) until no pair forms an entry.
//  4. A symbol that is an entry becomes its id; any other becomes one <0xXX> token per byte, or,
//     in a vocabulary without the 256 byte tokens, <unk> (a run of such symbols fused into one, as
//     sentencepiece does; llama.cpp would fail).
// Decoding: token_bytes(id) is what a token contributes to the text: "▁" as ' ' for pieces, the
// byte of a byte token, the raw text of a marker.
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

class SpmVocab {
 public:
  // pieces: n tokens as UTF-8; scores, kinds: n each (kinds already checked to be 0..6).
  // Throws Error(kCorruptFile) naming `source`'s key on: duplicate pieces, a byte-kind token that
  // is not "<0xXX>" (upper-case hex), some but not all 256 byte tokens, unk_id out of range,
  // a non-finite score.
  SpmVocab(std::vector<std::string> pieces, std::vector<float> scores, std::vector<uint8_t> kinds, int32_t unk_id,
           bool add_space_prefix, const std::string& source);

  std::vector<int32_t> encode(std::string_view text, bool parse_special) const;

  int32_t size() const { return static_cast<int32_t>(kinds_.size()); }
  std::string_view piece(int32_t id) const;  // id checked by the caller
  TokenKind kind(int32_t id) const { return static_cast<TokenKind>(kinds_[id]); }
  int32_t find(std::string_view text) const;  // -1 when not an entry
  std::string token_bytes(int32_t id) const;
  bool byte_fallback() const { return byte_fallback_; }
  bool add_space_prefix() const { return add_space_prefix_; }

 private:
  struct Fragment {
    int32_t token;  // >= 0: a marker token; -1: raw text [begin, end)
    size_t begin, end;
  };
  std::vector<Fragment> partition(std::string_view text, bool parse_special) const;
  void encode_fragment(std::string_view normalized, std::vector<int32_t>& out) const;
  bool is_marker(int32_t id, bool parse_special) const;

  std::string arena_;              // every piece, back to back
  std::vector<uint32_t> offsets_;  // piece i is arena_[offsets_[i], offsets_[i + 1])
  std::vector<float> scores_;
  std::vector<uint8_t> kinds_;
  std::vector<int32_t> table_;    // open addressing, piece -> id; -1 empty; size a power of two
  std::vector<int32_t> markers_;  // marker ids, longest text first (ties: lower id)
  // Marker trie over bytes: node 0 is the root, edges_ maps (node << 8 | byte) -> child,
  // terminal_[node] is the marker id whose text ends there, or -1.
  std::unordered_map<uint64_t, int32_t> edges_;
  std::vector<int32_t> terminal_;
  std::vector<int32_t> marker_rank_;  // id -> position in markers_, -1 for non-markers
  int32_t byte_ids_[256];
  int32_t unk_id_;
  bool byte_fallback_ = false;
  bool add_space_prefix_;
};

}  // namespace metallic::tokenizer
