#!/usr/bin/env bash
# device="metal" on Linux: installs metallic built with the Linux Metal runtime exactly as the
# README says (pip install . -C cmake.define.METALLIC_METAL_ON_LINUX=ON), into its own folder
# (build/metal-linux-site; its own build dir, so the ordinary install is left alone), then runs
# tests/python/test_metal_linux.py against it with METALLIC_REQUIRE_METAL_LINUX=1 (a missing
# runtime fails instead of skipping). Needs root for apt (CI runs as root).
#
# Usage: scripts/test_metal_linux.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_clang.sh
bash scripts/install_gnustep.sh
site=build/metal-linux-site
bash scripts/install_variant.sh metal-linux METALLIC_METAL_ON_LINUX=ON
echo "== tests/python/test_metal_linux.py (device=\"metal\" on the Linux Metal runtime)"
PYTHONPATH="$PWD/$site" METALLIC_REQUIRE_METAL_LINUX=1 \
  python3 -m pytest -q -p no:cacheprovider tests/python/test_metal_linux.py "$@"
