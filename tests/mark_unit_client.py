"""A test client that speaks the Mark Unit API as a Frontol till does, and the documents it
sends, written from the public source (GitHub ``shrayky/FMU-API``, MIT; the paths below are in
that repository). It shares no encoding code with markd's front: its own HTTP/1.1 bytes, its
own base64 and JSON, its own charset reading.

Where each piece comes from:

* routes and methods: ``src/Presentation/WebApi/Controllers/Fmu/Token/TokenController.cs``
  (``GET /token``), ``.../Fmu/Status/HealthController.cs`` (``POST /api4/system/get_info`` and
  ``.../health``, also under ``/api/fmu`` and ``/{inn}``),
  ``.../Fmu/Document/DocumentController.cs`` (``POST /document``, ``/{inn}/document``,
  ``/api/fmu/document``, ``/api/fmu/{inn}/document``);
* the document: ``src/Core/FmuApiDomain/Documents/RequestDocument.cs`` (``action``, ``uid``,
  ``type``, ``pos``, ``shift``, ``number``, ``user``, ``positions``),
  ``.../Documents/Position.cs`` (``marking_codes`` as base64, ``total_price``,
  ``product_price``, ``quantity``, ``text``, ``organisation``, ``esm``),
  ``.../Documents/Organization.cs`` (``inn``, ``kpp``), ``.../Documents/FmuDocumentsTypes.cs``
  (``receipt``, ``refund_receipt``);
* prices in rubles: ``src/Core/FmuApiApplication/Documents/BeginDocument.cs`` multiplies them
  by 100 before comparing with ``mrp``/``smp`` in kopecks;
* the answer: ``src/Core/FmuApiDomain/Documents/FmuAnswer.cs``; the windows-1251 variant:
  ``src/Presentation/WebApi/Services/FmuDocumentResponseService.cs``.
"""

from __future__ import annotations

import asyncio
import base64 as b64
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

#: The organisation of the fixtures' shop (an ИНН of 10 digits, a КПП of 9).
SHOP_INN = "7701234567"
SHOP_KPP = "770101001"


def till_code(code: str) -> str:
    """A marking code as a till puts it in ``marking_codes``: UTF-8 bytes in base64, with
    the GS written as the byte 0x1D (tests write it ``<GS>``)."""
    return b64.b64encode(code.replace("<GS>", "\x1d").encode("utf-8")).decode("ascii")


def position(
    *codes: str,
    text: str = "Вода питьевая 0,5 л",
    price_rub: float = 59.90,
    inn: str = SHOP_INN,
    kpp: str = SHOP_KPP,
    esm: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One position as Position.cs names its fields (prices in rubles)."""
    item: dict[str, Any] = {
        "marking_codes": [till_code(code) for code in codes],
        "total_price": price_rub,
        "product_price": price_rub,
        "quantity": 1,
        "text": text,
        "organisation": {"inn": inn, "kpp": kpp},
    }
    if esm is not None:
        item["esm"] = esm
    return item


def document(
    action: str,
    *positions: dict[str, Any],
    kind: str = "receipt",
    uid: str | None = None,
    number: str = "17",
) -> dict[str, Any]:
    """A document as RequestDocument.cs names its fields."""
    return {
        "action": action,
        "uid": uid or str(uuid.uuid4()),
        "type": kind,
        "pos": "2",
        "shift": "41",
        "number": number,
        "user": "Кассир Иванова",
        "positions": list(positions),
    }


@dataclass
class TillAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def charset(self) -> str:
        found = re.search(r"charset=([A-Za-z0-9_-]+)", self.headers.get("content-type", ""))
        return found.group(1).lower() if found else "utf-8"

    def json(self) -> Any:
        codec = "cp1251" if self.charset == "windows-1251" else "utf-8"
        return json.loads(self.body.decode(codec))


class Till:
    """One till's keep-alive connection to the front."""

    def __init__(self, host: str, port: int, *, local_addr: str | None = None) -> None:
        self.host, self.port, self.local_addr = host, port, local_addr
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> Till:
        local = (self.local_addr, 0) if self.local_addr else None
        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, local_addr=local
        )
        return self

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
            self.writer = None

    async def send_raw(self, data: bytes) -> TillAnswer:
        if self.writer is None:
            await self.connect()
        assert self.writer is not None and self.reader is not None
        self.writer.write(data)
        await self.writer.drain()
        return await self._answer()

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str = "application/json"
    ) -> TillAnswer:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if method == "POST":
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        return await self.send_raw(head.encode("ascii") + b"\r\n" + body)

    async def post(self, path: str, obj: Any, *, charset: str = "utf-8") -> TillAnswer:
        body = json.dumps(obj, ensure_ascii=False).encode(
            "cp1251" if charset != "utf-8" else "utf-8"
        )
        return await self.request("POST", path, body, f"application/json; charset={charset}")

    async def _answer(self) -> TillAnswer:
        assert self.reader is not None
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), 10)
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return TillAnswer(status, headers, body)
