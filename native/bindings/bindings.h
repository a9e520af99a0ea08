// One init function per binding area; module.cpp calls each in turn.
#pragma once

#include <nanobind/nanobind.h>

#include <exception>

namespace metallic::bindings {

void init_errors(nanobind::module_& m);
// The metallic.errors exception (not raised) for a native failure: an Error by its code, a
// bad_alloc as OutOfMemory; any other exception is rethrown. Needs the GIL.
nanobind::object typed_error(const std::exception_ptr& p);
void init_engine(nanobind::module_& m);
void init_sampler(nanobind::module_& m);
void init_kernels(nanobind::module_& m);
void init_tokenizer(nanobind::module_& m);

}  // namespace metallic::bindings
