"""Proxy settings: which HTTP proxy a request goes through, and which targets go direct.

Shop networks often reach the internet only through an HTTP proxy (domain.md §3.8). markd
speaks to one proxy over plain HTTP:

* an ``http://`` target is requested from the proxy in absolute form
  (``GET http://host:port/path HTTP/1.1``);
* an ``https://`` target goes through a ``CONNECT host:port`` tunnel, and TLS with the target
  runs inside it, so the proxy never sees the request or the target's certificate checks.

Accepted values of the setting (:meth:`ProxySettings.parse`)
------------------------------------------------------------

``""``
    No proxy: every target is reached directly.
``"env"``
    The environment decides, as most clients do: ``https_proxy``/``HTTPS_PROXY`` for
    ``https://`` targets, ``http_proxy``/``HTTP_PROXY`` for ``http://`` targets (the lower-case
    name wins when both are set, as in curl and urllib). ``no_proxy``/``NO_PROXY``, when set,
    *replaces* the configured direct list (loopback then goes through the proxy unless the
    variable names it). A variable set to the empty string counts as unset. No proxy variable
    at all means no proxy. In the variables the scheme may be left out (``proxy:3128``), and
    credentials may ride in the URL (``http://user:password@proxy:3128``) when none are
    configured, because that is where other programs on the same till expect them.
``"http://HOST:PORT"``
    One proxy for both kinds of target. The port is required: proxies listen on 3128, 8080,
    8888 or 80 depending on the product, and a guessed port would only fail later with a
    less clear message. A bare trailing ``/`` is tolerated; any other path, a query, a
    fragment or user information is refused. ``https://`` proxies (TLS to the proxy itself)
    and SOCKS are not supported.

Credentials never go in the URL of the setting: they come as a :class:`~markd.secrets.Secret`
holding ``user:password`` (the password may contain ``:``), from a file or the systemd
credential ``proxy-auth``, and are sent as HTTP Basic (RFC 7617) in ``Proxy-Authorization``.
They appear in no ``repr``, no :meth:`ProxySettings.describe` and no error message.

The direct list (``no_proxy``)
------------------------------

Each entry is one of:

* ``*`` — every target goes direct (the proxy is effectively off);
* a host name, matched as a domain suffix: ``example.com`` and ``.example.com`` (and
  ``*.example.com``) all match ``example.com`` and ``a.example.com``, but not
  ``badexample.com``, as curl does;
* an IP address, IPv4 or IPv6 (brackets allowed: ``[::1]``), matching that address only;
* a CIDR network (``10.0.0.0/8``, ``fd00::/8``), matching IP-literal targets inside it.

Matching ignores case and a trailing dot. It is done on the target as written: a host name is
never resolved (no DNS in the decision), so ``127.0.0.0/8`` covers ``http://127.0.0.1`` but not
``http://localhost`` — that is why the default list also names ``localhost``. Ports are not
part of an entry (``example.com:8080`` is refused): an entry covers every port of its host.
The default list, :data:`DEFAULT_NO_PROXY`, keeps the loopback services (the Local Module on
``:5995``, the ТС ПИоТ on ``:51401``) off the proxy.

This module imports nothing from the check clients or the store: both use it.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from markd.errors import ConfigError
from markd.secrets import Secret

log = logging.getLogger(__name__)

#: Targets reached directly unless configured otherwise: loopback, by name and by address.
DEFAULT_NO_PROXY: tuple[str, ...] = ("localhost", "127.0.0.0/8", "::1")

#: What :meth:`ProxySettings.parse` accepts, restated in every error message about the value.
ACCEPTED_FORMS = '"" (no proxy), "env" (HTTPS_PROXY, HTTP_PROXY, NO_PROXY) or http://HOST:PORT'
_NO_PROXY_FORMS = (
    "'*', a host or domain name (example.com, .example.com), an IP address, "
    "or a CIDR network (10.0.0.0/8); no ports"
)
_CREDENTIAL_HINT = (
    "proxy credentials belong in the proxy credential file (the systemd credential "
    "'proxy-auth'), as user:password, never in the URL"
)
# One DNS label: letters, digits and inner hyphens. Underscores are tolerated because some
# internal zones use them and a proxy name is not ours to police.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*://", re.I)


@dataclass(frozen=True)
class ProxyEndpoint:
    """One proxy: where to open the TCP connection."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``http://host:port``: the form urllib's proxy handling and the logs use."""
        return f"http://{self}"


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class _DirectRules:
    """``no_proxy`` entries sorted by kind, so matching does not re-parse them."""

    everything: bool
    suffixes: tuple[str, ...]
    addresses: frozenset[Address]
    networks: tuple[Network, ...]


