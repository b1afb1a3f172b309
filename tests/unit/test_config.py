"""markd.config: files, drop-ins, merging, validation and the problems a technician reads."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
from pathlib import Path

import pytest

import markd.scanners
from markd import config
from markd.codes import CodesOptions
from markd.config import (
    DEFAULT_SCANNER_URL,
    CheckConfig,
    CodesConfig,
    Config,
    LogConfig,
    ScannerConfig,
    StoreConfig,
)
from markd.errors import ConfigError, ScannerError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
URL = "serial:///dev/markd/scanner0?baudrate=9600&terminator=cr"


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path | None = None, **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config.load(path, **kwargs)  # type: ignore[arg-type]
    return caught.value.problems


@pytest.fixture
def main(tmp_path: Path) -> Path:
    """Where the main file goes; tests write it (or not) themselves."""
    return tmp_path / "markd.toml"


# --------------------------------------------------------------------------------------------
# Defaults


def test_missing_default_file_gives_every_default(main: Path) -> None:
    loaded = config.load(default_path=main)

    assert loaded == config.default_config()
    assert loaded.sources == ()
    assert loaded.log == LogConfig(target="auto", level="info")
    assert loaded.store == StoreConfig(path="/var/lib/markd/store", map_size_mb=64)
    assert loaded.codes == CodesConfig(
        recover_lost_gs=True, serial_lengths=(13, 6, 7), ki_serial_lengths=()
    )
    assert loaded.check == CheckConfig(mode="store-only")


def test_default_scanner_when_no_scanner_table(main: Path) -> None:
    write(main, "[log]\nlevel = 'debug'\n")

    assert config.load(main).scanners == {
        "scanner0": ScannerConfig(url="serial:///dev/markd/scanner0?baudrate=9600&terminator=cr")
    }


def test_empty_scanners_table_also_gives_the_default_scanner(main: Path) -> None:
    write(main, "[scanners]\n")

    assert config.load(main).scanners == {"scanner0": ScannerConfig(url=DEFAULT_SCANNER_URL)}


def test_configured_scanners_replace_the_default_one(main: Path) -> None:
    write(main, f'[scanners.front]\nurl = "{URL}"\n')

    assert config.load(main).scanners == {"front": ScannerConfig(url=URL)}


def test_empty_file_is_all_defaults_and_is_listed_as_read(main: Path) -> None:
    write(main, "# nothing to change on this till\n")

    loaded = config.load(main)

    assert dataclasses.replace(loaded, sources=()) == config.default_config()
    assert loaded.sources == (str(main),)


def test_default_path_missing_still_reads_its_dropins(main: Path) -> None:
    dropin = write(main.parent / "markd.toml.d" / "50-till.toml", "[store]\nmap_size_mb = 8\n")

    loaded = config.load(default_path=main)

    assert loaded.store.map_size_mb == 8
    assert loaded.sources == (str(dropin),)


def test_byte_order_mark_from_windows_editors_is_accepted(main: Path) -> None:
    write(main, "\ufeff[log]\nlevel = 'error'\n")

    assert config.load(main).log.level == "error"


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.default_config().log.level = "debug"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# Drop-ins and merging


def test_dropins_override_in_file_name_order(main: Path) -> None:
    dropins = main.parent / "markd.toml.d"
    write(main, "[log]\nlevel = 'debug'\n")
    # Written out of order on purpose: name order decides, not creation order.
    write(dropins / "20-b.toml", "[log]\nlevel = 'error'\n")
    write(dropins / "10-a.toml", "[log]\nlevel = 'warning'\n")

    loaded = config.load(main)

    assert loaded.log.level == "error"
    assert loaded.sources == (
        str(main),
        str(dropins / "10-a.toml"),
        str(dropins / "20-b.toml"),
    )


def test_only_visible_toml_files_are_dropins(main: Path) -> None:
    dropins = main.parent / "markd.toml.d"
    write(main, "")
    write(dropins / "README", "[log]\nlevel = 'error'\n")
    write(dropins / "50-till.toml.bak", "[log]\nlevel = 'error'\n")
    write(dropins / ".50-till.toml", "[log]\nlevel = 'error'\n")
    write(dropins / "50-till.toml", "[log]\nlevel = 'warning'\n")

    loaded = config.load(main)

    assert loaded.log.level == "warning"
    assert loaded.sources == (str(main), str(dropins / "50-till.toml"))


def test_tables_merge_key_by_key_and_arrays_replace(main: Path) -> None:
    write(
        main,
        "[store]\npath = '/srv/store'\nmap_size_mb = 128\n"
        "[codes]\nserial_lengths = [13, 6]\n"
        f"[scanners.front]\nurl = '{URL}'\n",
    )
    write(
        main.parent / "markd.toml.d" / "50-till.toml",
        "[store]\nmap_size_mb = 256\n"
        "[codes]\nserial_lengths = [7]\n"
        f"[scanners.side]\nurl = '{URL}'\n",
    )

    loaded = config.load(main)

    assert loaded.store == StoreConfig(path="/srv/store", map_size_mb=256)
    assert loaded.codes.serial_lengths == (7,)
    assert loaded.codes.ki_serial_lengths == ()
    assert sorted(loaded.scanners) == ["front", "side"]


def test_required_key_may_come_from_another_file(main: Path) -> None:
    write(main, "[scanners.front]\n")
    write(main.parent / "markd.toml.d" / "50-till.toml", f"[scanners.front]\nurl = '{URL}'\n")

    assert config.load(main).scanners == {"front": ScannerConfig(url=URL)}


# --------------------------------------------------------------------------------------------
# Problems: one per finding, each with file, line and key


def test_unknown_key_names_line_and_known_keys(main: Path) -> None:
    write(main, "# till 3\n\n[log]\nlevel = 'info'\ncolour = 'red'\n")

    assert problems_of(main) == [f"{main}:5: unknown key [log] colour (known keys: level, target)"]


def test_unknown_section(main: Path) -> None:
    write(main, "[log]\n\n[foo]\nbar = 1\n")

    assert problems_of(main) == [
        f"{main}:3: unknown section [foo] "
        "(known sections: api, check, codes, fiscal, log, mark_unit, metrics, sale, scanners, "
        "store, terminal)"
    ]


def test_key_above_every_section_is_reported_as_top_level(main: Path) -> None:
    write(main, "level = 'debug'\n")

    assert problems_of(main) == [
        f"{main}:1: unknown top-level key level (keys belong in a section: "
        "api, check, codes, fiscal, log, mark_unit, metrics, sale, scanners, store, terminal)"
    ]


def test_wrong_type_names_line_key_and_value(main: Path) -> None:
    write(main, "[store]\npath = '/srv'\nmap_size_mb = 'big'\n")

    assert problems_of(main) == [
        f"{main}:3: [store] map_size_mb: expected an integer, got a string ('big')"
    ]


def test_bool_is_not_an_integer(main: Path) -> None:
    write(main, "[store]\nmap_size_mb = true\n")

    assert problems_of(main) == [
        f"{main}:2: [store] map_size_mb: expected an integer, got a boolean (true)"
    ]


def test_integer_is_not_a_boolean_nor_a_string(main: Path) -> None:
    write(main, "[codes]\nrecover_lost_gs = 1\n[store]\npath = 5\n")

    assert problems_of(main) == [
        f"{main}:2: [codes] recover_lost_gs: expected a boolean (true or false), "
        "got an integer (1)",
        f"{main}:4: [store] path: expected a string, got an integer (5)",
    ]


def test_section_that_is_not_a_table(main: Path) -> None:
    write(main, "log = 'debug'\n")

    assert problems_of(main) == [f"{main}:1: [log]: expected a table, got a string ('debug')"]


def test_array_items_are_checked_one_by_one(main: Path) -> None:
    write(main, "[codes]\nserial_lengths = [13, '6', 0, 21]\nki_serial_lengths = 13\n")

    assert problems_of(main) == [
        f"{main}:2: [codes] serial_lengths: item 2: expected an integer, got a string ('6')",
        f"{main}:2: [codes] serial_lengths: item 3: expected an integer from 1 to 20, got 0",
        f"{main}:2: [codes] serial_lengths: item 4: expected an integer from 1 to 20, got 21",
        f"{main}:3: [codes] ki_serial_lengths: expected an array of integers, got an integer (13)",
    ]


def test_choice_violation(main: Path) -> None:
    write(main, "[log]\ntarget = 'syslog'\n[check]\nmode = 'online'\n")

    assert problems_of(main) == [
        f"{main}:2: [log] target: expected one of auto, journal, stderr, got a string ('syslog')",
        f"{main}:4: [check] mode: expected one of store-only, direct, tspiot, got a string "
        "('online')",
    ]


def test_min_violation(main: Path) -> None:
    write(main, "[store]\nmap_size_mb = 0\n")

    assert problems_of(main) == [
        f"{main}:2: [store] map_size_mb: expected an integer from 1 to 1048576, got 0"
    ]


def test_long_values_are_shortened_in_messages(main: Path) -> None:
    write(main, f"[log]\nlevel = '{'x' * 100}'\n")

    (problem,) = problems_of(main)
    assert problem.endswith(f"got a string ('{'x' * 37}...')")


def test_date_where_a_string_is_due(main: Path) -> None:
    write(main, "[store]\npath = 2024-01-31\n")

    assert problems_of(main) == [
        f"{main}:2: [store] path: expected a string, got a date/time (2024-01-31)"
    ]


def test_syntax_error_names_file_line_and_column(main: Path) -> None:
    write(main, "[log]\nlevel = 'info'\nmap_size_mb = \n")

    assert problems_of(main) == [f"{main}:3:15: TOML syntax error: Invalid value"]


def test_non_utf8_file_names_line_and_byte_offset(main: Path) -> None:
    # A file saved in cp1251 by a Windows editor: "Касса" in a comment.
    main.write_bytes(b"[log]\n# " + "Касса".encode("cp1251") + b"\n")

    assert problems_of(main) == [f"{main}:2: not valid UTF-8 text (byte 0xca at byte offset 8)"]


def test_missing_explicit_file(main: Path) -> None:
    assert problems_of(main) == [f"{main}: no such file"]


def test_directory_instead_of_file(main: Path) -> None:
    main.mkdir()

    assert problems_of(main) == [f"{main}: is a directory, expected a TOML file"]


def test_fifo_is_refused_without_blocking(main: Path) -> None:
    os.mkfifo(main)

    assert problems_of(main) == [f"{main}: not a regular file"]


def test_dropin_path_that_is_a_file(main: Path) -> None:
    write(main, "")
    dropins = write(main.parent / "markd.toml.d", "[log]\n")

    assert problems_of(main) == [f"{dropins}: not a directory (drop-ins go in a directory)"]


def test_unreadable_file(main: Path) -> None:
    write(main, "[log]\n")
    main.chmod(0)
    if os.access(main, os.R_OK):
        pytest.skip("this user reads any file (root)")

    assert problems_of(main) == [f"{main}: cannot read: Permission denied"]


def test_every_problem_of_every_file_is_reported_at_once(main: Path) -> None:
    dropins = main.parent / "markd.toml.d"
    write(main, "[log]\nlevel = 'loud'\n\n[store]\nmap_size_mb = 'big'\n")
    # 10-a.toml overrides the bad map_size_mb: the main file's mistake is still reported.
    write(dropins / "10-a.toml", "[store]\nmap_size_mb = 32\nsize = 1\n")
    write(dropins / "20-b.toml", "[checks\n")
    write(dropins / "30-c.toml", "[scanners.front]\n")

    with pytest.raises(ConfigError) as caught:
        config.load(main)

    assert caught.value.problems == [
        f"{main}:2: [log] level: expected one of debug, info, warning, error, "
        "got a string ('loud')",
        f"{main}:5: [store] map_size_mb: expected an integer, got a string ('big')",
        f"{dropins / '10-a.toml'}:3: unknown key [store] size (known keys: delta_history, "
        "map_size_mb, max_age_hours, path, sync_allow_unsigned, sync_interval_s, "
        "sync_max_file_mb, sync_proxy, sync_public_keys, sync_url, verdict_ttl_s)",
        f"{dropins / '20-b.toml'}:1:8: TOML syntax error: Expected ']' at the end of a table "
        "declaration",
        f"{dropins / '30-c.toml'}:1: [scanners.front] url: required key is missing",
    ]
    assert caught.value.message == "configuration has 5 problems"
    assert caught.value.reason == "bad-config"


def test_the_same_mistake_in_two_files_is_reported_for_each(main: Path) -> None:
    write(main, "[foo]\n")
    write(main.parent / "markd.toml.d" / "50-till.toml", "\n[foo]\n")

    assert problems_of(main) == [
        f"{main}:1: unknown section [foo] "
        "(known sections: api, check, codes, fiscal, log, mark_unit, metrics, sale, scanners, "
        "store, "
        "terminal)",
        f"{main.parent / 'markd.toml.d' / '50-till.toml'}:2: unknown section [foo] "
        "(known sections: api, check, codes, fiscal, log, mark_unit, metrics, sale, scanners, "
        "store, "
        "terminal)",
    ]


# --------------------------------------------------------------------------------------------
# Finding the line of a key


def test_line_of_quoted_key(main: Path) -> None:
    write(main, '[store]\n"map_size_mb" = "big"\n')

    assert problems_of(main)[0].startswith(f"{main}:2: [store] map_size_mb:")


def test_line_of_dotted_key_at_top_level(main: Path) -> None:
    write(main, "# comment\nlog.level = 'info'\nstore.map_size_mb = 'big'\n")

    assert problems_of(main)[0].startswith(f"{main}:3: [store] map_size_mb:")


def test_line_after_multiline_string_with_fake_table_inside(main: Path) -> None:
    write(
        main,
        '[log]\nnote = """\n[store]\nmap_size_mb = 1\n"""\nlevel = 5\n',
    )

    assert problems_of(main) == [
        f"{main}:2: unknown key [log] note (known keys: level, target)",
        f"{main}:6: [log] level: expected a string, got an integer (5)",
    ]


def test_line_after_multiline_array_with_comments(main: Path) -> None:
    write(
        main,
        "[codes]\nserial_lengths = [\n  13,  # ] not the end\n  6,\n]\nrecover_lost_gs = 'yes'\n",
    )

    assert problems_of(main)[0].startswith(f"{main}:6: [codes] recover_lost_gs:")


def test_line_of_key_inside_inline_table(main: Path) -> None:
    write(main, "# kiosk\n\nscanners = { front = { url = '' } }\n")

    assert problems_of(main) == [f"{main}:3: [scanners.front] url: must not be empty"]


def test_missing_key_falls_back_to_its_table_header(main: Path) -> None:
    write(main, "[log]\n\n[scanners.front]\n# url forgotten\n")

    assert problems_of(main) == [f"{main}:3: [scanners.front] url: required key is missing"]


# --------------------------------------------------------------------------------------------
# Scanners


@pytest.mark.parametrize("name", ["a", "front", "till-2_B", "x" * 32])
def test_good_scanner_names(main: Path, name: str) -> None:
    write(main, f'[scanners.{name}]\nurl = "{URL}"\n')

    assert list(config.load(main).scanners) == [name]


@pytest.mark.parametrize(
    ("name", "written"),
    [("x" * 33, "x" * 33), ("front panel", '"front panel"'), ("сканер", '"сканер"'), ("", '""')],
)
def test_bad_scanner_names(main: Path, name: str, written: str) -> None:
    write(main, f'\n[scanners.{written}]\nurl = "{URL}"\n')

    assert problems_of(main) == [
        f"{main}:2: [scanners.{written}]: bad name: a name is 1 to 32 letters, digits, _ or -"
    ]


def test_scanner_url_must_not_be_empty(main: Path) -> None:
    write(main, '[scanners.front]\nurl = ""\n')

    assert problems_of(main) == [f"{main}:2: [scanners.front] url: must not be empty"]


def test_scanner_url_checked_by_the_real_scanner_parser(main: Path) -> None:
    write(main, '[scanners.front]\nurl = "usb:1234"\n')

    (problem,) = problems_of(main)
    assert problem.startswith(f"{main}:2: [scanners.front] url: ")
    assert "usb:1234" in problem


def test_scanner_url_rejected_by_the_scanner_layer(
    main: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def parse_url(url: str) -> object:
        """Stands in for markd.scanners.parse_url: accepts serial:// URLs only."""
        if not url.startswith("serial://"):
            raise ScannerError("expected serial:///dev/PATH?baudrate=N&terminator=cr|lf|crlf")
        return url

    monkeypatch.setattr(markd.scanners, "parse_url", parse_url, raising=False)
    write(main, f'[scanners.front]\nurl = "{URL}"\n\n[scanners.side]\nurl = "usb:1234"\n')

    assert problems_of(main) == [
        f"{main}:5: [scanners.side] url: expected "
        "serial:///dev/PATH?baudrate=N&terminator=cr|lf|crlf"
    ]


