#include "tokenizer/pretokenize.h"

#include <algorithm>

#include "tokenizer/unicode_ranges.h"
#include "tokenizer/utf8.h"

namespace metallic::tokenizer {

namespace {

using unicode::kLetter;
using unicode::kNumber;
using unicode::kPunct;
using unicode::kSpace;

uint8_t flags_of(uint32_t cp) {
  const auto* end = std::end(unicode::kRanges);
  const auto* it = std::upper_bound(std::begin(unicode::kRanges), end, cp,
                                    [](uint32_t c, const unicode::Range& r) { return c < r.first; });
  if (it == std::begin(unicode::kRanges)) return 0;
  --it;
  return cp <= it->last ? it->flags : 0;
}

// The text as code points with their byte offsets and class flags. Invalid UTF-8 bytes become
// one code point each (U+FFFD's class: none), so every byte belongs to exactly one unit.
struct Units {
  std::vector<uint32_t> cp;
  std::vector<uint8_t> flags;
  std::vector<size_t> offset;  // offset[i] = byte offset of unit i; offset[n] = text size

  explicit Units(std::string_view s) {
    for (size_t i = 0; i < s.size();) {
      uint32_t c = 0;
      size_t len = decode_utf8(s, i, c);
      const bool ok = len > 0;
      if (!ok) {
        len = 1;
        c = 0xFFFD;
      }
      offset.push_back(i);
      cp.push_back(c);
      flags.push_back(ok ? flags_of(c) : 0);
      i += len;
    }
    offset.push_back(s.size());
  }
  size_t size() const { return cp.size(); }
};

using Span = std::pair<size_t, size_t>;  // [begin, end) in units

// Matchers: the length in units of the regex's match starting at unit i (0: no match there).
// `end` bounds the piece being split.
struct Scan {
  const Units& u;
  size_t end;

  bool is(size_t i, uint8_t f) const { return i < end && (u.flags[i] & f) != 0; }
  bool space(size_t i) const { return is(i, kSpace); }
  bool other(size_t i) const { return i < end && (u.flags[i] & (kSpace | kLetter | kNumber)) == 0; }
  bool newline(size_t i) const { return i < end && (u.cp[i] == '\r' || u.cp[i] == '\n'); }
  uint32_t lower(size_t i) const { return i < end && u.cp[i] < 0x80 ? (u.cp[i] | 0x20) : 0; }

  size_t run(size_t i, uint8_t f) const {
    size_t j = i;
    while (is(j, f)) ++j;
    return j - i;
  }

  // 's|'t|'re|'ve|'m|'ll|'d, optionally ASCII case-insensitive.
  size_t contraction(size_t i, bool icase) const {
    if (i >= end || u.cp[i] != '\'') return 0;
    auto at = [&](size_t k) -> uint32_t {
      if (k >= end) return 0;
      return icase ? lower(k) : u.cp[k];
    };
    const uint32_t a = at(i + 1), b = at(i + 2);
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
  }

  // \s+(?!\S) then \s+: a whitespace run, less its last unit when text follows it (that unit
  // then leads the next word), unless the run is one unit long.
  size_t spaces(size_t i) const {
    const size_t n = run(i, kSpace);
    if (n == 0) return 0;
    if (i + n >= end || n == 1) return n;
    return n - 1;
  }

  // ' ?X+' for a class X: an optional ASCII space, then a run of X (no match without the run).
  template <typename In>
  size_t space_then(size_t i, In in) const {
    size_t j = (i < end && u.cp[i] == ' ' && in(i + 1)) ? i + 1 : i;
    if (!in(j)) return 0;
    while (in(j)) ++j;
    return j - i;
  }

  size_t gpt2(size_t i) const {
    if (const size_t n = contraction(i, false)) return n;
    if (const size_t n = space_then(i, [&](size_t k) { return is(k, kLetter); })) return n;
    if (const size_t n = space_then(i, [&](size_t k) { return is(k, kNumber); })) return n;
    if (const size_t n = space_then(i, [&](size_t k) { return other(k); })) return n;
    return spaces(i);
  }