@dataclass(frozen=True)
class ProxySettings:
    """Which proxy each target goes through. Build with :meth:`parse`."""

    #: Proxy for ``http://`` targets (absolute-form requests); None: those go direct.
    http: ProxyEndpoint | None
    #: Proxy for ``https://`` targets (``CONNECT`` tunnel); None: those go direct.
    https: ProxyEndpoint | None
    #: Targets reached directly (see the module docstring); kept normalised (lower case).
    no_proxy: tuple[str, ...] = DEFAULT_NO_PROXY
    #: ``user:password`` for Basic authentication; its ``repr`` shows only where it came from.
    credentials: Secret | None = None
    _rules: _DirectRules = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        entries = tuple(_normalise_entry(e) for e in self.no_proxy if e.strip())
        problem = no_proxy_problem(entries)
        if problem is not None:
            raise ConfigError(f"proxy no_proxy: {problem}")
        if self.credentials is not None and ":" not in self.credentials.reveal():
            raise ConfigError(
                f"proxy credentials ({self.credentials.origin}) must be user:password"
            )
        object.__setattr__(self, "no_proxy", entries)
        object.__setattr__(self, "_rules", _compile(entries))

    @classmethod
    def parse(
        cls,
        value: str,
        *,
        no_proxy: Sequence[str] = DEFAULT_NO_PROXY,
        credentials: Secret | None = None,
        environ: Mapping[str, str] = os.environ,
        where: str = "proxy",
    ) -> ProxySettings | None:
        """The settings for ``value`` (see the module docstring), or None for "no proxy".

        ``where`` names the setting in error messages (``[check] proxy``, a file and line).
        Raises :class:`~markd.errors.ConfigError` for anything else; the message restates the
        accepted forms and never repeats a password.
        """
        text = value.strip()
        if not text:
            return None
        if text.lower() == "env":
            return cls._from_environment(no_proxy, credentials, environ, where)
        endpoint, userinfo = _parse_proxy_url(text, where, scheme_required=True)
        if userinfo is not None:
            raise ConfigError(f"{where}: {_CREDENTIAL_HINT}; the URL was {_shown(text)}")
        problem = no_proxy_problem(no_proxy)
        if problem is not None:
            raise ConfigError(f"{where} no_proxy: {problem}")
        return cls(http=endpoint, https=endpoint, no_proxy=tuple(no_proxy), credentials=credentials)

    @classmethod
    def _from_environment(
        cls,
        no_proxy: Sequence[str],
        credentials: Secret | None,
        environ: Mapping[str, str],
        where: str,
    ) -> ProxySettings | None:
        endpoints: dict[str, ProxyEndpoint | None] = {}
        found: list[tuple[str, str]] = []  # (variable, decoded "user:password")
        for scheme in ("http", "https"):
            name, raw = _variable(environ, f"{scheme}_proxy")
            if name is None:
                endpoints[scheme] = None
                continue
            endpoint, userinfo = _parse_proxy_url(
                raw, f"{where} (from {name})", scheme_required=False
            )
            endpoints[scheme] = endpoint
            if userinfo is not None:
                found.append((name, userinfo))
        if endpoints["http"] is None and endpoints["https"] is None:
            return None
        if credentials is None and found:
            if len({secret for _, secret in found}) > 1:
                raise ConfigError(
                    f"{where}: {found[0][0]} and {found[1][0]} carry different credentials; "
                    "markd sends one set to its proxy: " + _CREDENTIAL_HINT
                )
            credentials = Secret(found[0][1], f"the user information of ${found[0][0]}")
        problem = no_proxy_problem(no_proxy)
        if problem is not None:
            raise ConfigError(f"{where} no_proxy: {problem}")
        entries = list(no_proxy)
        name, raw = _variable(environ, "no_proxy")
        if name is not None:
            # The variable is written for every program on the till, in dialects markd does
            # not read (ports, "192.168.*", "<local>"): what markd can use is added to the
            # configured list, the rest is skipped with a warning, never a failed start.
            usable, skipped = _lenient_entries(raw)
            entries += [entry for entry in usable if entry not in entries]
            if skipped:
                log.warning(
                    "%s: %s entries markd cannot use are ignored: %s",
                    where,
                    name,
                    ", ".join(repr(e[:60]) for e in skipped[:10]),
                )
        return cls(
            http=endpoints["http"],
            https=endpoints["https"],
            no_proxy=tuple(entries),
            credentials=credentials,
        )

    def route(self, scheme: str, host: str, port: int) -> ProxyEndpoint | None:
        """The proxy for a request to ``scheme://host:port``; None: connect directly.

        ``port`` does not take part in the decision today (entries carry no ports) but is
        part of the question so callers need not change when that does.
        """
        del port
        endpoint = {"http": self.http, "https": self.https}.get(scheme.lower())
        if endpoint is None or self.bypasses(host):
            return None
        return endpoint

    def bypasses(self, host: str) -> bool:
        """True when ``host`` is on the direct list."""
        rules = self._rules
        if rules.everything:
            return True
        name = host.strip().strip("[]").lower().rstrip(".")
        try:
            address: Address | None = ipaddress.ip_address(name)
        except ValueError:
            address = None
        if address is not None:
            if address in rules.addresses:
                return True
            # An IPv4 target never belongs to an IPv6 network and vice versa; ``in`` says
            # False for a mismatch of versions, which is what we want.
            return any(address in network for network in rules.networks)
        return any(name == suffix or name.endswith("." + suffix) for suffix in rules.suffixes)

    def authorization(self) -> str | None:
        """The ``Proxy-Authorization`` value (``Basic …``), or None without credentials."""
        if self.credentials is None:
            return None
        token = base64.b64encode(self.credentials.reveal().encode("utf-8")).decode("ascii")
        return f"Basic {token}"

    def describe(self) -> str:
        """A one-line summary for status output and logs; never the credentials."""
        if self.http == self.https:
            text = self.http.url if self.http is not None else "no proxy"
        else:
            parts = []
            if self.http is not None:
                parts.append(f"http targets via {self.http.url}")
            if self.https is not None:
                parts.append(f"https targets via {self.https.url}")
            text = ", ".join(parts) or "no proxy"
        if self.credentials is not None:
            text += " with Basic authentication"
        if self.no_proxy:
            text += "; direct: " + ", ".join(self.no_proxy)
        return text


