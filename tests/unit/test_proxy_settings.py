"""markd.proxy: parsing the proxy setting, choosing direct or proxied per target, and keeping
the proxy's password out of every text."""

from __future__ import annotations

import base64

import pytest

from markd.errors import ConfigError
from markd.proxy import (
    DEFAULT_NO_PROXY,
    ProxyEndpoint,
    ProxySettings,
    no_proxy_problem,
    proxy_problem,
)
from markd.secrets import Secret

PASSWORD = "s3cr:et-Pw"  # holds a colon: only the first one separates user and password
CREDENTIALS = Secret(f"kiosk:{PASSWORD}", "test credential file")


def settings(no_proxy: tuple[str, ...] = DEFAULT_NO_PROXY) -> ProxySettings:
    parsed = ProxySettings.parse("http://10.0.0.1:3128", no_proxy=no_proxy, environ={})
    assert parsed is not None
    return parsed


def config_error(value: str, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as caught:
        ProxySettings.parse(value, **kwargs)  # type: ignore[arg-type]
    return str(caught.value)


# -- the setting --------------------------------------------------------------------------------


def test_empty_means_no_proxy_and_a_url_serves_both_schemes() -> None:
    assert ProxySettings.parse("", environ={}) is None
    assert ProxySettings.parse("   ", environ={}) is None
    parsed = settings()
    assert parsed.http == parsed.https == ProxyEndpoint("10.0.0.1", 3128)
    assert parsed.no_proxy == DEFAULT_NO_PROXY and parsed.credentials is None
    assert parsed.route("http", "example.com", 80) == ProxyEndpoint("10.0.0.1", 3128)
    assert parsed.route("https", "ismp.crpt.ru", 443) == ProxyEndpoint("10.0.0.1", 3128)
    assert parsed.route("ftp", "example.com", 21) is None


def test_host_names_and_ipv6_proxies_and_a_trailing_slash() -> None:
    named = ProxySettings.parse("HTTP://Proxy.Shop.Local:8080/", environ={})
    assert named is not None and named.http == ProxyEndpoint("proxy.shop.local", 8080)
    v6 = ProxySettings.parse("http://[fd00::1]:3128", environ={})
    assert v6 is not None and str(v6.http) == "[fd00::1]:3128"
    assert v6.http is not None and v6.http.url == "http://[fd00::1]:3128"
    assert str(ProxyEndpoint("10.0.0.1", 3128)) == "10.0.0.1:3128"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://proxy:3128", "https:// proxies (TLS to the proxy itself) are not supported"),
        ("socks5://proxy:1080", "socks5:// proxies are not supported"),
        ("proxy:3128", "is not one of"),
        ("garbage", "is not one of"),
        ("http://proxy", "needs an explicit port"),
        ("http://proxy:0", "needs an explicit port"),
        ("http://proxy:70000", "unusable host or port"),
        ("http://proxy:3128/path", "no path, query or fragment"),
        ("http://proxy:3128?a=b", "no path, query or fragment"),
        ("http://proxy:3128#x", "no path, query or fragment"),
        ("http://:3128", "names no usable host"),
        ("http://bad_host!:3128", "names no usable host"),
    ],
)
def test_wrong_values_name_the_setting_and_restate_the_forms(value: str, expected: str) -> None:
    message = config_error(value, where="[check] proxy (markd.toml line 7)", environ={})
    assert message.startswith("[check] proxy (markd.toml line 7): ")
    assert expected in message
    assert "http://HOST:PORT" in message and '"env"' in message
    assert proxy_problem(value) is not None and expected in (proxy_problem(value) or "")


@pytest.mark.parametrize(
    "value",
    [f"http://kiosk:{PASSWORD}@proxy:3128", "http://kiosk:p%40ss@proxy:3128", "http://kiosk@p:1"],
)
def test_credentials_in_the_url_are_refused_without_repeating_them(value: str) -> None:
    message = config_error(value, where="proxy", environ={})
    assert "proxy credential file" in message and "'proxy-auth'" in message
    assert "never in the URL" in message
    assert PASSWORD not in message and "p%40ss" not in message and "kiosk" not in message
    assert "***@" in message


def test_a_password_is_not_echoed_by_other_errors_either() -> None:
    for value in (f"http://kiosk:{PASSWORD}@proxy/x", f"https://kiosk:{PASSWORD}@proxy:1"):
        message = config_error(value, environ={})
        assert PASSWORD not in message and "s3cr" not in message


