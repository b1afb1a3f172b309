"""The online check behind a shop's HTTP proxy (domain.md §3.8), over real sockets.

The CDN emulator (list service + hosts) sits behind :class:`HttpProxy`, a real forward proxy
on loopback; ``no_proxy`` is emptied so that loopback targets go through it, as the CDN's
hosts would on a till. HTTPS targets use the emulator's self-signed certificate, trusted
through ``SSL_CERT_FILE`` exactly as a system CA would be (hostname checked), so the TLS inside
the ``CONNECT`` tunnel is the real one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import WATER, WATER_KI
from markd.checks.chain import ChainSettings, CheckChain
from markd.checks.local_module import LocalModuleClient
from markd.checks.online import ApiKeyAuth, OnlineClient, OnlineOptions
from markd.checks.results import SourceAnswer, SourceFailure
from markd.codes import parse
from markd.emulators.crpt_cdn import CrptCdn
from markd.emulators.http_proxy import HttpProxy
from markd.emulators.testing import EmulatorPool
from markd.proxy import ProxySettings
from markd.secrets import Secret
from markd.store import Store

TOKEN = "0f5b2c7e-1111-4222-8333-944445555666"
FN = "7380440700000001"
CODE = parse(WATER)
USER, PASSWORD = "kiosk7", "s3cr:et-pass"
QUIET = OnlineOptions(background_maintenance=False)


@pytest.fixture
def pool() -> Iterator[EmulatorPool]:
    with EmulatorPool() as emulators:
        yield emulators


@pytest.fixture
def proxy() -> Iterator[HttpProxy]:
    with HttpProxy(credentials=(USER, PASSWORD)) as server:
        yield server


def settings(proxy: HttpProxy, *, credentials: str | None = f"{USER}:{PASSWORD}") -> ProxySettings:
    secret = None if credentials is None else Secret(credentials, "test")
    parsed = ProxySettings.parse(proxy.url, no_proxy=[], credentials=secret)
    assert parsed is not None
    return parsed


def client_for(
    cdn: CrptCdn, proxy: ProxySettings | None, *, hosts_file: Path | None = None
) -> OnlineClient:
    return OnlineClient(
        cdn.url,
        auth=ApiKeyAuth(Secret(TOKEN, "test")),
        fn_serial=FN,
        options=QUIET,
        proxy=proxy,
        hosts_file=hosts_file,
    )


def trust(cdn: CrptCdn, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust every server's self-signed certificate as a system CA would be trusted."""
    paths = [s.certificate_path for s in cdn.servers]
    assert all(p is not None for p in paths)
    bundle = paths[0].parent / "bundle.pem"  # type: ignore[union-attr]
    bundle.write_text("".join(p.read_text() for p in paths))  # type: ignore[union-attr]
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))


def budget(ms: float) -> float:
    return time.monotonic() + ms / 1000


async def test_plain_http_cdn_through_the_proxy(pool: EmulatorPool, proxy: HttpProxy) -> None:
    cdn = pool.crpt_cdn({"cdn": {"token": TOKEN}})
    cdn.set_code(WATER_KI, sold=True)
    client = client_for(cdn, settings(proxy))
    answer = await client.check(CODE, budget(1500))
    second = await client.check(CODE, budget(1500))
    await client.aclose()
    assert isinstance(answer, SourceAnswer) and answer.facts.sold is True, answer
    assert isinstance(second, SourceAnswer)
    # Every request went through the proxy, in absolute form, with the credentials.
    targets = [(r.method, r.target.split("/api/v4/true-api/")[1]) for r in proxy.requests]
    assert targets == [("GET", "cdn/info"), ("POST", "codes/check"), ("POST", "codes/check")]
    assert all(r.authorization_ok and r.outcome == "forwarded" for r in proxy.requests)
    assert cdn.host.last("codes/check").api_key == TOKEN
    assert cdn.host.last("codes/check").header("Proxy-Authorization") is None  # not passed on
    status = client.status()
    assert status["proxy"] is not None and PASSWORD not in json.dumps(status)


