"""The Mark Unit API's documents and answers as plain data: no I/O, no HTTP.

There is no public vendor specification. What a Frontol till sends and reads is taken from the
open-source re-implementation FMU-API (GitHub ``shrayky/FMU-API``, MIT), read for facts:

* the request document: ``src/Core/FmuApiDomain/Documents/RequestDocument.cs``,
  ``Position.cs`` (``marking_codes`` in base64, ``total_price``, ``product_price``,
  ``quantity``, ``text``, ``organisation``, ``esm``) and ``Organization.cs``;
* the answer: ``src/Core/FmuApiDomain/Documents/FmuAnswer.cs`` (``code``, ``error``,
  ``marking_codes``, ``truemark_response``, ``truemark_responses``,
  ``offline_truemark_response``, ``esm_response``) and its ``FillFieldsForFrontol_6_25_5``,
  which repeats the check answer as ``[{inn, kpp, response}]`` for Frontol 6.25.5 and later;
* prices: ``src/Core/FmuApiApplication/Documents/BeginDocument.cs`` multiplies
  ``product_price`` (or ``total_price`` when it is 0) by 100 to compare with the kopecks of
  ``mrp``/``smp``: the tills send rubles (``[mark_unit] price_unit``);
* the windows-1251 answers: ``src/Presentation/WebApi/Services/FmuDocumentResponseService.cs``.

The tills' JSON is read as ASP.NET Core reads it (``JsonSerializerDefaults.Web``, which
FMU-API's controllers use): field names in any case (``Marking_codes``, ``ACTION``), and
numbers also as strings (``"quantity": "1.5"``, ``"product_price": "59.90"``).

Everything a till sends is hostile until :func:`parse_document` has checked it: a malformed
document becomes :class:`BadDocument`, whose text never quotes a code. A marking code holds
its crypto tail; it is kept out of every ``repr`` here.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: The document actions a till sends.
ACTIONS = ("check", "begin", "commit", "cancel")
#: Document types: a sale and a refund (``FmuDocumentsTypes.cs``); ``opening_tare`` (draught
#: kegs) is read like a sale that is never recorded as sold.
SALE, REFUND, OPENING_TARE = "receipt", "refund_receipt", "opening_tare"
DOCUMENT_TYPES = (SALE, REFUND, OPENING_TARE)
#: Limits of one document: positions, codes in all, one code's decoded bytes, text fields.
MAX_POSITIONS = 500
MAX_CODES = 500
MAX_CODE_BYTES = 512
MAX_FIELD_CHARS = 128
#: The largest price taken (kopecks): a hundred million rubles.
MAX_PRICE_KOPECKS = 10**10
#: The largest quantity of one position taken (a weight in kilograms, a count).
MAX_QUANTITY = 10**6
#: A plain field a till sends (uid, pos, shift, number, user, text): printable text. A lone
#: UTF-16 surrogate (JSON ``"\ud800"`` without its pair) is no character: it could be neither
#: journaled nor written back in an answer.
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f\ud800-\udfff]*")
#: The scheme a till may put before a ТС ПИоТ host.
_SCHEME = re.compile(r"^https?://", re.IGNORECASE)


class BadDocument(Exception):
    """A document that cannot be served: HTTP 400 with :attr:`reason` (never a code's text)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TillCode:
    """One marking code of a position: as the till sent it (base64, echoed in answers) and
    decoded (the bytes markd's parser reads). Both hold the crypto tail: no ``repr``."""

    base64: str = field(repr=False)
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Position:
    codes: tuple[TillCode, ...]
    text: str = ""
    #: ``product_price`` (or ``total_price`` when that is 0) in kopecks; None when neither.
    price_kopecks: int | None = None
    quantity: float = 0.0
    inn: str = ""
    kpp: str = ""
    #: The ТС ПИоТ address the till names (``esm``), as ``host:port``; journaled, not used.
    esm: str = ""


@dataclass(frozen=True)
class Document:
    action: str
    type: str
    uid: str
    pos: str
    shift: str
    number: str
    user: str
    positions: tuple[Position, ...]

    @property
    def refund(self) -> bool:
        return self.type == REFUND

    def codes(self) -> list[tuple[Position, TillCode]]:
        return [(position, code) for position in self.positions for code in position.codes]


def decode_body(body: bytes, content_type: str, fallback: str) -> str:
    """The body's text: in the charset its ``Content-Type`` names, else UTF-8, else
    ``fallback`` (``windows-1251`` when the tills are set up so)."""
    charset = ""
    match = re.search(r"charset=\"?([A-Za-z0-9_-]+)", content_type)
    if match:
        charset = match.group(1).lower()
    if charset in ("windows-1251", "cp1251"):
        try:
            return body.decode("cp1251")
        except UnicodeDecodeError:
            raise BadDocument("the body is not windows-1251 text") from None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        if fallback == "windows-1251":
            try:
                return body.decode("cp1251")
            except UnicodeDecodeError:
                pass
        raise BadDocument("the body is not UTF-8 text") from None


def parse_document(
    body: bytes, *, content_type: str = "", price_unit: str = "rubles", fallback: str = "utf-8"
) -> Document:
    """A till's ``POST /document`` body, checked field by field (:class:`BadDocument`)."""
    text = decode_body(body, content_type, fallback)
    try:
        obj = _DECODER.decode(text)
    except (ValueError, RecursionError):
        raise BadDocument("the body is not JSON") from None
    if not isinstance(obj, dict):
        raise BadDocument("the body is not a JSON object")
    obj = _fold(obj)
    action = obj.get("action")
    if action not in ACTIONS:
        raise BadDocument(f"action must be one of {', '.join(ACTIONS)}")
    kind = obj.get("type") or SALE
    if kind not in DOCUMENT_TYPES:
        raise BadDocument(f"type must be one of {', '.join(DOCUMENT_TYPES)}")
    raw_positions = obj.get("positions", [])
    if raw_positions is None:
        raw_positions = []
    if not isinstance(raw_positions, list):
        raise BadDocument("positions must be an array")
    if len(raw_positions) > MAX_POSITIONS:
        raise BadDocument(f"more than {MAX_POSITIONS} positions")
    positions = tuple(
        _position(item, index, price_unit) for index, item in enumerate(raw_positions)
    )
    if sum(len(p.codes) for p in positions) > MAX_CODES:
        raise BadDocument(f"more than {MAX_CODES} marking codes in one document")
    return Document(
        action=action,
        type=kind,
        uid=_plain(obj, "uid"),
        pos=_plain(obj, "pos"),
        shift=_plain(obj, "shift"),
        number=_plain(obj, "number"),
        user=_plain(obj, "user"),
        positions=positions,
    )


def _fold(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` with its field names in lower case: ASP.NET matches names without regard to
    case (the last of two that differ only in case wins, as there)."""
    return {str(key).lower(): value for key, value in obj.items()}


#: A JSON number written as a string, as ASP.NET's ``AllowReadingFromString`` takes it.
_NUMBER_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def _number(value: Any) -> Any:
    """A number sent as a string becomes the number; anything else is returned as it is."""
    if isinstance(value, str) and len(value) <= 64 and _NUMBER_TEXT.fullmatch(value):
        number = float(value)
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(name)  # NaN and Infinity are not JSON


#: The tills' JSON, read (one decoder and one encoder for every document: ``json.loads`` and
#: ``json.dumps`` with options make a new one per call).
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _plain(obj: Mapping[str, Any], key: str, where: str = "") -> str:
    """A short text field; tills send some of them as numbers (shift, number)."""
    value = obj.get(key)
    if value is None:
        return ""
    if type(value) is str and len(value) <= MAX_FIELD_CHARS and value.isprintable():
        # The usual field, taken at once: what str.isprintable takes holds no control
        # character and no surrogate (anything else is tested below).
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadDocument(f"{where}{key} must be a string")
    text = str(value)
    if len(text) > MAX_FIELD_CHARS or not _PRINTABLE.fullmatch(text):
        raise BadDocument(f"{where}{key} must be printable text of at most {MAX_FIELD_CHARS}")
    return text


def _position(item: Any, index: int, price_unit: str) -> Position:
    where = f"positions[{index}]."
    if not isinstance(item, dict):
        raise BadDocument(f"positions[{index}] must be an object")
    item = _fold(item)
    raw_codes = item.get("marking_codes", [])
    if raw_codes is None:
        raw_codes = []
    if not isinstance(raw_codes, list):
        raise BadDocument(f"{where}marking_codes must be an array")
    codes = tuple(_code(value, f"{where}marking_codes[{n}]") for n, value in enumerate(raw_codes))
    price = _price(item.get("product_price"), f"{where}product_price", price_unit)
    if not price:
        total = _price(item.get("total_price"), f"{where}total_price", price_unit)
        price = total if total else price
    quantity = _number(item.get("quantity", 0))
    if (
        isinstance(quantity, bool)
        or not isinstance(quantity, (int, float))
        or not -MAX_QUANTITY <= quantity <= MAX_QUANTITY
    ):
        raise BadDocument(f"{where}quantity must be a number up to {MAX_QUANTITY}")
    organisation = item.get("organisation") or {}
    if not isinstance(organisation, dict):
        raise BadDocument(f"{where}organisation must be an object")
    organisation = _fold(organisation)
    esm = item.get("esm") or {}
    if not isinstance(esm, dict):
        raise BadDocument(f"{where}esm must be an object")
    esm = _fold(esm)
    # A till may write the host as a URL (FMU-API 77c42cc adds or keeps the https:// prefix
    # of what tills send): markd takes the host only; the scheme is the configured one.
    esm_host = _SCHEME.sub("", _plain(esm, "host", f"{where}esm.")).rstrip("/")
    esm_port = _plain(esm, "port", f"{where}esm.")
    return Position(
        codes=codes,
        text=_plain(item, "text", where),
        price_kopecks=price,
        quantity=float(quantity),
        inn=_plain(organisation, "inn", f"{where}organisation."),
        kpp=_plain(organisation, "kpp", f"{where}organisation."),
        esm=f"{esm_host}:{esm_port}" if esm_host else "",
    )


def _code(value: Any, where: str) -> TillCode:
    if not isinstance(value, str) or not value:
        raise BadDocument(f"{where} must be a base64 string")
    if len(value) > MAX_CODE_BYTES * 2:
        raise BadDocument(f"{where} is too long")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadDocument(f"{where} is not base64") from None
    if not data or len(data) > MAX_CODE_BYTES:
        raise BadDocument(f"{where} decodes to no code or to more than {MAX_CODE_BYTES} bytes")
    return TillCode(value, data)


def _price(value: Any, where: str, unit: str) -> int | None:
    value = _number(value)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadDocument(f"{where} must be a number")
    if not 0 <= value <= MAX_PRICE_KOPECKS:  # before any arithmetic: 1e308 * 100 is inf
        raise BadDocument(f"{where} is out of range")
    kopecks = round(value * 100) if unit == "rubles" else round(value)
    if not 0 <= kopecks <= MAX_PRICE_KOPECKS:
        raise BadDocument(f"{where} is out of range")
    return kopecks


# --------------------------------------------------------------------------------------------
# Answers


def no_check_result() -> dict[str, Any]:
    """``truemark_response`` when no service answered: the True API check result with
    nothing in it, every key at its default (``code`` 0, no ``reqId``, ``reqTimestamp`` 0, no
    codes), as FMU-API writes its empty ``CheckMarksDataTrueApi`` (``FmuAnswer.cs``): a till
    that reads those keys finds them rather than an empty object."""
    return {"code": 0, "description": "", "reqId": "", "reqTimestamp": 0, "codes": []}


def empty_answer() -> dict[str, Any]:
    """An answer with nothing to say (``code`` 0), in the shape of ``FmuAnswer.cs``."""
    return {
        "code": 0,
        "error": "",
        "marking_codes": [],
        "truemark_response": no_check_result(),
        "truemark_responses": [],
        "offline_truemark_response": [],
        "esm_response": {},
    }


def refusal_answer(reason: str) -> dict[str, Any]:
    """The body of an HTTP 400: the till shows ``error``."""
    return {**empty_answer(), "code": 1, "error": reason}


def encode_answer(obj: Any, encoding: str) -> tuple[bytes, str]:
    """``obj`` as JSON bytes and the ``Content-Type`` naming their charset. In
    windows-1251 a character that charset lacks is written as a JSON ``\\u`` escape, so the
    answer stays valid JSON whatever the text holds; in UTF-8 a lone surrogate (which UTF-8
    cannot hold) is written so too, rather than failing the answer."""
    if encoding != "windows-1251":
        text = _ENCODER.encode(obj)
        # Only a lone surrogate fails UTF-8; it can only be inside a JSON string, where
        # the backslash form Python writes (\udXXX) is the JSON escape of it.
        return text.encode("utf-8", "backslashreplace"), "application/json; charset=utf-8"
    text = _ENCODER.encode(obj)
    out = bytearray()
    for char in text:
        try:
            out += char.encode("cp1251")
        except UnicodeEncodeError:
            # json.dumps escaped control characters already; what is left is plain text.
            escaped = json.dumps(char)[1:-1]  # ensure_ascii: \uXXXX (a surrogate pair above)
            out += escaped.encode("ascii")
    return bytes(out), "application/json; charset=windows-1251"
