// The Apple-path MSL check's clang plugin (scripts/check_msl_apple.py): state shared by its
// preprocessor part (msl_lex.cpp: the `threadgroup` / `thread` / `kernel` keywords and the
// attribute list MSL allows after `template` in an explicit instantiation) and its semantic part
// (msl_sema.cpp: the Metal attributes and the address-space and language rules checked on the AST).
//
// One compiler instance per process (clang -cc1 runs one translation unit), so the state is a
// process-wide singleton filled while the preprocessor runs and read when the AST is complete.
#pragma once

#include <string>
#include <vector>

#include "clang/Basic/SourceLocation.h"
#include "llvm/ADT/DenseSet.h"

namespace clang {
class CompilerInstance;
class Token;
}  // namespace clang

namespace metallic_msl {

// Address spaces of the MSL keywords (tests/apple_msl/include/msl_prelude.h); `thread` is clang's
// default address space.
constexpr unsigned kDeviceAS = 1;
constexpr unsigned kConstantAS = 2;
constexpr unsigned kThreadgroupAS = 3;

// A `threadgroup` declaration starting a statement in a function body gets `static` and this GNU
// attribute from the preprocessor part; the semantic part then annotates the variable with
// kThreadgroupStatic (its storage is the threadgroup's, not a program-scope variable's) and, for a
// threadgroup object, skips its default construction (clang has no constructor for an object
// outside the default address space; MSL threadgroup variables are never initialized).
inline constexpr const char kThreadgroupStaticAttr[] = "metallic_msl_threadgroup_static";
inline constexpr const char kThreadgroupStatic[] = "metallic_msl.threadgroup_static";
// Annotations the Metal attributes leave on declarations ("msl.kernel", "msl.host_name=<name>",
// "msl.buffer=<index>", "msl.threadgroup=<index>", "msl.builtin=<name>").
inline constexpr const char kAnnotationPrefix[] = "msl.";

// `template [[host_name("x")]] [[kernel]] decl;`: MSL's attributes on an explicit instantiation. Clang
// parses them but rejects an attribute list there; the plugin silences exactly that error for such a
// list of MSL attributes and keeps what the list said for the semantic checks.
struct InstantiationAttrs {
  clang::SourceLocation list_loc;       // the first `[`
  clang::SourceLocation host_name_loc;  // invalid when there is no host_name
  std::string host_name;
  bool kernel = false;
  bool valid = true;                     // only host_name("...") and kernel, each at most once
  llvm::DenseSet<unsigned> decl_tokens;  // raw locations of the declaration's tokens
};

struct State {
  clang::CompilerInstance* ci = nullptr;
  // Raw locations of `*`, `&` and `&&` tokens of pointer and reference declarators whose pointee
  // was written with `thread`.
  llvm::DenseSet<unsigned> thread_pointers;
  std::vector<InstantiationAttrs> instantiations;
};

State& state();

// Installs the token watcher on the compiler's preprocessor (msl_lex.cpp).
void watch_tokens(clang::CompilerInstance& ci);

}  // namespace metallic_msl
