// SentencePiece vocabularies from GGUF (tokenizer.ggml.model == "llama"): Llama 2, Mistral v0.1,
// Phi-3, Gemma. The tokenizer llama.cpp runs on such files, natively, built in milliseconds from
// the token table (the equivalent HF `tokenizers` object took 2.6 s for Gemma's 262k tokens).
//
// encode(text, parse_special):
//  1. Markers are cut out (TokenTable::partition).
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

#include "tokenizer/vocab.h"

namespace metallic::tokenizer {

class SpmVocab {
 public:
  // scores: one per piece. Throws Error(kCorruptFile) naming `source`'s key on what TokenTable
  // rejects, a byte-kind token that is not "<0xXX>" (upper-case hex), some but not all 256 byte
  // tokens, unk_id out of range, a non-finite score.
  SpmVocab(std::vector<std::string> pieces, std::vector<float> scores, std::vector<uint8_t> kinds, int32_t unk_id,
           bool add_space_prefix, const std::string& source);

  std::vector<int32_t> encode(std::string_view text, bool parse_special) const;
  std::string token_bytes(int32_t id) const;  // id checked by the caller
  const TokenTable& table() const { return table_; }
  bool byte_fallback() const { return byte_fallback_; }
  bool add_space_prefix() const { return add_space_prefix_; }

 private:
  void encode_fragment(std::string_view normalized, std::vector<int32_t>& out) const;

  TokenTable table_;
  std::vector<float> scores_;
  int32_t byte_ids_[256];
  int32_t unk_id_;
  bool byte_fallback_ = false;
  bool add_space_prefix_;
};

}  // namespace metallic::tokenizer
