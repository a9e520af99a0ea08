// Ctrl-C during a native call: while the GIL is released, Python's own SIGINT handler only sets a
// flag that is looked at when control returns to Python, i.e. after the whole prefill. This guard
// installs, for the duration of one engine call, a SIGINT handler that asks the engine to cancel
// (an atomic store, async-signal-safe) and then chains to the previous handler, so Python still
// sees the KeyboardInterrupt. The engine stops at its next layer boundary with Cancelled.
// Invariants: at most one guard is active in the process (a second concurrent call runs without
// one); the previous sigaction is restored on every exit path.
#pragma once

#include <signal.h>

#include <atomic>

#include "model/engine.h"

namespace metallic::bindings {

class SigintCancel {
 public:
  explicit SigintCancel(Engine& engine) {
    Engine* expected = nullptr;
    if (!target().compare_exchange_strong(expected, &engine)) return;  // another call owns it
    struct sigaction sa{};
    sa.sa_handler = &SigintCancel::on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    if (sigaction(SIGINT, &sa, &previous()) != 0) {
      target().store(nullptr);
      return;
    }
    active_ = true;
  }
  ~SigintCancel() {
    if (!active_) return;
    sigaction(SIGINT, &previous(), nullptr);
    target().store(nullptr);
  }
  SigintCancel(const SigintCancel&) = delete;
  SigintCancel& operator=(const SigintCancel&) = delete;

 private:
  static std::atomic<Engine*>& target() {
    static std::atomic<Engine*> t{nullptr};
    return t;
  }
  static struct sigaction& previous() {
    static struct sigaction p{};
    return p;
  }
  static void on_sigint(int sig) {
    if (Engine* e = target().load()) e->cancel();
    const struct sigaction& p = previous();
    if ((p.sa_flags & SA_SIGINFO) != 0) {
      if (p.sa_sigaction != nullptr) p.sa_sigaction(sig, nullptr, nullptr);
    } else if (p.sa_handler != SIG_DFL && p.sa_handler != SIG_IGN && p.sa_handler != nullptr) {
      p.sa_handler(sig);
    }
  }

  bool active_ = false;
};

}  // namespace metallic::bindings
