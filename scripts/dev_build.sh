#!/usr/bin/env bash
# Development build: compiles the native extension into build/dev and links it into src/metallic
# so `PYTHONPATH=src python -m pytest` uses it. Extra CMake flags may be passed as arguments
# (e.g. -DMETALLIC_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo with BUILD_DIR=build/asan).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build/dev}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$(command -v python3)" "$@" >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
so=$(ls "$BUILD_DIR"/_core*.so)
ln -sf "$(realpath "$so")" "src/metallic/$(basename "$so")"
# The Metal emulator's kernels (built only when clang++-19 exists), dlopen'ed from the package dir.
emu="$BUILD_DIR/libmetallic_shaders_emu.so"
if [ -f "$emu" ]; then
  ln -sf "$(realpath "$emu")" "src/metallic/libmetallic_shaders_emu.so"
else
  rm -f "src/metallic/libmetallic_shaders_emu.so"
fi
echo "built $so"
