"""Build the check chain the configuration describes.

``[check] mode`` picks the chain: ``store-only`` (development), ``direct`` (the CDN and/or the
Local Module — each used only when its ``[check.online]`` / ``[check.local_module]`` section is
present), or ``tspiot`` (``[check.tspiot]``). Secrets are read here, once, from their files or
systemd credentials (:mod:`markd.secrets`); a missing secret is a configuration error naming
the key and the credential.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from markd.checks.chain import ChainSettings, CheckChain, StoreOnlyChain
from markd.checks.policy import PolicyOptions
from markd.checks.record import Recorder
from markd.errors import ConfigError
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


def build_clients(config: Config, recorder: Recorder | None = None) -> dict[str, Any]:
    """The service clients the configuration asks for, by name (online, local_module,
    tspiot); each absent section gives none."""
    check = config.check
    fn_serial = config.terminal.fn_serial
    clients: dict[str, Any] = {}
    if check.mode == "direct" and check.online is not None:
        from markd.checks.online import ApiKeyAuth, OnlineClient

        secret = load_secret(
            check.online.token_file, "crpt-token", what="[check.online] token_file"
        )
        assert secret is not None
        clients["online"] = OnlineClient(
            check.online.url, auth=ApiKeyAuth(secret), fn_serial=fn_serial, recorder=recorder
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
        )
    return clients


def build_chain(
    config: Config, store: Store, recorder: Recorder | None = None
) -> StoreOnlyChain | CheckChain:
    """The chain for ``[check] mode``, with its clients."""
    if config.check.mode == "store-only":
        return StoreOnlyChain(store)
    clients = build_clients(config, recorder)
    return CheckChain(
        store,
        chain_settings(config),
        online=clients.get("online"),
        local_module=clients.get("local_module"),
        tspiot=clients.get("tspiot"),
    )
