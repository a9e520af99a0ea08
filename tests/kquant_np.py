"""NumPy quantizers and a structural decoder for Q5_0/Q5_1 and the K-quants Q4_K, Q5_K, Q6_K.

The ``gguf`` package dequantizes K-quants but cannot quantize them, so tests (and tiny Q4_K_M
model writers) build their weights here. The quantizers are simple, not optimal: per (sub-)block
min/max or absmax, scales rounded to the format's integer grid, codes rounded and clipped. They
only promise valid blocks whose values approximate the input (see ``test_kquants``'s property
test for the bound). Block layouts: native/core/quant_blocks.h.

``decode_parts`` splits stored blocks into the pieces the CPU dots use (per-group scale, integer
codes, offset coefficient of the activation sum), for exact float64 references and rounding bounds.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as GT
from gguf.quants import quantize as gg_quantize

Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K = 2, 3, 6, 7, 8, 12, 13, 14  # GGML type ids
QK_K = 256
BLOCK = {Q5_0: (32, 22), Q5_1: (32, 24), Q8_0: (32, 34), Q4_K: (256, 144), Q5_K: (256, 176)}
BLOCK |= {Q6_K: (256, 210), Q4_0: (32, 18), Q4_1: (32, 20)}


def _f16(x: np.ndarray) -> np.ndarray:
    """float -> (..., 2) little-endian fp16 bytes (round to nearest)."""
    return np.ascontiguousarray(np.asarray(x, np.float32).astype("<f2"))[..., None].view(np.uint8)


def _read_f16(two: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(two).view("<f2")[..., 0].astype(np.float64)


def _grid_scale(need: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Super-block scale d (fp16, as float64) and per-group ints round(need / d) in 0..top, so
    every group's d * int is within d / 2 of its need (no group's int is clipped).

    d is the fp16 value nearest max(need) / top, or the next fp16 above it when that one is so far
    below that round(max(need) / d) would exceed top. Normal fp16 rounds by at most 2**-11
    relative and top * 2**-11 < 1/2, so only subnormal d (spacing 2**-24) below ~top * 2**-24
    can (a Q6_K super-block with max |x| under ~0.03), or d underflowing to 0. Clipping the int
    there instead leaves that group's scale short by more than d / 2 and clips its largest codes
    too (Q6_K, max |x| = 3.6e-3: 15.13 * 2**-24 wanted, d = 15 * 2**-24, int 128 -> 127).
    The next fp16 above is >= max(need) / top (the nearest one was below it), so ints <= top.
    """
    worst = need.max(axis=-1)
    d = (worst / top).astype(np.float16)
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 / 0 stays d = 0 (all-zero block)
        short = np.rint(worst / d.astype(np.float64)) > top
    d = np.where(short, np.nextafter(d, np.float16(np.inf)), d).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ints = np.where(d[..., None] > 0, np.rint(need / d[..., None]), 0)
    return d, np.clip(ints, 0, top).astype(np.uint8)


def pack_k4_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """(..., 8) 6-bit scales and mins -> (..., 12) bytes (layout in core/quant_blocks.h)."""
    sc, m = sc.astype(np.uint8), m.astype(np.uint8)
    out = np.empty((*sc.shape[:-1], 12), np.uint8)
    out[..., 0:4] = (sc[..., :4] & 0x3F) | ((sc[..., 4:] >> 4) << 6)
    out[..., 4:8] = (m[..., :4] & 0x3F) | ((m[..., 4:] >> 4) << 6)
    out[..., 8:12] = (sc[..., 4:] & 0x0F) | ((m[..., 4:] & 0x0F) << 4)
    return out


