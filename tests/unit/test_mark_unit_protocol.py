"""The Mark Unit front's documents and answers as data (markd.fronts.mark_unit.protocol) and
the price rules of ``begin`` (markd.fronts.mark_unit.desk.price_problem).

Field names from FMU-API (GitHub ``shrayky/FMU-API``): ``src/Core/FmuApiDomain/Documents/
RequestDocument.cs``, ``Position.cs``, ``Organization.cs``; prices ×100 and the price lines
from ``src/Core/FmuApiApplication/Documents/BeginDocument.cs``. The documents are built here
by hand (json, base64 of the standard library), never with the front's code."""

from __future__ import annotations

import base64
import json

import pytest

from markd.checks.results import CodeFacts
from markd.fronts.mark_unit.desk import price_problem
from markd.fronts.mark_unit.protocol import BadDocument, encode_answer, parse_document

CODE = "0104680029460908215jcmHzLmkdPML\x1d938p9E"


def body(**fields: object) -> bytes:
    doc = {
        "action": "check",
        "uid": "a3c1",
        "type": "receipt",
        "pos": 2,
        "shift": 41,
        "number": "17",
        "positions": [
            {
                "marking_codes": [base64.b64encode(CODE.encode()).decode()],
                "total_price": 120.5,
                "product_price": 0,
                "quantity": 1,
                "text": "Вода",
                "organisation": {"inn": "7701234567", "kpp": "770101001"},
            }
        ],
    }
    doc.update(fields)
    return json.dumps(doc, ensure_ascii=False).encode()


def test_a_frontol_check_document_reads() -> None:
    doc = parse_document(body())
    assert (doc.action, doc.type, doc.pos, doc.shift, doc.number) == (
        "check",
        "receipt",
        "2",
        "41",
        "17",
    )
    (position,) = doc.positions
    assert position.codes[0].data == CODE.encode()
    # product_price 0: total_price counts, in rubles → kopecks (BeginDocument.cs).
    assert position.price_kopecks == 12050
    assert (position.inn, position.kpp) == ("7701234567", "770101001")


@pytest.mark.parametrize(
    "host", ["192.168.1.77", "https://192.168.1.77", "http://192.168.1.77/", "HTTPS://192.168.1.77"]
)
def test_a_tspiot_host_written_as_a_url_reads_as_the_host(host: str) -> None:
    # FMU-API 77c42cc (src/Core/FmuApiApplication/Mark/Mark.cs) takes the host a till names
    # with or without a scheme; markd keeps the host, its own setting the scheme.
    positions = [{"marking_codes": [], "esm": {"host": host, "port": 51401}}]
    (position,) = parse_document(body(positions=positions)).positions
    assert position.esm == "192.168.1.77:51401"


def test_prices_in_kopecks_when_configured() -> None:
    doc = parse_document(body(), price_unit="kopecks")
    assert doc.positions[0].price_kopecks == 120  # 120.5 kopecks rounds (banker's) to 120


def test_a_windows_1251_body_reads() -> None:
    raw = json.dumps({"action": "cancel", "user": "Кассир"}, ensure_ascii=False).encode("cp1251")
    doc = parse_document(raw, content_type="application/json; charset=windows-1251")
    assert doc.user == "Кассир"


def test_a_windows_1251_body_without_a_charset_reads_when_the_tills_use_it() -> None:
    raw = json.dumps({"action": "cancel", "user": "Кассир"}, ensure_ascii=False).encode("cp1251")
    with pytest.raises(BadDocument):
        parse_document(raw)  # UTF-8 tills: refused, never guessed
    assert parse_document(raw, fallback="windows-1251").user == "Кассир"


def test_the_repr_of_a_document_never_holds_the_code() -> None:
    text = repr(parse_document(body()))
    assert "938p9E" not in text and "MDEwNDY4" not in text


@pytest.mark.parametrize(
    "bad",
    [
        body(action="sell"),
        body(shift={"n": 1}),
        body(uid="x" * 500),
        body(uid="a\x00b"),
        body(positions=[{"marking_codes": ["*"]}]),
        body(positions=[{"marking_codes": [base64.b64encode(b"x" * 600).decode()]}]),
        body(positions=[{"total_price": -1}]),
        body(positions=[{"quantity": True}]),
        body(positions=[{"organisation": "7701234567"}]),
        body(positions=[{"marking_codes": []}] * 501),
    ],
)
def test_hostile_documents_are_refused_with_a_reason(bad: bytes) -> None:
    with pytest.raises(BadDocument) as caught:
        parse_document(bad)
    assert caught.value.reason and "938p9E" not in caught.value.reason


