#!/usr/bin/env bash
# Installs clang-19 (Debian package), the compiler the Metal emulator builds the shaders with,
# its sanitizer runtimes (libclang-rt-19-dev: the emulator's TSan / ASan+UBSan replays link
# them) and llvm-19 (llvm-symbolizer-19: the replays' reports name .metal lines; an older
# /usr/bin/llvm-symbolizer fails on them). Idempotent: does nothing when all are there. Needs
# root (CI runs as root).
set -euo pipefail
have_rt() { dpkg-query -W -f='${Status}' libclang-rt-19-dev 2>/dev/null | grep -q "install ok installed"; }
if command -v clang++-19 >/dev/null 2>&1 && have_rt && command -v llvm-symbolizer-19 >/dev/null 2>&1; then
  echo "clang++-19 already installed: $(command -v clang++-19)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends clang-19 libclang-rt-19-dev llvm-19 >/dev/null
command -v clang++-19 >/dev/null || { echo "[install_clang] clang++-19 missing after apt-get install" >&2; exit 1; }
have_rt || { echo "[install_clang] libclang-rt-19-dev missing after apt-get install" >&2; exit 1; }
command -v llvm-symbolizer-19 >/dev/null || { echo "[install_clang] llvm-symbolizer-19 missing after apt-get install" >&2; exit 1; }
echo "installed $(clang++-19 --version | head -1) with its sanitizer runtimes"