def test_scanner_url_check_always_runs_with_the_registrys_own_message(main: Path) -> None:
    # The check once sat behind `except ImportError: return None`, which would have let any
    # URL through had the import failed; now the registry's own message must come out.
    write(main, '[scanners.front]\nurl = "usb:1234"\n')
    with pytest.raises(ScannerError) as caught:
        markd.scanners.parse_url("usb:1234")

    assert problems_of(main) == [f"{main}:2: [scanners.front] url: {caught.value}"]


def test_no_configuration_check_is_skipped_when_an_import_fails() -> None:
    package = Path(config.__file__).parent
    guarded = [
        path.name
        for path in sorted(package.glob("*.py"))
        if "ImportError" in path.read_text(encoding="utf-8")
    ]

    assert guarded == []


# --------------------------------------------------------------------------------------------
# Using and showing the configuration


def test_codes_options(main: Path) -> None:
    write(main, "[codes]\nrecover_lost_gs = false\nserial_lengths = [6]\nki_serial_lengths = []\n")

    options = config.load(main).codes_options()

    assert isinstance(options, CodesOptions)
    assert options == CodesOptions(recover_lost_gs=False, serial_lengths=(6,), ki_serial_lengths=())


def test_to_dict_is_plain_json_data() -> None:
    data = config.to_dict(config.default_config())

    assert data == {
        "log": {"target": "auto", "level": "info"},
        "store": {
            "path": "/var/lib/markd/store",
            "map_size_mb": 64,
            "max_age_hours": 72,
            "verdict_ttl_s": 86400,
            "delta_history": 100,
            "sync_url": "",
            "sync_interval_s": 3600,
            "sync_proxy": "online",
            "sync_public_keys": [],
            "sync_allow_unsigned": False,
            "sync_max_file_mb": 1024,
        },
        "codes": {
            "recover_lost_gs": True,
            "serial_lengths": [13, 6, 7],
            "ki_serial_lengths": [],
        },
        "terminal": {"fn_serial": "", "timezone": "Europe/Moscow", "inn": "", "kpp": ""},
        "check": {
            "mode": "store-only",
            "online_timeout_ms": 1500,
            "local_module_timeout_ms": 500,
            "tspiot_timeout_ms": 2000,
            "unanswered": "allow",
            "parallel": False,
            "cache_verdicts": True,
            "slow_scan_ms": 250,
        },
        "fiscal": {
            "url": "emulator:///var/lib/markd/kkt",
            "web_user": "",
            "web_password_file": "",
            "journal": "/var/lib/markd/fiscal/session.journal",
            "timeout_ms": 30000,
            "validation_timeout_ms": 10000,
            "validation_poll_ms": 200,
            "on_oism_no_answer": "accept",
            "sale_status": 1,
            "tag1262": "030",
            "tag1263": "26.03.2022",
            "tag1264": "477",
            "tax": "none",
            "payment_type": "electronically",
            "taxation_type": "",
            "cashier_name": "",
            "cashier_inn": "",
            "auto_shift": True,
            "fn_days_warning": 30,
            "unsent_days_warning": 3,
            "health_interval_s": 600,
            "shift_hours_warning": 23,
            "lm_sell": True,
        },
        "sale": {"mode": "off", "catalog": "", "use_mrp": True},
        "scanners": {"scanner0": {"url": DEFAULT_SCANNER_URL}},
        "api": {
            "enabled": True,
            "socket": "/run/markd/control.sock",
            "socket_group": "markd",
            "listen": "",
            "allow_remote": False,
            "token_file": "",
            "allowed_origins": [],
            "replay_events": 1024,
            "replay_kib": 1024,
            "session_hours": 24,
            "screen": False,
            "screen_demo_pay": False,
        },
        "metrics": {"listen": "", "allow_remote": False, "token_file": ""},
        "mark_unit": {
            "enabled": False,
            "listen": "127.0.0.1:2578",
            "allowed_clients": ["127.0.0.0/8", "::1"],
            "encoding": "utf-8",
            "price_unit": "rubles",
            "trust_till_tspiot": False,
            "till_tspiot_hosts": [],
            "lm_in_req_id": False,
            "refund_check": True,
            "repeat_cache_ms": 3000,
            "max_checks": 20,
            "pending_minutes": 5,
        },
    }
    assert json.loads(json.dumps(data)) == data


