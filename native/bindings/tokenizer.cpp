// _core.SpmTokenizer: the native SentencePiece tokenizer of GGUF vocabularies (tokenizer/spm.h),
// and _core.gguf_strings, the reader of GGUF string arrays (vocabularies of 50k-260k tokens).
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstring>

#include "bindings/bindings.h"
#include "core/error.h"
#include "tokenizer/spm.h"

namespace nb = nanobind;

namespace metallic::bindings {

namespace {

using tokenizer::SpmVocab;

int32_t checked_id(const SpmVocab& v, int64_t id) {
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

}  // namespace

void init_tokenizer(nb::module_& m) {
  using Scores = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
  using Kinds = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
  nb::class_<SpmVocab>(m, "SpmTokenizer",
                       "llama.cpp's SentencePiece tokenizer over a GGUF token table (see native/tokenizer/spm.h).")
      .def(
          "__init__",
          [](SpmVocab* self, std::vector<std::string> tokens, Scores scores, Kinds kinds, int32_t unk_id,
             bool add_space_prefix, const std::string& source) {
            std::vector<float> s(scores.data(), scores.data() + scores.shape(0));
            std::vector<uint8_t> k(kinds.data(), kinds.data() + kinds.shape(0));
            new (self) SpmVocab(std::move(tokens), std::move(s), std::move(k), unk_id, add_space_prefix, source);
          },
          nb::arg("tokens"), nb::arg("scores"), nb::arg("kinds"), nb::arg("unk_id"), nb::arg("add_space_prefix"),
          nb::arg("source"))
      .def(
          "encode",
          [](const SpmVocab& v, nb::bytes text, bool parse_special) {
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
          "token_bytes", [](const SpmVocab& v, int64_t id) { return as_bytes(v.token_bytes(checked_id(v, id))); },
          nb::arg("id"), "What token `id` contributes to decoded text (bytes).")
      .def(
          "all_token_bytes",
          [](const SpmVocab& v) {
            nb::list out;
            for (int32_t i = 0; i < v.size(); ++i) out.append(as_bytes(v.token_bytes(i)));
            return out;
          },
          "token_bytes of every id, in order.")
      .def(
          "piece",
          [](const SpmVocab& v, int64_t id) {
            const std::string_view p = v.piece(checked_id(v, id));
            return nb::str(p.data(), p.size());
          },
          nb::arg("id"), "The token's text as stored in the file.")
      .def(
          "find",
          [](const SpmVocab& v, const std::string& text) -> nb::object {
            const int32_t id = v.find(text);
            if (id < 0) return nb::none();
            return nb::int_(id);
          },
          nb::arg("text"), "The id whose text is `text`, or None.")
      .def(
          "kind", [](const SpmVocab& v, int64_t id) { return static_cast<int>(v.kind(checked_id(v, id))); },
          nb::arg("id"), "The GGUF token type (0..6).")
      .def_prop_ro("size", &SpmVocab::size)
      .def_prop_ro("byte_fallback", &SpmVocab::byte_fallback)
      .def_prop_ro("add_space_prefix", &SpmVocab::add_space_prefix);
  m.def("gguf_strings", &gguf_strings, nb::arg("data"), nb::arg("pos"), nb::arg("n"),
        "GGUF string array at data[pos:]: (list[str], end offset), or (None, failing element).");
}

}  // namespace metallic::bindings
