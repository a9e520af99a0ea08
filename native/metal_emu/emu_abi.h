/* C ABI of libmetallic_shaders_emu.so: what the emulated-Metal device and the tests (ctypes) call.
 * Plain C so both gcc (_core) and Python can use it; all sizes in bytes. */
#ifndef METALLIC_EMU_ABI_H
#define METALLIC_EMU_ABI_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EMU_MAX_BUFFERS 31
#define EMU_MAX_TG_MEM 8
#define EMU_ABI_VERSION 1

enum {
  EMU_OK = 0,
  EMU_ERR_INVALID = 1, /* bad dispatch: unknown kernel, zero threads, too many threads */
  EMU_ERR_UNBOUND = 2, /* a buffer / threadgroup memory the kernel declares is not bound */
  EMU_ERR_KERNEL = 3,  /* the kernel misbehaved: divergent barrier / simd call, early return */
};

enum {
  EMU_FLAG_REVERSE = 1, /* run the lanes of each threadgroup in descending order */
};

typedef struct {
  void* ptr; /* NULL: unbound */
  uint64_t nbytes;
} emu_buffer;

typedef struct {
  const char* kernel;                  /* host name, e.g. "rms_norm_f32" */
  uint32_t groups[3];                  /* threadgroups per grid */
  uint32_t threads[3];                 /* threads per threadgroup (product <= 1024) */
  emu_buffer buffers[EMU_MAX_BUFFERS]; /* [[buffer(i)]] */
  uint32_t tg_bytes[EMU_MAX_TG_MEM];   /* [[threadgroup(i)]] lengths; 0: unbound */
  int32_t workers;                     /* OS threads; <= 0: hardware concurrency */
  uint32_t flags;                      /* EMU_FLAG_* */
} emu_dispatch_t;

int emu_abi_version(void);
int emu_kernel_count(void);
const char* emu_kernel_name(int i);
/* Runs the dispatch to completion. Returns EMU_OK or an EMU_ERR_* code with a message of the
 * shape "[metal-emu] kernel K: what" in err (NUL-terminated, truncated to cap). */
int emu_dispatch(const emu_dispatch_t* d, char* err, uint64_t cap);

#ifdef __cplusplus
}
#endif

#endif
