// Linux stand-in for Apple's <mach/vm_page_size.h>, for the Linux Metal build only
// (METALLIC_METAL_ON_LINUX). On a Mac, vm_page_size is the kernel's page size (16384 on Apple
// Silicon, 4096 on Intel), the granule newBufferWithBytesNoCopy requires. Here the Linux Metal
// runtime (libmetallic_mtlshim.so) defines it from its page-size setting (default 16384, Apple
// Silicon), so the device code is the same text on both systems.
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif
typedef uintptr_t vm_size_t;
extern vm_size_t vm_page_size;
#ifdef __cplusplus
}
#endif
