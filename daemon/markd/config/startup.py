"""What the daemon needs at start beyond well-formed files: the secrets the configuration calls
for, and the proxies built with them.

The readers here are the ones the daemon's wiring uses (:mod:`markd.service.wiring`, the
control API's token), so a secret is judged in one place. :func:`startup_problems` calls each
reader the configuration makes the daemon call, and turns each refusal into a problem at the
key it belongs to; :func:`markd.config.load` with ``for_service=True`` adds them to the other
problems of the files. Both ``markd`` (at start and on each reload) and ``markctl config
check`` load that way, so the check refuses what the daemon would.

What only the live system can tell (a device file present, a port free, the store's
ownership) is not judged here: the daemon finds it when it starts (docs/configuration.md,
"What only the start can tell").

Secrets are read, never shown: a problem names the file or the credential, not the value.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from markd.config.lines import key_name
from markd.errors import ConfigError
from markd.proxy import DEFAULT_NO_PROXY, ProxySettings
from markd.secrets import Secret, load_secret

if TYPE_CHECKING:
    from markd.config.schema import ApiConfig, Config, MetricsConfig

#: ``(key path, problem)``: where a problem is reported, as :func:`whole_config_problems` gives.
Problem = tuple[tuple[str, ...], str]


def proxy_settings(
    section: Any, name: str, environ: Mapping[str, str] | None = None
) -> ProxySettings | None:
    """The proxy of one ``[check.*]`` section (its ``proxy``, ``no_proxy`` and
    ``proxy_auth_file`` keys), or None for direct connections."""
    if not section.proxy:
        return None
    credentials = load_secret(
        section.proxy_auth_file,
        "proxy-auth",
        what=f"[{name}] proxy_auth_file",
        required=bool(section.proxy_auth_file),
        environ=_env(environ),
    )
    return ProxySettings.parse(
        section.proxy,
        no_proxy=section.no_proxy,
        credentials=credentials,
        environ=os.environ if environ is None else environ,
        where=f"[{name}] proxy",
    )


def sync_proxy_settings(
    config: Config, environ: Mapping[str, str] | None = None
) -> ProxySettings | None:
    """The proxy of the fleet sync (``[store] sync_proxy``): by default the one of
    ``[check.online]``, the section that reaches the internet."""
    choice = config.store.sync_proxy
    if choice == "direct":
        return None
    if choice == "online":
        online = config.check.online
        return None if online is None else proxy_settings(online, "check.online", environ)
    credentials = load_secret(
        "", "proxy-auth", what="[store] sync_proxy", required=False, environ=_env(environ)
    )
    return ProxySettings.parse(
        choice,
        no_proxy=DEFAULT_NO_PROXY,
        credentials=credentials,
        environ=os.environ if environ is None else environ,
        where="[store] sync_proxy",
    )


def online_token(config: Config, environ: Mapping[str, str] | None = None) -> Secret:
    """The X-API-KEY of ``[check.online]`` (the section must be present)."""
    online = config.check.online
    assert online is not None
    secret = load_secret(
        online.token_file, "crpt-token", what="[check.online] token_file", environ=_env(environ)
    )
    assert secret is not None  # required: load_secret raised otherwise
    return secret


def local_module_password(config: Config, environ: Mapping[str, str] | None = None) -> Secret:
    """The password of ``[check.local_module]`` (the section must be present)."""
    lm = config.check.local_module
    assert lm is not None
    secret = load_secret(
        lm.password_file,
        "lm-password",
        what="[check.local_module] password_file",
        environ=_env(environ),
    )
    assert secret is not None
    return secret


def tspiot_token(config: Config, environ: Mapping[str, str] | None = None) -> Secret | None:
    """The ТС ПИоТ's ``client_info`` token, when one is configured (it is optional)."""
    ts = config.check.tspiot
    assert ts is not None
    return load_secret(
        ts.token_file,
        "tspiot-token",
        what="[check.tspiot] token_file",
        required=False,
        environ=_env(environ),
    )


def printer_password(config: Config, environ: Mapping[str, str] | None = None) -> Secret | None:
    """The ATOL web server's password when ``[fiscal] web_user`` is set, else None."""
    fiscal = config.fiscal
    if not fiscal.web_user:
        return None
    return load_secret(
        fiscal.web_password_file,
        "atol-web-password",
        what="[fiscal] web_password_file",
        environ=_env(environ),
    )


