// _core.SpmTokenizer: the native SentencePiece tokenizer of GGUF vocabularies (tokenizer/spm.h),
// and _core.gguf_strings, the reader of GGUF string arrays (vocabularies of 50k-260k tokens).
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "bindings/bindings.h"
#include "core/error.h"
#include "tokenizer/bpe.h"
#include "tokenizer/spm.h"

namespace nb = nanobind;

namespace metallic::bindings {

namespace {

using tokenizer::BpeVocab;
using tokenizer::PreTokenizer;
using tokenizer::SpmVocab;

int32_t checked_id(const tokenizer::TokenTable& v, int64_t id) {
  if (id < 0 || id >= v.size())
    fail(ErrorCode::kInvalidArgument, "tokenizer",
         "token id: expected an id in [0, " + std::to_string(v.size()) + "), got " + std::to_string(id));
  return static_cast<int32_t>(id);
}

nb::bytes as_bytes(std::string_view s) { return nb::bytes(s.data(), s.size()); }

// A GGUF string array (n x {u64 length, bytes}) at data[pos:] as (list[str], end), or
// (None, i) when element i runs past the data or is not UTF-8 (the caller words the error).
nb::tuple gguf_strings(nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> data, uint64_t pos,
                       uint64_t n) {
  const uint8_t* p = data.data();
  const uint64_t size = data.shape(0);
  if (pos > size || n > (size - pos) / 8) return nb::make_tuple(nb::none(), 0);
  nb::list out = nb::steal<nb::list>(PyList_New(static_cast<Py_ssize_t>(n)));
  for (uint64_t i = 0; i < n; ++i) {
    uint64_t len;
    if (size - pos < 8) return nb::make_tuple(nb::none(), i);
    std::memcpy(&len, p + pos, 8);
    pos += 8;
    if (len > size - pos) return nb::make_tuple(nb::none(), i);
    PyObject* str =
        PyUnicode_DecodeUTF8(reinterpret_cast<const char*>(p + pos), static_cast<Py_ssize_t>(len), "strict");
    if (str == nullptr) {
      PyErr_Clear();
      return nb::make_tuple(nb::none(), i);
    }
    PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), str);
    pos += len;
  }
  return nb::make_tuple(out, pos);
}

PreTokenizer pre_tokenizer(const std::string& name) {
  static const std::pair<const char*, PreTokenizer> kNames[] = {
      {"default", PreTokenizer::kDefault}, {"gpt2", PreTokenizer::kGpt2},   {"smollm", PreTokenizer::kSmollm},
      {"llama3", PreTokenizer::kLlama3},   {"qwen2", PreTokenizer::kQwen2},
  };
  for (const auto& [n, p] : kNames)
    if (name == n) return p;
  fail(ErrorCode::kInvalidArgument, "tokenizer",
       "pre: expected one of default, gpt2, smollm, llama3, qwen2, got '" + name + "'");
}

// The methods every native tokenizer shares (T: SpmVocab or BpeVocab).
template <typename T>
void def_common(nb::class_<T>& c) {
  c.def(
       "encode",
       [](const T& v, nb::bytes text, bool parse_special) {
         const std::string_view s(text.c_str(), text.size());
         std::vector<int32_t> ids;
         {
           nb::gil_scoped_release release;  // `text` is kept alive by the caller's reference
           ids = v.encode(s, parse_special);
         }
         return ids;
       },
       nb::arg("text"), nb::arg("parse_special") = true,
       "Token ids of UTF-8 `text` (no BOS). parse_special: cut control tokens out of the text too.")
      .def(
          "token_bytes", [](const T& v, int64_t id) { return as_bytes(v.token_bytes(checked_id(v.table(), id))); },
          nb::arg("id"), "What token `id` contributes to decoded text (bytes).")
      .def(
          "all_token_bytes",
          [](const T& v) {
            nb::list out;
            for (int32_t i = 0; i < v.table().size(); ++i) out.append(as_bytes(v.token_bytes(i)));
            return out;
          },
          "token_bytes of every id, in order.")
      .def(
          "piece",
          [](const T& v, int64_t id) {
            const std::string_view p = v.table().piece(checked_id(v.table(), id));
            return nb::str(p.data(), p.size());
          },
          nb::arg("id"), "The token's text as stored in the file.")
      .def(
          "find",
          [](const T& v, const std::string& text) -> nb::object {
            const int32_t id = v.table().find(text);
            if (id < 0) return nb::none();
            return nb::int_(id);
          },
          nb::arg("text"), "The id whose text is `text`, or None.")
      .def_prop_ro("size", [](const T& v) { return v.table().size(); });
}

}  // namespace