def proxy_problem(value: str) -> str | None:
    """For configuration checks: None when :meth:`ProxySettings.parse` accepts ``value`` as
    written (``env`` is accepted without looking at the environment), else what is wrong."""
    text = value.strip()
    if not text or text.lower() == "env":
        return None
    try:
        ProxySettings.parse(text, where="proxy", environ={})
    except ConfigError as exc:
        return str(exc).removeprefix("proxy: ")
    return None


def no_proxy_problem(entries: Iterable[str]) -> str | None:
    """None when every ``no_proxy`` entry is usable, else a message naming the bad ones."""
    bad = []
    for entry in entries:
        if not entry.strip():
            continue
        if _entry_kind(_normalise_entry(entry)) is None:
            bad.append(repr(entry.strip()[:80]))
    if not bad:
        return None
    return f"not usable: {', '.join(bad)}; each entry must be {_NO_PROXY_FORMS}"


# -- internals -----------------------------------------------------------------------------------


def _variable(environ: Mapping[str, str], lower: str) -> tuple[str | None, str]:
    """The first non-empty of ``lower`` and ``LOWER`` in ``environ``: (name, value)."""
    for name in (lower, lower.upper()):
        raw = environ.get(name, "").strip()
        if raw:
            return name, raw
    return None, ""


def _shown(text: str) -> str:
    """``text`` safe to quote: anything before an ``@`` (user information) becomes ``***``."""
    if "@" not in text:
        return repr(text[:120])
    scheme = _SCHEME.match(text)
    prefix = scheme.group(0) if scheme else ""
    return repr(prefix + "***@" + text.rpartition("@")[2][:120])


