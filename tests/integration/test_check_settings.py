"""``[check] parallel`` and ``[check] cache_verdicts``: read from the configuration, refused
with the key named when wrong, and honoured by the chain the wiring builds from them (real
CDN and Local Module emulators on loopback, a real LMDB store)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import WATER, WATER_KI
from markd import config as config_module
from markd.codes import parse
from markd.config import Config
from markd.emulators.crpt_cdn import CrptCdn
from markd.emulators.local_module import LocalModuleEmulator
from markd.emulators.testing import EmulatorPool
from markd.errors import ConfigError
from markd.service.wiring import build_chain, chain_settings
from markd.store import Store

TOKEN = "3f2c8a1e-5b6d-4e7f-9a0b-1c2d3e4f5a6b"
#: How long the CDN host takes to answer a check in these tests.
CDN_LATENCY_MS = 300


@pytest.fixture
def services() -> Iterator[tuple[CrptCdn, LocalModuleEmulator]]:
    with EmulatorPool() as pool:
        yield pool.crpt_cdn({"cdn": {"token": TOKEN}}), pool.local_module()


def write_config(tmp_path: Path, check: str, cdn: str = "", lm: str = "") -> Path:
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "pw").write_text("admin\n")
    sections = f'[store]\npath = "{tmp_path / "store"}"\nmap_size_mb = 8\n\n[check]\n{check}\n'
    if cdn:
        sections += f'[check.online]\nurl = "{cdn}"\ntoken_file = "{tmp_path / "token"}"\n\n'
    if lm:
        sections += f'[check.local_module]\nurl = "{lm}"\npassword_file = "{tmp_path / "pw"}"\n'
    path = tmp_path / "markd.toml"
    path.write_text(sections, encoding="utf-8")
    return path


def test_the_kiosk_defaults_are_the_behaviour_of_before(tmp_path: Path) -> None:
    loaded = config_module.load(write_config(tmp_path, 'mode = "direct"'))
    assert (loaded.check.parallel, loaded.check.cache_verdicts) == (False, True)
    settings = chain_settings(loaded)
    assert (settings.parallel, settings.cache_verdicts) == (False, True)


def test_the_keys_are_read_into_the_chain_settings(tmp_path: Path) -> None:
    text = 'mode = "direct"\nparallel = true\ncache_verdicts = false'
    loaded = config_module.load(write_config(tmp_path, text))
    assert (loaded.check.parallel, loaded.check.cache_verdicts) == (True, False)
    settings = chain_settings(loaded)
    assert (settings.parallel, settings.cache_verdicts) == (True, False)
    assert config_module.to_dict(loaded)["check"]["parallel"] is True


def test_bad_values_are_refused_naming_the_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'parallel = "yes"\ncache_verdicts = 1')
    with pytest.raises(ConfigError) as caught:
        config_module.load(path)
    assert caught.value.problems == [
        f"{path}:6: [check] parallel: expected a boolean (true or false), got a string ('yes')",
        f"{path}:7: [check] cache_verdicts: expected a boolean (true or false), got an integer (1)",
    ]


def direct(tmp_path: Path, services: tuple[CrptCdn, LocalModuleEmulator], check: str) -> Config:
    cdn, lm = services
    path = write_config(tmp_path, f'mode = "direct"\n{check}', cdn=cdn.url, lm=lm.url)
    return config_module.load(path)


@pytest.mark.parametrize("parallel", [False, True])
async def test_parallel_asks_the_local_module_while_the_cdn_answers(
    tmp_path: Path, services: tuple[CrptCdn, LocalModuleEmulator], parallel: bool
) -> None:
    cdn, lm = services
    cdn.set_fault("codes/check", latency_ms=CDN_LATENCY_MS)
    config = direct(tmp_path, services, f"parallel = {str(parallel).lower()}")
    with Store.from_config(config.store) as store:
        chain = build_chain(config, store, background=False)
        try:
            started = time.monotonic()
            verdict = await chain.decide(parse(WATER), "front")
            took = time.monotonic() - started
        finally:
            await chain.aclose()
    assert (verdict.decision, verdict.source) == ("allow", "cdn")
    assert took >= CDN_LATENCY_MS / 1000
    # In sequence the Local Module is asked only when the CDN gives no answer; in parallel it
    # was asked at the same time, and its answer came first.
    assert lm.count("cis/outCheck") == (1 if parallel else 0)
    assert chain.budget_s() == (1.5 if parallel else 2.0)


@pytest.mark.parametrize("cache_verdicts", [True, False])
async def test_cache_verdicts_keeps_the_online_facts_or_not(
    tmp_path: Path, services: tuple[CrptCdn, LocalModuleEmulator], cache_verdicts: bool
) -> None:
    cdn, _ = services
    cdn.set_code(WATER_KI, sold=False, isBlocked=False)
    config = direct(tmp_path, services, f"cache_verdicts = {str(cache_verdicts).lower()}")
    with Store.from_config(config.store) as store:
        chain = build_chain(config, store, background=False)
        try:
            verdict = await chain.decide(parse(WATER), "front")
        finally:
            await chain.aclose()  # pending cache writes land
        cached = store.lookup(parse(WATER)).cached
    assert (verdict.decision, verdict.source) == ("allow", "cdn")
    if cache_verdicts:
        assert cached is not None and cached.facts["isBlocked"] is False
    else:
        assert cached is None
