#!/usr/bin/env bash
# A variant build of metallic for tests, installed exactly as a user would (pip install . with a
# CMake option) into its own folder, build/NAME-site, with its own build dir (build/NAME-wheel),
# so the ordinary install and the dev build are left alone; then checks that a PYTHONPATH of that
# folder imports it (without importing _core). Used by test_metal_linux.sh and
# test_vnni_emulated.sh; run from the repository root.
#
# Usage: scripts/install_variant.sh NAME CMAKE_DEFINE   (e.g. metal-linux METALLIC_METAL_ON_LINUX=ON)
set -euo pipefail
name=$1 define=$2
site=build/$name-site
rm -rf "$site"
echo "== pip install . -C cmake.define.$define (into $site)"
python3 -m pip install --quiet --no-deps --target "$site" . \
  -C "cmake.define.$define" -C "build-dir=build/$name-wheel"
PYTHONPATH="$PWD/$site" python3 -c 'import importlib.util as u, sys; p = u.find_spec("metallic").origin
sys.exit(0 if sys.argv[1] in p else f"install_variant.sh: metallic resolves to {p}")' "/$name-site/"
