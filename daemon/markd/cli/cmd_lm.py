"""``markctl lm init`` and ``markctl lm status``: the Local Module (ЛМ ЧЗ) from a technician's
console.

``lm init`` sends the participant's token to the module (``POST /api/v{n}/init``, mandatory
after installation, domain.md §4.4) and then shows the module's status. The token comes from
``--token-file``, else ``[check.online] token_file``, else the systemd credential
``crpt-token`` (:func:`markd.secrets.load_secret`): never from the command line, and it is
never printed — any text the module sends back has it replaced by ``<secret>``.

``lm status`` polls ``/api/v{n}/status`` once and prints
:meth:`~markd.checks.local_module.LocalModuleClient.status` (state, last sync and its alerts,
version, inst, counters).

Both use ``[check.local_module]`` whatever ``[check] mode`` says, so a module can be set up
before the kiosk is switched to ``direct``. Exit status: 0 success; 2 a configuration problem
(no ``[check.local_module]``, no token or password, a bad file); 1 the module refused or is
unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from markd import config as config_module
from markd.checks.local_module import LocalModuleClient
from markd.checks.results import SourceFailure
from markd.config import Config
from markd.errors import ConfigError
from markd.secrets import Secret, load_secret
from markd.text import printable_json

#: How long ``init`` (with the status read after it) and ``status`` may take, seconds.
DEFAULT_TIMEOUT_S = 10.0
EXIT_FAILED = 1
REDACTED = "<secret>"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lm", help="the Local Module: init with the token, status")
    lm_sub = p.add_subparsers(dest="lm_command", metavar="ACTION")
    lm_sub.required = True

    init = lm_sub.add_parser("init", help="initialise the Local Module with the participant token")
    init.add_argument("--config", metavar="PATH", help="configuration file")
    init.add_argument(
        "--token-file",
        metavar="F",
        help="file holding the token (default: [check.online] token_file, else the systemd "
        "credential crpt-token)",
    )
    init.add_argument("--json", action="store_true", help="print the result as JSON")
    init.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds (default 10)"
    )
    init.set_defaults(func=_init)

    status = lm_sub.add_parser("status", help="poll the Local Module's status once")
    status.add_argument("--config", metavar="PATH", help="configuration file")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds (default 10)"
    )
    status.set_defaults(func=_status)


# ---------------------------------------------------------------------------------------------
# Configuration


def _client(cfg: Config) -> LocalModuleClient:
    """The Local Module client ``[check.local_module]`` describes (ConfigError without it)."""
    lm = cfg.check.local_module
    if lm is None:
        raise ConfigError("no [check.local_module] section: the Local Module is not configured")
    password = load_secret(
        lm.password_file, "lm-password", what="[check.local_module] password_file"
    )
    assert password is not None  # required=True
    try:
        return LocalModuleClient(
            lm.url, user=lm.user, password=password, fn_serial=cfg.terminal.fn_serial, api=lm.api
        )
    except ValueError as exc:
        raise ConfigError(f"[check.local_module]: {exc}") from None


def _token(cfg: Config, token_file: str | None) -> Secret:
    """The participant token: ``--token-file``, else ``[check.online] token_file``, else the
    systemd credential ``crpt-token``."""
    if token_file:
        what = "--token-file"
        path = token_file
    else:
        what = "[check.online] token_file"
        path = cfg.check.online.token_file if cfg.check.online is not None else ""
    secret = load_secret(path, "crpt-token", what=what)
    assert secret is not None  # required=True
    return secret


# ---------------------------------------------------------------------------------------------
# Output


def _scrub(value: Any, secrets: tuple[Secret, ...]) -> Any:
    """``value`` (JSON-ready) with every secret's text replaced by ``<secret>``: a module may
    echo what it was sent in an error description."""
    if isinstance(value, str):
        for secret in secrets:
            text = secret.reveal()
            if text:
                value = value.replace(text, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v, secrets) for v in value]
    return value


def _failure_json(failure: SourceFailure | None) -> dict[str, Any] | None:
    if failure is None:
        return None
    return {**failure.summary(), "detail": failure.detail}


def _print_status(status: dict[str, Any]) -> None:
    """The client's status, one ``key value`` line each (alerts one per line)."""
    for key, value in status.items():
        if key == "alerts":
            continue
        text = value if isinstance(value, str) else printable_json(value, ensure_ascii=False)
        print(f"  {key:<20} {text}")
    for alert in status.get("alerts") or ():
        print(f"  ALERT {alert}")


# ---------------------------------------------------------------------------------------------
# Commands


async def _run_init(
    client: LocalModuleClient, token: Secret, timeout_s: float
) -> tuple[SourceFailure | None, dict[str, Any]]:
    """Send the token; then the status (read again when init did not already read it)."""
    deadline = time.monotonic() + timeout_s
    try:
        failure = await client.init(token, deadline)
        if failure is not None and deadline > time.monotonic():
            await client.status_poll(deadline)
        return failure, client.status()
    finally:
        client.close()


async def _run_status(client: LocalModuleClient, timeout_s: float) -> dict[str, Any]:
    try:
        await client.status_poll(time.monotonic() + timeout_s)
        return client.status()
    finally:
        client.close()


def _init(args: argparse.Namespace) -> int:
    cfg = config_module.load(args.config)
    client = _client(cfg)
    token = _token(cfg, args.token_file)
    failure, status = asyncio.run(_run_init(client, token, args.timeout))
    report = _scrub(
        {
            "ok": failure is None,
            "url": client.base_url,
            "token_from": token.origin,
            "error": _failure_json(failure),
            "status": status,
        },
        (token,),
    )
    if args.json:
        print(printable_json(report, ensure_ascii=False, default=str))
    else:
        if failure is None:
            print(f"Local Module {report['url']} initialised (token from {token.origin})")
        else:
            error = report["error"]
            print(f"Local Module {report['url']} init FAILED: {error['kind']}: {error['detail']}")
        print("status after init:")
        _print_status(report["status"])
    return 0 if failure is None else EXIT_FAILED


def _status(args: argparse.Namespace) -> int:
    cfg = config_module.load(args.config)
    client = _client(cfg)
    status = asyncio.run(_run_status(client, args.timeout))
    if args.json:
        print(printable_json(status, ensure_ascii=False, default=str))
    else:
        print(f"Local Module {status['url']}")
        _print_status(status)
    return 0 if status.get("reachable") else EXIT_FAILED
