"""A real headless Chromium driven over the DevTools protocol (aiohttp's websocket client, no other package):
open a page at a window size, wait for what it shows, read it, click, take screenshots."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest

HEADLESS = [  # headless, quiet: no sandbox (containers), no GPU, nothing fetched from the network by itself
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FLAGS = [*HEADLESS, "--hide-scrollbars", "--remote-debugging-port=0", "--remote-allow-origins=*"]


def chromium_exe() -> str:
    """The chromium binary; fails the test, saying how to install it, where there is none."""
    exe = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(exe).exists():
        pytest.fail("chromium is not installed: .ci/run installs Debian's package (apt-get install chromium)")
    return exe


class Chromium:
    """One browser process; `tab()` opens a page in it."""

    def __init__(self, profile: Path):
        self.proc = subprocess.Popen(
            [chromium_exe(), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file, deadline = profile / "DevToolsActivePort", time.time() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            assert time.time() < deadline and self.proc.poll() is None, "chromium did not open its DevTools port"
            time.sleep(0.05)
        self.port = int(port_file.read_text().split()[0])

    def new_target(self) -> str:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.loads(r.read())["webSocketDebuggerUrl"]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Tab:
    """One page over one websocket; use inside `async with Tab(browser) as tab`."""

    def __init__(self, browser: Chromium):
        self.url, self.ids = browser.new_target(), itertools.count(1)

    async def __aenter__(self) -> Tab:
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(self.url, max_msg_size=0)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.ws.close()
        await self.session.close()

    async def send(self, method: str, **params) -> dict:
        number = next(self.ids)
        await self.ws.send_str(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads((await self.ws.receive(timeout=30)).data)
            if message.get("id") == number:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def open(self, url: str, width: int, height: int, mobile: bool = False) -> None:
        await self.send(
            "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=mobile
        )
        await self.send("Page.navigate", url=url)

    async def js(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def until(self, expression: str, what: str, seconds: float = 20.0):
        """Polls until the expression is truthy; its value."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                value = await self.js(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            assert time.monotonic() < deadline, f"the page never showed {what}"
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path, full: bool = False) -> bytes:
        params = {"format": "png", "captureBeyondViewport": full}
        if full:
            size = await self.js("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params["clip"] = {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}
        data = base64.b64decode((await self.send("Page.captureScreenshot", **params))["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data
