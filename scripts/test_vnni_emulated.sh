#!/usr/bin/env bash
# The VNNI kernels on a CPU without VNNI: installs metallic built with METALLIC_EMULATE_VNNI=ON
# (native/cpu/vnni.h: vpdpbusd done in exact AVX2 steps, so the repacked Q8_0 layout is the
# biased one and every u8 x s8 sum takes the VNNI branch) into its own folder
# (build/vnni-emu-site, its own build dir), then runs the kernel, repack, K-quant, AMX-emulation,
# KV-quant and model-level tests against it. Machines with VNNI (AVX-512 VNNI or AVX-VNNI) run
# these paths natively in the main suite; this keeps them tested everywhere else. Needs AVX2
# (without it the kernels do not exist and the tests skip); first, compile checks of the real
# instructions' branches.
#
# Usage: scripts/test_vnni_emulated.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "$(uname -m)" != x86_64 ]] || ! grep -qw avx2 /proc/cpuinfo; then
  echo "test_vnni_emulated.sh: skipped (the x86 kernels need an x86_64 CPU with AVX2)"
  exit 0
fi
# The real instructions' branches compile (the emulation takes neither): the CPU kernels for an
# AVX-VNNI CPU (Alder Lake: VEX vpdpbusd, no AVX-512) and an AVX-512 VNNI one (Sapphire Rapids).
for march in alderlake sapphirerapids; do
  echo "== CPU kernels compile for -march=$march"
  for f in native/cpu/*.cpp native/cpu/arch/*.cpp; do
    "${CXX:-g++}" -O0 -std=gnu++20 -march="$march" -I native -I . -c -o /dev/null "$f"
  done
done
site=build/vnni-emu-site
bash scripts/install_variant.sh vnni-emu METALLIC_EMULATE_VNNI=ON
# Its kernels must take the VNNI branch (else the tests below would test the AVX2 one).
PYTHONPATH="$PWD/$site" python3 -c 'from metallic import _core; import sys
sys.exit(0 if _core.kernels.vnni() else "test_vnni_emulated.sh: the build does not take the VNNI branch")'
# The same matmuls on both builds where the installed one is AVX2 (tests/vnni_matmuls.py): every
# format but Q8_0 bit-identical, Q8_0 within float rounding.
installed=$(python3 -c 'from metallic import _core; print(int(_core.kernels.vnni()))' 2>/dev/null || echo none)
if [[ "$installed" == 0 ]]; then
  echo "== matmuls: the emulated VNNI build against the installed AVX2 build"
  PYTHONPATH="$PWD/tests" python3 tests/vnni_matmuls.py write build/vnni-emu-avx2.npz
  PYTHONPATH="$PWD/$site:$PWD/tests" python3 tests/vnni_matmuls.py write build/vnni-emu-vnni.npz
  python3 tests/vnni_matmuls.py compare build/vnni-emu-avx2.npz build/vnni-emu-vnni.npz
elif [[ "$installed" == 1 ]]; then
  echo "== matmuls: skipped (the installed metallic has VNNI itself; compared only against AVX2)"
else
  echo "== matmuls: skipped (no installed metallic with kernels.vnni(): pip install . first)"
fi
TESTS=(test_kernels.py test_repack.py test_kquants.py test_amx.py test_kv_quant.py test_batch_engine.py
       test_generate.py test_model_forward.py test_families_engine.py test_reference.py
       test_family_reference.py test_no_alloc.py)
echo "== ${#TESTS[@]} kernel and model test files on the emulated VNNI build"
PYTHONPATH="$PWD/$site" python3 -m pytest -q -p no:cacheprovider "${TESTS[@]/#/tests/python/}" "$@"
