"""``markctl receipt close --payment``: what a technician types becomes the close route's
``payments`` (the daemon side: tests/integration/test_cli_receipt.py)."""

from __future__ import annotations

import pytest

from markd.cli.cmd_receipt import parse_payments
from markd.cli.markctl import main


def test_cli_receipt_payments_split_in_roubles() -> None:
    assert parse_payments(["cash:50", "electronically:39,9"]) == (
        [
            {"type": "cash", "amount_kopecks": 5000},
            {"type": "electronically", "amount_kopecks": 3990},
        ],
        None,
    )


def test_cli_receipt_payment_without_an_amount_pays_the_total_alone() -> None:
    assert parse_payments(["cash"]) == ([{"type": "cash", "amount_kopecks": None}], None)
    payments, problem = parse_payments(["cash", "electronically:1"])
    assert payments is None and "alone" in str(problem)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("card:10", "expected electronically or cash"),
        ("cash:1.005", "at most 2 decimals"),
        ("cash:0", "at least 0.01"),
        ("cash:-1", "roubles"),
    ],
)
def test_cli_receipt_bad_payments_are_refused_before_the_daemon_is_asked(
    text: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    payments, problem = parse_payments([text])
    assert payments is None and words in str(problem)
    # Exit 2 without a configuration or a socket: nothing was sent.
    assert main(["receipt", "close", "--payment", text, "--socket", "/nonexistent.sock"]) == 2
    assert capsys.readouterr().err.startswith("markctl: --payment: ")
