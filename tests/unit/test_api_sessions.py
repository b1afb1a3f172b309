"""Browser sessions and tickets (markd.api.sessions): lifetimes, bounds, single use, and what is
kept of them (digests only)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from markd.api import sessions
from markd.api.sessions import (
    MAX_SESSIONS,
    RECENTLY_USED_S,
    SESSION_ROUTES,
    TICKET_ROUTES,
    SessionsFull,
    SessionStore,
    cookie_header,
    session_cookies,
    session_routes,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sessions_last_their_lifetime_unused_and_no_longer() -> None:
    clock = Clock()
    store = SessionStore(3600, clock=clock)
    opened = store.open()

    clock.now += 3599
    assert store.expires_in(store.find([opened.session]) or b"") == 3600  # used: moved on
    clock.now += 3599
    assert store.session_valid([opened.session])
    clock.now += 3600
    assert not store.session_valid([opened.session])
    assert store.sessions == 0


def test_a_ticket_works_once_and_only_within_its_time() -> None:
    clock = Clock()
    store = SessionStore(3600, ticket_s=30, clock=clock)
    used, late = store.open(), store.open()

    assert store.use_ticket(used.ticket)
    assert not store.use_ticket(used.ticket)
    clock.now += 30
    assert not store.use_ticket(late.ticket)
    assert not store.use_ticket(used.session)  # a session's value is no ticket
    assert not store.session_valid([late.ticket])  # nor a ticket a session


def test_sessions_are_bounded_the_least_recently_used_goes() -> None:
    store = SessionStore(3600, clock=Clock())
    first, second = store.open(), store.open()
    assert store.session_valid([first.session])  # used: now the most recent
    for _ in range(MAX_SESSIONS - 1):
        store.open()

    assert store.sessions == MAX_SESSIONS
    assert store.session_valid([first.session])
    assert not store.session_valid([second.session])


def test_revoked_sessions_end_and_others_stay() -> None:
    store = SessionStore(3600, clock=Clock())
    ended, kept = store.open(), store.open()

    assert store.revoke(["nonsense", ended.session])
    assert not store.revoke([ended.session])
    assert not store.session_valid([ended.session])
    assert store.session_valid(["x" * 43, kept.session])


def test_only_digests_are_kept_and_values_are_256_bits() -> None:
    store = SessionStore(3600, clock=Clock())
    opened = store.open()
    kept = repr(vars(store))

    assert len(opened.session) == len(opened.ticket) == 43  # 32 bytes in base64url
    assert opened.session != opened.ticket
    assert opened.session not in kept and opened.ticket not in kept
    assert opened.session not in repr(opened) and opened.ticket not in repr(opened)


def test_cookie_header_and_parsing() -> None:
    header = cookie_header("abc")

    # No Max-Age: the browser keeps the cookie while it runs, markd ends an unused session.
    assert header == "markd_session=abc; HttpOnly; SameSite=Strict; Path=/v1"
    assert cookie_header("", 0).endswith("; Max-Age=0")
    assert "Secure" not in header
    assert session_cookies({"cookie": 'a=1; markd_session=one;markd_session="two"'}) == [
        "one",
        "two",
    ]
    assert session_cookies({"cookie": "markd_sessionx=1; xmarkd_session=2"}) == []
    assert session_cookies({}) == []


def test_a_cookie_opens_a_screens_routes_and_a_ticket_the_event_stream_or_its_exchange() -> None:
    # A ticket opens one event stream, or is exchanged once for a session (the customer
    # screen's page turning its launcher's ticket into its cookie).
    assert TICKET_ROUTES == {("GET", "/v1/events"), ("POST", "/v1/session")}
    assert ("POST", "/v1/session") not in SESSION_ROUTES  # a cookie cannot prolong itself
    assert ("GET", "/v1/receipts/{id}") in SESSION_ROUTES  # the outcome after a restart
    assert ("POST", "/v1/check") not in SESSION_ROUTES
    assert ("POST", "/v1/receipt/items") not in SESSION_ROUTES
    assert ("GET", "/v1/events") in SESSION_ROUTES
    # A cookie closes a receipt (paid, with no payment taken) only for a demonstration.
    assert ("POST", "/v1/receipt/close") not in session_routes(demo_pay=False)
    assert ("POST", "/v1/receipt/close") in session_routes(demo_pay=True)


def test_every_end_of_a_session_is_reported() -> None:
    clock = Clock()
    ended: list[bytes] = []
    store = SessionStore(60, max_sessions=2, clock=clock, on_end=ended.append)
    revoked, pushed_out = store.open(), store.open()
    assert store.revoke([revoked.session]) and len(ended) == 1
    expiring = [store.open(), store.open()]  # the second one too many: pushed_out goes
    assert len(ended) == 2 and not store.session_valid([pushed_out.session])
    clock.now += 60
    store.expire()

    assert len(ended) == 4 and len(set(ended)) == 4
    assert store.sessions == 0
    assert not store.session_valid([opened.session for opened in expiring])


@pytest.fixture
def boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A boot id file of the test's own: its content is the boot the store sees."""
    path = tmp_path / "boot_id"
    path.write_text("0f1e2d3c-boot-one\n")
    monkeypatch.setattr(sessions, "BOOT_ID_PATH", path)
    return path