void init_tokenizer(nb::module_& m) {
  using Scores = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
  using Kinds = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
  auto to_vector = [](const auto& a) {
    using E = std::remove_const_t<std::remove_reference_t<decltype(*a.data())>>;
    return std::vector<E>(a.data(), a.data() + a.shape(0));
  };
  nb::class_<SpmVocab> spm(m, "SpmTokenizer",
                           "llama.cpp's SentencePiece tokenizer over a GGUF token table (native/tokenizer/spm.h).");
  spm.def(
         "__init__",
         [to_vector](SpmVocab* self, std::vector<std::string> tokens, Scores scores, Kinds kinds, int32_t unk_id,
                     bool add_space_prefix, const std::string& source) {
           new (self)
               SpmVocab(std::move(tokens), to_vector(scores), to_vector(kinds), unk_id, add_space_prefix, source);
         },
         nb::arg("tokens"), nb::arg("scores"), nb::arg("kinds"), nb::arg("unk_id"), nb::arg("add_space_prefix"),
         nb::arg("source"))
      .def_prop_ro("byte_fallback", &SpmVocab::byte_fallback)
      .def_prop_ro("add_space_prefix", &SpmVocab::add_space_prefix);
  def_common(spm);

  nb::class_<BpeVocab> bpe(m, "BpeTokenizer",
                           "Byte-level BPE over a GGUF token table and merge list (native/tokenizer/bpe.h).");
  bpe.def(
      "__init__",
      [to_vector](BpeVocab* self, std::vector<std::string> tokens, Kinds kinds, const std::vector<std::string>& merges,
                  const std::string& pre, bool ignore_merges, const std::string& source) {
        static const std::pair<const char*, PreTokenizer> kNames[] = {
            {"default", PreTokenizer::kDefault}, {"gpt2", PreTokenizer::kGpt2},   {"smollm", PreTokenizer::kSmollm},
            {"llama3", PreTokenizer::kLlama3},   {"qwen2", PreTokenizer::kQwen2},
        };
        const auto* it =
            std::find_if(std::begin(kNames), std::end(kNames), [&](const auto& e) { return pre == e.first; });
        if (it == std::end(kNames))
          fail(ErrorCode::kInvalidArgument, "tokenizer",
               "pre: expected one of default, gpt2, smollm, llama3, qwen2, got '" + pre + "'");
        new (self) BpeVocab(std::move(tokens), to_vector(kinds), merges, it->second, ignore_merges, source);
      },
      nb::arg("tokens"), nb::arg("kinds"), nb::arg("merges"), nb::arg("pre"), nb::arg("ignore_merges"),
      nb::arg("source"));
  def_common(bpe);
  m.def(
      "pre_tokenize",
      [](const std::string& pre, nb::bytes text) {
        const std::string_view s(text.c_str(), text.size());
        return tokenizer::pre_tokenize(pre_tokenizer(pre), s);
      },
      nb::arg("pre"), nb::arg("text"), "The words of UTF-8 `text` as (begin, end) byte offsets (pretokenize.h).");
  m.def("gguf_strings", &gguf_strings, nb::arg("data"), nb::arg("pos"), nb::arg("n"),
        "GGUF string array at data[pos:]: (list[str], end offset), or (None, failing element).");
}

}  // namespace metallic::bindings
