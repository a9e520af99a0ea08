// The engine's KV bookkeeping: per-slot sliding-window rings, prompt-cache rows (read_kv /
// write_kv, slot 0) and prefix copies between slots (copy_seq).
#include <algorithm>
#include <cstring>

#include "model/engine.h"
#include "model/engine_internal.h"

namespace metallic {

using detail::BusyGuard;

Tensor Engine::kv_view(const Layer& L, const Tensor& cache, int32_t slot) const {
  Tensor v = cache;
  v.offset += static_cast<size_t>(slot) * L.kv_seq_bytes;
  return v;
}

void Engine::check_slot(int32_t slot, const char* where) const {
  if (slot < 0 || slot >= n_seq_)
    fail(ErrorCode::kInvalidArgument, where,
         "slot: expected 0.." + std::to_string(n_seq_ - 1) + " (n_seq " + std::to_string(n_seq_) + "), got " +
             std::to_string(slot));
}

// A windowed layer's slot holds positions [lo, end); positions [s, e) written now overwrite the
// rows of [s - kv_cap, e - kv_cap) (a ring; nothing when kv_cap is the context). Written out of
// sequence (never by the Python API, which reuses only what kv_reusable allows), only the new
// rows count.
void Engine::note_rows_written(Layer& L, int32_t slot, int64_t s, int64_t e) {
  Layer::Ring& r = L.rings[static_cast<size_t>(slot)];
  if (s == 0 || s < r.lo || s > r.end) r.lo = s;
  r.lo = std::max(r.lo, e - L.kv_cap);
  r.end = e;
}

int64_t Engine::kv_rows(const Layer& L, int64_t n) const { return L.window > 0 ? std::min<int64_t>(n, L.window) : n; }

bool Engine::kv_reusable(int64_t n, int32_t slot) const {
  check_open("engine.kv_reusable");
  check_slot(slot, "engine.kv_reusable");
  if (n < 0 || n > ctx_) return false;
  for (const Layer& L : layers_) {
    if (L.window == 0 || n == 0) continue;                        // a global layer: every position has its own row
    const int64_t need = std::max<int64_t>(0, n - L.window + 1);  // the next query's window
    const Layer::Ring& r = L.rings[static_cast<size_t>(slot)];
    if (n > r.end || need < r.lo) return false;
  }
  return true;
}

size_t Engine::kv_bytes(int64_t n) const {
  const size_t row = row_bytes(kv_dtype_, cfg_.head_dim);
  size_t total = 0;
  for (const Layer& L : layers_) total += 2 * static_cast<size_t>(cfg_.n_head_kv * kv_rows(L, n)) * row;
  return total;
}

// Slot `slot` of every layer still holds the rows of positions [n - kv_rows, n) (a ring may have
// overwritten them); else InvalidArgument naming the layer.
void Engine::check_rows_held(int64_t n, int32_t slot, const char* where) const {
  for (size_t i = 0; i < layers_.size(); ++i) {
    const Layer& L = layers_[i];
    const Layer::Ring& r = L.rings[static_cast<size_t>(slot)];
    const int64_t first = n - kv_rows(L, n);
    check(L.window == 0 || n == 0 || (first >= r.lo && n <= r.end), ErrorCode::kInvalidArgument, where,
          "layer " + std::to_string(i) + ": positions " + std::to_string(first) + ".." + std::to_string(n - 1) +
              " are no longer in its sliding-window ring (it holds " + std::to_string(r.lo) + ".." +
              std::to_string(r.end - 1) + ")");
  }
}

// Calls f(tensor, byte offset, byte length) for the runs of rows that hold positions
// [n - kv_rows, n) of `slot`, per layer, K then V, per KV head, in position order (a ring's rows in
// at most two contiguous runs).
template <typename F>
void Engine::for_kv_runs(int64_t n, int32_t slot, F&& f) const {
  for (const Layer& L : layers_) {
    const int64_t first = n - kv_rows(L, n);
    for (const Tensor* t : {&L.k_cache, &L.v_cache})
      for (int64_t h = 0; h < cfg_.n_head_kv; ++h)
        for (int64_t p = first; p < n;) {
          const int64_t r = p % L.kv_cap;
          const int64_t run = std::min(n - p, L.kv_cap - r);
          const size_t off = t->offset + static_cast<size_t>(slot) * L.kv_seq_bytes +
                             static_cast<size_t>(h * L.kv_cap + r) * t->row_stride;
          f(*t, off, static_cast<size_t>(run) * t->row_stride);
          p += run;
        }
  }
}

void Engine::set_rings(int64_t n, int32_t slot) {
  for (Layer& L : layers_) {
    Layer::Ring& r = L.rings[static_cast<size_t>(slot)];
    r.lo = n - kv_rows(L, n);
    r.end = n;
  }
}

void Engine::copy_kv(int64_t n, void* dst, const void* src, size_t nbytes, const char* where) {
  check_open(where);
  BusyGuard guard(busy_);
  check(n >= 0 && n <= ctx_, ErrorCode::kInvalidArgument, where,
        "n_tokens: expected 0.." + std::to_string(ctx_) + ", got " + std::to_string(n));
  check(nbytes == kv_bytes(n), ErrorCode::kShapeMismatch, where,
        "buffer: expected " + std::to_string(kv_bytes(n)) + " bytes for " + std::to_string(n) + " tokens, got " +
            std::to_string(nbytes));
  if (dst != nullptr) {
    check_rows_held(n, 0, where);
    device_->synchronize();
  }
  size_t at = 0;
  for_kv_runs(n, 0, [&](const Tensor& t, size_t off, size_t len) {
    if (dst != nullptr) {
      device_->copy_out(t.buf, off, static_cast<uint8_t*>(dst) + at, len);
    } else {
      device_->copy_in(t.buf, off, static_cast<const uint8_t*>(src) + at, len);
    }
    at += len;
  });
  if (src != nullptr) set_rings(n, 0);
}

void Engine::read_kv(int64_t n, void* dst, size_t nbytes) { copy_kv(n, dst, nullptr, nbytes, "engine.read_kv"); }

void Engine::write_kv(int64_t n, const void* src, size_t nbytes) {
  copy_kv(n, nullptr, src, nbytes, "engine.write_kv");
}

void Engine::copy_seq(int32_t src, int32_t dst, int64_t n) {
  const char* where = "engine.copy_seq";
  check_open(where);
  BusyGuard guard(busy_);
  check_slot(src, where);
  check_slot(dst, where);
  check(n >= 0 && n <= ctx_, ErrorCode::kInvalidArgument, where,
        "n_tokens: expected 0.." + std::to_string(ctx_) + ", got " + std::to_string(n));
  if (src == dst) return;
  check_rows_held(n, src, where);
  device_->synchronize();
  // Slots of one layer share a buffer at fixed distances: the same run, moved by the slot offset.
  const int64_t shift = static_cast<int64_t>(dst) - static_cast<int64_t>(src);
  for_kv_runs(n, src, [&](const Tensor& t, size_t off, size_t len) {
    // The slot-0 tensor spans one slot: its rows * row_stride is the layer's kv_seq_bytes.
    const size_t seq_bytes = static_cast<size_t>(t.rows) * t.row_stride;
    const size_t to = static_cast<size_t>(static_cast<int64_t>(off) + shift * static_cast<int64_t>(seq_bytes));
    std::memmove(static_cast<uint8_t*>(t.buf.host) + to, static_cast<const uint8_t*>(t.buf.host) + off, len);
  });
  set_rings(n, dst);
}

}  // namespace metallic
