"""Tensor storage types. Values are the GGML type ids, mirrored by ``metallic::DType`` natively.

``BLOCK`` gives (elements per block, bytes per block) for every type the engine can store; a
row of ``n`` elements takes ``n // block * bytes`` bytes and ``n`` must be a multiple of the block.
"""

from __future__ import annotations

import enum

from .errors import UnsupportedDType


class DType(enum.IntEnum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    BF16 = 30


# (elements per block, bytes per block), from the block layouts (see native/core/quant_blocks.h).
BLOCK: dict[DType, tuple[int, int]] = {
    DType.F32: (1, 4),
    DType.F16: (1, 2),
    DType.BF16: (1, 2),
    DType.Q4_0: (32, 18),
    DType.Q4_1: (32, 20),
    DType.Q5_0: (32, 22),
    DType.Q5_1: (32, 24),
    DType.Q8_0: (32, 34),
    DType.Q2_K: (256, 84),
    DType.Q3_K: (256, 110),
    DType.Q4_K: (256, 144),
    DType.Q5_K: (256, 176),
    DType.Q6_K: (256, 210),
}

# Types the engine can compute with today (the rest parse, then raise UnsupportedDType).
SUPPORTED: frozenset[DType] = frozenset(
    {
        DType.F32,
        DType.F16,
        DType.BF16,
        DType.Q8_0,
        DType.Q4_0,
        DType.Q4_1,
        DType.Q5_0,
        DType.Q5_1,
        DType.Q4_K,
        DType.Q5_K,
        DType.Q6_K,
    }
)


def row_nbytes(dtype: DType, n: int, *, where: str = "tensor") -> int:
    """Bytes of one row of ``n`` elements; raises if ``n`` is not a multiple of the block."""
    block, nbytes = BLOCK[dtype]
    if n <= 0 or n % block:
        raise UnsupportedDType(
            f"[dtype] {where}: row length {n} is not a positive multiple of the "
            f"{dtype.name} block size {block}"
        )
    return n // block * nbytes


def tensor_nbytes(dtype: DType, shape: tuple[int, ...], *, where: str = "tensor") -> int:
    """Bytes of a tensor with numpy-order ``shape`` (last dim is the row length)."""
    if not shape:
        raise UnsupportedDType(f"[dtype] {where}: empty shape")
    rows = 1
    for d in shape[:-1]:
        rows *= d
    return rows * row_nbytes(dtype, shape[-1], where=where)
