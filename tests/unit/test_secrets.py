"""markd.secrets: files and systemd credentials, trailing newline, clear errors, no leaks."""

from __future__ import annotations

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
