"""Build the store-dependent parts the configuration describes: the check chain, the printer,
the sale session and the sale desk.

The daemon, ``markctl`` and the demo build them the same way, and only here does a domain
object meet :class:`~markd.config.Config`: the domain packages (``checks``, ``fiscal``) take
plain settings, so they never import the configuration (docs/architecture.md, "Who may
import whom")::

    chain = build_chain(config, store, sales=True)      # [check] mode and its sections
    printer = open_configured_printer(config)           # [fiscal] url
    session = build_session(config, printer, store)     # [fiscal] options and journal
    desk = build_sale_desk(config, store, event_log, chain.local_module)  # [sale], [fiscal]

``[check] mode`` picks what the chain asks: nothing (``store-only``, development), the CDN
and/or the Local Module (``direct`` — each only when its ``[check.online]`` /
``[check.local_module]`` section is present), or the ТС ПИоТ (``tspiot``, ``[check.tspiot]``).

One Local Module client serves the daemon: the chain asks it (mode ``direct``) and the sale
session reports sold units to it (``[fiscal] lm_sell``), with the same ``[check.local_module]``
settings, proxy included. The chain owns it; a reload builds a new chain, and with it a new
client that replaces the old one in both places.

Secrets are read here, once, from their files or systemd credentials, by the readers of
:mod:`markd.config.startup` — the ones the configuration check calls, so a secret the check
passed is one the daemon can read; a missing secret is a configuration error naming the key
and the credential.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from markd.checks.cdn_hosts import FILE_NAME as HOSTS_FILE_NAME
from markd.checks.chain import ChainSettings, CheckChain
from markd.checks.policy import PolicyOptions
from markd.checks.record import Recorder
from markd.config import DROPIN_SUFFIX, startup
from markd.errors import ConfigError
from markd.proxy import ProxySettings

if TYPE_CHECKING:
    from markd.checks.base import CheckClient
    from markd.checks.local_module import LocalModuleClient
    from markd.config import Config
    from markd.fiscal.base import FiscalPrinter, PrinterSettings
    from markd.fiscal.session import SaleOptions, SaleSession
    from markd.sale import SaleDesk
    from markd.store import Store
    from markd.systemd import EventLog


def main_config_file(config: Config) -> str | None:
    """The main configuration file ``config`` was read from (its drop-ins come along when it
    is read again); None when markd started on defaults."""
    for source in config.sources:
        if not Path(source).parent.name.endswith(DROPIN_SUFFIX):
            return source
    return None


# --------------------------------------------------------------------------------------------
# The check chain


def chain_settings(config: Config) -> ChainSettings:
    check = config.check
    return ChainSettings(
        mode=check.mode,
        online_timeout_s=check.online_timeout_ms / 1000,
        local_module_timeout_s=check.local_module_timeout_ms / 1000,
        tspiot_timeout_s=check.tspiot_timeout_ms / 1000,
        parallel=check.parallel,
        shop_tz=ZoneInfo(config.terminal.timezone),
        policy=PolicyOptions(unanswered=check.unanswered),
        cache_verdicts=check.cache_verdicts,
    )


def proxy_settings(section: Any, name: str) -> ProxySettings | None:
    """The proxy of one ``[check.*]`` section, or None for direct connections
    (:func:`markd.config.startup.proxy_settings`, which the configuration check calls too)."""
    return startup.proxy_settings(section, name)


def sync_proxy_settings(config: Config) -> ProxySettings | None:
    """The proxy of the fleet sync (``[store] sync_proxy``): by default the one of
    ``[check.online]``, the section that reaches the internet."""
    return startup.sync_proxy_settings(config)


def hosts_file(config: Config) -> Path | None:
    """Where the CDN host list is kept: ``[check.online] hosts_file``, or beside the store."""
    online = config.check.online
    if online is None:
        return None
    if online.hosts_file:
        return Path(online.hosts_file)
    return Path(config.store.path).parent / HOSTS_FILE_NAME


#: Idle connections a check client keeps to its service on a kiosk: enough for its scanners.
KIOSK_IDLE_CONNECTIONS = 4


def idle_connections(config: Config) -> int:
    """Kept-alive connections a check client holds between checks: as many as checks run at
    once, the Mark Unit front's ``max_checks`` when it is on (a burst of tills then reuses
    them instead of opening new ones: TLS handshakes against the CDN or a ТС ПИоТ)."""
    front = config.mark_unit.max_checks if config.mark_unit.enabled else 0
    return max(KIOSK_IDLE_CONNECTIONS, front)


def build_clients(
    config: Config, recorder: Recorder | None = None, *, background: bool = True
) -> dict[str, CheckClient]:
    """The clients of the services ``[check] mode`` asks, by role (``online``,
    ``local_module``, ``tspiot``: the names of their sections); an absent section gives
    none, ``store-only`` none at all."""
    check = config.check
    fn_serial = config.terminal.fn_serial
    clients: dict[str, CheckClient] = {}
    if check.mode == "direct" and check.online is not None:
        from markd.checks.online import ApiKeyAuth, OnlineClient, OnlineOptions

        online = check.online
        clients["online"] = OnlineClient(
            online.url,
            auth=ApiKeyAuth(startup.online_token(config)),
            fn_serial=fn_serial,
            recorder=recorder,
            options=OnlineOptions(
                list_fetch_share=online.list_budget_percent / 100,
                rank_by=online.rank_by,  # type: ignore[arg-type] - checked by the schema
                # One check and exit (markctl): no health round racing the check itself.
                background_maintenance=background,
                max_idle_connections=idle_connections(config),
            ),
            hosts_file=hosts_file(config),
            proxy=proxy_settings(online, "check.online"),
        )
    if check.mode == "direct":
        lm = build_local_module(config, recorder)
        if lm is not None:
            clients["local_module"] = lm
    if check.mode == "tspiot":
        if check.tspiot is None:
            raise ConfigError('[check] mode: "tspiot" needs a [check.tspiot] section')
        from markd.checks.tspiot import TspiotClient, TspiotOptions

        ts = check.tspiot
        clients["tspiot"] = TspiotClient(
            ts.url,
            client_id=fn_serial or "markd",
            token=startup.tspiot_token(config),
            allow_self_signed=ts.allow_self_signed,
            recorder=recorder,
            options=TspiotOptions(max_idle_connections=idle_connections(config)),
            proxy=proxy_settings(ts, "check.tspiot"),
        )
    return clients


def build_local_module(
    config: Config, recorder: Recorder | None = None
) -> LocalModuleClient | None:
    """A Local Module client from ``[check.local_module]`` (its password, API version and
    proxy), or None without that section."""
    lm = config.check.local_module
    if lm is None:
        return None
    from markd.checks.local_module import LocalModuleClient, LocalModuleOptions

    return LocalModuleClient(
        lm.url,
        user=lm.user,
        password=startup.local_module_password(config),
        fn_serial=config.terminal.fn_serial,
        api=lm.api,
        recorder=recorder,
        options=LocalModuleOptions(max_idle_connections=idle_connections(config)),
        proxy=proxy_settings(lm, "check.local_module"),
    )


def build_chain(
    config: Config,
    store: Store,
    recorder: Recorder | None = None,
    *,
    background: bool = True,
    sales: bool = False,
) -> CheckChain:
    """The chain for ``[check] mode``, with its clients. ``background=False`` for a one-shot
    check (``markctl check``): the clients then do no background work of their own.
    ``sales=True`` when a sale session will report to the Local Module through
    ``chain.local_module``: the chain then holds that client whatever the mode (with
    ``[check.local_module]`` and ``[fiscal] lm_sell``), the one it asks in mode ``direct``."""
    clients = build_clients(config, recorder, background=background)
    local_module = clients.get("local_module")
    if local_module is None and sales and config.fiscal.lm_sell:
        local_module = build_local_module(config, recorder)
    return CheckChain(
        store,
        chain_settings(config),
        online=clients.get("online"),
        local_module=local_module,
        tspiot=clients.get("tspiot"),
    )


# --------------------------------------------------------------------------------------------
# The printer, the sale session and the sale desk (the fiscal package is imported when one is
# built: ``markctl check`` and a daemon without a printer never load it)


def printer_settings(config: Config) -> PrinterSettings:
    """``[fiscal]``'s timing, receipt attributes and web server credentials. Raises
    :class:`~markd.errors.ConfigError` naming the key and the credential when
    ``web_user`` is set and its password is nowhere."""
    from markd.fiscal.base import PrinterSettings
    from markd.fiscal.model import ReceiptAttributes

    fiscal = config.fiscal
    password = startup.printer_password(config)
    return PrinterSettings(
        timeout_s=fiscal.timeout_ms / 1000,
        validation_timeout_s=fiscal.validation_timeout_ms / 1000,
        poll_interval_s=fiscal.validation_poll_ms / 1000,
        receipt=ReceiptAttributes(
            taxation_type=fiscal.taxation_type or None,
            cashier_name=fiscal.cashier_name or None,
            cashier_inn=fiscal.cashier_inn or None,
        ),
        web_user=fiscal.web_user,
        web_password=password,
    )


def sale_options(config: Config) -> SaleOptions:
    from markd.fiscal.model import IndustryTags
    from markd.fiscal.session import SaleOptions

    fiscal = config.fiscal
    return SaleOptions(
        industry=IndustryTags(
            tag1262=fiscal.tag1262, tag1263=fiscal.tag1263, tag1264=fiscal.tag1264
        ),
        sale_status=fiscal.sale_status,
        tax=fiscal.tax,
        on_no_answer=fiscal.on_oism_no_answer,
        auto_shift=fiscal.auto_shift,
        lm_sell=fiscal.lm_sell,
        payment_type=fiscal.payment_type,
    )


def sale_local_module(config: Config, local_module: CheckClient | None) -> LocalModuleClient | None:
    """The Local Module client a sale session gets: the daemon's (``local_module``, its
    chain's) when ``[fiscal] lm_sell`` asks for sale reports, else None."""
    if not config.fiscal.lm_sell or local_module is None:
        return None
    from markd.checks.local_module import LocalModuleClient

    return local_module if isinstance(local_module, LocalModuleClient) else None


