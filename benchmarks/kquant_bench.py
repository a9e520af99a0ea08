"""Micro-benchmark of the CPU quantized matvec kernels: weight GB/s per storage type.

    PYTHONPATH=src python benchmarks/kquant_bench.py [--rows 2048] [--cols 2048] [-r 20]

For each type (Q4_1 is the reference point) one ``rows x cols`` matrix of valid random blocks is
multiplied with one activation vector:

* ``1t``: ``kernels.matvec`` (single thread, the selected SIMD dot, activation quantization
  included), the kernel in isolation;
* ``1t mm`` / ``2t mm``: ``kernels.matmul``, the CPU device's MatMul op on a 1- or 2-thread pool.
  Each call builds a fresh device (thread pool), so the figure includes that start-up, measured
  separately on a 1-row matrix and printed as ``overhead``; ``net`` subtracts it.
* ``x4``: ``kernels.matmul`` with 4 tokens, 1 thread: the prefill path (four activations per
  weight-row pass), reported as weight GB/s * 4 (token-rows per second times row bytes).

GB/s = weight bytes / best time over ``-r`` repetitions. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from metallic import _core
from metallic.dtypes import BLOCK, DType

K = _core.kernels
TYPES = [DType.Q4_1, DType.Q8_0, DType.Q5_0, DType.Q5_1, DType.Q4_K, DType.Q5_K, DType.Q6_K]
# Byte offsets of the fp16 fields (scales and mins) inside each block.
F16_FIELDS = {
    DType.Q4_0: (0,),
    DType.Q4_1: (0, 2),
    DType.Q8_0: (0,),
    DType.Q5_0: (0,),
    DType.Q5_1: (0, 2),
    DType.Q4_K: (0, 2),
    DType.Q5_K: (0, 2),
    DType.Q6_K: (208,),
}


def random_weights(dtype: DType, rows: int, cols: int, rng) -> np.ndarray:
    """Random codes and scales with ordinary fp16 scales/mins (no subnormals, inf or NaN)."""
    elems, nbytes = BLOCK[dtype]
    blocks = rng.integers(0, 256, (rows, cols // elems, nbytes), dtype=np.uint8)
    for off in F16_FIELDS[dtype]:
        f16 = rng.uniform(0.001, 0.01, blocks.shape[:2]).astype("<f2")
        blocks[..., off : off + 2] = f16[..., None].view(np.uint8)
    return blocks.reshape(-1)


def best_time(reps: int, fn, *args) -> float:
    fn(*args)  # warm caches and pages
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("-r", "--reps", type=int, default=20)
    args = ap.parse_args()
    rows, cols = args.rows, args.cols
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal(cols).astype(np.float32)
    x4 = rng.standard_normal((4, cols)).astype(np.float32)
    print(f"matvec {rows}x{cols}, best of {args.reps}, simd={K.simd_available()}")
    hdr = f"{'type':6} {'MB':>6} {'1t':>7} {'1t mm':>7} {'2t mm':>7} {'2t net':>7} {'x4 1t':>7}"
    print(hdr + "   (GB/s of weights)")
    for dt in TYPES:
        raw = random_weights(dt, rows, cols, rng)
        one_row = raw[: len(raw) // rows]
        gb = raw.nbytes / 1e9
        t_mv = best_time(args.reps, K.matvec, int(dt), raw, rows, cols, x1, True)
        t_m1 = best_time(args.reps, K.matmul, int(dt), raw, rows, cols, x1, 1)
        t_m2 = best_time(args.reps, K.matmul, int(dt), raw, rows, cols, x1, 2)
        t_o2 = best_time(args.reps, K.matmul, int(dt), one_row, 1, cols, x1, 2)
        t_x4 = best_time(args.reps, K.matmul, int(dt), raw, rows, cols, x4, 1)
        print(
            f"{dt.name:6} {raw.nbytes / 1e6:6.2f} {gb / t_mv:7.1f} {gb / t_m1:7.1f} "
            f"{gb / t_m2:7.1f} {gb / max(t_m2 - t_o2, 1e-9):7.1f} {4 * gb / t_x4:7.1f}"
            f"   overhead(2t) {t_o2 * 1e6:.0f} us"
        )


if __name__ == "__main__":
    main()
