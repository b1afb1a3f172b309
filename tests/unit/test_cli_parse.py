"""markctl parse: human and JSON output, stdin mode, exit codes, crypto hidden by default."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.unit.test_codes import PACK, SHOES, SIG44, WATER

from markd.cli import markctl

MARKCTL = Path(sys.executable).with_name("markctl")


def run(argv, capsys, stdin_text=None, monkeypatch=None):
    if stdin_text is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin_text.encode())))
    status = markctl.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_parse_json_fields(capsys):
    status, out, _ = run(["parse", SHOES.replace("\x1d", "\\u001d"), "--json"], capsys)
    assert status == 0
    data = json.loads(out)
    assert set(data) >= {
        "ki",
        "gtin",
        "serial",
        "crypto",
        "mrp_kopecks",
        "shape",
        "group",
        "repairs",
    }
    assert data["ki"] == "0104607809596237215<(q!mLp*jIb3"
    assert data["shape"] == "gs1-91-92"
    assert data["repairs"] == ["gs-escape"]
    assert SIG44 not in out and "FFD0" not in out and "km" not in data


def test_parse_show_crypto(capsys):
    status, out, _ = run(
        ["parse", SHOES.replace("\x1d", "<GS>"), "--json", "--show-crypto"], capsys
    )
    data = json.loads(out)
    assert status == 0
    assert data["crypto"] == {"91": "FFD0", "92": SIG44}
    assert data["km"] == SHOES


def test_parse_human_output(capsys):
    status, out, _ = run(["parse", PACK], capsys)
    assert status == 0
    assert "00000046233219!SX-RqR" in out
    assert "tobacco-pack" in out and "22500 kop (225.00 ₽)" in out
    assert "7Cev" not in out


def test_bad_code_exit_2_with_reason(capsys):
    status, out, err = run(["parse", "4607809596237", "--json"], capsys)
    assert status == 2
    assert json.loads(out) == {
        "error": {"reason": "not-a-marking-code", "message": json.loads(out)["error"]["message"]}
    }
    assert "EAN-13" in json.loads(out)["error"]["message"]
    status, out, err = run(["parse", "4607809596237"], capsys)
    assert status == 2 and out == "" and "not-a-marking-code" in err


def test_stdin_one_code_per_line(capsys, monkeypatch):
    text = f"{WATER.replace(chr(29), '[GS]')}\n\ngarbage\n{PACK}\r\n"
    status, out, _ = run(["parse", "-", "--json"], capsys, text, monkeypatch)
    lines = [json.loads(line) for line in out.splitlines()]
    assert status == 2  # one bad line
    assert [x.get("shape") or x["error"]["reason"] for x in lines] == [
        "gs1-93",
        "not-a-marking-code",
        "tobacco-pack",
    ]


def test_stdin_all_good_exit_0(capsys, monkeypatch):
    status, out, _ = run(["parse", "-"], capsys, f"{PACK}\n{PACK}\n", monkeypatch)
    assert status == 0
    assert out.count("tobacco-pack") == 2


def test_parse_uses_codes_settings_from_config(tmp_path, capsys):
    beer_without_gs = "0104813445003293215TmiV,g93dGVz"
    status, out, _ = run(["parse", beer_without_gs, "--json"], capsys)
    assert status == 0 and json.loads(out)["repairs"] == ["lost-gs-recovered"]
    cfg = tmp_path / "markd.toml"
    cfg.write_text("[codes]\nki_serial_lengths = [13]\n")
    status, _, err = run(["parse", beer_without_gs, "--config", str(cfg)], capsys)
    assert status == 2 and "ambiguous-lost-gs" in err


@pytest.mark.parametrize("arg", ["\udcff\udcfe", "0" * 5000, "\x1d" * 10])
def test_installed_markctl_never_tracebacks(arg):
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    proc = subprocess.run(
        [str(MARKCTL), "parse", arg, "--json"],
        capture_output=True,
        env=env,
        errors="surrogateescape",
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "error" in json.loads(proc.stdout)


def test_installed_markctl_reads_binary_stdin():
    data = b"\xff\xfe garbage\n" + PACK.encode() + b"\n"
    proc = subprocess.run(
        [str(MARKCTL), "parse", "-", "--json"], input=data, capture_output=True, timeout=60
    )
    assert proc.returncode == 2
    first, second = (json.loads(x) for x in proc.stdout.decode().splitlines())
    assert first["error"]["reason"] == "invalid-characters"
    assert second["shape"] == "tobacco-pack"
    assert b"Traceback" not in proc.stderr
