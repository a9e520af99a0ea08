"""The repacked matmuls of every format on one build, and their comparison across two builds
(scripts/test_vnni_emulated.sh: the installed AVX2 build against the emulated VNNI one).

    PYTHONPATH=<build>:tests python3 tests/vnni_matmuls.py write OUT.npz
    python3 tests/vnni_matmuls.py compare AVX2.npz VNNI.npz

Every format but Q8_0 must be bit-identical (the integer sums are exact whichever instructions
make them, vpdpbusd or vpmaddubsw + vpmaddwd, and the float steps are the same); Q8_0 within
float rounding (with VNNI the repacked blocks hold q + 128 and the dot subtracts 128 * s in
float). The first also shows that the VNNI build takes its branch.
"""

from __future__ import annotations

import sys

import numpy as np

FORMATS = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")
TOKENS = (1, 3, 8, 11)  # one token, a partial tile, a whole tile, a tile and a partial one
Q8_0_REL_TOL = 1e-5  # of the largest output; measured ~2e-7 (float rounding of the 128 * s term)


def write(path: str) -> None:
    import kquant_np as kq
    from metallic import _core

    k = _core.kernels
    if not k.simd_available():
        sys.exit("vnni_matmuls.py: this build has no SIMD kernels")
    rng, out = np.random.default_rng(0), {"vnni": np.array(k.vnni())}
    for name in FORMATS:
        dt = getattr(kq, name)
        rows, cols = 77, kq.BLOCK[dt][0] * 3  # 9 groups of 8 rows and 5 rows left; 3 blocks
        raw = kq.random_blocks(dt, rows, cols, rng, (0, 31)).reshape(-1)
        for nt in TOKENS:
            x = rng.standard_normal((nt, cols)).astype(np.float32)
            out[f"{name}/{nt}"] = k.matmul(dt, raw, rows, cols, x, 2, repack=True)
    np.savez(path, **out)


def compare(avx2_path: str, vnni_path: str) -> list[str]:
    a, v = np.load(avx2_path), np.load(vnni_path)
    if a["vnni"] or not v["vnni"]:
        return [f"expected an AVX2 build and a VNNI one, got vnni={a['vnni']} and {v['vnni']}"]
    bad = []
    for key in a.files:
        if key == "vnni":
            continue
        if key.startswith("Q8_0/"):
            off, tol = np.abs(a[key] - v[key]).max(), Q8_0_REL_TOL * np.abs(a[key]).max()
            if not off <= tol:
                bad.append(f"{key}: off by {off:.3g} (> {tol:.3g})")
        elif not np.array_equal(a[key], v[key]):
            bad.append(f"{key}: not bit-identical")
    return bad


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "write":
        write(argv[1])
        return 0
    if len(argv) == 3 and argv[0] == "compare":
        bad = compare(argv[1], argv[2])
        for line in bad:
            print(f"vnni_matmuls.py: {line}", file=sys.stderr)
        return 1 if bad else 0
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
