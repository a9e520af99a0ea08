// Byte-level BPE vocabularies from GGUF (tokenizer.ggml.model == "gpt2"): Llama 3, Qwen 2/2.5/3,
// SmolLM, GPT-2 style files. The tokenizer llama.cpp (and HF `tokenizers`) run on such files,
// natively, built from the token table and merge list in milliseconds.
//
// encode(text, parse_special):
//  1. Markers are cut out (TokenTable::partition).
//  2. Each remaining fragment is split into words by the family's pre-tokenizer (pretokenize.h).
//  3. A word's bytes become their byte-level characters (GPT-2's alphabet: printable bytes stand
//     for themselves, the other 68 for U+0100..U+0143), one token each (a byte without a token is
//     dropped, as HF does). With ignore_merges (the llama3 family), a word that is itself a token
//     is that token.
//  4. The adjacent pair with the lowest merge rank merges (leftmost on ties) until no adjacent
//     pair has a merge.
// Decoding: token_bytes(id) maps a piece's byte-level characters back to bytes (other characters
// as their UTF-8); markers give their raw text.
#pragma once

#include <array>
#include <unordered_map>

#include "tokenizer/pretokenize.h"
#include "tokenizer/vocab.h"

namespace metallic::tokenizer {

class BpeVocab {
 public:
  // merges: "left right" pieces, best first. Throws Error(kCorruptFile) naming `source`'s key on
  // what TokenTable rejects and on a merge whose halves or join are not pieces.
  BpeVocab(std::vector<std::string> pieces, std::vector<uint8_t> kinds, const std::vector<std::string>& merges,
           PreTokenizer pre, bool ignore_merges, const std::string& source);

  std::vector<int32_t> encode(std::string_view text, bool parse_special) const;
  std::string token_bytes(int32_t id) const;  // id checked by the caller
  const TokenTable& table() const { return table_; }

 private:
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;

  struct Merge {
    int32_t rank, id;
  };
  TokenTable table_;
  std::array<std::string, 256> byte_char_;      // byte -> UTF-8 of its byte-level character
  std::array<int16_t, 0x144> char_byte_;        // byte-level code point -> byte, or -1
  std::array<int32_t, 256> byte_ids_;           // the token of each byte's character, or -1
  std::unordered_map<uint64_t, Merge> merges_;  // (left id << 32 | right id) -> rank, merged id
  PreTokenizer pre_;
  bool ignore_merges_;
};

}  // namespace metallic::tokenizer
