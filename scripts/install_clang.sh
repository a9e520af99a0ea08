#!/usr/bin/env bash
# Installs clang-19 (Debian package), the compiler the Metal emulator builds the shaders with.
# Idempotent: does nothing when clang++-19 is already on PATH. Needs root (CI runs as root).
set -euo pipefail
if command -v clang++-19 >/dev/null 2>&1; then
  echo "clang++-19 already installed: $(command -v clang++-19)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends clang-19 >/dev/null
command -v clang++-19 >/dev/null || { echo "[install_clang] clang++-19 missing after apt-get install" >&2; exit 1; }
echo "installed $(clang++-19 --version | head -1)"
