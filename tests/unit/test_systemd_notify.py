"""systemd integration: sd_notify with and without libsystemd, and the event log."""

from __future__ import annotations

import gc
import io
import logging
import os
import socket
import sys
import traceback
import types
from pathlib import Path
from typing import Any

import pytest

import markd.systemd as sd
from markd.checks.verdict import Verdict
from markd.service.listeners import journal_verdict
from markd.systemd import MESSAGE_IDS, EventLog, journal_stream_matches, notify, notify_via_socket


def test_notify_sends_ready_to_notify_socket(
    notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert notify("READY=1", "STATUS=ready") is True
    assert sock.recv(4096).decode().split("\n") == ["READY=1", "STATUS=ready"]


def test_notify_without_libsystemd_uses_the_socket_fallback(
    notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = notify_socket
    monkeypatch.setattr(sd, "_sd_daemon", None)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert notify("STOPPING=1") is True
    assert sock.recv(4096) == b"STOPPING=1"


def test_fallback_speaks_abstract_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"markd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify_via_socket("READY=1") is True
        assert sock.recv(4096) == b"READY=1"


@pytest.mark.parametrize("use_libsystemd", [True, False])
def test_notify_off_systemd_returns_false(
    use_libsystemd: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not use_libsystemd:
        monkeypatch.setattr(sd, "_sd_daemon", None)
    assert notify("READY=1") is False


def test_fallback_returns_false_when_nobody_listens(tmp_path: Path) -> None:
    assert notify_via_socket("READY=1", str(tmp_path / "gone.sock")) is False
    assert notify_via_socket("READY=1", "vsock:2:1234") is False


# --------------------------------------------------------------------------------------------
# EventLog


class FakeJournal:
    """Records what would be sent to journald (systemd.journal.send's keyword interface)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, **fields: Any) -> None:
        self.sent.append(fields)


VERDICT = Verdict(
    decision="deny",
    reason="blocked-locally",
    message_ru="Продажа запрещена: код в локальном стоп-листе",
    source="store",
    scanner="front",
    ki="0104670540176099215LpGKy",
    shape="gs1-93",
    repairs=("cyrillic-layout",),
    latency_ms=0.4321,
)


def test_journal_record_has_structured_fields_and_message_id() -> None:
    journal = FakeJournal()
    log = EventLog(target="journal", journal=journal)
    journal_verdict(log, VERDICT)
    (record,) = journal.sent
    assert record["MARKD_EVENT"] == "verdict"
    assert record["MESSAGE_ID"] == MESSAGE_IDS["verdict"]
    assert record["MARKD_KI"] == VERDICT.ki
    assert record["MARKD_DECISION"] == "deny"
    assert record["MARKD_REASON"] == "blocked-locally"
    assert record["MARKD_SCANNER"] == "front"
    assert record["MARKD_SOURCE"] == "store"
    assert record["MARKD_LATENCY_MS"] == "0.432"
    assert record["PRIORITY"] == "5"
    assert "blocked-locally" in record["MESSAGE"]


def test_message_ids_are_distinct_uuids() -> None:
    assert len(set(MESSAGE_IDS.values())) == len(MESSAGE_IDS)
    assert all(len(v) == 32 and int(v, 16) >= 0 for v in MESSAGE_IDS.values())


def test_stderr_line_is_one_line_per_event() -> None:
    stream = io.StringIO()
    journal_verdict(EventLog(target="stderr", stream=stream), VERDICT)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("verdict: deny 0104670540176099215LpGKy from front")
    assert "reason=blocked-locally" in lines[0] and "ki=0104670540176099215LpGKy" in lines[0]


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("plain", "plain"),
        (42, "42"),
        ("", '""'),
        ("two words", '"two words"'),
        (" lead", '" lead"'),
        ("trail\n", '"trail\\n"'),
        ("a\x1db", '"a\\u001db"'),  # GS is whitespace to str.isspace
        ("a\u00a0b", '"a\\u00a0b"'),  # no-break space
        ("a\u3000b", '"a\\u3000b"'),  # ideographic space
        ("a\u2028b", '"a\\u2028b"'),  # line separator: would split the line for a reader
        ("a\x85b", '"a\\u0085b"'),  # NEL, likewise
        ("a\x1cb", '"a\\u001cb"'),
        ("x\u202ey", '"x\\u202ey"'),  # right-to-left override: not whitespace, not printable
        ("a\x07b", '"a\\u0007b"'),
        ("a\x7fb", '"a\\u007fb"'),
        ("Вода газ", '"Вода газ"'),
        ('say "x"', '"say \\"x\\""'),
        ("Продажа", "Продажа"),
    ],
)
def test_stderr_line_quotes_a_value_with_whitespace_or_quotes(value: object, written: str) -> None:
    stream = io.StringIO()
    EventLog(target="stderr", stream=stream).event("verdict", "m", field=value)
    assert stream.getvalue() == f"verdict: m | field={written}\n"


def test_full_code_and_crypto_are_never_logged() -> None:
    journal, stream = FakeJournal(), io.StringIO()
    secret = "0104670540176099215LpGKy\x1d93dGVz"
    for log in (EventLog(target="journal", journal=journal), EventLog("stderr", stream=stream)):
        log.event("verdict", "x", km=secret, crypto={"93": "dGVz"}, ki="0104670540176099215LpGKy")
    assert "dGVz" not in stream.getvalue()
    assert all("dGVz" not in str(v) for record in journal.sent for v in record.values())
    assert journal.sent[0]["MARKD_KI"] == "0104670540176099215LpGKy"


def test_level_filters_less_important_events() -> None:
    stream = io.StringIO()
    log = EventLog(target="stderr", stream=stream, level="warning")
    log.event("scanner-present", "back", priority="info")
    log.event("scanner-absent", "gone", priority="warning")
    assert stream.getvalue().splitlines() == ["scanner-absent: gone"]


def test_unknown_event_kind_and_level_are_programming_errors() -> None:
    with pytest.raises(ValueError):
        EventLog(target="stderr", stream=io.StringIO()).event("no-such-kind", "x")
    with pytest.raises(ValueError):
        EventLog(level="loud")
    with pytest.raises(ValueError):
        EventLog(target="syslog")


def test_auto_target_uses_journal_only_when_stderr_is_the_journal_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        assert not journal_stream_matches(stream)
        assert EventLog("auto", stream=stream, journal=FakeJournal()).target == "stderr"
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert journal_stream_matches(stream)
        assert EventLog("auto", stream=stream, journal=FakeJournal()).target == "journal"
        # A redirected stderr (another inode) is not the journal.
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert EventLog("auto", stream=stream, journal=FakeJournal()).target == "stderr"
    assert EventLog("auto", stream=io.StringIO(), journal=FakeJournal()).target == "stderr"


def test_an_event_log_without_systemd_python_says_so_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Asked for the journal without the journal module, the event log writes lines and says
    once why its records lack their fields; with the module, it says nothing."""
    import io

    monkeypatch.setattr(sd, "_sd_journal", None)
    stream = io.StringIO()
    log = sd.EventLog("journal", stream=stream)
    log.event("service-stopping", "markd stopping")
    lines = stream.getvalue().splitlines()
    assert log.target == "stderr"
    assert sum("systemd-python is not importable" in line for line in lines) == 1
    assert any("markd stopping" in line for line in lines)

    quiet = io.StringIO()
    sd.EventLog("stderr", stream=quiet)
    assert quiet.getvalue() == ""


@pytest.mark.parametrize("table_size", [4096, 0])
def test_journal_fields_are_named_and_forbidden_ones_dropped(
    monkeypatch: pytest.MonkeyPatch, table_size: int
) -> None:
    # table_size 0: the table of worked-out names is full, each name is worked out anew.
    monkeypatch.setattr(sd, "_MAX_FIELD_KEYS", table_size)
    monkeypatch.setattr(sd, "_FIELD_KEYS", {})
    journal, stream = FakeJournal(), io.StringIO()
    for _ in range(2):  # the second time from the table, when it keeps names
        EventLog(target="journal", journal=journal).event(
            "verdict",
            "m",
            ki="0104670540176099215LpGKy",
            KM="secret",
            Raw="x",
            CODE="y",
            cRyPtO="z",
            till_pos=3,
        )
        EventLog(target="stderr", stream=stream).event("verdict", "m", Crypto="secret", ki="k")
    for record in journal.sent:
        assert record["MARKD_KI"] == "0104670540176099215LpGKy"
        assert record["MARKD_TILL_POS"] == "3"
        assert not {"MARKD_KM", "MARKD_RAW", "MARKD_CODE", "MARKD_CRYPTO"} & set(record)
        assert not {"secret", "x", "y", "z"} & set(record.values())
    assert stream.getvalue() == "verdict: m | ki=k\n" * 2
    # ki, KM, Raw, CODE, cRyPtO, till_pos; Crypto
    assert len(sd._FIELD_KEYS) == (7 if table_size else 0)


def test_a_journal_record_names_its_writer_without_walking_the_stack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    journal = pytest.importorskip("systemd.journal")
    sent: list[tuple[str, ...]] = []
    monkeypatch.setattr(journal, "sendv", lambda *lines: sent.append(lines))

    def no_walk(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the stack was walked for a journal record")

    monkeypatch.setattr(traceback, "extract_stack", no_walk)
    journal_verdict(EventLog(target="journal", journal=journal), VERDICT)
    (lines,) = sent
    assert "CODE_FUNC=journal_verdict" in lines
    assert any(line.startswith("CODE_FILE=") and "listeners.py" in line for line in lines)


def test_a_journal_record_leaves_no_frame_in_a_reference_cycle() -> None:
    log = EventLog(target="journal", journal=FakeJournal())
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds is kept in gc.garbage
    try:
        for _ in range(50):
            journal_verdict(log, VERDICT)
        gc.collect()
        assert not [o for o in gc.garbage if isinstance(o, types.FrameType)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


@pytest.mark.parametrize("passer", ["steps", "desk"])
def test_a_component_event_method_names_the_code_that_called_it(passer: str) -> None:
    """``SessionSteps.event`` and ``SaleDesk._event`` only hand an event on: the record's
    location is their caller's (here this test), not theirs."""
    from markd.fiscal.steps import SessionSteps
    from markd.sale import SaleDesk

    journal = FakeJournal()
    owner = types.SimpleNamespace(event_log=EventLog(target="journal", journal=journal))
    method = SessionSteps.event if passer == "steps" else SaleDesk._event
    method(owner, "verdict", "m", ki="k")
    line = sys._getframe().f_lineno - 1
    (record,) = journal.sent
    assert record["CODE_FILE"] == __file__
    assert record["CODE_LINE"] == line
    assert record["CODE_FUNC"] == "test_a_component_event_method_names_the_code_that_called_it"


def test_passers_are_skipped_however_deep_and_only_they() -> None:
    journal = FakeJournal()
    log = EventLog(target="journal", journal=journal)

    @sd.passes_events_on
    def inner(kind: str) -> None:
        log.event(kind, "m")

    @sd.passes_events_on
    def outer(kind: str) -> None:
        inner(kind)

    def not_a_passer() -> None:
        log.event("verdict", "m")

    outer("verdict")
    not_a_passer()
    first, second = journal.sent
    assert first["CODE_FUNC"] == "test_passers_are_skipped_however_deep_and_only_they"
    assert second["CODE_FUNC"] == "not_a_passer"


def test_a_passer_twin_from_another_file_is_not_one() -> None:
    # Code objects compare equal by content: the same source compiled under two file names
    # makes two equal ones, and only the one marked passes events on.
    source = "def relay(log):\n    log.event('verdict', 'm')\n"
    first: dict[str, Any] = {}
    second: dict[str, Any] = {}
    exec(compile(source, "first.py", "exec"), first)  # noqa: S102 - a fixed source
    exec(compile(source, "second.py", "exec"), second)  # noqa: S102 - a fixed source
    assert first["relay"].__code__ == second["relay"].__code__
    sd.passes_events_on(first["relay"])
    journal = FakeJournal()
    second["relay"](EventLog(target="journal", journal=journal))
    (record,) = journal.sent
    assert (record["CODE_FILE"], record["CODE_FUNC"]) == ("second.py", "relay")


def test_a_logging_record_reaches_the_journal_with_its_own_location() -> None:
    journal = FakeJournal()
    logger = logging.getLogger("markd.test-bridge")
    bridge = sd.LogBridge(EventLog(target="journal", journal=journal))
    logger.addHandler(bridge)
    try:
        logger.warning("a CDN host is quarantined")
        line = sys._getframe().f_lineno - 1
    finally:
        logger.removeHandler(bridge)
    (record,) = journal.sent
    assert record["CODE_FILE"] == __file__
    assert record["CODE_LINE"] == line
    assert record["CODE_FUNC"] == "test_a_logging_record_reaches_the_journal_with_its_own_location"
    assert record["MARKD_LOGGER"] == "markd.test-bridge"