async def test_https_cdn_through_a_connect_tunnel(
    pool: EmulatorPool, proxy: HttpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    cdn = pool.crpt_cdn({"cdn": {"token": TOKEN}}, tls=True, hosts=2)
    trust(cdn, monkeypatch)
    client = client_for(cdn, settings(proxy))
    for _ in range(3):
        answer = await client.check(CODE, budget(1500))
        assert isinstance(answer, SourceAnswer), answer
    await client.aclose()
    tunnels = [r for r in proxy.requests if r.method == "CONNECT"]
    # One tunnel to the list service, one to the host the checks go to, kept alive.
    assert [r.target for r in tunnels] == [
        cdn.url.removeprefix("https://"),
        cdn.hosts[0].url.removeprefix("https://"),
    ]
    assert all(r.outcome == "tunnel" and r.authorization_ok for r in tunnels)
    assert cdn.hosts[0].count("codes/check") == 3


@pytest.mark.parametrize("credentials", [None, f"{USER}:wrong"])
async def test_refused_credentials_are_a_proxy_failure_not_a_host_failure(
    pool: EmulatorPool,
    proxy: HttpProxy,
    credentials: str | None,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    cdn = pool.crpt_cdn({"cdn": {"token": TOKEN}})
    kept = tmp_path / "cdn-hosts.json"
    good = client_for(cdn, settings(proxy), hosts_file=kept)
    assert await good.refresh_hosts(budget(1000))  # a list, so the check itself meets the 407
    await good.aclose()
    client = client_for(cdn, settings(proxy, credentials=credentials), hosts_file=kept)
    assert client.status()["hosts_from"] == "persisted"
    caplog.set_level(logging.WARNING, "markd.checks.online")
    for _ in range(3):
        failure = await client.check(CODE, budget(1000))
        assert isinstance(failure, SourceFailure), failure
        assert (failure.kind, failure.http_status) == ("proxy-auth", 407)
    await client.aclose()
    status = client.status()
    assert not any(h["quarantined"] for h in status["hosts"])  # the host is not to blame
    assert "407" in status["proxy_error"]
    notes = [r.getMessage() for r in caplog.records if "proxy" in r.getMessage()]
    assert len(notes) == 1  # once per new reason, not once per scan
    assert PASSWORD not in notes[0] and "wrong" not in notes[0]
    assert cdn.host.count("codes/check") == 0


async def test_proxy_down_fails_at_once_typed(pool: EmulatorPool) -> None:
    cdn = pool.crpt_cdn({"cdn": {"token": TOKEN}})
    proxy = HttpProxy()
    dead = settings(proxy, credentials=None)
    proxy.close()  # nothing listens there any more
    client = client_for(cdn, dead)
    started = time.monotonic()
    failure = await client.check(CODE, started + 1.5)
    await client.aclose()
    assert isinstance(failure, SourceFailure) and failure.kind == "proxy-unreachable", failure
    assert time.monotonic() - started < 0.3
    assert cdn.count() == 0


async def test_a_connect_the_proxy_cannot_carry_fails_over_and_quarantines_the_host(
    pool: EmulatorPool, proxy: HttpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    cdn = pool.crpt_cdn({"cdn": {"token": TOKEN}}, tls=True, hosts=2)
    trust(cdn, monkeypatch)
    client = client_for(cdn, settings(proxy))
    assert await client.refresh_hosts(budget(1000))
    proxy.connect_status = 502  # every CONNECT from now on: the proxy cannot reach the host
    failure = await client.check(CODE, budget(1000))
    await client.aclose()
    assert isinstance(failure, SourceFailure) and failure.kind == "proxy-error"
    assert failure.http_status == 502
    refused = [r for r in proxy.requests if r.outcome == "tunnel-refused"]
    # Both hosts tried (the proxy reached neither), then the one retry of §3.3 after every
    # host was marked.
    assert len(refused) == 3
    # The proxy works; those hosts do not (from here): quarantined as dead hosts are (the
    # marks cleared once for the retry, the retried host marked again).
    assert sorted(h["quarantined"] for h in client.status()["hosts"]) == [False, True]


async def test_the_chain_falls_back_to_the_local_module_within_the_budget(
    pool: EmulatorPool, proxy: HttpProxy, tmp_store: Store
) -> None:
    """Proxy refused or hanging: the Local Module (on loopback, never proxied by default)
    answers within the budget."""
    cdn = pool.crpt_cdn({"cdn": {"token": TOKEN}})
    lm = pool.local_module()
    lm_client = LocalModuleClient(
        lm.url, user="admin", password=Secret("admin", "test"), fn_serial=FN
    )
    chain_settings = ChainSettings(
        mode="direct", online_timeout_s=0.4, local_module_timeout_s=0.3, cache_verdicts=False
    )
    for fault in ("407", "hang", "down"):
        proxy.hang = fault == "hang"
        credentials = None if fault == "407" else f"{USER}:{PASSWORD}"
        routed = settings(proxy, credentials=credentials)
        if fault == "down":
            routed = ProxySettings.parse("http://127.0.0.1:1", no_proxy=[])
        online = client_for(cdn, routed)
        chain = CheckChain(tmp_store, chain_settings, online=online, local_module=lm_client)
        started = time.monotonic()
        verdict = await chain.decide(CODE, "proxy")
        took = time.monotonic() - started
        chain.close()
        await online.aclose()
        assert (verdict.decision, verdict.source) == ("allow", "lm"), (fault, verdict.reason)
        assert took <= 0.4 + 0.3 + 0.05, (fault, took)
        kinds = {f["kind"] for f in verdict.details.get("failures", [])}
        if fault == "407":
            assert kinds == {"proxy-auth"}
        if fault == "down":
            assert kinds == {"proxy-unreachable"}
    lm_client.close()
    assert lm.count("cis/outCheck") == 3
    assert all(r.method != "POST" or "outCheck" not in r.target for r in proxy.requests)


async def test_a_host_the_proxy_cannot_reach_is_failed_over_and_quarantined(
    pool: EmulatorPool, proxy: HttpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Squid answers CONNECT only once it reached the target: for a dead host it says nothing
    until the client gives up. That is the host's failure, not the proxy's: the next host is
    tried within the same check, the dead one is quarantined, and later checks go straight to
    the live one."""
    cdn = pool.crpt_cdn({"cdn": {"token": TOKEN}}, tls=True, hosts=2)
    trust(cdn, monkeypatch)
    dead, live = cdn.hosts
    client = client_for(cdn, settings(proxy))
    cdn.set_hosts([dead.url, live.url])  # listed first: asked first while unmeasured
    assert await client.refresh_hosts(budget(1000))
    proxy.unreachable_targets = {dead.url.removeprefix("https://")}
    started = time.monotonic()
    answer = await client.check(CODE, started + 1.5)
    assert isinstance(answer, SourceAnswer), answer
    assert time.monotonic() - started < 1.5
    rows = {h["url"]: h for h in client.status()["hosts"]}
    assert rows[dead.url]["quarantined"] and not rows[live.url]["quarantined"]
    started = time.monotonic()
    assert isinstance(await client.check(CODE, started + 1.5), SourceAnswer)
    assert time.monotonic() - started < 0.2  # straight to the live host
    # A health round through the proxy also marks it (no stale good figure keeps it first).
    await client.health_check(budget(3000))
    assert client.status()["hosts"][0]["url"] == live.url
    await client.aclose()
    assert live.count("codes/check") == 2 and dead.count("codes/check") == 0
