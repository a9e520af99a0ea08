// Device sampling of one row of n logits: greedy (argmax) and temperature + top-k / top-p / min-p,
// so that a decode step ends on the GPU with only the token id read back. The kernels draw the
// token the CPU sampler (native/model/sampler.cpp, docs/CONTRACTS.md §1) draws for the same
// uniform u; the host keeps the RNG and passes u in SampleArgs. Penalties, logit bias, masks,
// min_tokens and logprobs stay on the CPU sampler.
//
// Every kernel runs kSampleThreads threads per threadgroup; G = ceil(n / kSampleChunk). Buffers:
// logits [[buffer(0)]] (n floats), scratch [[buffer(1)]] (G * kSampleScratchWordsPerChunk uints,
// allocated once per vocabulary, no state kept between tokens), result [[buffer(2)]] (one uint,
// written by the final kernel), SampleArgs [[buffer(3)]] (argmax reads only n).
//   greedy:  argmax_partial_f32 grid (G), argmax_final_f32 grid (1)                2 dispatches
//   sample:  sample_partial_f32 grid (G); sample_sums_f32 grid (G) when
//            sample_needs_sums(n, top_k); sample_final_f32 grid (1)               2 or 3 dispatches
// The result is a token id, kSampleNoToken (every logit -inf or NaN, or a +inf logit while
// sampling: the CPU sampler raises "mask: expected at least one allowed token" for the former and
// computes NaN probabilities for the latter) or kSampleFallback (run the CPU sampler with the same
// u: nucleus not provably inside the candidates, top_k > kSampleMaxTopK, n > kSampleMaxVocab).
//
// Scratch words (chunk c of G): [c] the chunk's largest logit as an order key (sample_key; 0 when
// the chunk has none); [G + c] argmax: the chunk's first index of that logit, sample: the chunk's
// probability mass (float bits, sample_sums); [2G + c*K + j] and [2G + G*K + c*K + j] for j < kc
// (K = kSampleMaxTopK): key and id of the chunk's kc best candidates, in no particular order,
// padded with key 0 / id kSampleNoToken.
//
// Sampling follows sampler.cpp step by step. Probabilities are p = exp((w - mx) * inv_temp) in
// float, the CPU's expression (p_max = 1). Modes (sample_mode, the same for every kernel):
// - top-k (0 < top_k < n): the candidates are the top_k logits, ties to the lowest id (the CPU's
//   by_logit comparator, a strict total order, so the set is the CPU's exactly). Each chunk keeps
//   its best top_k, the final threadgroup the best top_k of those. Total mass: the candidates'.
// - nucleus (top_k off, top_p < 1, n > 1): the same with kSampleMaxTopK candidates; total mass
//   from sample_sums over every token. Exact whenever the nucleus lies in the candidates: the cut
//   (first sorted candidate whose running mass reaches top_p * total) has p strictly above the
//   smallest candidate p (every other token has p <= that one, so none can sort before the cut),
//   or the candidates are all n tokens. Otherwise kSampleFallback.
// - full (top_k off, top_p = 1 or n = 1): every token in id order, min_p applied in sample_sums;
//   the final threadgroup finds the chunk where u * total falls, then the token inside it.
// Draw order as on the CPU: top_p active (top_p < 1 and more than one candidate): probability
// descending, ties by lowest id; top-k mode without top_p: logit descending, ties by lowest id;
// full mode: id ascending. min_p keeps p >= min_p in that order; the token is the first whose
// running mass exceeds u * (kept mass), or, when rounding leaves u past every running sum, the
// last kept token with p > 0.
//
// Precision: sums are float here and double on the CPU (Metal has no double), so the device
// picks the CPU's token except when u * total or top_p * total lies within the float rounding of
// the partial sums (relative ~1e-5) of a boundary; there either neighbour can come out. In the
// emulator every p is bit-identical to the CPU sampler's (same expf, same float expression); on a
// GPU precise::exp may differ from the CPU's libm by an ulp. Greedy is exact: the first index of
// the maximum, as sampler.cpp. NaN logits are never drawn (weight 0; the CPU leaves NaN
// unspecified).
//
// Selection (select_top): bisection on the 32-bit order key (and, only when the boundary key is
// tied, on the 18-bit id), each step one threadgroup-wide count, 34 steps when there is no tie:
// no sort of the chunk, no atomics, no dependence on the order lanes run in.
#pragma once

