// One init function per binding area; module.cpp calls each in turn.
#pragma once

#include <nanobind/nanobind.h>

namespace metallic::bindings {

void init_errors(nanobind::module_& m);
void init_engine(nanobind::module_& m);
void init_sampler(nanobind::module_& m);
void init_kernels(nanobind::module_& m);
void init_tokenizer(nanobind::module_& m);

}  // namespace metallic::bindings