def api_token(api: ApiConfig, environ: Mapping[str, str] | None = None) -> Secret:
    """The bearer token TCP clients of the control API send (``[api] listen`` is set)."""
    secret = load_secret(
        api.token_file, "api-token", what="[api] token_file (TCP listener)", environ=_env(environ)
    )
    assert secret is not None
    return secret


def metrics_token(metrics: MetricsConfig, environ: Mapping[str, str] | None = None) -> Secret:
    """The bearer token a scraper of the metrics listener sends (``[metrics] listen`` is set).
    A token of its own, not ``api-token``: the Prometheus server that holds it may read
    the metrics, never drive the till."""
    secret = load_secret(
        metrics.token_file,
        "metrics-token",
        what="[metrics] token_file (metrics listener)",
        environ=_env(environ),
    )
    assert secret is not None
    return secret


def local_module_used(config: Config) -> bool:
    """The daemon builds a Local Module client: the chain asks it (mode ``direct``), or the
    sale session reports sold units to it (``[fiscal] lm_sell``)."""
    return config.check.local_module is not None and (
        config.check.mode == "direct" or config.fiscal.lm_sell
    )


def startup_problems(config: Config, environ: Mapping[str, str] | None = None) -> list[Problem]:
    """Every secret and proxy the daemon would read at start from ``config``, read now; one
    problem for each that it would refuse, at the key it belongs to."""
    found: list[Problem] = []

    def attempt(key_path: tuple[str, ...], read: Callable[[], object]) -> None:
        try:
            read()
        except ConfigError as exc:
            for problem in exc.problems:
                # The readers' messages mostly start with their key already; one that does
                # not (proxy credentials without a colon) gets it, so every problem names one.
                if not problem.startswith("["):
                    problem = f"{key_name(key_path)}: {problem}"
                found.append((key_path, problem))

    check = config.check
    sections: list[tuple[str, Any]] = []
    if check.mode == "direct" and check.online is not None:
        attempt(("check", "online", "token_file"), lambda: online_token(config, environ))
        sections.append(("online", check.online))
    if local_module_used(config):
        attempt(
            ("check", "local_module", "password_file"),
            lambda: local_module_password(config, environ),
        )
        sections.append(("local_module", check.local_module))
    if check.mode == "tspiot" and check.tspiot is not None:
        attempt(("check", "tspiot", "token_file"), lambda: tspiot_token(config, environ))
        sections.append(("tspiot", check.tspiot))
    for name, section in sections:
        key = "proxy_auth_file" if section.proxy_auth_file else "proxy"
        attempt(
            ("check", name, key),
            lambda section=section, name=name: proxy_settings(section, f"check.{name}", environ),
        )
    if config.store.sync_url and config.store.sync_proxy not in ("online", "direct"):
        attempt(("store", "sync_proxy"), lambda: sync_proxy_settings(config, environ))
    if config.sale.mode != "off" and config.fiscal.web_user:
        attempt(("fiscal", "web_password_file"), lambda: printer_password(config, environ))
    if config.api.enabled and config.api.listen:
        attempt(("api", "token_file"), lambda: api_token(config.api, environ))
    if config.api.enabled and config.metrics.listen:
        attempt(("metrics", "token_file"), lambda: metrics_token(config.metrics, environ))
        if config.api.listen:
            attempt(("metrics", "token_file"), lambda: distinct_tokens(config, environ))
    return found


def distinct_tokens(config: Config, environ: Mapping[str, str] | None = None) -> None:
    """Raise :class:`ConfigError` when the metrics listener's token is the control API's: the
    Prometheus server holding it could then drive the till. A token that cannot be read is
    reported by its own check, not here."""
    try:
        api, metrics = api_token(config.api, environ), metrics_token(config.metrics, environ)
    except ConfigError:
        return
    if hmac.compare_digest(api.reveal().encode(), metrics.reveal().encode()):
        raise ConfigError(
            "[metrics] token_file: the metrics token is the control API's token ([api] "
            "token_file); give the metrics listener a token of its own, so that whoever "
            "scrapes cannot drive the till"
        )


def _env(environ: Mapping[str, str] | None) -> dict[str, str] | None:
    return None if environ is None else dict(environ)
