/* The Linux Metal runtime (libmetallic_mtlshim.so): a small implementation of the Metal objects
 * native/metal/metal_device.mm uses, on GNUstep's Objective-C runtime and Foundation, for tests
 * only (built by -DMETALLIC_METAL_ON_LINUX=ON). It
 *   (a) enforces the preconditions Apple documents for those calls and reports each violation
 *       (the call returns nil, or the command buffer ends with MTLCommandBufferStatusError and an
 *       NSError naming the violation; every violation is also counted and logged here), and
 *   (b) executes each dispatch through the Metal emulator (libmetallic_shaders_emu.so, the same
 *       shaders/ kernels compiled for the CPU), in queue order, when a command buffer is waited on.
 *
 * Settings (environment, read by each MTLCreateSystemDefaultDevice()):
 *   METALLIC_MTLSHIM_PAGE_SIZE        page granule of newBufferWithBytesNoCopy (default 16384, as
 *                                     on Apple Silicon); also the value of vm_page_size
 *   METALLIC_MTLSHIM_MAX_BUFFER       maxBufferLength in bytes (default 8 GiB)
 *   METALLIC_MTLSHIM_MAX_THREADS      maxTotalThreadsPerThreadgroup of every pipeline (default 1024)
 *   METALLIC_MTLSHIM_WORKERS          emulator threads per dispatch (default 0: all cores)
 *   METALLIC_MTLSHIM_FAULT            simulate a system failure: "no-device" (no GPU), "library"
 *                                     (the shader compiler rejects the source), "pipeline", "alloc"
 *                                     (out of memory), "commit" (every command buffer faults on the
 *                                     GPU), or "" (none)
 * Plain C so Python (ctypes) and the tests' drivers can read the counters. */
#ifndef METALLIC_MTLSHIM_H
#define METALLIC_MTLSHIM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Metal objects alive now (every alloc or new... not yet balanced by its last release). */
int64_t mtlshim_live_objects(void);
/* Precondition violations seen since the process started, and the text of the i-th (0-based,
 * the first 64 kept; NULL past them). */
int64_t mtlshim_violation_count(void);
const char* mtlshim_violation(int64_t i);
/* Dispatches executed and command buffers completed (successfully or not) since the start. */
int64_t mtlshim_dispatch_count(void);
int64_t mtlshim_commit_count(void);

#ifdef __cplusplus
}
#endif

#endif
