// Translates metallic::Error (and allocation failures) into metallic.errors classes.
#include <nanobind/stl/string.h>

#include <new>
#include <string>

#include "bindings/bindings.h"
#include "core/error.h"

namespace nb = nanobind;

namespace metallic::bindings {

nb::object typed_error(const std::exception_ptr& p) {
  ErrorCode code = ErrorCode::kOutOfMemory;
  std::string message = "[native] out of memory";
  try {
    std::rethrow_exception(p);
  } catch (const Error& e) {
    code = e.code();
    message = e.what();
  } catch (const std::bad_alloc&) {
  }
  // metallic.errors is pure Python and imported lazily (it is importable whenever _core is).
  return nb::module_::import_("metallic.errors").attr("from_code")(static_cast<int>(code), message);
}

void init_errors(nb::module_& m) {
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    // Building the exception runs Python code, where a pending signal (Ctrl-C that also cancelled
    // the native call) may raise first: then that exception (KeyboardInterrupt) is the one to
    // surface, never a RuntimeError wrapping it. Exceptions other than Error and bad_alloc
    // propagate to the next translator.
    try {
      nb::object exc = typed_error(p);
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
    } catch (nb::python_error& e) {
      e.restore();
    }
  });
  nb::dict codes;
  for (int i = 1; i <= static_cast<int>(ErrorCode::kBusy); ++i)
    codes[nb::str(std::string(error_code_name(static_cast<ErrorCode>(i))).c_str())] = i;
  m.attr("ERROR_CODES") = codes;
  m.def(
      "_raise_for_test", [](int code, const std::string& msg) { fail(static_cast<ErrorCode>(code), "test", msg); },
      "Raises the native error `code` (tests check the translation).");
}

}  // namespace metallic::bindings
