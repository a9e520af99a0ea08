// Where the native module (_core) lives, for files installed next to it (the emulator library,
// metallic.metallib).
#pragma once

#include <string>

namespace metallic {

// Directory of the shared object this code is linked into ("." when it cannot be found).
std::string module_dir();

}  // namespace metallic
