"""The printer and the sale session the configuration describes (``[fiscal]``).

The daemon and ``markctl sell`` build them the same way::

    printer = open_configured_printer(config)
    session = build_session(config, printer, store, event_log=log)
    await session.recover()
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from markd.fiscal.base import FiscalPrinter, PrinterSettings, open_printer
from markd.fiscal.model import IndustryTags
from markd.fiscal.session import SaleOptions, SaleSession

if TYPE_CHECKING:
    from markd.checks.local_module import LocalModuleClient
    from markd.config import Config
    from markd.store import Store
    from markd.systemd import EventLog


def printer_settings(config: Config) -> PrinterSettings:
    fiscal = config.fiscal
    return PrinterSettings(
        timeout_s=fiscal.timeout_ms / 1000,
        validation_timeout_s=fiscal.validation_timeout_ms / 1000,
        poll_interval_s=fiscal.validation_poll_ms / 1000,
    )


def sale_options(config: Config) -> SaleOptions:
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


def open_configured_printer(config: Config) -> FiscalPrinter:
    """The printer ``[fiscal] url`` names. Raises :class:`~markd.errors.PrinterURLError` or
    :class:`~markd.errors.PrinterUnavailable` (driver missing)."""
    return open_printer(config.fiscal.url, printer_settings(config))


def local_module_for_sales(config: Config) -> LocalModuleClient | None:
    """A Local Module client for ``/cis/sell``, when ``[fiscal] lm_sell`` and a
    ``[check.local_module]`` section ask for one."""
    lm = config.check.local_module
    if lm is None or not config.fiscal.lm_sell:
        return None
    from markd.checks.local_module import LocalModuleClient
    from markd.secrets import load_secret

    password = load_secret(
        lm.password_file, "lm-password", what="[check.local_module] password_file"
    )
    assert password is not None
    return LocalModuleClient(
        lm.url, user=lm.user, password=password, fn_serial=config.terminal.fn_serial, api=lm.api
    )


def build_session(
    config: Config,
    printer: FiscalPrinter,
    store: Store | None,
    *,
    event_log: EventLog | None = None,
    lm_client: LocalModuleClient | None = None,
) -> SaleSession:
    """The session for ``printer`` with ``[fiscal]``'s options and journal. ``lm_client``
    defaults to :func:`local_module_for_sales`."""
    return SaleSession(
        printer,
        store,
        lm_client if lm_client is not None else local_module_for_sales(config),
        config.fiscal.journal,
        event_log,
        sale_options(config),
    )
