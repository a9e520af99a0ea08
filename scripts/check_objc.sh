#!/usr/bin/env bash
# Type check of the Metal device's Objective-C++ (native/metal/*.mm) on Linux, where it is never
# built for Apple: clang++-19 -fsyntax-only against GNUstep's Foundation and Apple's Metal API as
# Apple's metal-cpp headers declare it (fetched by scripts/fetch_metal_cpp.sh, through pip;
# <Metal/Metal.h> generated from them by native/metal_linux/metal_api_header.py into a temp dir).
# With -fblocks and -Werror (objc-method-access named explicitly), a selector the receiver's Metal
# protocol or class does not declare, an argument of the wrong type or a constant Metal lacks is an
# error here. Not checked: Apple's nullability and availability annotations, and anything at
# link or run time (that needs a Mac, or the Linux Metal build of native/metal_linux/).
#
# Usage: scripts/check_objc.sh [FILE.mm ...]          (default: native/metal/*.mm)
#        scripts/check_objc.sh --list-selectors [FILE.mm]
#          every Metal message FILE (default native/metal/metal_device.mm) sends: selector,
#          receiver, declaring protocol/class and Apple's declaration, from clang's AST.
# METALLIC_METAL_API_INCLUDE: a folder holding Metal/Metal.h to use instead of generating one.
# Installs clang-19 (scripts/install_clang.sh), libgnustep-base-dev and libblocksruntime-dev when
# missing (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
CXX="${CXX_OBJC:-clang++-19}"
command -v "$CXX" >/dev/null || bash scripts/install_clang.sh
bash scripts/install_gnustep.sh

list=0
if [[ "${1-}" == "--list-selectors" ]]; then
  list=1
  shift
fi
files=("$@")
if ((${#files[@]} == 0)); then
  if ((list)); then files=(native/metal/metal_device.mm); else files=(native/metal/*.mm); fi
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
metal_cpp=""
if [[ -n "${METALLIC_METAL_API_INCLUDE:-}" ]]; then
  api="$METALLIC_METAL_API_INCLUDE"
  [[ -f "$api/Metal/Metal.h" ]] ||
    { echo "[check_objc] METALLIC_METAL_API_INCLUDE: expected $api/Metal/Metal.h, got none" >&2; exit 1; }
  ((list == 0)) || { echo "[check_objc] --list-selectors: needs metal-cpp, unset METALLIC_METAL_API_INCLUDE" >&2; exit 1; }
else
  metal_cpp="$(bash scripts/fetch_metal_cpp.sh | tail -n 1)"
  api="$work/api"
  python3 native/metal_linux/metal_api_header.py --metal-cpp "$metal_cpp" --out "$api" >&2
fi
# GNUstep's headers include <objc/blocks_runtime.h> under -fblocks; with the gcc runtime that is
# libBlocksRuntime's <Block.h>.
mkdir -p "$work/inc/objc"
echo '#include <Block.h>' >"$work/inc/objc/blocks_runtime.h"
if ((list)); then
  # The shader source is irrelevant to the listing and slow to dump: an empty one stands in.
  echo 'namespace metallic { inline constexpr const char kMetalShaderSource[] = ""; }' \
    >"$work/inc/metal_shader_source.h"
else
  # The embedded shader source header, generated exactly as the Apple build generates it.
  python3 native/metal/embed_shaders.py --out "$work/inc/metal_shader_source.h" shaders native
fi
# gnustep-config's flags minus the dependency-file ones (-MMD -MP would write .d files).
read -r -a objc_flags <<<"$(gnustep-config --objc-flags | sed -e 's/-MMD//g' -e 's/-MP//g')"
# The GNU runtime's <objc/objc.h> ships with gcc (libobjc-*-dev, pulled in by GNUstep).
objc_inc="$(gcc -print-file-name=include)"
[[ -e "$objc_inc/objc/objc.h" ]] || { echo "[check_objc] gcc include: expected objc/objc.h under $objc_inc, got none" >&2; exit 1; }
# Apple system headers Linux lacks (<mach/vm_page_size.h>) come from the Linux Metal build's
# stand-ins in native/metal_linux/include, after the private dir and the generated Metal API.
flags=(-fsyntax-only -x objective-c++ -std=c++20 -fblocks -fobjc-runtime=gcc -fno-objc-arc
  "${objc_flags[@]}" -isystem "$objc_inc" -Wall -Wextra -Werror -Werror=objc-method-access
  -Werror=incompatible-pointer-types -Wno-unknown-pragmas
  -I "$work/inc" -I "$api" -I native/metal_linux/include -I native -I .)
if ((list)); then
  for f in "${files[@]}"; do
    # Only declarations in namespace metallic (the device's code, not Foundation's inlines).
    "$CXX" "${flags[@]}" -Xclang -ast-dump -Xclang -ast-dump-filter -Xclang metallic:: "$f" |
      python3 native/metal_linux/metal_api_header.py --metal-cpp "$metal_cpp" --list-selectors -
  done
  exit 0
fi
status=0
for f in "${files[@]}"; do
  echo "check_objc: $f"
  "$CXX" "${flags[@]}" "$f" || status=1
done
exit $status