def test_to_toml_loads_back_to_the_same_configuration(main: Path, tmp_path: Path) -> None:
    write(
        main,
        '[store]\npath = "/srv/\\"odd\\" store"\nmap_size_mb = 9\n'
        f"[codes]\nserial_lengths = [6, 7]\n[scanners.front]\nurl = '{URL}'\n",
    )
    original = config.load(main)
    copy = write(tmp_path / "copy" / "markd.toml", config.to_toml(original))

    assert dataclasses.replace(config.load(copy), sources=()) == dataclasses.replace(
        original, sources=()
    )
    assert tomllib.loads(config.to_toml(original)) == config.to_dict(original)


def test_config_fields_are_the_documented_sections() -> None:
    sections = [f.name for f in dataclasses.fields(Config)]

    assert sections == [
        "log",
        "store",
        "codes",
        "terminal",
        "check",
        "fiscal",
        "sale",
        "scanners",
        "api",
        "metrics",
        "mark_unit",
        "sources",
    ]


# --------------------------------------------------------------------------------------------
# docs/configuration.md stays true


def _doc() -> str:
    return DOCS.read_text(encoding="utf-8")


def _example(name: str) -> str:
    found = re.search(rf"<!-- example: {re.escape(name)} -->\n```toml\n(.*?)```", _doc(), re.S)
    assert found is not None, f"example {name!r} missing from {DOCS}"
    return found.group(1)


