"""markd.secrets: files and systemd credentials, trailing newline, clear errors, no leaks."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from markd.errors import ConfigError
from markd.secrets import load_secret

TOKEN = "3f2c8a1e-5b6d-4e7f-9a0b-1c2d3e4f5a6b"


@pytest.mark.parametrize("ending", ["", "\n", "\r\n"])
def test_one_trailing_newline_is_not_part_of_the_secret(tmp_path: Path, ending: str) -> None:
    path = tmp_path / "token"
    path.write_bytes((TOKEN + ending).encode())
    secret = load_secret(str(path), "crpt-token", what="[check.online] token_file")
    assert secret is not None and secret.reveal() == TOKEN
    assert TOKEN not in repr(secret) and TOKEN not in str(secret) and str(path) in repr(secret)


def test_systemd_credential_when_no_file_is_configured(tmp_path: Path) -> None:
    (tmp_path / "lm-password").write_text("s3cret\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    secret = load_secret("", "lm-password", what="Local Module password", environ=env)
    assert secret is not None and secret.reveal() == "s3cret"
    assert load_secret("", "tspiot-token", what="x", required=False, environ=env) is None
    with pytest.raises(ConfigError) as err:
        load_secret("", "crpt-token", what="[check.online] token_file", environ={})
    assert "crpt-token" in str(err.value) and "LoadCredential" in str(err.value)


@pytest.mark.parametrize(
    "content,complaint",
    [
        (b"", "is empty"),
        (b"\n", "is empty"),
        (b"TOPSECRET\nsecond\n", "more than one line"),
        (b"\xff\xfe", "not UTF-8"),
        (b"x" * 5000, "too large"),
    ],
)
def test_bad_secret_files_name_the_file_never_the_value(
    tmp_path: Path, content: bytes, complaint: str
) -> None:
    path = tmp_path / "token"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_secret(str(path), "crpt-token", what="token")
    assert complaint in str(err.value) and str(path) in str(err.value)
    assert "TOPSECRET" not in str(err.value) and "xxxxxxxx" not in str(err.value)


def test_missing_file_and_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_secret(str(tmp_path / "nope"), "crpt-token", what="token")
    assert "nope" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_secret(str(tmp_path), "crpt-token", what="token")
    assert "not a regular file" in str(err.value)


def test_outside_the_service_the_credstore_file_is_read(tmp_path: Path) -> None:
    # markctl in a root shell has no $CREDENTIALS_DIRECTORY: it reads the file the unit's
    # LoadCredential=NAME:markd.NAME would load.
    (tmp_path / "markd.lm-password").write_text("s3cret\n")
    environ = {"MARKD_CREDSTORE": str(tmp_path)}
    secret = load_secret("", "lm-password", what="[check.local_module]", environ=environ)
    assert secret is not None and secret.reveal() == "s3cret"
    assert load_secret("", "crpt-token", what="x", required=False, environ=environ) is None
    with pytest.raises(ConfigError, match="markd.crpt-token"):
        load_secret("", "crpt-token", what="[check.online]", environ=environ)
    # Under systemd the credentials directory alone counts.
    environ["CREDENTIALS_DIRECTORY"] = str(tmp_path / "none")
    assert load_secret("", "lm-password", what="x", required=False, environ=environ) is None


def _as_nobody(call: Callable[[], object]) -> str:
    """Run ``call`` in a forked child that has become nobody (65534); what it raised or
    returned, as text. In process, so that no interpreter has to be executed as nobody."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        try:
            os.close(read_end)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            try:
                answer = f"returned {call()!r}"
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                answer = f"{type(exc).__name__}: {exc}"
            os.write(write_end, answer.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(pid, 0)
    return answer


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory anyone may enter (pytest's own are root's alone, mode 0700)."""
    with tempfile.TemporaryDirectory(prefix="markd-secrets-") as name:
        os.chmod(name, 0o755)
        yield Path(name)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")


@needs_root
@pytest.mark.parametrize("required", [True, False])
def test_a_credential_store_only_root_may_enter_is_a_config_error(
    open_dir: Path, required: bool
) -> None:
    # markctl config check by hand as a user: /etc/credstore is root's, mode 0700.
    store = open_dir / "credstore"
    store.mkdir(mode=0o755)
    (store / "markd.crpt-token").write_text(TOKEN + "\n")
    (store / "markd.crpt-token").chmod(0o644)
    environ = {"MARKD_CREDSTORE": str(store)}

    def read() -> object:
        secret = load_secret(
            "", "crpt-token", what="[check.online] token_file", required=required, environ=environ
        )
        return None if secret is None else secret.reveal() == TOKEN

    # The child reaches the store while it is open to all ...
    assert _as_nobody(read) == "returned True"
    # ... and is refused, in words, once it is root's alone.
    store.chmod(0o700)
    assert _as_nobody(read) == (
        f"ConfigError: [check.online] token_file: cannot read {store}/markd.crpt-token: "
        "Permission denied (the credential store is root's: run as root)"
    )


@needs_root
def test_a_secret_file_in_a_directory_the_user_may_not_enter_is_a_config_error(
    open_dir: Path,
) -> None:
    private = open_dir / "private"
    private.mkdir(mode=0o700)
    (private / "token").write_text(TOKEN + "\n")

    answer = _as_nobody(lambda: load_secret(str(private / "token"), "crpt-token", what="token"))
    assert answer == f"ConfigError: token: cannot read {private}/token: Permission denied"
