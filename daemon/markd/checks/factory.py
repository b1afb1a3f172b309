"""Build the check chain the configuration describes.

``[check] mode`` picks the chain: ``store-only`` (development), ``direct`` (the CDN and/or the
Local Module — each used only when its ``[check.online]`` / ``[check.local_module]`` section is
present), or ``tspiot`` (``[check.tspiot]``). Secrets are read here, once, from their files or
systemd credentials (:mod:`markd.secrets`); a missing secret is a configuration error naming
the key and the credential.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from markd.checks.cdn_hosts import FILE_NAME as HOSTS_FILE_NAME
from markd.checks.chain import ChainSettings, CheckChain, StoreOnlyChain
from markd.checks.policy import PolicyOptions
from markd.checks.record import Recorder
from markd.errors import ConfigError
from markd.proxy import DEFAULT_NO_PROXY, ProxySettings
from markd.secrets import load_secret

if TYPE_CHECKING:
    from markd.config import Config
    from markd.store import Store


def chain_settings(config: Config) -> ChainSettings:
    check = config.check
    return ChainSettings(
        mode=check.mode,
        online_timeout_s=check.online_timeout_ms / 1000,
        local_module_timeout_s=check.local_module_timeout_ms / 1000,
        tspiot_timeout_s=check.tspiot_timeout_ms / 1000,
        shop_tz=ZoneInfo(config.terminal.timezone),
        policy=PolicyOptions(unanswered=check.unanswered),
    )


def proxy_settings(section: Any, name: str) -> ProxySettings | None:
    """The proxy of one ``[check.*]`` section (its ``proxy``, ``no_proxy`` and
    ``proxy_auth_file`` keys), or None for direct connections."""
    if not section.proxy:
        return None
    credentials = load_secret(
        section.proxy_auth_file,
        "proxy-auth",
        what=f"[{name}] proxy_auth_file",
        required=bool(section.proxy_auth_file),
    )
    return ProxySettings.parse(
        section.proxy,
        no_proxy=section.no_proxy,
        credentials=credentials,
        where=f"[{name}] proxy",
    )


def sync_proxy_settings(config: Config) -> ProxySettings | None:
    """The proxy of the fleet sync (``[store] sync_proxy``): by default the one of
    ``[check.online]``, the section that reaches the internet."""
    choice = config.store.sync_proxy
    if choice == "direct":
        return None
    if choice == "online":
        online = config.check.online
        return None if online is None else proxy_settings(online, "check.online")
    credentials = load_secret("", "proxy-auth", what="[store] sync_proxy", required=False)
    return ProxySettings.parse(
        choice, no_proxy=DEFAULT_NO_PROXY, credentials=credentials, where="[store] sync_proxy"
    )


def hosts_file(config: Config) -> Path | None:
    """Where the CDN host list is kept: ``[check.online] hosts_file``, or beside the store."""
    online = config.check.online
    if online is None:
        return None
    if online.hosts_file:
        return Path(online.hosts_file)
    return Path(config.store.path).parent / HOSTS_FILE_NAME


def build_clients(
    config: Config, recorder: Recorder | None = None, *, background: bool = True
) -> dict[str, Any]:
    """The service clients the configuration asks for, by name (online, local_module,
    tspiot); each absent section gives none."""
    check = config.check
    fn_serial = config.terminal.fn_serial
    clients: dict[str, Any] = {}
    if check.mode == "direct" and check.online is not None:
        from markd.checks.online import ApiKeyAuth, OnlineClient, OnlineOptions

        online = check.online
        secret = load_secret(online.token_file, "crpt-token", what="[check.online] token_file")
        assert secret is not None
        clients["online"] = OnlineClient(
            online.url,
            auth=ApiKeyAuth(secret),
            fn_serial=fn_serial,
            recorder=recorder,
            options=OnlineOptions(
                list_fetch_share=online.list_budget_percent / 100,
                rank_by=online.rank_by,  # type: ignore[arg-type] - checked by the schema
                # One check and exit (markctl): no health round racing the check itself.
                background_maintenance=background,
            ),
            hosts_file=hosts_file(config),
            proxy=proxy_settings(online, "check.online"),
        )
    if check.mode == "direct" and check.local_module is not None:
        from markd.checks.local_module import LocalModuleClient

        lm = check.local_module
        password = load_secret(
            lm.password_file, "lm-password", what="[check.local_module] password_file"
        )
        assert password is not None
        clients["local_module"] = LocalModuleClient(
            lm.url,
            user=lm.user,
            password=password,
            fn_serial=fn_serial,
            api=lm.api,
            recorder=recorder,
            proxy=proxy_settings(lm, "check.local_module"),
        )
    if check.mode == "tspiot":
        if check.tspiot is None:
            raise ConfigError('[check] mode = "tspiot" needs a [check.tspiot] section')
        from markd.checks.tspiot import TspiotClient

        ts = check.tspiot
        token = load_secret(
            ts.token_file, "tspiot-token", what="[check.tspiot] token_file", required=False
        )
        clients["tspiot"] = TspiotClient(
            ts.url,
            client_id=fn_serial or "markd",
            token=token,
            allow_self_signed=ts.allow_self_signed,
            recorder=recorder,
            proxy=proxy_settings(ts, "check.tspiot"),
        )
    return clients


def build_chain(
    config: Config, store: Store, recorder: Recorder | None = None, *, background: bool = True
) -> StoreOnlyChain | CheckChain:
    """The chain for ``[check] mode``, with its clients. ``background=False`` for a one-shot
    check (``markctl check``): the clients then do no background work of their own."""
    if config.check.mode == "store-only":
        return StoreOnlyChain(store)
    clients = build_clients(config, recorder, background=background)
    return CheckChain(
        store,
        chain_settings(config),
        online=clients.get("online"),
        local_module=clients.get("local_module"),
        tspiot=clients.get("tspiot"),
    )
