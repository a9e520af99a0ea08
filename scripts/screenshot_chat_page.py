"""Screenshot of the chat page for the README: a two-turn conversation with a real model.

Starts ``metallic.server`` on the model (a registry name such as ``smollm2``, a GGUF file or an
HF folder), opens ``/`` in headless Chromium (Debian's ``chromium`` driven by playwright: no
browser download; ``scripts/install_chromium.sh``), chats with greedy decoding and writes a PNG
(1200x800 by default), then passes it through ``optipng`` when that is installed.

    PYTHONPATH=src python3 scripts/screenshot_chat_page.py --model smollm2 \
        --out docs/images/chat-page.png
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import serve_bench as sb  # noqa: E402  (ServerProcess, free_port)

TURNS = ("What is the capital of Germany?", "What is it famous for?")
IDLE = "document.body.dataset.state === 'idle'"


class ScreenshotError(RuntimeError):
    """The page or the server did not get to the screenshot; the message says where."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2", help="registry name, GGUF file or HF folder")
    p.add_argument("--out", type=Path, default=ROOT / "docs/images/chat-page.png")
    p.add_argument("--width", type=int, default=1200)
    p.add_argument("--height", type=int, default=800)
    p.add_argument("--max-tokens", type=int, default=96, help="per reply (96)")
    p.add_argument("--threads", "-t", type=int, default=2)
    p.add_argument("--turn", action="append", help="a user message (repeatable; two by default)")
    p.add_argument("--chromium", default=os.environ.get("METALLIC_CHROMIUM") or "chromium")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per step (120)")
    return p.parse_args(argv)


def chat(base: str, args: argparse.Namespace, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(
                viewport={"width": args.width, "height": args.height},
                device_scale_factor=1,
                color_scheme="light",
            )
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
            page.goto(base + "/")
            page.fill("#temperature", "0")
            page.fill("#max-tokens", str(args.max_tokens))
            page.wait_for_function("document.getElementById('model-name').textContent !== ''")
            for text in args.turn or TURNS:
                page.fill("#prompt", text)
                page.click("#send")
                page.wait_for_function(IDLE, timeout=args.timeout * 1000)
                shown = page.text_content("#error")
                if shown:
                    raise ScreenshotError(f"[screenshot] turn {text!r}: the page shows {shown!r}")
            page.evaluate("() => document.activeElement && document.activeElement.blur()")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
        finally:
            browser.close()
    if errors:
        raise ScreenshotError(f"[screenshot] browser console: expected no errors, got {errors}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chromium = shutil.which(args.chromium)
    if chromium is None:
        raise ScreenshotError(f"[screenshot] --chromium: no executable {args.chromium!r}")
    port = sb.free_port("127.0.0.1")
    cmd = [
        sys.executable, "-m", "metallic.server", "--model", args.model, "--port", str(port),
        "--parallel", "1", "-t", str(args.threads), "-c", "2048", "--drain-timeout", "5",
    ]  # fmt: skip
    with sb.ServerProcess("screenshot", cmd, stop_timeout=15.0) as server:
        base = f"http://127.0.0.1:{port}"
        server.wait_ready(base + "/health", timeout=args.timeout)
        chat(base, args, chromium)
    if shutil.which("optipng"):
        subprocess.run(["optipng", "-quiet", "-o5", str(args.out)], check=True)
    print(f"{args.out}: {args.width}x{args.height}, {args.out.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