def test_docs_key_table_matches_the_schema() -> None:
    found = re.search(
        r"<!-- BEGIN schema_reference\(\) -->\n(.*?)<!-- END schema_reference\(\) -->",
        _doc(),
        re.S,
    )

    assert found is not None
    assert found.group(1) == config.schema_reference()


def test_docs_mention_every_key() -> None:
    keys = [f"`[{ref.table}] {ref.key}`" for ref in config.schema_keys()]

    assert len(keys) == 103
    assert [key for key in keys if key not in _doc()] == []


def test_docs_kiosk_example_loads(main: Path) -> None:
    write(main, _example("markd.toml"))
    write(main.parent / "markd.toml.d" / "90-debug.toml", _example("markd.toml.d/90-debug.toml"))

    loaded = config.load(main)

    assert loaded.log == LogConfig(target="journal", level="debug")
    assert loaded.store.map_size_mb == 256
    assert sorted(loaded.scanners) == ["front", "side"]
    assert loaded.check == CheckConfig()


def test_check_sources_are_used_only_when_their_section_is_present(main: Path) -> None:
    write(
        main,
        "[terminal]\nfn_serial = '9960440300000001'\ntimezone = 'Asia/Vladivostok'\n"
        "[check]\nmode = 'direct'\nunanswered = 'deny'\n"
        "[check.local_module]\nurl = 'http://127.0.0.1:5995'\napi = 1\n",
    )
    loaded = config.load(main)
    assert loaded.check.mode == "direct" and loaded.check.unanswered == "deny"
    assert loaded.check.online is None and loaded.check.tspiot is None
    assert loaded.check.local_module.api == 1 and loaded.check.local_module.user == "admin"
    assert loaded.terminal.timezone == "Asia/Vladivostok"
    # Written back as TOML, the sub-table survives and the absent ones stay absent.
    again = main.parent / "again.toml"
    again.write_text(config.to_toml(loaded))
    assert config.load(again).check == loaded.check


