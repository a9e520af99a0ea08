#!/usr/bin/env bash
# Installs GNUstep's Foundation and the blocks runtime (Debian: libgnustep-base-dev,
# libblocksruntime-dev), what the Objective-C++ Metal device compiles against on Linux
# (scripts/check_objc.sh, scripts/test_metal_linux.sh). Idempotent; needs root (CI runs as root).
set -euo pipefail
if command -v gnustep-config >/dev/null && [[ -e /usr/include/Block.h ]]; then
  exit 0
fi
SUDO=""
[[ "$(id -u)" != 0 ]] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
pkgs=(libgnustep-base-dev libblocksruntime-dev)
$SUDO apt-get install -y -qq "${pkgs[@]}" >/dev/null 2>&1 ||
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${pkgs[@]}" >/dev/null; }