def test_proxy_problem_accepts_the_good_forms() -> None:
    for value in ("", "env", "ENV", "http://10.0.0.1:3128", "http://proxy.local:8080/"):
        assert proxy_problem(value) is None, value


# -- the direct list ------------------------------------------------------------------------------


def test_the_default_keeps_loopback_direct() -> None:
    parsed = settings()
    for host in ("localhost", "LOCALHOST", "localhost.", "127.0.0.1", "127.1.2.3", "::1", "[::1]"):
        assert parsed.route("http", host, 5995) is None, host
        assert parsed.route("https", host, 51401) is None, host
    assert parsed.route("https", "::2", 443) is not None
    assert parsed.route("https", "128.0.0.1", 443) is not None
    # No DNS in the decision: a name that happens to resolve to loopback is not matched.
    assert parsed.route("http", "loopback.example", 80) is not None


def test_an_empty_list_sends_loopback_through_the_proxy() -> None:
    parsed = settings(no_proxy=())
    assert parsed.route("http", "127.0.0.1", 5995) == ProxyEndpoint("10.0.0.1", 3128)
    assert parsed.route("https", "localhost", 51401) is not None


@pytest.mark.parametrize("entry", ["example.com", ".example.com", "*.example.com", "EXAMPLE.COM."])
def test_domain_suffixes_match_the_domain_and_below_it(entry: str) -> None:
    parsed = settings(no_proxy=(entry,))
    for host in ("example.com", "a.example.com", "b.a.EXAMPLE.com", "example.com."):
        assert parsed.route("https", host, 443) is None, host
    for host in ("badexample.com", "example.com.evil", "example.org"):
        assert parsed.route("https", host, 443) is not None, host


def test_addresses_and_networks() -> None:
    parsed = settings(no_proxy=("10.0.0.0/8", "192.168.1.5", "[fd00::]/8", "2001:db8::7"))
    for host in ("10.1.2.3", "192.168.1.5", "fd12::1", "[fd12::1]", "2001:DB8::7"):
        assert parsed.route("http", host, 80) is None, host
    for host in ("11.0.0.1", "192.168.1.6", "fe80::1", "2001:db8::8", "ten.example"):
        assert parsed.route("http", host, 80) is not None, host
    # An IPv4 target never matches an IPv6 network, nor a name an address.
    assert settings(no_proxy=("::/0",)).route("http", "10.0.0.1", 80) is not None
    assert settings(no_proxy=("10.0.0.1",)).route("http", "ten.example", 80) is not None


def test_star_sends_everything_direct() -> None:
    parsed = settings(no_proxy=("example.com", "*"))
    for host in ("ismp.crpt.ru", "8.8.8.8", "2001:db8::1"):
        assert parsed.route("https", host, 443) is None


@pytest.mark.parametrize("entry", ["example.com:8080", "10.0.0.0/33", "bad host", "a..b", "*x"])
def test_unusable_entries_are_refused_by_name(entry: str) -> None:
    problem = no_proxy_problem(["localhost", entry])
    assert problem is not None and repr(entry) in problem and "no ports" in problem
    message = config_error("http://p:1", no_proxy=["localhost", entry], where="[check] proxy")
    assert message.startswith("[check] proxy no_proxy:") and repr(entry) in message
    assert no_proxy_problem(["localhost", " ", "::1", "[::1]", "10.0.0.0/8", "*"]) is None


# -- the environment ------------------------------------------------------------------------------


def test_env_reads_both_spellings_and_no_proxy_adds_to_the_default() -> None:
    upper = ProxySettings.parse(
        "env",
        environ={"HTTP_PROXY": "http://10.0.0.1:3128", "HTTPS_PROXY": "10.0.0.2:8080"},
    )
    assert upper is not None
    assert upper.http == ProxyEndpoint("10.0.0.1", 3128)
    assert upper.https == ProxyEndpoint("10.0.0.2", 8080)  # a bare host:port is HTTP
    assert upper.no_proxy == DEFAULT_NO_PROXY
    lower = ProxySettings.parse(
        "env",
        environ={
            "https_proxy": "http://10.0.0.3:3128/",
            "HTTPS_PROXY": "http://10.0.0.9:1",  # the lower-case name wins
            "no_proxy": "crpt.ru, .shop.local,,10.0.0.0/8",
        },
    )
    assert lower is not None
    assert lower.http is None and lower.https == ProxyEndpoint("10.0.0.3", 3128)
    assert lower.no_proxy == (*DEFAULT_NO_PROXY, "crpt.ru", ".shop.local", "10.0.0.0/8")
    assert lower.route("https", "markirovka.crpt.ru", 443) is None
    # NO_PROXY adds to the configured list: loopback stays direct.
    assert lower.route("https", "127.0.0.1", 51401) is None
    assert lower.route("https", "cdn01.example", 443) == ProxyEndpoint("10.0.0.3", 3128)
    assert lower.route("http", "example.com", 80) is None  # no http proxy in the environment
    upper_no = ProxySettings.parse(
        "env", environ={"HTTPS_PROXY": "http://p:1", "NO_PROXY": "localhost"}, no_proxy=()
    )
    assert upper_no is not None and upper_no.no_proxy == ("localhost",)