def test_check_and_terminal_values_are_validated(main: Path) -> None:
    write(
        main,
        "[terminal]\nfn_serial = '123'\ntimezone = 'Mars/Base'\n"
        "[check.online]\nurl = 'ftp://cdn'\n[check.tspiot]\ncolour = 1\n",
    )
    with pytest.raises(ConfigError) as err:
        config.load(main)
    text = "\n".join(err.value.problems)
    assert f"{main}:2: [terminal] fn_serial: a ФН serial is 16 digits" in text
    assert f"{main}:3: [terminal] timezone: unknown time zone 'Mars/Base'" in text
    assert f"{main}:5: [check.online] url: expected an http:// or https:// URL" in text
    assert f"{main}:7: unknown key [check.tspiot] colour" in text


# --------------------------------------------------------------------------------------------
# [fiscal]: what every receipt carries (taxation system, cashier)

#: ИНН with valid check digits: a person's (12 digits) and an organisation's (10).
PERSON_INN = "500100732259"
ORGANISATION_INN = "7707083893"


def test_receipt_attributes_load_and_reach_the_printer_settings(main: Path) -> None:
    from markd.fiscal.model import ReceiptAttributes
    from markd.service.wiring import printer_settings

    write(
        main,
        "[fiscal]\ntaxation_type = 'usnIncome'\ncashier_name = 'Иванова А. С.'\n"
        f"cashier_inn = '{PERSON_INN}'\n",
    )
    loaded = config.load(main)

    assert printer_settings(loaded).receipt == ReceiptAttributes(
        taxation_type="usnIncome", cashier_name="Иванова А. С.", cashier_inn=PERSON_INN
    )
    assert printer_settings(config.default_config()).receipt == ReceiptAttributes()


