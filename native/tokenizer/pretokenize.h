// The word splits byte-level BPE vocabularies apply before merging, one per `tokenizer.ggml.pre`
// family (src/metallic/_gguf_vocab.py maps the names). Each family is a sequence of regexes as
// llama.cpp and HF `tokenizers` write them; each regex splits every piece the previous one left
// into its matches and the text between them. The regexes are matched by hand-written scanners
// that follow the regex engine's rules (alternatives tried in order at each position, greedy
// quantifiers backing off), so no regex engine runs:
//   kGpt2:    's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   kLlama3:  (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}
//             | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//   kQwen2:   kLlama3 with \p{N} for \p{N}{1,3}
//   kSmollm:  \p{N}, then kGpt2
//   kDefault: [\p{P}\$\+<=>\^~\|]+, then kGpt2, then \p{N}+, then [0-9][0-9][0-9]
// \s is Unicode White_Space, \p{L} / \p{N} / \p{P} general categories (unicode_ranges.h).
#pragma once

#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

namespace metallic::tokenizer {

enum class PreTokenizer : int32_t { kDefault = 0, kGpt2 = 1, kSmollm = 2, kLlama3 = 3, kQwen2 = 4 };

// The words of UTF-8 `text` as [begin, end) byte ranges, in order, covering all of it.
std::vector<std::pair<size_t, size_t>> pre_tokenize(PreTokenizer family, std::string_view text);

}  // namespace metallic::tokenizer
