#!/usr/bin/env bash
# Syntax check of the Metal device's Objective-C++ (native/metal/*.mm) on Linux, where it is never
# built: clang++-19 -fsyntax-only against GNUstep's Foundation and stand-in declarations of the
# Metal API (tests/objc_stubs/Metal/Metal.h). It proves the file parses and type-checks against
# those declarations, nothing more: Apple's real headers, linking and running need a Mac.
# Installs libgnustep-base-dev when missing (idempotent; clang-19 comes from install_clang.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
CXX="${CXX_OBJC:-clang++-19}"
command -v "$CXX" >/dev/null || bash scripts/install_clang.sh
if ! command -v gnustep-config >/dev/null; then
  SUDO=""
  [[ "$(id -u)" != 0 ]] && SUDO="sudo"
  $SUDO apt-get install -y -qq libgnustep-base-dev >/dev/null 2>&1 ||
    { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libgnustep-base-dev >/dev/null; }
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The embedded shader source header, generated exactly as the Apple build generates it.
python3 native/metal/embed_shaders.py --out "$work/metal_shader_source.h" shaders native
# gnustep-config's flags minus the dependency-file ones (-MMD -MP would write .d files).
read -r -a objc_flags <<<"$(gnustep-config --objc-flags | sed -e 's/-MMD//g' -e 's/-MP//g')"
# The GNU runtime's <objc/objc.h> ships with gcc (libobjc-*-dev, pulled in by GNUstep).
objc_inc="$(gcc -print-file-name=include)"
[[ -e "$objc_inc/objc/objc.h" ]] || { echo "check_objc: no objc/objc.h under $objc_inc" >&2; exit 1; }
status=0
for f in native/metal/*.mm; do
  echo "check_objc: $f"
  "$CXX" -fsyntax-only -x objective-c++ -std=c++20 -fobjc-runtime=gcc -fno-objc-arc \
    "${objc_flags[@]}" -isystem "$objc_inc" -Wall -Wextra -Werror -Wno-unknown-pragmas \
    -I native -I . -I tests/objc_stubs -I "$work" "$f" || status=1
done
exit $status