def test_receipt_attributes_are_validated_naming_the_key(main: Path) -> None:
    write(
        main,
        "[fiscal]\ntaxation_type = 'usn'\ncashier_name = '" + "Я" * 65 + "'\n"
        "cashier_inn = '500100732250'\n",
    )

    assert problems_of(main) == [
        f"{main}:2: [fiscal] taxation_type: expected one of osn, usnIncome, usnIncomeOutcome, "
        "envd, esn, patent, got 'usn'",
        f"{main}:3: [fiscal] cashier_name: tag 1021 is at most 64 characters, got 65",
        f"{main}:4: [fiscal] cashier_inn: wrong check digit in ИНН 500100732250",
    ]


@pytest.mark.parametrize(
    "inn",
    [ORGANISATION_INN, "50010073225", "5001007322590", "50010073225x", "５００１００７３２２５９"],
)
def test_a_cashier_inn_is_a_persons_twelve_digits(main: Path, inn: str) -> None:
    write(main, f"[fiscal]\ncashier_name = 'Кассир'\ncashier_inn = '{inn}'\n")

    assert problems_of(main) == [
        f"{main}:3: [fiscal] cashier_inn: an ИНН here is 12 digits, got {inn!r}"
    ]


def test_a_cashier_inn_needs_the_cashiers_name(main: Path) -> None:
    write(main, f"[fiscal]\ncashier_inn = '{PERSON_INN}'\n")

    assert problems_of(main) == [
        f"{main}:2: [fiscal] cashier_inn: needs [fiscal] cashier_name (the ККТ takes the "
        "cashier's ИНН only with the cashier's name)"
    ]


