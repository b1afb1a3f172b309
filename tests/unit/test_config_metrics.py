"""``[metrics]``: the metrics listener's keys, and every refusal naming its key (docs/metrics.md,
"Scraping"; docs/configuration.md, "Metrics")."""

from __future__ import annotations

from pathlib import Path

import pytest

from markd import config
from markd.errors import ConfigError
from markd.listen import listen_overlap

TOKEN = "scrape-5b7e0c2d9a41"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def main(tmp_path: Path) -> Path:
    return tmp_path / "markd.toml"


@pytest.fixture
def no_credentials(tmp_path: Path) -> dict[str, str]:
    """An environment without systemd credentials and with an empty credential store."""
    store = tmp_path / "credstore"
    store.mkdir()
    return {"MARKD_CREDSTORE": str(store)}


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    return write(tmp_path / "metrics-token", TOKEN + "\n")


def problems_of(path: Path, **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config.load(path, **kwargs)  # type: ignore[arg-type]
    return caught.value.problems


def test_metrics_listener_is_off_by_default_and_needs_no_token(
    main: Path, no_credentials: dict[str, str]
) -> None:
    write(main, "[api]\nenabled = true\n")

    loaded = config.load(main, for_service=True, environ=no_credentials)

    assert loaded.metrics == config.MetricsConfig()
    assert (loaded.metrics.listen, loaded.metrics.allow_remote) == ("", False)
    assert loaded.metrics.token_file == ""


def test_metrics_listen_with_its_token_loads(main: Path, token_file: Path) -> None:
    write(main, f'[metrics]\nlisten = "127.0.0.1:9391"\ntoken_file = "{token_file}"\n')

    loaded = config.load(main, for_service=True, environ={})

    assert loaded.metrics.listen == "127.0.0.1:9391"


@pytest.mark.parametrize("value", ["9391", "127.0.0.1", "kiosk.local:9391", "::1:9391", ":x"])
def test_a_bad_metrics_address_names_the_key_and_the_form(main: Path, value: str) -> None:
    write(main, f'[metrics]\nlisten = "{value}"\n')

    (problem,) = problems_of(main)

    assert problem.startswith(f"{main}:2: [metrics] listen: expected HOST:PORT")
    assert repr(value) in problem


def test_a_remote_metrics_address_needs_allow_remote(main: Path, token_file: Path) -> None:
    text = f'[metrics]\nlisten = "192.0.2.7:9391"\ntoken_file = "{token_file}"\n'
    write(main, text)

    (problem,) = problems_of(main, for_service=True, environ={})

    assert problem == (
        f"{main}:2: [metrics] listen: 192.0.2.7 is not a loopback address; the metrics token "
        "would cross the network in clear text. Use 127.0.0.1, or set "
        "[metrics] allow_remote = true."
    )
    # [api] allow_remote is another section's key: it does not open this listener.
    write(main, f"[api]\nallow_remote = true\n{text}")
    assert len(problems_of(main)) == 1
    write(main, text + "allow_remote = true\n")
    assert config.load(main, for_service=True, environ={}).metrics.allow_remote is True


def test_metrics_listen_without_a_token_is_refused_naming_the_credential(
    main: Path, no_credentials: dict[str, str], tmp_path: Path
) -> None:
    write(main, '[metrics]\nlisten = "127.0.0.1:9391"\n')

    (problem,) = problems_of(main, for_service=True, environ=no_credentials)

    assert problem.startswith(f"{main}:1: [metrics] token_file (metrics listener): no secret")
    assert "'metrics-token'" in problem and "/etc/credstore/markd.metrics-token" in problem
    # The API's token is not the metrics listener's: its credential alone does not do.
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    write(credentials / "api-token", "api-secret\n")
    environ = {**no_credentials, "CREDENTIALS_DIRECTORY": str(credentials)}
    assert len(problems_of(main, for_service=True, environ=environ)) == 1
    write(credentials / "metrics-token", TOKEN + "\n")
    assert config.load(main, for_service=True, environ=environ).metrics.token_file == ""


def test_the_metrics_token_is_also_found_in_the_credential_store(
    main: Path, no_credentials: dict[str, str]
) -> None:
    write(main, '[metrics]\nlisten = "127.0.0.1:9391"\n')
    write(Path(no_credentials["MARKD_CREDSTORE"], "markd.metrics-token"), TOKEN + "\n")

    assert config.load(main, for_service=True, environ=no_credentials).metrics.listen


@pytest.mark.parametrize(
    ("case", "expected"),
    [("missing", "cannot read"), ("empty", "is empty"), ("directory", "not a regular file")],
)
def test_a_metrics_token_file_that_cannot_serve_is_refused_without_its_value(
    main: Path, tmp_path: Path, case: str, expected: str
) -> None:
    path = tmp_path / "token"
    if case == "empty":
        write(path, "\n")
    elif case == "directory":
        path.mkdir()
    write(main, f'[metrics]\nlisten = "127.0.0.1:9391"\ntoken_file = "{path}"\n')

    (problem,) = problems_of(main, for_service=True, environ={})

    assert problem.startswith(f"{main}:3: [metrics] token_file (metrics listener): ")
    assert str(path) in problem and expected in problem


def test_a_token_file_is_not_read_while_the_listener_is_off(main: Path, tmp_path: Path) -> None:
    write(main, f'[metrics]\ntoken_file = "{tmp_path / "nowhere"}"\n')

    assert config.load(main, for_service=True, environ={}).metrics.listen == ""


@pytest.mark.parametrize(
    ("api", "metrics"),
    [
        ("127.0.0.1:8391", "127.0.0.1:8391"),
        ("localhost:8391", "127.0.0.1:8391"),
        ("0.0.0.0:8391", "127.0.0.1:8391"),
        ("[::]:8391", "127.0.0.1:8391"),
    ],
)
def test_metrics_listen_may_not_take_the_api_port(
    main: Path, token_file: Path, api: str, metrics: str, tmp_path: Path
) -> None:
    api_token = write(tmp_path / "api-token", "api-4c1d9e7b2f60\n")
    write(
        main,
        f'[api]\nlisten = "{api}"\nallow_remote = true\ntoken_file = "{api_token}"\n\n'
        f'[metrics]\nlisten = "{metrics}"\ntoken_file = "{token_file}"\n',
    )

    (problem,) = problems_of(main, for_service=True, environ={})

    assert problem == (
        f"{main}:7: [metrics] listen: {metrics} takes the port of [api] listen ({api}); "
        "give the metrics listener a port of its own"
    )


def test_metrics_listen_on_another_port_than_the_api(
    main: Path, token_file: Path, tmp_path: Path
) -> None:
    api_token = write(tmp_path / "api-token", "api-4c1d9e7b2f60\n")
    write(
        main,
        f'[api]\nlisten = "127.0.0.1:8391"\ntoken_file = "{api_token}"\n\n'
        f'[metrics]\nlisten = "127.0.0.1:9391"\ntoken_file = "{token_file}"\n',
    )

    loaded = config.load(main, for_service=True, environ={})

    assert (loaded.api.listen, loaded.metrics.listen) == ("127.0.0.1:8391", "127.0.0.1:9391")


def test_the_metrics_token_may_not_be_the_api_token(
    main: Path, token_file: Path, tmp_path: Path, no_credentials: dict[str, str]
) -> None:
    """Whoever scrapes holds the metrics token: were it the API's, a Prometheus server could
    drive the till. The same text in two files, or in the two credentials, is refused too."""
    copy = write(tmp_path / "api-token", TOKEN + "\n")
    write(
        main,
        f'[api]\nlisten = "127.0.0.1:8391"\ntoken_file = "{copy}"\n\n'
        f'[metrics]\nlisten = "127.0.0.1:9391"\ntoken_file = "{token_file}"\n',
    )
    found = problems_of(main, for_service=True, environ={})
    assert [p for p in found if "token of its own" in p and "[metrics] token_file" in p]
    assert not [p for p in found if TOKEN in p]

    store = Path(no_credentials["MARKD_CREDSTORE"])
    write(store / "markd.api-token", TOKEN + "\n").chmod(0o600)
    write(store / "markd.metrics-token", TOKEN + "\n").chmod(0o600)
    write(main, '[api]\nlisten = "127.0.0.1:8391"\n\n[metrics]\nlisten = "127.0.0.1:9391"\n')
    found = problems_of(main, for_service=True, environ=no_credentials)
    assert [p for p in found if "token of its own" in p]


def test_the_metrics_listener_needs_the_api_server(main: Path, token_file: Path) -> None:
    write(
        main,
        "[api]\nenabled = false\n\n"
        f'[metrics]\nlisten = "127.0.0.1:9391"\ntoken_file = "{token_file}"\n',
    )

    assert problems_of(main) == [
        f"{main}:5: [metrics] listen: the metrics listener needs [api] enabled = true"
    ]


@pytest.mark.parametrize(
    ("first", "second", "overlap"),
    [
        ("127.0.0.1:9391", "127.0.0.1:9391", True),
        ("127.0.0.1:9391", "127.0.0.1:9392", False),
        ("127.0.0.1:9391", "127.0.0.2:9391", False),
        ("0.0.0.0:9391", "10.0.0.5:9391", True),
        ("0.0.0.0:9391", "[::1]:9391", False),
        ("[::]:9391", "127.0.0.1:9391", True),
        ("127.0.0.1:0", "127.0.0.1:0", False),
    ],
)
def test_listen_overlap(first: str, second: str, overlap: bool) -> None:
    assert listen_overlap(first, second) is overlap
    assert listen_overlap(second, first) is overlap


def test_the_example_of_docs_metrics_md_loads(main: Path) -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    scraping = text[text.index("## Scraping") :]
    example = scraping[scraping.index("```toml\n") + 8 : scraping.index("```\n")]
    write(main, example)

    loaded = config.load(main)

    assert loaded.metrics.listen == "10.20.0.17:9391" and loaded.metrics.allow_remote
    # Its token comes from the credential store, as the comment says.
    (main.parent / "markd.metrics-token").write_text(TOKEN + "\n")
    environ = {"MARKD_CREDSTORE": str(main.parent)}
    assert config.load(main, for_service=True, environ=environ).metrics.token_file == ""


@pytest.mark.parametrize(
    ("api", "line"),
    [
        ("screen = true\n", 2),
        ('listen = "0.0.0.0:8391"\nallow_remote = true\nscreen = true\n', 4),
    ],
)
def test_the_customer_screen_needs_a_loopback_listener(
    main: Path, token_file: Path, api: str, line: int
) -> None:
    write(main, f'[api]\ntoken_file = "{token_file}"\n{api}')

    assert problems_of(main) == [
        f"{main}:{line + 1}: [api] screen: needs [api] listen on a loopback address "
        "(127.0.0.1:8391): the customer screen is for the till's own browser"
    ]
