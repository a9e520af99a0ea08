// Helpers shared by the engine's translation units (engine.cpp, engine_kv.cpp, engine_batch.cpp).
#pragma once

#include <atomic>
#include <cstdint>

#include "core/device.h"
#include "core/error.h"

namespace metallic::detail {

// RAII guard: one call at a time per engine; a concurrent caller gets Busy, not corrupt output.
class BusyGuard {
 public:
  explicit BusyGuard(std::atomic<bool>& flag) : flag_(flag) {
    bool expected = false;
    if (!flag_.compare_exchange_strong(expected, true, std::memory_order_acq_rel))
      fail(ErrorCode::kBusy, "engine", "another call is running on this model; use one model per thread");
  }
  ~BusyGuard() { flag_.store(false, std::memory_order_release); }
  BusyGuard(const BusyGuard&) = delete;
  BusyGuard& operator=(const BusyGuard&) = delete;

 private:
  std::atomic<bool>& flag_;
};

using metallic::row_view;

}  // namespace metallic::detail
