#!/usr/bin/env bash
# Fetches Apple's metal-cpp headers (Apache-2.0), the source of the Metal API declarations that
# scripts/check_objc.sh and the Linux Metal build compile the Metal device against
# (native/metal_linux/metal_api_header.py generates <Metal/Metal.h> from them). A copy of metal-cpp
# (macOS 15 / iOS 18 API) ships in the source distribution of the PyPI package pymetal-cpp 0.1.5
# (thirdparty/metal-cpp/); pip downloads that sdist (the one network access, like the model
# files), its sha256 is checked against the pin below, and it is unpacked once into
# ${METALLIC_CACHE_DIR:-$HOME/.cache/metallic}/pymetal-cpp-0.1.5/. Idempotent and safe to run
# concurrently (flock): a verified copy in the cache is reused without the network. Nothing of
# metal-cpp is ever committed to this repository.
#
# Usage: scripts/fetch_metal_cpp.sh [--offline]
#   --offline: never reach the network; exit 3 when no verified copy is in the cache.
# stdout, last line: the absolute path of the metal-cpp directory (holding Metal/ and Foundation/).
# Failures: a "[fetch_metal_cpp] what: expected X, got Y" line on stderr and a nonzero exit.
set -euo pipefail

readonly VERSION="0.1.5"
readonly SDIST="pymetal_cpp-${VERSION}.tar.gz"
readonly SHA256="1118062f635277a2781659fbc4e7e5bac7d565d6948a3461c3b04d6425c15a0e"
readonly INNER="pymetal_cpp-${VERSION}/thirdparty/metal-cpp"

die() {
  echo "[fetch_metal_cpp] $*" >&2
  exit 1
}

offline=0
case "${1-}" in
  "") ;;
  --offline) offline=1 ;;
  *)
    echo "[fetch_metal_cpp] argument: expected --offline or none, got '$1'" >&2
    exit 2
    ;;
esac

cache="${METALLIC_CACHE_DIR:-$HOME/.cache/metallic}/pymetal-cpp-${VERSION}"
dest="$cache/$INNER"
stamp="$cache/.verified" # written last: holds the hash of the sdist the tree was unpacked from

ready() { [[ -f "$stamp" && "$(cat "$stamp")" == "$SHA256" && -f "$dest/Metal/MTLDevice.hpp" ]]; }

if ready; then
  echo "$dest"
  exit 0
fi
if ((offline)); then
  echo "[fetch_metal_cpp] cache $cache: expected a verified metal-cpp (--offline), got none" >&2
  exit 3
fi
mkdir -p "$cache" || die "cache $cache: expected a writable directory, got mkdir failing"
exec 9>"$cache/.lock"
flock 9 # one fetch at a time; whoever waited finds the tree ready
if ready; then
  echo "$dest"
  exit 0
fi
PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || die "python: expected $PYTHON on PATH, got none"

sdist="$cache/$SDIST"
if [[ ! -f "$sdist" ]] || [[ "$(sha256sum "$sdist" | cut -d' ' -f1)" != "$SHA256" ]]; then
  rm -f "$sdist"
  # --no-binary for this package only: the sdist is what carries metal-cpp. (pip prepares its
  # metadata, which installs the build backend; with --no-binary :all: the backend's own
  # dependencies, cmake among them, would be compiled from source for many minutes.)
  log="$cache/pip-download.log"
  if ! "$PYTHON" -m pip download --no-deps --no-binary pymetal-cpp "pymetal-cpp==${VERSION}" \
    -d "$cache" >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    die "pip download pymetal-cpp==${VERSION}: expected the sdist $SDIST, got a pip failure (log: $log)"
  fi
  [[ -f "$sdist" ]] || die "pip download: expected $sdist, got $(ls "$cache" | tr '\n' ' ')"
fi
got="$(sha256sum "$sdist" | cut -d' ' -f1)"
if [[ "$got" != "$SHA256" ]]; then
  rm -f "$sdist"
  die "$sdist: expected sha256 $SHA256, got $got (file removed)"
fi

# Unpack beside the cache and move into place, so a reader never sees half a tree.
tmp="$(mktemp -d "$cache/unpack.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$sdist" -C "$tmp" "$INNER" || die "$sdist: expected an archive holding $INNER/, got tar failing"
for f in Metal/Metal.hpp Metal/MTLHeaderBridge.hpp Metal/MTLDevice.hpp Foundation/Foundation.hpp; do
  [[ -f "$tmp/$INNER/$f" ]] || die "$sdist: expected $INNER/$f, got no such file"
done
rm -rf "$cache/pymetal_cpp-${VERSION}"
mv "$tmp/pymetal_cpp-${VERSION}" "$cache/"
echo "$SHA256" >"$stamp"
echo "$dest"