  size_t llama3(size_t i, size_t max_digits) const {
    if (const size_t n = contraction(i, true)) return n;
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (i < end && !newline(i) && !is(i, kLetter | kNumber) && is(i + 1, kLetter)) return 1 + run(i + 1, kLetter);
    if (const size_t n = run(i, kLetter)) return n;
    // \p{N}{1,3}
    if (const size_t n = run(i, kNumber)) return std::min(n, max_digits);
    // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    if (size_t n = space_then(i, [&](size_t k) { return other(k); })) {
      while (newline(i + n)) ++n;
      return n;
    }
    // \s*[\r\n]+: through the last newline of the whitespace run
    const size_t ws = run(i, kSpace);
    for (size_t k = ws; k > 0; --k)
      if (newline(i + k - 1)) return k;
    return spaces(i);
  }
};

// Splits every span of `in` by the matcher into matches and the text between them.
template <typename Match>
std::vector<Span> split(const std::vector<Span>& in, const Units& u, Match match) {
  std::vector<Span> out;
  out.reserve(in.size());
  for (const Span& s : in) {
    const Scan scan{u, s.second};
    size_t gap = s.first;
    for (size_t i = s.first; i < s.second;) {
      const size_t n = match(scan, i);
      if (n == 0) {
        ++i;
        continue;
      }
      if (gap < i) out.push_back({gap, i});
      out.push_back({i, i + n});
      i += n;
      gap = i;
    }
    if (gap < s.second) out.push_back({gap, s.second});
  }
  return out;
}

bool default_punct(uint32_t cp, uint8_t f) {
  return (f & kPunct) != 0 || cp == '$' || cp == '+' || cp == '<' || cp == '=' || cp == '>' || cp == '^' || cp == '~' ||
         cp == '|';
}

}  // namespace

std::vector<std::pair<size_t, size_t>> pre_tokenize(PreTokenizer family, std::string_view text) {
  const Units u(text);
  std::vector<Span> spans;
  if (u.size() > 0) spans.push_back({0, u.size()});
  auto gpt2 = [](const Scan& s, size_t i) { return s.gpt2(i); };
  switch (family) {
    case PreTokenizer::kGpt2: spans = split(spans, u, gpt2); break;
    case PreTokenizer::kSmollm:
      spans = split(spans, u, [](const Scan& s, size_t i) -> size_t { return s.is(i, kNumber) ? 1 : 0; });
      spans = split(spans, u, gpt2);
      break;
    case PreTokenizer::kLlama3: spans = split(spans, u, [](const Scan& s, size_t i) { return s.llama3(i, 3); }); break;
    case PreTokenizer::kQwen2: spans = split(spans, u, [](const Scan& s, size_t i) { return s.llama3(i, 1); }); break;
    case PreTokenizer::kDefault:
      spans = split(spans, u, [](const Scan& s, size_t i) {
        size_t j = i;
        while (j < s.end && default_punct(s.u.cp[j], s.u.flags[j])) ++j;
        return j - i;
      });
      spans = split(spans, u, gpt2);
      spans = split(spans, u, [](const Scan& s, size_t i) { return s.run(i, kNumber); });
      spans = split(spans, u, [](const Scan& s, size_t i) -> size_t {
        for (size_t k = 0; k < 3; ++k)
          if (i + k >= s.end || s.u.cp[i + k] < '0' || s.u.cp[i + k] > '9') return 0;
        return 3;
      });
      break;
  }
  std::vector<std::pair<size_t, size_t>> out;
  out.reserve(spans.size());
  for (const Span& s : spans) out.push_back({u.offset[s.first], u.offset[s.second]});
  return out;
}

}  // namespace metallic::tokenizer
