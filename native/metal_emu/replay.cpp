// emu_replay: runs recorded dispatches (case files written by tests/emu_harness.py when
// METALLIC_EMU_RECORD is set) through the emulator linked into this executable. Built with
// ThreadSanitizer or ASan+UBSan by build_emu.py --driver, it is how the sanitizers see every
// kernel test: each buffer is a heap allocation of exactly its recorded size, so a read past its
// end is a heap-buffer-overflow at the .metal line.
//
// Case file (little endian): "EMUCASE1", u32 name length, name, u32 groups[3], u32 threads[3],
// u32 tg_bytes[8], u32 n_buffers, then per buffer: u32 index, u64 nbytes, nbytes of data.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "emu_abi.h"

namespace {

template <typename T>
bool read(std::ifstream& f, T* v, size_t n = 1) {
  return static_cast<bool>(f.read(reinterpret_cast<char*>(v), static_cast<std::streamsize>(sizeof(T) * n)));
}

// Returns an empty string on success, else what went wrong.
std::string replay(const char* path) {
  std::ifstream f(path, std::ios::binary);
  char magic[8];
  if (!f || !read(f, magic, 8) || std::memcmp(magic, "EMUCASE1", 8) != 0) return "not a case file";
  uint32_t len = 0;
  if (!read(f, &len) || len > 4096) return "bad kernel name";
  std::string name(len, '\0');
  if (!read(f, name.data(), len)) return "truncated name";
  emu_dispatch_t d{};
  d.kernel = name.c_str();
  if (!read(f, d.groups, 3) || !read(f, d.threads, 3) || !read(f, d.tg_bytes, EMU_MAX_TG_MEM)) return "truncated";
  uint32_t nbuf = 0;
  if (!read(f, &nbuf) || nbuf > EMU_MAX_BUFFERS) return "bad buffer count";
  std::vector<std::unique_ptr<char[]>> mem;
  for (uint32_t i = 0; i < nbuf; ++i) {
    uint32_t idx = 0;
    uint64_t nbytes = 0;
    if (!read(f, &idx) || !read(f, &nbytes) || idx >= EMU_MAX_BUFFERS || nbytes > (uint64_t{1} << 34))
      return "bad buffer header";
    mem.emplace_back(new char[nbytes == 0 ? 1 : nbytes]);
    if (nbytes > 0 && !read(f, mem.back().get(), nbytes)) return "truncated buffer";
    d.buffers[idx] = emu_buffer{mem.back().get(), nbytes};
  }
  d.workers = 2;  // two OS threads, so TSan also sees threadgroups on different threads
  char err[2048] = {0};
  if (emu_dispatch(&d, err, sizeof(err)) != EMU_OK) return err;
  return "";
}

}  // namespace

// ASan's fake stacks (stack-use-after-return) cost ~10x here: every fiber switch moves them.
extern "C" const char* __asan_default_options() { return "detect_stack_use_after_return=0"; }

int main(int argc, char** argv) {
  int failed = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string e = replay(argv[i]);
    if (!e.empty()) {
      std::fprintf(stderr, "[emu_replay] %s: %s\n", argv[i], e.c_str());
      ++failed;
    }
  }
  std::printf("[emu_replay] %d case(s), %d failed\n", argc - 1, failed);
  return failed == 0 ? 0 : 1;
}
