"""The customer screen (``/screen/``) in a real browser: headless Chromium against the real
``markd`` process in kiosk mode — a scanner on a pty, the virtual ККТ on disk, the emulated
check services, the TCP listener with a token — opened the way a kiosk's launcher opens it
(``POST /v1/session`` with the token, then ``/screen/#ticket=…``).

Screenshots go to ``$MARKD_ARTEFACTS/browser`` (else ``build/artefacts/browser``); two of them
are docs/images/screen-sale.png and screen-refusal.png."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from chromium_helpers import Chromium
from conftest import DAIRY, DAIRY_KI, WATER, PtyPair
from markd import config as config_module
from markd.store import Store
from process_helpers import LineReader, markd_command, with_test_hooks
from sale_helpers import kkt, write_sale_config

#: Seconds a scan may take to show on the screen (issue 18: "within 1 s").
SCAN_SHOWN_S = 1.0


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    chromium = Chromium(tmp_path_factory.mktemp("chromium") / "profile")
    try:
        yield chromium
    finally:
        chromium.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Kiosk:
    """A kiosk's markd: its directory, config, TCP port and token; :meth:`start` runs it."""

    directory: Path
    config: Path
    port: int
    token: str
    scanner: PtyPair
    notify: tuple[socket.socket, str]
    process: subprocess.Popen[str] | None = None
    stderr: LineReader | None = None

    def start(self, kill_at: str | None = None) -> None:
        env = {**os.environ, "NOTIFY_SOCKET": self.notify[1]}
        env.pop("JOURNAL_STREAM", None)
        if kill_at is not None:
            env = with_test_hooks({**env, "MARKD_FISCAL_KILL_AT": kill_at})
        self.process = subprocess.Popen(
            [*markd_command(), "--config", str(self.config)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr = LineReader(self.process.stderr)
        lines: list[str] = []
        while "READY=1" not in lines:
            lines += self.notify[0].recv(4096).decode().split("\n")
        self.stderr.wait_for("scanner-present", timeout=20)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def scan(self, code: str) -> None:
        self.scanner.write(code.encode() + b"\r")

    def ticket(self, token: str | None = None) -> str | None:
        """What the launcher does: the token exchanged for a ticket (None: refused)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(
                "POST", "/v1/session", headers={"Authorization": f"Bearer {token or self.token}"}
            )
            answer = connection.getresponse()
            body = json.loads(answer.read())
        finally:
            connection.close()
        return body["ticket"] if answer.status == 201 else None

    def url(self, ticket: str | None) -> str:
        fragment = "" if ticket is None else f"#ticket={ticket}"
        return f"http://127.0.0.1:{self.port}/screen/{fragment}"


@pytest.fixture
def kiosk(
    tmp_path: Path, pty_pair: PtyPair, notify_socket: tuple[socket.socket, str]
) -> Iterator[Kiosk]:
    token = secrets.token_urlsafe(24)
    (tmp_path / "api-token").write_text(token + "\n")
    (tmp_path / "api-token").chmod(0o600)
    port = free_port()
    config = write_sale_config(
        tmp_path,
        mode="kiosk",
        scanners={"front": f"serial://{pty_pair.path}?baudrate=9600&terminator=cr"},
    )
    text = config.read_text(encoding="utf-8").replace(
        "[api]\n",
        f'[api]\nlisten = "127.0.0.1:{port}"\ntoken_file = "{tmp_path / "api-token"}"\n'
        # The «Оплатить» button stands in for a payment terminal here: a demonstration.
        "screen = true\nscreen_demo_pay = true\n",
        1,
    )
    config.write_text(text, encoding="utf-8")
    kiosk = Kiosk(tmp_path, config, port, token, pty_pair, notify_socket)
    try:
        yield kiosk
    finally:
        if kiosk.process is not None and kiosk.process.poll() is None:
            kiosk.process.kill()
            kiosk.process.wait()


def test_a_scan_shows_the_item_within_a_second_and_the_closed_receipt_its_total(
    kiosk: Kiosk, browser: Chromium
) -> None:
    kiosk.start()
    try:
        browser.open(kiosk.url(kiosk.ticket()))
        browser.wait_for_state("idle")
        assert browser.screen()["headline"] == "Отсканируйте товар"

        kiosk.scan(WATER)
        took = browser.wait_for_state("item", timeout=SCAN_SHOWN_S)
        kiosk.scan(DAIRY)
        took = max(took, browser.wait_for("document.querySelectorAll('#lines li').length == 2", 1))
        screen = browser.screen()
        print(f"a scan shows on the screen within {took * 1000:.0f} ms")
        assert took <= SCAN_SHOWN_S
        assert (screen["headline"], screen["detail"]) == ("Кефир 1 л", "99,00\u00a0₽")
        assert screen["lines"] == ["Вода питьевая 0,5 л | 89,90\u00a0₽", "Кефир 1 л | 99,00\u00a0₽"]
        assert screen["total"] == "188,90\u00a0₽"
        browser.screenshot("screen-sale.png")

        browser.click("#pay")
        browser.wait_for_state("printed")
        screen = browser.screen()
        browser.screenshot("screen-printed.png")
    finally:
        kiosk.stop()
    assert screen["headline"] == "Чек напечатан"
    assert "Итого 188,90\u00a0₽" in screen["detail"]
    (document,) = kkt(kiosk.directory).receipts()
    assert document["total"] == 18890


def test_without_the_demo_setting_the_screen_shows_no_pay_button(
    kiosk: Kiosk, browser: Chromium
) -> None:
    """A real kiosk takes the payment elsewhere: without ``[api] screen_demo_pay`` the page
    offers no «Оплатить», which would register the receipt as paid with no payment taken."""
    kiosk.config.write_text(
        kiosk.config.read_text(encoding="utf-8").replace("screen_demo_pay = true\n", ""),
        encoding="utf-8",
    )
    kiosk.start()
    try:
        browser.open(kiosk.url(kiosk.ticket()))
        browser.wait_for_state("idle")
        kiosk.scan(WATER)
        browser.wait_for_state("item", timeout=SCAN_SHOWN_S)
        browser.wait_for("document.querySelectorAll('#lines li').length == 1", 1)
        hidden = browser.wait_for("document.getElementById('pay').hidden === true", 1)
    finally:
        kiosk.stop()
    assert hidden is not None
    assert kkt(kiosk.directory).receipts() == []


def test_a_blocked_unit_shows_the_reason_from_its_verdict(kiosk: Kiosk, browser: Chromium) -> None:
    with Store.from_config(config_module.load(kiosk.config).store) as store:
        store.block(DAIRY_KI, "recalled batch", source="head office")
    kiosk.start()
    try:
        browser.open(kiosk.url(kiosk.ticket()))
        browser.wait_for_state("idle")
        kiosk.scan(WATER)
        browser.wait_for_state("item", timeout=SCAN_SHOWN_S)
        kiosk.scan(DAIRY)
        browser.wait_for_state("refused", timeout=SCAN_SHOWN_S)
        screen = browser.screen()
        browser.screenshot("screen-refusal.png")
    finally:
        kiosk.stop()
    assert screen["headline"] == "Продажа запрещена: код в локальном стоп-листе"
    # The refused unit is not on the receipt; the water still is.
    assert screen["lines"] == ["Вода питьевая 0,5 л | 89,90\u00a0₽"]


def test_a_printer_without_paper_shows_the_problem_and_asks_for_staff(
    kiosk: Kiosk, browser: Chromium
) -> None:
    kiosk.start()
    try:
        browser.open(kiosk.url(kiosk.ticket()))
        browser.wait_for_state("idle")
        kkt(kiosk.directory).set_faults(paper_out=True)
        kiosk.scan(WATER)
        browser.wait_for_state("printer", timeout=5)
        screen = browser.screen()
        browser.screenshot("screen-paper-out.png")
    finally:
        kiosk.stop()
    assert "бумага" in screen["headline"]
    assert screen["detail"] == "Обратитесь к сотруднику"
    assert screen["lines"] == []


@pytest.mark.parametrize("ticket", ["wrong-token", "missing", "made-up"])
def test_a_wrong_or_missing_token_shows_an_error_not_data(
    kiosk: Kiosk, browser: Chromium, ticket: str
) -> None:
    kiosk.start()
    try:
        kiosk.scan(WATER)  # a receipt with a unit: data the page must not show
        kiosk.stderr.wait_for("sale-unit:", timeout=20)  # type: ignore[union-attr]
        given = {
            "wrong-token": kiosk.ticket(token="not-the-token"),  # the launcher is refused: none
            "missing": None,
            "made-up": secrets.token_urlsafe(32),
        }[ticket]
        assert given is None or ticket == "made-up"
        browser.open(kiosk.url(given))
        browser.wait_for_state("denied")
        screen = browser.screen()
        browser.screenshot(f"screen-denied-{ticket}.png")
    finally:
        kiosk.stop()
    assert screen["headline"] == "Экран не подключён к кассе"
    assert screen["lines"] == [] and screen["total"] is None
    assert "Вода" not in screen["text"] and "89,90" not in screen["text"]


@pytest.mark.parametrize(
    ("kill_at", "state", "headline"),
    [
        # The close journaled, the ККТ not asked yet: the restart registers it.
        ("closing", "printed", "Чек напечатан"),
        # Nothing paid yet: the restart cancels the receipt.
        ("close-asked", "not-printed", "Чек не напечатан"),
    ],
    ids=["registered", "cancelled"],
)
def test_markd_killed_during_the_close_the_page_reconnects_and_shows_the_true_outcome(
    kiosk: Kiosk, browser: Chromium, kill_at: str, state: str, headline: str
) -> None:
    kiosk.start(kill_at=kill_at)
    try:
        browser.open(kiosk.url(kiosk.ticket()))
        browser.wait_for_state("idle")
        kiosk.scan(WATER)
        browser.wait_for_state("item", timeout=SCAN_SHOWN_S)
        browser.click("#pay")
        assert kiosk.process is not None
        assert kiosk.process.wait(timeout=20) == -signal.SIGKILL
        browser.wait_for("!document.getElementById('connection').hidden", 5, "reconnecting")

        kiosk.start()
        browser.wait_for_state(state, timeout=15)
        screen = browser.screen()
        browser.screenshot(f"screen-after-restart-{kill_at}.png")
    finally:
        kiosk.stop()
    assert screen["headline"] == headline
    assert not screen["reconnecting"]
    documents = kkt(kiosk.directory).receipts()
    if state == "printed":
        assert "Итого 89,90\u00a0₽" in screen["detail"]
        assert [d["total"] for d in documents] == [8990]  # once, not twice
    else:
        assert documents == []
        assert screen["detail"] == "Покупка отменена. Обратитесь к сотруднику"
