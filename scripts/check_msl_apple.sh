#!/usr/bin/env bash
# Apple-path check of the Metal shaders on Linux (details: scripts/check_msl_apple.py): every
# shaders/*.metal file and the flattened source the Metal device compiles, through the
# non-emulator branch, with clang++-19 -fsyntax-only, stand-in MSL headers (tests/apple_msl/include)
# and a clang plugin for Metal's attributes and address-space rules (tests/apple_msl/plugin).
# Installs clang-19 (scripts/install_clang.sh) and libclang-19-dev + llvm-19-dev when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/check_msl_apple.py "$@"