def unpack_k4_scales(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., 12) bytes -> (sc, m), each (..., 8) ints."""
    sc = np.concatenate([b[..., 0:4] & 0x3F, (b[..., 8:12] & 0x0F) | ((b[..., 0:4] >> 6) << 4)], -1)
    m = np.concatenate([b[..., 4:8] & 0x3F, (b[..., 8:12] >> 4) | ((b[..., 4:8] >> 6) << 4)], -1)
    return sc.astype(np.int64), m.astype(np.int64)


def _quantize_k45(x: np.ndarray, levels: int) -> tuple[np.ndarray, ...]:
    """x (rows, n) -> (d, dmin, sc, m, codes (rows, ns, 8, 32)) for 4-bit (15) or 5-bit (31)."""
    rows, n = x.shape
    xs = x.reshape(rows, n // QK_K, 8, 32).astype(np.float64)
    lo = np.minimum(xs.min(axis=-1), 0.0)  # value = step * code - min, min >= 0
    step = (xs.max(axis=-1) - lo) / levels
    d, sc = _grid_scale(step, 63)
    dmin, m = _grid_scale(-lo, 63)
    eff_step = d[..., None] * sc
    eff_min = dmin[..., None] * m
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(
            eff_step[..., None] > 0, np.rint((xs + eff_min[..., None]) / eff_step[..., None]), 0
        )
    return d, dmin, sc, m, np.clip(q, 0, levels).astype(np.uint8)


def _nibbles_k(codes: np.ndarray) -> np.ndarray:
    """(rows, ns, 8, 32) codes -> (rows, ns, 128) bytes: sub-block 2p low, 2p + 1 high nibble."""
    c = codes & 0x0F
    return (c[:, :, 0::2, :] | (c[:, :, 1::2, :] << 4)).reshape(*codes.shape[:2], 128)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """(rows, n) float, n % 256 == 0 -> (rows, n / 256 * 144) uint8 Q4_K blocks."""
    d, dmin, sc, m, q = _quantize_k45(np.asarray(x), 15)
    parts = [_f16(d), _f16(dmin), pack_k4_scales(sc, m), _nibbles_k(q)]
    return np.concatenate(parts, axis=-1).reshape(x.shape[0], -1)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    """(rows, n) float -> Q5_K blocks (rows, n / 256 * 176); bit j of qh[l] = bit 4 of code (j, l)."""
    d, dmin, sc, m, q = _quantize_k45(np.asarray(x), 31)
    hbits = (q >> 4) & 1  # (rows, ns, 8, 32)
    qh = (hbits << np.arange(8, dtype=np.uint8)[:, None]).sum(axis=2).astype(np.uint8)
    parts = [_f16(d), _f16(dmin), pack_k4_scales(sc, m), qh, _nibbles_k(q)]
    return np.concatenate(parts, axis=-1).reshape(x.shape[0], -1)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """(rows, n) float -> Q6_K blocks (rows, n / 256 * 210): value = d * sc[g] * (code - 32)."""
    x = np.asarray(x)
    rows, n = x.shape
    xs = x.reshape(rows, n // QK_K, 16, 16).astype(np.float64)
    step = np.abs(xs).max(axis=-1) / 31.5  # per group of 16: codes - 32 in [-32, 31]
    d, sc = _grid_scale(step, 127)
    eff = d[..., None] * sc
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(eff[..., None] > 0, np.rint(xs / eff[..., None]), 0)
    q = (np.clip(q, -32, 31) + 32).astype(np.uint8).reshape(rows, -1, 2, 4, 32)  # (h, t, l)
    ql = (q[:, :, :, 0:2] & 0x0F) | ((q[:, :, :, 2:4] & 0x0F) << 4)  # (rows, ns, h, 2, 32)
    qh = ((q >> 4) << (2 * np.arange(4, dtype=np.uint8))[:, None]).sum(axis=3).astype(np.uint8)
    ns = n // QK_K
    parts = [ql.reshape(rows, ns, 128), qh.reshape(rows, ns, 64), sc.view(np.uint8), _f16(d)]
    return np.concatenate(parts, axis=-1).reshape(rows, -1)


def quantize(dtype: int, x: np.ndarray) -> np.ndarray:
    """(rows, n) float32 -> raw 1-D bytes of ``dtype`` (Q5_0/Q5_1/Q8_0 through gguf)."""
    x = np.ascontiguousarray(x, np.float32)
    if dtype == Q4_K:
        raw = quantize_q4_k(x)
    elif dtype == Q5_K:
        raw = quantize_q5_k(x)
    elif dtype == Q6_K:
        raw = quantize_q6_k(x)
    else:
        raw = gg_quantize(x, GT(dtype))
    return np.ascontiguousarray(raw, np.uint8).reshape(-1)


def decode_parts(dtype: int, raw: np.ndarray, rows: int, cols: int) -> dict[str, np.ndarray]:
    """Stored blocks -> float64 pieces, groups of ``g`` elements (16 for Q6_K, else 32).

    Returns ``w`` (rows, cols) values, ``scale`` (rows, G) multiplier of the integer codes,
    ``u`` (rows, G, g) codes as the integer dot sees them (Q6_K: code - 32), ``off`` (rows, G)
    the per-element constant (value = scale * u + off; the dots apply it through s = d_a*sum(q)).
    K-quants also return ``grid`` and ``grid_m`` (rows, G): the fp16 super-block units d and dmin
    (Q6_K: 0) that the group's scale and -off are integer multiples of.
    """
    grid = grid_m = None
    elems, nbytes = BLOCK[dtype]
    b = np.ascontiguousarray(raw, np.uint8).reshape(rows, cols // elems, nbytes)
    if dtype in (Q5_0, Q5_1):
        d = _read_f16(b[..., 0:2])
        at = 4 if dtype == Q5_1 else 2
        qh = b[..., at : at + 4].copy().view("<u4")[..., 0]
        qs = b[..., at + 4 : at + 20]
        nib = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int64)
        u = nib | (((qh[..., None] >> np.arange(32, dtype=np.uint32)) & 1) << 4).astype(np.int64)
        off = _read_f16(b[..., 2:4]) if dtype == Q5_1 else -16 * d
        scale = d
    elif dtype == Q8_0:
        scale, u = _read_f16(b[..., 0:2]), b[..., 2:].view(np.int8).astype(np.int64)
        off = np.zeros_like(scale)
    elif dtype in (Q4_K, Q5_K):
        d, dmin = _read_f16(b[..., 0:2]), _read_f16(b[..., 2:4])
        sc, m = unpack_k4_scales(b[..., 4:16])
        qs = b[..., -128:].reshape(rows, -1, 4, 32).astype(np.int64)
        u = np.stack([qs & 0x0F, qs >> 4], axis=3).reshape(rows, -1, 8, 32)
        if dtype == Q5_K:
            qh = b[..., 16:48].astype(np.int64)
            u = u | (((qh[:, :, None, :] >> np.arange(8)[:, None]) & 1) << 4)
        scale, off = d[..., None] * sc, -(dmin[..., None] * m)
        grid, grid_m = np.repeat(d, 8, axis=-1), np.repeat(dmin, 8, axis=-1)
        scale, off, u = scale.reshape(rows, -1), off.reshape(rows, -1), u.reshape(rows, -1, 32)
    else:  # Q6_K
        ql = b[..., 0:128].reshape(rows, -1, 2, 2, 32).astype(np.int64)  # (h, t % 2, l)
        qh = b[..., 128:192].reshape(rows, -1, 2, 1, 32).astype(np.int64)  # (h, ., l)
        low = np.concatenate([ql & 0x0F, ql >> 4], axis=3)  # t = 0..3 along axis 3
        high = (qh >> (2 * np.arange(4))[:, None]) & 3
        u = ((low | (high << 4)) - 32).reshape(rows, -1, 16)
        sc = b[..., 192:208].view(np.int8).astype(np.float64)
        d = _read_f16(b[..., 208:210])
        scale = (d[..., None] * sc).reshape(rows, -1)
        off = np.zeros_like(scale)
        grid, grid_m = np.repeat(d, 16, axis=-1), np.zeros_like(scale)
    scale = scale.reshape(rows, -1)
    u = u.reshape(rows, scale.shape[1], -1).astype(np.float64)
    off = off.reshape(rows, -1)
    w = scale[..., None] * u + off[..., None]
    parts = {"w": w.reshape(rows, cols), "scale": scale, "u": u, "off": off}
    if grid is not None:
        parts |= {"grid": grid.reshape(rows, -1), "grid_m": grid_m.reshape(rows, -1)}
    return parts


# Byte offsets of the fp16 scale / min fields in each block (random_blocks keeps them finite).
F16_FIELDS = {Q5_0: (0,), Q5_1: (0, 2), Q4_K: (0, 2), Q5_K: (0, 2), Q6_K: (208,)}
F16_FIELDS |= {Q8_0: (0,), Q4_0: (0,), Q4_1: (0, 2)}


def random_blocks(
    dtype: int, rows: int, cols: int, rng, scale_exp: tuple[int, int] | None = None
) -> np.ndarray:
    """Arbitrary bytes (every code, subnormal and huge scales) with finite fp16 scales / mins:
    (rows, row_bytes) uint8, C-contiguous. scale_exp = (lo, hi): the fp16 fields' exponent
    fields drawn from [lo, hi) instead (0 = subnormal, 30 = 2**15; capped at 30, finite)."""
    elems, nbytes = BLOCK[dtype]
    b = rng.integers(0, 256, (rows, cols // elems, nbytes), dtype=np.uint8)
    for off in F16_FIELDS[dtype]:
        h = b[..., off : off + 2].copy().view(np.uint16)
        if scale_exp is None:
            h[(h & 0x7C00) == 0x7C00] &= 0xBFFF  # inf/NaN -> finite
        else:
            exp = rng.integers(scale_exp[0], scale_exp[1], h.shape).astype(np.uint16)
            h = (h & 0x83FF) | (np.minimum(exp, 30) << 10)
        b[..., off : off + 2] = h.view(np.uint8)
    return np.ascontiguousarray(b.reshape(rows, -1))
