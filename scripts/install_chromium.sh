#!/usr/bin/env bash
# Installs Debian's chromium, the headless browser tests/python/test_server_page.py drives (through
# playwright's executable_path: playwright never downloads a browser of its own here) and
# scripts/screenshot_chat_page.py uses. Idempotent: does nothing when `chromium` is on PATH.
# Non-interactive (no stdin needed); needs root or sudo (CI runs as root).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  echo "chromium already installed: $(command -v chromium) ($(chromium --version 2>/dev/null | head -1))"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq </dev/null
$SUDO apt-get install -y -qq chromium </dev/null >/dev/null
command -v chromium >/dev/null || { echo "[install_chromium] chromium missing after apt-get install" >&2; exit 1; }
echo "installed $(chromium --version 2>/dev/null | head -1): $(command -v chromium)"