def _parse_proxy_url(
    text: str, where: str, *, scheme_required: bool
) -> tuple[ProxyEndpoint, str | None]:
    """``(endpoint, "user:password" or None)`` of a proxy URL; ConfigError otherwise."""
    scheme = _SCHEME.match(text)
    if scheme is None:
        if scheme_required:
            raise ConfigError(f"{where}: {_shown(text)} is not one of {ACCEPTED_FORMS}")
        text = "http://" + text  # the environment convention: a bare host:port is HTTP
    name = text.split("://", 1)[0].lower()
    if name == "https":
        raise ConfigError(
            f"{where}: https:// proxies (TLS to the proxy itself) are not supported; give the "
            f"proxy as http://HOST:PORT: https targets are still encrypted end to end inside "
            f"the CONNECT tunnel. Accepted: {ACCEPTED_FORMS}"
        )
    if name != "http":
        raise ConfigError(
            f"{where}: {name}:// proxies are not supported (only HTTP proxies). "
            f"Accepted: {ACCEPTED_FORMS}"
        )
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ConfigError(
            f"{where}: {_shown(text)} has an unusable host or port; accepted: {ACCEPTED_FORMS}"
        ) from None
    if parts.path not in ("", "/") or parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ConfigError(
            f"{where}: a proxy URL has no path, query or fragment: {_shown(text)}; "
            f"accepted: {ACCEPTED_FORMS}"
        )
    host = (parts.hostname or "").rstrip(".")
    if not host or not _valid_host(host):
        raise ConfigError(
            f"{where}: {_shown(text)} names no usable host; accepted: {ACCEPTED_FORMS}"
        )
    if port is None or port == 0:
        raise ConfigError(
            f"{where}: {_shown(text)} needs an explicit port (proxies listen on 3128, 8080, "
            f"8888 …: markd does not guess); accepted: {ACCEPTED_FORMS}"
        )
    userinfo = None
    if parts.username is not None or parts.password is not None:
        userinfo = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    return ProxyEndpoint(host, port), userinfo


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return _HOST_NAME.fullmatch(host.lower()) is not None
    return True


def _normalise_entry(entry: str) -> str:
    text = entry.strip().lower().rstrip(".")
    if text.startswith("[") and "]" in text:
        # [::1] or [fd00::]/8: brackets are URL syntax, not part of the address.
        inside, _, rest = text[1:].partition("]")
        text = inside + rest
    return text


def _entry_kind(entry: str) -> str | None:
    """``everything``, ``network``, ``address`` or ``suffix``; None for an unusable entry."""
    if entry == "*":
        return "everything"
    if "/" in entry:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return None
        return "network"
    try:
        ipaddress.ip_address(entry)
    except ValueError:
        pass
    else:
        return "address"
    name = entry.removeprefix("*.").removeprefix(".")
    return "suffix" if _HOST_NAME.fullmatch(name) else None


def _lenient_entries(raw: str) -> tuple[list[str], list[str]]:
    """``NO_PROXY`` as other programs write it: (entries markd uses, entries it skips). A port
    is dropped (``host:8080`` → ``host``, ``[::1]:80`` → ``::1``): an entry covers every port."""
    usable: list[str] = []
    skipped: list[str] = []
    for item in raw.split(","):
        entry = item.strip()
        if not entry:
            continue
        bracketed = re.fullmatch(r"\[([^\]]+)\]:\d+", entry)
        text = _normalise_entry(bracketed.group(1) if bracketed else entry)
        if _entry_kind(text) is None and text.count(":") == 1:
            host, _, port = text.partition(":")
            if port.isdigit():
                text = host
        if _entry_kind(text) is None:
            skipped.append(entry)
        else:
            usable.append(text)
    return usable, skipped


def _compile(entries: Iterable[str]) -> _DirectRules:
    everything = False
    suffixes: list[str] = []
    addresses: set[Address] = set()
    networks: list[Network] = []
    for entry in entries:
        kind = _entry_kind(entry)
        if kind == "everything":
            everything = True
        elif kind == "network":
            networks.append(ipaddress.ip_network(entry, strict=False))
        elif kind == "address":
            addresses.add(ipaddress.ip_address(entry))
        elif kind == "suffix":
            suffixes.append(entry.removeprefix("*.").removeprefix("."))
    return _DirectRules(everything, tuple(suffixes), frozenset(addresses), tuple(networks))