@pytest.mark.parametrize(
    ("table", "value", "shown"),
    [
        (
            "[check.online]\nurl",
            "https://crpt:hunter2-pw@cdn.crpt.ru:99999",
            "'https://***@cdn.crpt.ru:99999'",
        ),
        ("[check.tspiot]\nurl", "https://crpt:hunter2-pw@:8080", "'https://***@:8080'"),
        ("[check.local_module]\nurl", "ftp://crpt:hunter2-pw@lm", "'ftp://***@lm'"),
        ("[store]\nsync_url", "https://crpt:hunter2/pw@fleet:0/x", "'https://***@fleet:0/x'"),
        ("[store]\nsync_url", "crpt:hunter2-pw@fleet", "'***@fleet'"),
        ("[api]\nallowed_origins", '["http://crpt:hunter2-pw@localhost:99999"]', None),
    ],
)
def test_a_url_in_a_problem_never_shows_its_user_and_password(
    tmp_path: Path, table: str, value: str, shown: str | None
) -> None:
    literal = value if value.startswith("[") else json.dumps(value)
    main = write(tmp_path / "markd.toml", f"{table} = {literal}\n")
    with pytest.raises(ConfigError) as refused:
        config.load(main)
    text = "\n".join(refused.value.problems)
    assert "hunter2" not in text and "crpt:" not in text
    assert "***@" in text
    if shown is not None:
        assert shown in text