def open_configured_printer(config: Config) -> FiscalPrinter:
    """The printer ``[fiscal] url`` names. Raises :class:`~markd.errors.PrinterURLError` or
    :class:`~markd.errors.PrinterUnavailable` (driver missing)."""
    from markd.fiscal.base import open_printer

    return open_printer(config.fiscal.url, printer_settings(config))


def local_module_for_sales(config: Config) -> LocalModuleClient | None:
    """A Local Module client for ``/cis/sell``, when ``[fiscal] lm_sell`` and a
    ``[check.local_module]`` section ask for one: for a one-shot tool with no chain (the
    daemon's sale session uses its chain's client, see :func:`build_chain`)."""
    if not config.fiscal.lm_sell:
        return None
    return build_local_module(config)


def build_session(
    config: Config,
    printer: FiscalPrinter,
    store: Store | None,
    *,
    event_log: EventLog | None = None,
    lm_client: LocalModuleClient | None = None,
) -> SaleSession:
    """The session for ``printer`` with ``[fiscal]``'s options and journal; ``lm_client``
    receives the sold units (None: no Local Module). The session does not close it: the
    caller owns it (in the daemon, the chain)."""
    from markd.fiscal.session import SaleSession

    return SaleSession(
        printer,
        store,
        lm_client,
        config.fiscal.journal,
        event_log,
        sale_options(config),
    )


def build_sale_desk(
    config: Config,
    store: Store | None,
    event_log: EventLog | None,
    local_module: CheckClient | None = None,
) -> SaleDesk:
    """Take the price list (parsed when ``config`` was loaded), open the printer ``[fiscal]
    url`` names and build the session and the desk over them (not started:
    :meth:`~markd.sale.SaleDesk.start` recovers). ``local_module``: the daemon's Local Module
    client (its chain's), which the session reports sold units to when ``[fiscal] lm_sell``.
    Raises :class:`~markd.errors.ConfigError` (the price list of a configuration built in
    code) or :class:`~markd.errors.FiscalError` (printer URL, driver missing)."""
    from markd.sale import SaleDesk

    catalog = config.sale.price_list()
    printer = open_configured_printer(config)
    lm_client = sale_local_module(config, local_module)
    try:
        session = build_session(config, printer, store, event_log=event_log, lm_client=lm_client)
    except BaseException:
        printer.close()  # the port or the driver's handle is not left open
        raise
    return SaleDesk(config, session, event_log=event_log, catalog=catalog)