def test_sessions_outlive_a_restart_of_markd_through_their_file(tmp_path: Path, boot: Path) -> None:
    clock = Clock()
    path = tmp_path / "api-sessions"
    before = SessionStore(3600, clock=clock, path=path)
    kept, revoked = before.open(), before.open()
    before.revoke([revoked.session])

    clock.now += 60
    after = SessionStore(3600, clock=clock, path=path)  # the next run of markd, same boot

    assert after.sessions == 1  # the kept one
    assert not after.session_valid([revoked.session])
    assert not after.use_ticket(kept.ticket)  # tickets are not kept: one use, 30 s
    assert SessionStore(3600, clock=clock, path=path).session_valid([kept.session])
    clock.now += 3540
    assert after.sessions == 0  # unused, it ends as it would have before the restart
    text = path.read_text()
    assert kept.session not in text and kept.ticket not in text  # digests only
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_sessions_of_another_boot_or_a_broken_file_are_not_read(tmp_path: Path, boot: Path) -> None:
    clock = Clock()
    path = tmp_path / "api-sessions"
    opened = SessionStore(3600, clock=clock, path=path).open()
    boot.write_text("4b5a6978-boot-two\n")  # rebooted: the monotonic clock started again

    assert not SessionStore(3600, clock=clock, path=path).session_valid([opened.session])
    for broken in ("", "[]", '{"boot": "4b5a6978-boot-two", "sessions": {"zz": 1}}'):
        path.write_text(broken)
        assert SessionStore(3600, clock=clock, path=path).sessions == 0
    boot.unlink()
    path.write_text(json.dumps({"boot": None, "sessions": {}}))
    assert SessionStore(3600, clock=clock, path=path).sessions == 0


def test_a_sessions_file_that_cannot_be_written_leaves_them_in_memory(tmp_path: Path) -> None:
    store = SessionStore(3600, clock=Clock(), path=tmp_path / "missing" / "api-sessions")
    opened = store.open()

    assert store.session_valid([opened.session])
    assert not (tmp_path / "missing").exists()


def test_a_session_in_use_lasts_and_one_left_unused_for_its_hours_ends() -> None:
    """Each use moves the session's end on (the reference screen used every day must not go
    dark every ``session_hours``); unused for that long, it ends."""
    clock = Clock()
    store = SessionStore(3600, clock=clock)
    used, idle = store.open(), store.open()
    for _ in range(30):  # a day and more, a request every 50 minutes
        clock.now += 3000
        assert store.session_valid([used.session])
    assert not store.session_valid([idle.session])

    digest = store.find([used.session])
    assert digest is not None
    for _ in range(30):  # a screen showing the till: its event stream keeps it alive
        clock.now += 3000
        assert store.keep_alive(digest)
    clock.now += 3600
    assert not store.keep_alive(digest)
    assert not store.session_valid([used.session])