def test_env_no_proxy_in_other_dialects_is_used_where_it_can_be_and_never_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    parsed = ProxySettings.parse(
        "env",
        environ={
            "https_proxy": "http://p:1",
            "no_proxy": "localhost:5995, [::1]:80, 192.168.*, <local>, shop.local:8080",
        },
        no_proxy=(),
    )
    assert parsed is not None
    assert parsed.no_proxy == ("localhost", "::1", "shop.local")  # ports dropped
    assert parsed.route("https", "shop.local", 443) is None
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "'192.168.*'" in warned and "'<local>'" in warned


def test_env_without_proxy_variables_means_no_proxy() -> None:
    assert ProxySettings.parse("env", environ={}) is None
    assert ProxySettings.parse("env", environ={"http_proxy": "", "NO_PROXY": "x"}) is None


def test_env_credentials_come_from_the_url_unless_configured() -> None:
    environ = {"https_proxy": f"http://kiosk:{PASSWORD.replace(':', '%3A')}@10.0.0.1:3128"}
    parsed = ProxySettings.parse("env", environ=environ)
    assert parsed is not None and parsed.credentials is not None
    assert parsed.credentials.reveal() == f"kiosk:{PASSWORD}"
    assert "https_proxy" in parsed.credentials.origin and PASSWORD not in repr(parsed)
    configured = Secret("other:pw", "file")
    chosen = ProxySettings.parse("env", environ=environ, credentials=configured)
    assert chosen is not None and chosen.credentials is configured


def test_env_errors_name_the_variable() -> None:
    message = config_error(
        "env", environ={"HTTPS_PROXY": f"https://kiosk:{PASSWORD}@p:1"}, where="[check] proxy"
    )
    assert "[check] proxy (from HTTPS_PROXY)" in message and "not supported" in message
    assert PASSWORD not in message
    message = config_error(
        "env", environ={"http_proxy": "http://u:a@p:1", "https_proxy": "http://u:b@p:1"}
    )
    assert "different credentials" in message and "u:a" not in message and "u:b" not in message


# -- credentials ----------------------------------------------------------------------------------


def test_basic_header_and_nothing_secret_in_repr_or_describe() -> None:
    parsed = ProxySettings.parse("http://10.0.0.1:3128", credentials=CREDENTIALS, environ={})
    assert parsed is not None
    header = parsed.authorization()
    assert header is not None and header.startswith("Basic ")
    assert base64.b64decode(header.removeprefix("Basic ")).decode() == f"kiosk:{PASSWORD}"
    for text in (repr(parsed), str(parsed), parsed.describe()):
        assert PASSWORD not in text and header.removeprefix("Basic ") not in text
    assert parsed.describe() == (
        "http://10.0.0.1:3128 with Basic authentication; direct: localhost, 127.0.0.0/8, ::1"
    )
    assert settings().authorization() is None
    assert settings(no_proxy=()).describe() == "http://10.0.0.1:3128"


def test_utf8_credentials_and_a_credential_without_a_colon() -> None:
    parsed = ProxySettings.parse(
        "http://p:1", credentials=Secret("кассир:пароль", "file"), environ={}
    )
    assert parsed is not None and parsed.authorization() == "Basic " + base64.b64encode(
        "кассир:пароль".encode()
    ).decode("ascii")
    message = config_error("http://p:1", credentials=Secret("onlyapassword42", "the file f"))
    assert "must be user:password" in message and "the file f" in message
    assert "onlyapassword42" not in message


def test_describe_with_different_proxies_per_scheme() -> None:
    parsed = ProxySettings.parse(
        "env",
        environ={"http_proxy": "http://a:1", "https_proxy": "http://b:2", "no_proxy": "*"},
        no_proxy=(),
    )
    assert parsed is not None
    assert parsed.describe() == (
        "http targets via http://a:1, https targets via http://b:2; direct: *"
    )
