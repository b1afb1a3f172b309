"""markd.checks.record: bodies on record never hold a crypto tail or a secret."""

from __future__ import annotations

import base64
import json

from markd.checks.record import redact_json_text, redact_value

SIG = "MEUCIQDtkqFC+ZxPrUZsGJb9Pq0Rq1gm3kGmV1NfTcT/"
SHOES = f"0104607809596237215<(q!mLp*jIb3\x1d91FFD0\x1d92{SIG}"
WATER = "0104680029460908215jcmHzLmkdPML\x1d938p9E"


def test_codes_become_their_ki_and_the_tail_is_gone() -> None:
    body = json.dumps({"codes": [SHOES, WATER], "fiscalDriveNumber": "9960440300000001"})
    text = redact_json_text(body)
    assert SIG[:10] not in text and "FFD0" not in text and "8p9E" not in text
    assert "0104607809596237215<(q!mLp*jIb3<crypto>" in text
    assert "9960440300000001" in text


def test_base64_codes_of_the_tspiot_are_decoded_to_the_ki() -> None:
    encoded = base64.b64encode(WATER.encode()).decode()
    out = redact_value({"codes": [encoded], "client_info": {"token": "t0ps3cr3t", "name": "m"}})
    assert out["codes"] == ["base64(0104680029460908215jcmHzLmkdPML<crypto>)"]
    assert out["client_info"]["token"] == "<secret>"


def test_answers_keep_their_facts_and_lose_the_cis_tail() -> None:
    answer = {
        "codes": [{"cis": SHOES, "printView": SHOES[:31], "isBlocked": False}],
        "reqId": "abc",
        "reqTimestamp": 1735000000000,
    }
    out = json.loads(redact_json_text(json.dumps(answer)))
    assert out["codes"][0]["cis"].endswith("<crypto>")
    assert out["codes"][0]["isBlocked"] is False and out["reqTimestamp"] == 1735000000000


def test_unreadable_code_text_keeps_no_more_than_a_ki() -> None:
    broken = "0104607809596237215<(q!mLp*jIb3\x1d91FFD0\x1d92short"
    out = redact_value(broken)
    assert "FFD0" not in out and "short" not in out


def test_non_json_bodies_are_summarised() -> None:
    assert redact_json_text(b"\xff\xfe") == "<2 bytes, not UTF-8>"
    assert redact_json_text("<html>gateway</html>") == "<20 characters, not JSON>"