def test_windows_1251_answer_escapes_what_the_charset_lacks() -> None:
    data, content_type = encode_answer({"error": "Марка продана ✓"}, "windows-1251")
    assert content_type.endswith("charset=windows-1251")
    assert json.loads(data.decode("cp1251")) == {"error": "Марка продана ✓"}
    assert "Марка".encode("cp1251") in data


@pytest.mark.parametrize("encoding", ["utf-8", "windows-1251"])
def test_an_answer_holding_a_lone_surrogate_is_still_encoded(encoding: str) -> None:
    # parse_document refuses such text; should any reach an answer, the till still gets one.
    data, _ = encode_answer({"error": "Сигареты \ud800"}, encoding)
    text = data.decode("cp1251" if encoding == "windows-1251" else "utf-8")
    assert json.loads(text) == {"error": "Сигареты \ud800"}


def facts(**kwargs: object) -> CodeFacts:
    return CodeFacts(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "price", "expected"),
    [
        ({"group_ids": (3,), "mrp": 15000}, 15001, "цена выше максимальной розничной!"),
        ({"group_ids": (3,), "mrp": 15000}, 15000, None),
        ({"group_ids": (3,), "mrp": 15000, "smp": 13000}, 12999, "ниже минимальной"),
        ({"group_ids": (16,), "mrp": 9000}, 8999, "цена ниже минимальной розничной!"),
        ({"group_ids": (16,), "mrp": 9000}, 9000, None),
        ({"group_ids": (13,), "mrp": 9000, "smp": 9000}, 1, None),  # water: no price rule
        ({"group_ids": (3,), "mrp": 0}, 999999, None),  # 0: no MRP given
    ],
)
def test_begin_price_rules(kwargs: dict, price: int, expected: str | None) -> None:
    problem = price_problem(facts(**kwargs), price)
    assert (problem is None) == (expected is None)
    if expected is not None:
        assert expected in problem


def test_field_names_in_any_case_and_numbers_as_strings() -> None:
    """ASP.NET Core reads the tills' JSON with ``JsonSerializerDefaults.Web`` (FMU-API's
    controllers bind ``RequestDocument`` so): names match in any case, and numbers may come
    as strings (``AllowReadingFromString``)."""
    code = base64.b64encode(CODE.encode()).decode()
    doc = {
        "Action": "check",
        "UID": "a3c1",
        "Positions": [
            {
                "Marking_codes": [code],
                "Product_price": "59.90",
                "Quantity": "1.5",
                "Organisation": {"INN": "7701234567", "Kpp": "770101001"},
                "ESM": {"Host": "192.168.1.77", "Port": "51401"},
            }
        ],
    }
    document = parse_document(json.dumps(doc).encode())
    (position,) = document.positions
    assert (document.action, document.uid) == ("check", "a3c1")
    assert (position.price_kopecks, position.quantity) == (5990, 1.5)
    assert (position.inn, position.kpp, position.esm) == (
        "7701234567",
        "770101001",
        "192.168.1.77:51401",
    )
    assert len(position.codes) == 1


@pytest.mark.parametrize("value", ["x", "1e400", "NaN", " 1", "0x10"])
def test_a_string_that_is_no_json_number_is_still_refused(value: str) -> None:
    doc = json.loads(body())
    doc["positions"][0]["quantity"] = value
    with pytest.raises(BadDocument, match="quantity"):
        parse_document(json.dumps(doc).encode())


@pytest.mark.parametrize(
    ("value", "taken"),
    [
        ("Вода 0,5 л", "Вода 0,5 л"),
        ("Вода\u00a0газ", "Вода\u00a0газ"),  # a no-break space: not printable to Python
        ("\u0085", "\u0085"),  # NEL: outside the refused ranges (C0, DEL, surrogates)
        ("x" * 128, "x" * 128),
        (17, "17"),
        ("a\x07b", None),
        ("a\x7f", None),
        ("x" * 129, None),
        (True, None),
        ("a\ud800", None),
    ],
)
def test_a_plain_field_is_printable_text(value: object, taken: str | None) -> None:
    # ensure_ascii: a lone surrogate goes as its JSON escape, as a till could send it.
    data = json.dumps({"action": "check", "number": value}).encode()
    if taken is None:
        with pytest.raises(BadDocument, match="number must be"):
            parse_document(data)
    else:
        assert parse_document(data).number == taken