def test_a_sessions_moved_end_is_written_at_most_once_a_minute(tmp_path: Path, boot: Path) -> None:
    clock = Clock()
    path = tmp_path / "api-sessions"
    store = SessionStore(3600, clock=clock, path=path)
    opened = store.open()
    written = path.read_text()
    clock.now += 30
    assert store.session_valid([opened.session])
    unchanged = path.read_text()
    clock.now += 31
    assert store.session_valid([opened.session])  # 61 s after the last write: written
    moved = path.read_text()

    clock.now += 3599
    after = SessionStore(3600, clock=clock, path=path)  # a restart, the same boot

    assert unchanged == written and moved != written
    assert after.session_valid([opened.session])  # the end as of its last written use


def test_a_tickets_session_comes_without_a_ticket() -> None:
    store = SessionStore(3600, clock=Clock())
    opened = store.open(with_ticket=False)

    assert opened.ticket is None
    assert store.session_valid([opened.session])
    assert "ticket" not in repr(opened).replace("ticket_s", "")


def test_a_ticket_cannot_push_out_a_session_in_use_the_token_can() -> None:
    clock = Clock()
    ended: list[bytes] = []
    store = SessionStore(36_000, clock=clock, on_end=ended.append)
    screens = [store.open(with_ticket=False) for _ in range(MAX_SESSIONS)]
    for screen in screens:
        assert store.session_valid([screen.session])

    with pytest.raises(SessionsFull):
        store.open(with_ticket=False)
    assert ended == [] and store.sessions == MAX_SESSIONS
    launcher = store.open()  # the token: the least recently used goes
    assert len(ended) == 1 and not store.session_valid([screens[0].session])

    # One left unused for RECENTLY_USED_S may go for a ticket's session too; the launcher's
    # session, never used, goes first.
    clock.now += RECENTLY_USED_S
    for screen in screens[2:]:
        assert store.session_valid([screen.session])
    page = store.open(with_ticket=False)
    assert not store.session_valid([launcher.session])
    assert store.session_valid([page.session])
    other = store.open(with_ticket=False)
    assert not store.session_valid([screens[1].session])
    assert store.session_valid([other.session])
    with pytest.raises(SessionsFull):
        store.open(with_ticket=False)


def test_the_sessions_file_is_written_anew_never_through_a_file_left_in_its_place(
    tmp_path: Path, boot: Path
) -> None:
    """A temporary file a kill left (or a link put there) is replaced, never written
    through: the sessions file is created with O_EXCL | O_NOFOLLOW."""
    path = tmp_path / "api-sessions"
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    temporary = tmp_path / f".api-sessions.{os.getpid()}"
    temporary.symlink_to(victim)

    opened = SessionStore(3600, clock=Clock(), path=path).open()

    assert victim.read_text() == "keep me"
    assert SessionStore(3600, clock=Clock(), path=path).session_valid([opened.session])
    assert not temporary.exists() and not temporary.is_symlink()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_sessions_read_back_after_a_restart_are_not_taken_for_never_used(
    tmp_path: Path, boot: Path
) -> None:
    """After a restart, screens in use have not reconnected yet: a ticket's session may not
    push one of them out as if it had never been used."""
    clock = Clock()
    path = tmp_path / "api-sessions"
    before = SessionStore(36_000, clock=clock, path=path)
    screens = [before.open(with_ticket=False) for _ in range(MAX_SESSIONS)]
    for screen in screens:
        assert before.session_valid([screen.session])

    clock.now += 5
    after = SessionStore(36_000, clock=clock, path=path)

    assert after.sessions == MAX_SESSIONS
    with pytest.raises(SessionsFull):
        after.open(with_ticket=False)
    assert all(after.session_valid([screen.session]) for screen in screens)
