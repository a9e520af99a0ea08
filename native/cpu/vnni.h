// Whether this build's x86 kernels multiply u8 x s8 with vpdpbusd (four products and the int32
// accumulator in one instruction) or with AVX2's vpmaddubsw + vpmaddwd. One switch, read by the
// kernels (cpu/arch/*.cpp, through simd::dpbusd) and by the repacked Q8_0 layout (repack.h
// kQ8x8Bias), which must agree in every translation unit; all are built with the same flags.
//
//   AVX-512 VNNI with VL (Ice Lake / Sapphire Rapids Xeons, Zen 4 and later): the EVEX form.
//   AVX-VNNI (Intel Alder Lake and later client CPUs, which have no AVX-512): the VEX form, the
//   same operation (Intel SDM: VPDPBUSD, both encodings).
//   METALLIC_EMULATE_VNNI (CMake option, tests only): the same operation in AVX2 integer steps,
//   bit-exact to the instruction's definition, so the VNNI code paths (the biased Q8_0 layout,
//   the unsaturated chunk sums) run and are tested on CPUs without VNNI
//   (scripts/test_vnni_emulated.sh).
#pragma once

#if (defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__) || \
    (defined(METALLIC_EMULATE_VNNI) && defined(__AVX2__))
#define METALLIC_VNNI 1
#else
#define METALLIC_VNNI 0
#endif
