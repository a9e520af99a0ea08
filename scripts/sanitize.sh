#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer run of the native-heavy tests.
#
# Builds the extension with -DMETALLIC_SANITIZE=ON (gcc's libasan/libubsan, RelWithDebInfo) into
# build/asan, copies src/metallic to build/asan/pkg/metallic with the sanitized _core linked in
# (the dev build in src/metallic is left alone), and runs the tests with that package first on
# PYTHONPATH and the ASan runtime preloaded into the Python process. Any sanitizer report aborts
# the process, so the run fails on the first one.
#
# Options (documented choices):
#   ASAN_OPTIONS  detect_leaks=0 in the main pass: every allocation the engine makes has
#                 CPython frames below it, and CPython/numpy/tokenizers leave memory allocated at
#                 exit by design, so a leak report there would be mostly theirs. The leak pass
#                 (below) instead keeps only 4 frames of each allocation stack and suppresses
#                 stacks that reach the interpreter or a third-party extension within them
#                 (written to build/asan/lsan.supp), so what remains is memory our native code lost.
#                 allocator_may_return_null=1: a huge native allocation must surface as
#                 std::bad_alloc -> metallic.errors.OutOfMemory, the path the fuzzer checks.
#   UBSAN_OPTIONS halt_on_error=1:print_stacktrace=1 (the build also passes
#                 -fno-sanitize-recover=undefined).
#   METALLIC_FUZZ_MEM_MB=0: ASan reserves terabytes of shadow address space, so the fuzz
#                 children run without their RLIMIT_AS cap here.
#
# Usage: scripts/sanitize.sh [extra pytest args]   (SANITIZE_FUZZ_CASES=N, default 300)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=build/asan
PY=$(python3 -c "import sys; print(sys.executable)")  # the real binary, not a shim script
generator=()
if command -v ninja >/dev/null; then generator=(-G Ninja); fi
cmake -S . -B "$BUILD_DIR" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMETALLIC_SANITIZE=ON -DPython_EXECUTABLE="$PY" >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
so=$(ls "$BUILD_DIR"/_core*.so)

pkg="$BUILD_DIR/pkg"
rm -rf "$pkg"
mkdir -p "$pkg"
cp -r src/metallic "$pkg/metallic"
find "$pkg/metallic" -name '_core*.so' -delete
# No emulator library in the sanitized package (a dev build's link is dropped, as CI has none):
# its ucontext fibers are outside what ASan supports in-process (see below).
rm -f "$pkg/metallic/libmetallic_shaders_emu.so"
find "$pkg/metallic" -name __pycache__ -prune -exec rm -rf {} +
mkdir -p "$pkg/metallic/models"
cp models/registry.json "$pkg/metallic/models/"  # where the wheel puts it
ln -s "$(realpath "$so")" "$pkg/metallic/$(basename "$so")"

asan_rt=$(gcc -print-file-name=libasan.so)
if [[ ! -e "$asan_rt" ]]; then
  echo "sanitize.sh: gcc's libasan.so not found (apt-get install libasan8)" >&2
  exit 2
fi
# libstdc++ is preloaded too: the python binary does not link it, and ASan's __cxa_throw
# interceptor must find the real one when it initialises, or the first C++ throw aborts.
preload="$asan_rt $(gcc -print-file-name=libstdc++.so.6)"
# pytest captures fd 2 and an abort loses it, so reports also go to files printed on failure.
reports="$PWD/$BUILD_DIR/reports"
rm -rf "$reports"
mkdir -p "$reports"
show_reports() {
  local rc=$?
  if compgen -G "$reports/*" >/dev/null; then
    echo "== sanitizer reports:" >&2
    cat "$reports"/* >&2
    rc=1
  fi
  exit "$rc"
}
trap show_reports EXIT
export PYTHONPATH="$PWD/$pkg${PYTHONPATH:+:$PYTHONPATH}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$reports/ubsan"
export METALLIC_FUZZ_MEM_MB=0 METALLIC_FUZZ_CASES="${SANITIZE_FUZZ_CASES:-300}"
export METALLIC_FUZZ_TIMEOUT=120 TOKENIZERS_PARALLELISM=false
common="abort_on_error=1:allocator_may_return_null=1:check_initialization_order=1"
common+=":strict_string_checks=1:log_path=$reports/asan"
tests=(tests/python/test_kernels.py tests/python/test_kquants.py tests/python/test_sampler.py
  tests/python/test_model_forward.py tests/python/test_model.py tests/python/test_fuzz.py
  tests/python/test_batch_engine.py tests/python/test_batch.py tests/python/test_kv_quant.py
  tests/python/test_speculative.py tests/python/test_repack.py tests/python/test_amx.py)

# The sanitized package must shadow any installed metallic (checked without importing _core).
"$PY" -c 'import importlib.util as u, sys; p = u.find_spec("metallic").origin
sys.exit(0 if "/asan/pkg/" in p else f"sanitize.sh: metallic resolves to {p}")'

echo "== ASan+UBSan: ${tests[*]}"
# Tests marked `emulator` (device="metal-emulated") are left out: the emulator's ucontext fibers
# are outside what ASan supports in-process; its kernels have their own TSan and ASan+UBSan
# replays (tests/python/test_metal_emu_broken.py).
ASAN_OPTIONS="$common:detect_leaks=0" LD_PRELOAD="$preload" \
  "$PY" -m pytest -q -p no:cacheprovider -m "not emulator" "${tests[@]}" "$@"

# Stacks (4 frames deep) that reach the interpreter or a third-party extension are theirs.
supp="$BUILD_DIR/lsan.supp"
printf 'leak:%s\n' python3 libpython _multiarray_umath _umath libopenblas libscipy tokenizers \
  _ctypes _hashlib libcrypto libffi >"$supp"
echo "== LeakSanitizer: tests/python/test_kernels.py tests/python/test_sampler.py"
# LD_PRELOAD is dropped inside the interpreter so that programs the tests start (a shell, tr)
# are not leak-checked: their exit-time leaks are not ours.
ASAN_OPTIONS="$common:detect_leaks=1:malloc_context_size=4" \
  LSAN_OPTIONS="suppressions=$PWD/$supp:print_suppressions=0" LD_PRELOAD="$preload" \
  "$PY" -c 'import os, sys, pytest; os.environ.pop("LD_PRELOAD")
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *sys.argv[1:]]))' \
  tests/python/test_kernels.py tests/python/test_sampler.py "$@"
echo "sanitize.sh: clean"