#include "args.h"
#include "defines.h"

namespace metallic {

enum : uint {
  kSampleKeyNegInf = 0x007FFFFFu,  // sample_key(-inf); 0 is NaN
  kSampleKeyPosInf = 0xFF800000u,  // sample_key(+inf)
  kSampleIdBits = 18,              // ids < kSampleMaxVocab = 2^18
  kSampleModeTopK = 0,
  kSampleModeNucleus = 1,
  kSampleModeFull = 2,
};

// Unsigned order of keys = float order of logits, -0 == +0, NaN -> 0 (below every logit).
// Bit tests instead of isnan / == 0.f: Metal's fast-math mode may fold those away.
inline uint sample_key(float w) {
  uint b = as_type<uint>(w);
  const uint mag = b & 0x7FFFFFFFu;
  if (mag > 0x7F800000u) return 0u;
  if (mag == 0u) b = 0u;
  return (b & 0x80000000u) != 0u ? ~b : (b | 0x80000000u);
}

inline float sample_logit(uint k) {  // inverse of sample_key for k > 0
  return as_type<float>((k & 0x80000000u) != 0u ? (k & 0x7FFFFFFFu) : ~k);
}

// sampler.cpp's p = exp((w - mx) * inv_t); -inf (and NaN) logits weigh exactly 0.
inline float sample_prob(uint k, float mx, float inv_temp) {
  return k <= kSampleKeyNegInf ? 0.f : precise::exp((sample_logit(k) - mx) * inv_temp);
}

inline uint sample_mode(constant SampleArgs& a) {
  if (a.top_k > 0 && a.top_k < a.n) return kSampleModeTopK;
  return a.top_p < 1.f && a.n > 1 ? kSampleModeNucleus : kSampleModeFull;
}

inline uint sample_candidates(constant SampleArgs& a) {  // kc: candidates kept per chunk
  const uint mode = sample_mode(a);
  if (mode == kSampleModeTopK) return min(a.top_k, uint(kSampleMaxTopK));
  return mode == kSampleModeNucleus ? uint(kSampleMaxTopK) : 0u;
}

inline uint sample_chunks(uint n) { return (n + kSampleChunk - 1) / kSampleChunk; }

// Inclusive prefix sum across the simdgroup (lane order), by shuffles.
template <typename T>
inline T simd_scan_inclusive(T v, ushort lane) {
  for (ushort d = 1; d < 32; d <<= 1) {
    const T o = simd_shuffle(v, ushort(lane >= d ? lane - d : lane));
    if (lane >= d) v += o;
  }
  return v;
}

// Threadgroup-wide collectives over kSampleThreads threads. `red` holds 2 * kSampleSimdgroups
// words used alternately (`parity`): a thread can start the next collective while others still
// read this one's words, and the barrier of that next one orders the reuse after it.
inline threadgroup uint* tg_publish(uint v, threadgroup uint* red, thread uint& parity, ushort sg, ushort lane,
                                    ushort writer) {
  threadgroup uint* b = red + parity * kSampleSimdgroups;
  parity ^= 1u;
  if (lane == writer) b[sg] = v;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  return b;
}

inline uint tg_sum(uint v, threadgroup uint* red, thread uint& parity, ushort sg, ushort lane) {
  threadgroup uint* b = tg_publish(simd_sum(v), red, parity, sg, lane, 0);
  uint s = 0;
  for (uint i = 0; i < kSampleSimdgroups; ++i) s += b[i];
  return s;
}

inline uint tg_max(uint v, threadgroup uint* red, thread uint& parity, ushort sg, ushort lane) {
  threadgroup uint* b = tg_publish(simd_max(v), red, parity, sg, lane, 0);
  uint s = 0;
  for (uint i = 0; i < kSampleSimdgroups; ++i) s = max(s, b[i]);
  return s;
}

inline uint tg_min(uint v, threadgroup uint* red, thread uint& parity, ushort sg, ushort lane) {
  threadgroup uint* b = tg_publish(simd_min(v), red, parity, sg, lane, 0);
  uint s = 0xFFFFFFFFu;
  for (uint i = 0; i < kSampleSimdgroups; ++i) s = min(s, b[i]);
  return s;
}

// Exclusive prefix of v over threads in index order; `total` gets the sum over all threads.
inline uint tg_scan_exclusive(uint v, threadgroup uint* red, thread uint& parity, ushort sg, ushort lane,
                              thread uint& total) {
  const uint inc = simd_scan_inclusive(v, lane);
  threadgroup uint* b = tg_publish(inc, red, parity, sg, lane, 31);
  uint before = 0;
  total = 0;
  for (uint i = 0; i < kSampleSimdgroups; ++i) {
    if (i < sg) before += b[i];
    total += b[i];
  }
  return before + inc - v;
}

// Inclusive prefix of float v over threads in index order (fixed association: lane scan, then
// the simdgroup totals before this one in order).
inline float tg_scan_inclusive(float v, threadgroup uint* red, thread uint& parity, ushort sg, ushort lane) {
  const float inc = simd_scan_inclusive(v, lane);
  threadgroup uint* b = tg_publish(as_type<uint>(inc), red, parity, sg, lane, 31);
  float before = 0.f;
  for (uint i = 0; i < sg; ++i) before += as_type<float>(b[i]);
  return before + inc;
}

// Threshold of the `want` best items of the threadgroup (kSamplePerThread per thread) in the
// order key descending, id ascending; key 0 never counts. An item is selected iff
// sample_selected(key, id, tk, ti). Fewer than `want` valid items: all of them.
inline void select_top(thread const uint* key, thread const uint* id, uint want, threadgroup uint* red,
                       thread uint& parity, ushort sg, ushort lane, thread uint& tk, thread uint& ti) {
  uint c = 0;
  for (uint j = 0; j < kSamplePerThread; ++j) c += key[j] != 0u ? 1u : 0u;
  tk = 1u;
  ti = 0xFFFFFFFFu;
  if (tg_sum(c, red, parity, sg, lane) <= want) return;
  uint t = 0;  // largest t with count(key >= t) >= want: the want-th largest key
  for (int bit = 31; bit >= 0; --bit) {
    const uint cand = t | (1u << uint(bit));
    c = 0;
    for (uint j = 0; j < kSamplePerThread; ++j) c += key[j] >= cand ? 1u : 0u;
    if (tg_sum(c, red, parity, sg, lane) >= want) t = cand;
  }
  c = 0;  // counts above and at t, packed (each <= kSampleChunk < 2^16)
  for (uint j = 0; j < kSamplePerThread; ++j) c += key[j] > t ? 0x10000u : (key[j] == t ? 1u : 0u);
  const uint both = tg_sum(c, red, parity, sg, lane);
  const uint need = want - (both >> 16);  // 1 .. ties at t
  tk = t;
  if ((both & 0xFFFFu) == need) return;
  uint l = 0;  // largest l with count(key == t, id < l) < need: the need-th smallest tied id
  for (int bit = kSampleIdBits - 1; bit >= 0; --bit) {
    const uint cand = l | (1u << uint(bit));
    c = 0;
    for (uint j = 0; j < kSamplePerThread; ++j) c += key[j] == t && id[j] < cand ? 1u : 0u;
    if (tg_sum(c, red, parity, sg, lane) < need) l = cand;
  }
  ti = l;
}

inline bool sample_selected(uint key, uint id, uint tk, uint ti) {
  return key != 0u && (key > tk || (key == tk && id <= ti));
}

// Sorts kSampleThreads (key, id) slots of threadgroup memory into key descending, id ascending
// (bitonic network, thread t owns slot t). Callers place a barrier before; one ends each step.
inline void sort_slots(threadgroup uint* key, threadgroup uint* id, uint t) {
  for (uint size = 2; size <= kSampleThreads; size <<= 1) {
    for (uint stride = size >> 1; stride > 0; stride >>= 1) {
      const uint o = t ^ stride;
      if (o > t) {
        const uint ka = key[t], ia = id[t], kb = key[o], ib = id[o];
        const bool b_first = kb > ka || (kb == ka && ib < ia);
        if (b_first == ((t & size) == 0u)) {  // ascending blocks put the first item low
          key[t] = kb;
          id[t] = ib;
          key[o] = ka;
          id[o] = ia;
        }
      }
      threadgroup_barrier(mem_flags::mem_threadgroup);
    }
  }
}

// The row's largest key from the chunk maxima (every thread reads them all: G <= 32 words).
inline uint sample_row_max(device const uint* scratch, uint g) {
  uint m = 0;
  for (uint c = 0; c < g; ++c) m = max(m, scratch[c]);
  return m;
}

// ---------------------------------------------------------------------------------------------
// argmax_partial: grid (G). Chunk c's first index of its largest logit -> scratch[c], [G + c].

template <typename T>
[[kernel]] void argmax_partial(device const T* logits [[buffer(0)]], device uint* scratch [[buffer(1)]],
                               constant SampleArgs& a [[buffer(3)]], uint c [[threadgroup_position_in_grid]],
                               uint t [[thread_index_in_threadgroup]], ushort sg [[simdgroup_index_in_threadgroup]],
                               ushort lane [[thread_index_in_simdgroup]]) {
  threadgroup uint tg_k[kSampleSimdgroups];
  threadgroup uint tg_i[kSampleSimdgroups];
  const uint g = sample_chunks(a.n);
  uint bk = 0, bi = kSampleNoToken;
  for (uint j = 0; j < kSamplePerThread; ++j) {  // ascending ids: strict > keeps the first
    const uint i = c * kSampleChunk + j * kSampleThreads + t;
    if (i >= a.n) break;
    const uint k = sample_key(float(logits[i]));
    if (k > bk) {
      bk = k;
      bi = i;
    }
  }
  for (ushort d = 16; d > 0; d >>= 1) {  // butterfly: every lane ends with the simdgroup's best
    const uint ok = simd_shuffle_xor(bk, d), oi = simd_shuffle_xor(bi, d);
    if (ok > bk || (ok == bk && oi < bi)) {
      bk = ok;
      bi = oi;
    }
  }
  if (lane == 0) {
    tg_k[sg] = bk;
    tg_i[sg] = bi;
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (t == 0) {
    for (uint s = 1; s < kSampleSimdgroups; ++s)
      if (tg_k[s] > bk || (tg_k[s] == bk && tg_i[s] < bi)) {
        bk = tg_k[s];
        bi = tg_i[s];
      }
    scratch[c] = bk;
    scratch[g + c] = bi;
  }
}

// argmax_final: grid (1). The first index of the row's largest logit, or kSampleNoToken when every
// logit is -inf or NaN (the CPU sampler raises for all -inf).
template <typename T>
[[kernel]] void argmax_final(device const uint* scratch [[buffer(1)]], device uint* result [[buffer(2)]],
                             constant SampleArgs& a [[buffer(3)]], uint t [[thread_index_in_threadgroup]],
                             ushort sg [[simdgroup_index_in_threadgroup]], ushort lane [[thread_index_in_simdgroup]]) {
  threadgroup uint tg_k[kSampleSimdgroups];
  threadgroup uint tg_i[kSampleSimdgroups];
  const uint g = sample_chunks(a.n);
  uint bk = 0, bi = kSampleNoToken;
  for (uint c = t; c < g; c += kSampleThreads) {
    const uint k = scratch[c], i = scratch[g + c];
    if (k > bk || (k == bk && i < bi)) {
      bk = k;
      bi = i;
    }
  }
  for (ushort d = 16; d > 0; d >>= 1) {
    const uint ok = simd_shuffle_xor(bk, d), oi = simd_shuffle_xor(bi, d);
    if (ok > bk || (ok == bk && oi < bi)) {
      bk = ok;
      bi = oi;
    }
  }
  if (lane == 0) {
    tg_k[sg] = bk;
    tg_i[sg] = bi;
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (t == 0) {
    for (uint s = 1; s < kSampleSimdgroups; ++s)
      if (tg_k[s] > bk || (tg_k[s] == bk && tg_i[s] < bi)) {
        bk = tg_k[s];
        bi = tg_i[s];
      }
    result[0] = bk > kSampleKeyNegInf ? bi : uint(kSampleNoToken);
  }
}

// ---------------------------------------------------------------------------------------------
// sample_partial: grid (G). Chunk maximum -> scratch[c]; top-k / nucleus modes: the chunk's kc
// best candidates (key, id) -> scratch[2G + c*K ...], [2G + G*K + c*K ...].

template <typename T>
[[kernel]] void sample_partial(device const T* logits [[buffer(0)]], device uint* scratch [[buffer(1)]],
                               constant SampleArgs& a [[buffer(3)]], uint c [[threadgroup_position_in_grid]],
                               uint t [[thread_index_in_threadgroup]], ushort sg [[simdgroup_index_in_threadgroup]],
                               ushort lane [[thread_index_in_simdgroup]]) {
  threadgroup uint red[2 * kSampleSimdgroups];
  uint parity = 0;
  const uint g = sample_chunks(a.n);
  uint key[kSamplePerThread], id[kSamplePerThread];
  uint mk = 0;
  for (uint j = 0; j < kSamplePerThread; ++j) {
    const uint i = c * kSampleChunk + j * kSampleThreads + t;
    key[j] = i < a.n ? sample_key(float(logits[i])) : 0u;
    id[j] = i;
    mk = max(mk, key[j]);
  }
  mk = tg_max(mk, red, parity, sg, lane);
  if (t == 0) scratch[c] = mk;
  const uint kc = sample_candidates(a);
  if (kc == 0) return;
  uint tk, ti;
  select_top(key, id, kc, red, parity, sg, lane, tk, ti);
  uint mine = 0;
  for (uint j = 0; j < kSamplePerThread; ++j) mine += sample_selected(key[j], id[j], tk, ti) ? 1u : 0u;
  uint total;
  uint at = tg_scan_exclusive(mine, red, parity, sg, lane, total);
  device uint* ck = scratch + 2 * g + c * kSampleMaxTopK;
  device uint* ci = scratch + 2 * g + g * kSampleMaxTopK + c * kSampleMaxTopK;
  for (uint j = 0; j < kSamplePerThread; ++j)
    if (sample_selected(key[j], id[j], tk, ti)) {
      ck[at] = key[j];
      ci[at] = id[j];
      ++at;
    }
  for (uint s = total + t; s < kc; s += kSampleThreads) {
    ck[s] = 0u;
    ci[s] = kSampleNoToken;
  }
}

// sample_sums: grid (G), after sample_partial, only when sample_needs_sums. Chunk c's mass
// sum(p) -> scratch[G + c] (float bits); full mode counts only p >= min_p (min_p runs before the
// draw there), nucleus mode every token (top_p's total).
template <typename T>
[[kernel]] void sample_sums(device const T* logits [[buffer(0)]], device uint* scratch [[buffer(1)]],
                            constant SampleArgs& a [[buffer(3)]], uint c [[threadgroup_position_in_grid]],
                            uint t [[thread_index_in_threadgroup]], ushort sg [[simdgroup_index_in_threadgroup]],
                            ushort lane [[thread_index_in_simdgroup]]) {
  threadgroup float part[kSampleSimdgroups];
  const uint g = sample_chunks(a.n);
  const uint mk = sample_row_max(scratch, g);
  const float mx = sample_logit(mk);
  const bool usable = mk > kSampleKeyNegInf && mk < kSampleKeyPosInf;  // uniform
  const float min_p = sample_mode(a) == kSampleModeFull ? a.min_p : 0.f;
  float s = 0.f;
  for (uint j = 0; usable && j < kSamplePerThread; ++j) {
    const uint i = c * kSampleChunk + j * kSampleThreads + t;
    if (i >= a.n) break;
    const float p = sample_prob(sample_key(float(logits[i])), mx, a.inv_temp);
    if (p >= min_p) s += p;
  }
  s = simd_sum(s);
  if (lane == 0) part[sg] = s;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (t == 0) {
    float total = 0.f;
    for (uint i = 0; i < kSampleSimdgroups; ++i) total += part[i];
    scratch[g + c] = as_type<uint>(total);
  }
}

// sample_final, full mode: the chunk where u * total falls, then the token inside it (thread t
// scans the chunk's logits t * kSamplePerThread ... in id order after an exclusive scan of the
// per-thread masses).
template <typename T>
inline uint sample_final_full(device const T* logits, device const uint* scratch, constant SampleArgs& a, float mx,
                              threadgroup uint* red, thread uint& parity, uint t, ushort sg, ushort lane) {
  const uint g = sample_chunks(a.n);
  float total = 0.f;
  for (uint c = 0; c < g; ++c) total += as_type<float>(scratch[g + c]);
  const float us = a.u * total;
  uint hit_c = g, last_c = 0;
  float base = 0.f, cum = 0.f;
  for (uint c = 0; c < g; ++c) {
    const float s = as_type<float>(scratch[g + c]);
    if (s > 0.f) last_c = c;
    const float next = cum + s;
    if (hit_c == g && us < next) {
      hit_c = c;
      base = cum;
    }
    cum = next;
  }
  const bool past_end = hit_c == g;  // rounding left u * total past every running sum
  const uint c = past_end ? last_c : hit_c;
  const uint i0 = c * kSampleChunk + t * kSamplePerThread;
  float p[kSamplePerThread];
  float mine = 0.f;
  for (uint j = 0; j < kSamplePerThread; ++j) {
    const uint i = i0 + j;
    const float pj = i < a.n ? sample_prob(sample_key(float(logits[i])), mx, a.inv_temp) : 0.f;
    p[j] = pj >= a.min_p ? pj : 0.f;
    mine += p[j];
  }
  float run = base + (tg_scan_inclusive(mine, red, parity, sg, lane) - mine);
  uint hit = kSampleNoToken, last = 0;  // last: 1 + the last index with p > 0
  for (uint j = 0; j < kSamplePerThread; ++j) {
    if (p[j] <= 0.f) continue;
    run += p[j];
    if (!past_end && hit == kSampleNoToken && us < run) hit = i0 + j;
    last = i0 + j + 1;
  }
  hit = tg_min(hit, red, parity, sg, lane);
  last = tg_max(last, red, parity, sg, lane);
  return hit != kSampleNoToken ? hit : last - 1;
}

// sample_final: grid (1), after sample_partial (and sample_sums). The drawn token -> result[0].
template <typename T>
[[kernel]] void sample_final(device const T* logits [[buffer(0)]], device const uint* scratch [[buffer(1)]],
                             device uint* result [[buffer(2)]], constant SampleArgs& a [[buffer(3)]],
                             uint t [[thread_index_in_threadgroup]], ushort sg [[simdgroup_index_in_threadgroup]],
                             ushort lane [[thread_index_in_simdgroup]]) {
  threadgroup uint red[2 * kSampleSimdgroups];
  threadgroup uint slot_k[kSampleThreads];
  threadgroup uint slot_i[kSampleThreads];
  threadgroup float kept_mass[1];
  uint parity = 0;
  const uint mode = sample_mode(a);
  const uint g = sample_chunks(a.n);
  if (a.n == 0) {
    if (t == 0) result[0] = kSampleNoToken;
    return;
  }
  if (a.n > kSampleMaxVocab || (mode == kSampleModeTopK && a.top_k > kSampleMaxTopK)) {
    if (t == 0) result[0] = kSampleFallback;
    return;
  }
  const uint mk = sample_row_max(scratch, g);
  if (mk <= kSampleKeyNegInf || mk >= kSampleKeyPosInf) {
    if (t == 0) result[0] = kSampleNoToken;
    return;
  }
  const float mx = sample_logit(mk);
  if (mode == kSampleModeFull) {
    const uint tok = sample_final_full(logits, scratch, a, mx, red, parity, t, sg, lane);
    if (t == 0) result[0] = tok;
    return;
  }
  // Candidates: the best kc of the G chunk lists (item t + j * kSampleThreads of the
  // concatenation), compacted into slots 0 .. count-1 in thread order.
  const uint kc = sample_candidates(a);
  uint key[kSamplePerThread], id[kSamplePerThread];
  for (uint j = 0; j < kSamplePerThread; ++j) {
    const uint item = j * kSampleThreads + t, c = item / kc, pos = item - c * kc;
    key[j] = c < g ? scratch[2 * g + c * kSampleMaxTopK + pos] : 0u;
    id[j] = c < g ? scratch[2 * g + g * kSampleMaxTopK + c * kSampleMaxTopK + pos] : uint(kSampleNoToken);
  }
  uint tk, ti;
  select_top(key, id, kc, red, parity, sg, lane, tk, ti);
  slot_k[t] = 0u;
  slot_i[t] = kSampleNoToken;
  uint mine = 0;
  for (uint j = 0; j < kSamplePerThread; ++j) mine += sample_selected(key[j], id[j], tk, ti) ? 1u : 0u;
  uint count;
  uint at = tg_scan_exclusive(mine, red, parity, sg, lane, count);  // its barrier orders the clears
  for (uint j = 0; j < kSamplePerThread; ++j)
    if (sample_selected(key[j], id[j], tk, ti)) {
      slot_k[at] = key[j];
      slot_i[at] = id[j];
      ++at;
    }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  // Draw order: probability (top_p active) or logit descending, ties by lowest id.
  const uint m = mode == kSampleModeTopK ? a.top_k : a.n;  // the CPU's candidate count
  const bool top_p = a.top_p < 1.f && m > 1;
  const uint own_i = slot_i[t];
  const float own_p = own_i != kSampleNoToken ? sample_prob(slot_k[t], mx, a.inv_temp) : 0.f;
  if (top_p) slot_k[t] = as_type<uint>(own_p);  // p >= +0: float order = bit order
  threadgroup_barrier(mem_flags::mem_threadgroup);
  sort_slots(slot_k, slot_i, t);
  const float p = top_p ? as_type<float>(slot_k[t]) : sample_prob(slot_k[t], mx, a.inv_temp);  // 0 when empty
  uint keep = count;  // slots 0 .. keep-1 stay candidates
  if (top_p) {
    const float cum = tg_scan_inclusive(p, red, parity, sg, lane);
    float total = 0.f;
    if (mode == kSampleModeNucleus)
      for (uint c = 0; c < g; ++c) total += as_type<float>(scratch[g + c]);
    else
      total = as_type<float>(tg_max(t == kSampleThreads - 1 ? as_type<uint>(cum) : 0u, red, parity, sg, lane));
    const float target = a.top_p * total;
    const uint cut = tg_min(cum >= target ? t : uint(kSampleNoToken), red, parity, sg, lane);
    if (mode == kSampleModeNucleus && count < a.n) {  // exact only if the cut beats every outsider
      const float q = as_type<float>(tg_max(t == count - 1 ? as_type<uint>(p) : 0u, red, parity, sg, lane));
      const float p_cut = as_type<float>(tg_max(t == cut ? as_type<uint>(p) : 0u, red, parity, sg, lane));
      if (cut == kSampleNoToken || !(p_cut > q)) {
        if (t == 0) result[0] = kSampleFallback;
        return;
      }
    }
    if (cut != kSampleNoToken) keep = cut + 1;
  }
  // min_p, then the inverse CDF over the kept slots in order.
  const float pk = t < keep && p >= a.min_p ? p : 0.f;
  const float cum = tg_scan_inclusive(pk, red, parity, sg, lane);
  if (t == keep - 1) kept_mass[0] = cum;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  const float us = a.u * kept_mass[0];
  uint hit = tg_min(pk > 0.f && us < cum ? t : uint(kSampleNoToken), red, parity, sg, lane);
  if (hit == kSampleNoToken) hit = tg_max(pk > 0.f ? t : 0u, red, parity, sg, lane);
  if (t == 0) result[0] = slot_i[hit];
}

}  // namespace metallic
