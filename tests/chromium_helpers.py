"""Headless Chromium for the browser tests, driven over the DevTools protocol.

Debian 12's ``chromium`` (``apt-get install chromium``) is started with
``--remote-debugging-port=0``; it writes the port it chose to ``DevToolsActivePort`` in its
profile, and its page target takes protocol commands as JSON over a WebSocket
(https://chromedevtools.github.io/devtools-protocol/: ``Page.navigate``, ``Runtime.evaluate``,
``Page.captureScreenshot``). No WebDriver and no extra Python package: wsproto, which markd
depends on anyway, frames the WebSocket. As root, Chromium needs ``--no-sandbox``.

Waiting is on the page's own state (``wait_for`` evaluates an expression until it holds, within
a bounded time), never on a fixed sleep.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Request, TextMessage

from conftest import required_tool

#: The window (and so the screenshots): a kiosk's landscape screen.
WINDOW = (1280, 800)
#: Seconds Chromium has to start and open its DevTools port.
START_TIMEOUT_S = 30.0


def artefacts_directory() -> Path:
    """Where the tests leave screenshots: ``$MARKD_ARTEFACTS/browser``, else
    ``build/artefacts/browser`` in the source tree."""
    base = os.environ.get("MARKD_ARTEFACTS") or str(
        Path(__file__).resolve().parents[1] / "build" / "artefacts"
    )
    path = Path(base) / "browser"
    path.mkdir(parents=True, exist_ok=True)
    return path


class DevToolsSocket:
    """One WebSocket to a DevTools target: a command, then its answer (events are skipped)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.next_id = 0
        self._text: list[str] = []
        self._messages: list[str] = []
        self.sock.sendall(self.ws.send(Request(host=parts.netloc, target=parts.path)))
        while not self._read_until(lambda event: isinstance(event, AcceptConnection)):
            pass

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 10) -> Any:
        self.next_id += 1
        ident = self.next_id
        message = json.dumps({"id": ident, "method": method, "params": params or {}})
        self.sock.sendall(self.ws.send(TextMessage(data=message)))
        deadline = time.monotonic() + timeout
        while True:
            while self._messages:
                answer = json.loads(self._messages.pop(0))
                if answer.get("id") == ident:
                    if "error" in answer:
                        raise RuntimeError(f"{method}: {answer['error']}")
                    return answer.get("result", {})
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            if time.monotonic() > deadline:
                raise TimeoutError(f"{method}: no answer within {timeout} s")
            self._read_until(lambda event: False)

    def _read_until(self, wanted: Any) -> bool:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("DevTools closed the connection")
        self.ws.receive_data(data)
        found = False
        for event in self.ws.events():
            if isinstance(event, TextMessage):
                self._text.append(event.data)
                if event.message_finished:
                    self._messages.append("".join(self._text))
                    self._text.clear()
            elif isinstance(event, Ping):
                self.sock.sendall(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                raise ConnectionError("DevTools closed the WebSocket")
            found = found or wanted(event)
        return found

    def close(self) -> None:
        self.sock.close()


class Chromium:
    """A headless Chromium with one page. :meth:`close` ends it (its process group)."""

    def __init__(self, profile: Path) -> None:
        binary = required_tool("chromium", "chromium")
        profile.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",  # as root
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--force-device-scale-factor=1",
                f"--window-size={WINDOW[0]},{WINDOW[1]}",
                f"--user-data-dir={profile}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its helpers go with it (close())
        )
        try:
            port = self._devtools_port(profile / "DevToolsActivePort")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
                targets = json.loads(answer.read())
            page = next(t for t in targets if t["type"] == "page")
            self.devtools = DevToolsSocket(page["webSocketDebuggerUrl"])
            self.devtools.call("Page.enable")
            # The viewport exactly WINDOW (the window's own frame takes some of --window-size).
            self.devtools.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False},
            )
        except BaseException:
            self.close()
            raise

    def _devtools_port(self, path: Path) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"chromium exited with {self.process.returncode} at start")
            try:
                lines = path.read_text().splitlines()
            except FileNotFoundError:
                lines = []
            if len(lines) >= 2:
                return int(lines[0])
            time.sleep(0.05)  # the file appears once the port is open; nothing to wait on
        pytest.fail(f"chromium did not open its DevTools port within {START_TIMEOUT_S} s")

    def open(self, url: str) -> None:
        """Load ``url`` afresh, without the cookies of an earlier test."""
        self.devtools.call("Network.clearBrowserCookies")
        self.devtools.call("Page.navigate", {"url": "about:blank"})
        self.devtools.call("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> Any:
        result = self.devtools.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float, what: str = "") -> float:
        """Until ``expression`` is truthy in the page; the seconds it took. Fails after
        ``timeout`` seconds with what the screen shows."""
        started = time.monotonic()
        while True:
            try:
                if self.evaluate(expression):
                    return time.monotonic() - started
            except RuntimeError:
                pass  # the page is loading: its elements are not there yet
            if time.monotonic() - started > timeout:
                pytest.fail(
                    f"timed out after {timeout} s waiting for {what or expression}; "
                    f"the screen shows {self.screen()}"
                )
            time.sleep(0.02)  # between two looks at the page

    def wait_for_state(self, state: str, timeout: float = 10.0) -> float:
        """Until the screen's ``body[data-state]`` is ``state``."""
        return self.wait_for(
            f"document.body && document.body.dataset.state === {json.dumps(state)}",
            timeout,
            f"state {state}",
        )

    def screen(self) -> dict[str, Any]:
        """What the customer sees: the state, the big text, the receipt's lines (``name |
        price``) and total, whether it says it is reconnecting, and all its text."""
        try:
            return self.evaluate(
                """({
                state: document.body.dataset.state,
                headline: document.getElementById("headline").textContent,
                detail: document.getElementById("detail").textContent,
                lines: document.getElementById("receipt").hidden ? [] :
                    [...document.querySelectorAll("#lines li")].map(
                        li => [...li.children].map(part => part.textContent).join(" | ")),
                total: document.getElementById("receipt").hidden ? null :
                    document.getElementById("total").textContent,
                reconnecting: !document.getElementById("connection").hidden,
                text: document.body.innerText,
            })"""
            )
        except RuntimeError as exc:
            return {"error": str(exc)}

    def click(self, selector: str) -> None:
        self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")

    def screenshot(self, name: str) -> Path:
        """A PNG of the window in the artefacts directory."""
        data = self.devtools.call("Page.captureScreenshot", {"format": "png"})["data"]
        path = artefacts_directory() / name
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        if getattr(self, "devtools", None) is not None:
            self.devtools.close()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
