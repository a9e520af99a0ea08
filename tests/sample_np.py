"""NumPy mirror of the CPU sampler's draw (native/model/sampler.cpp, docs/CONTRACTS.md §1) for the
device sampling kernels (shaders/sample.h): which tokens a draw with uniform u may return.

Probabilities are computed exactly as the CPU sampler (and, in the emulator, the kernels) compute
them: the float32 exponent (w - mx) * inv_temp, then the C library's expf, so candidate sets,
orders and min_p decisions are exact. Only the running sums differ (float32 on the device, float64
here and in the CPU sampler); `margin` (a fraction of the mass being summed) says how far a
device sum may be from the exact one, and every token whose CDF interval comes within that
distance of u * mass is accepted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from dataclasses import dataclass

import numpy as np

_LIBM = ctypes.CDLL(ctypes.util.find_library("m"))
_LIBM.expf.argtypes = [ctypes.c_float]
_LIBM.expf.restype = ctypes.c_float
_EXPF = np.frompyfunc(_LIBM.expf, 1, 1)


def order_by_logit(w: np.ndarray) -> np.ndarray:
    """Token ids by descending logit, ties by ascending id (-0.0 == 0.0, as float compares)."""
    return np.lexsort((np.arange(len(w)), -w.astype(np.float64)))


def probs(w: np.ndarray, mx: np.float32, inv_temp: np.float32) -> np.ndarray:
    """sampler.cpp's std::exp((w - mx) * inv_t) in float32, as float64 values."""
    e = (w.astype(np.float32) - np.float32(mx)) * np.float32(inv_temp)
    p = np.zeros(len(w), np.float64)
    fin = np.isfinite(e)
    if fin.any():
        p[fin] = _EXPF(e[fin]).astype(np.float64)
    return p


def splitmix64_uniform(seed: int) -> float:
    """The CPU sampler's first uniform for `seed` (next_uniform)."""
    mask = (1 << 64) - 1
    z = (seed + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return ((z ^ (z >> 31)) >> 11) * 2.0**-53


@dataclass
class Expect:
    exact: int | None  # the token of the exact rule; None when no token can be drawn
    tokens: set[int]  # every token within the margin (with `exact`, unless fallback is "must")
    fallback: str  # "never", "may" or "must": device nucleus mode may defer to the CPU


def _draw(ids: np.ndarray, p: np.ndarray, u: float, margin: float) -> tuple[int, set[int]]:
    """First id whose running mass exceeds u * mass (else the last with p > 0), and every id
    whose interval [cs_{i-1}, cs_i) meets [us - d, us + d], d = margin * mass."""
    cs = np.cumsum(p)
    total = cs[-1]
    us, d = u * total, margin * total
    nz = np.nonzero(p > 0)[0]
    last = int(ids[nz[-1]]) if len(nz) else int(ids[0])
    hit = np.nonzero((p > 0) & (us < cs))[0]
    exact = int(ids[hit[0]]) if len(hit) else last
    lo = np.concatenate(([0.0], cs[:-1]))
    near = (p > 0) & (lo <= us + d) & (cs > us - d)
    tokens = {int(i) for i in ids[near]} | {exact}
    if us + d >= total:
        tokens.add(last)
    return exact, tokens


class Rule:
    """The CPU rule for penalty-free float32 logits w; everything but the uniform precomputed."""

    def __init__(
        self, w: np.ndarray, inv_temp, top_k: int, top_p, min_p, margin: float, max_top_k: int
    ):
        n = len(w)
        inv_temp, top_p = np.float32(inv_temp), np.float32(top_p)
        self.min_p, self.margin = np.float32(min_p), margin
        by_logit = order_by_logit(w)
        topk_mode = 0 < top_k < n
        self.cand = by_logit[:top_k] if topk_mode else np.arange(n)
        mx = np.float32(w[self.cand].max())
        self.drawable = math.isfinite(mx)
        if not self.drawable:
            return
        self.p = probs(w[self.cand], mx, inv_temp)
        self.top_p = bool(top_p < 1 and len(self.cand) > 1)
        if not self.top_p:
            return
        order = np.lexsort((self.cand, -self.p))  # probability descending, ties by lowest id
        self.ids, self.ps = self.cand[order], self.p[order]
        cs = np.cumsum(self.ps)
        target, d, last = float(top_p) * cs[-1], margin * cs[-1], len(self.ps) - 1
        reach, lo, hi = (np.nonzero(cs >= v)[0] for v in (target, target - d, target + d))
        self.cut = int(reach[0]) if len(reach) else last
        self.cuts = range(int(lo[0]) if len(lo) else last, (int(hi[0]) if len(hi) else last) + 1)
        # Nucleus mode keeps max_top_k candidates by logit: exact iff the cut's p beats the least.
        q = self.p[by_logit[max_top_k - 1]] if not topk_mode and n > max_top_k else -1.0
        self.exact_cut = {c: bool(self.ps[c] > q) for c in self.cuts}

    def expect(self, u: float) -> Expect:
        if not self.drawable:
            return Expect(None, set(), "never")
        if not self.top_p:
            keep = self.p >= self.min_p
            exact, tokens = _draw(self.cand[keep], self.p[keep], u, self.margin)
            return Expect(exact, tokens, "never")
        exact, tokens = None, set()
        for c in self.cuts:
            keep = self.ps[: c + 1] >= self.min_p
            e, t = _draw(self.ids[: c + 1][keep], self.ps[: c + 1][keep], u, self.margin)
            if self.exact_cut[c]:
                tokens |= t
            if c == self.cut:
                exact = e
        ok = self.exact_cut.values()
        fallback = "must" if not any(ok) else "may" if not all(ok) else "never"
        return Expect(exact, tokens, fallback)
