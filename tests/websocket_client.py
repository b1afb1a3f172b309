"""A WebSocket client for the tests, written from RFC 6455 itself and not from wsproto (which
the server frames with): a library bug mirrored on both sides would otherwise pass unseen.

It does the opening handshake (§4.1: a random ``Sec-WebSocket-Key``, the server's
``Sec-WebSocket-Accept`` checked against SHA-1 of the key and the RFC's GUID), masks every
frame it sends (§5.3, as a client must), and reads the server's frames (§5.2: unmasked, the
7-bit, 16-bit and 64-bit lengths). It answers nothing by itself: a test decides whether a ping
gets its pong. It can also send what no client should (a frame over the limit, bytes that are
no frame at all).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any

#: RFC 6455 §1.3: appended to the key before hashing it.
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Opcodes, §5.2.
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


@dataclass
class Frame:
    opcode: int
    payload: bytes
    fin: bool = True

    @property
    def close_code(self) -> int | None:
        """A close frame's status code (None when it has none)."""
        assert self.opcode == CLOSE
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None


def frame_bytes(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One masked client frame."""
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@dataclass
class WebSocketClient:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    status: int
    headers: dict[str, str]
    #: The refusal's body when the server did not switch protocols.
    body: bytes = b""
    #: Every frame read, in order.
    frames: list[Frame] = field(default_factory=list)

    @classmethod
    async def connect(
        cls,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        target: str = "/v1/events",
        headers: dict[str, str] | None = None,
        *,
        key: str | None = None,
    ) -> WebSocketClient:
        """Send the opening handshake on an open connection and read the answer (101, or a
        refusal with its body)."""
        key = key or base64.b64encode(os.urandom(16)).decode("ascii")
        lines = [
            f"GET {target} HTTP/1.1",
            "Host: localhost",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        answer: dict[str, str] = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                answer[name.strip().lower()] = value.strip()
        status = int(status_line.split(" ")[1])
        client = cls(reader, writer, status, answer)
        if status == 101:
            expected = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
            assert answer["sec-websocket-accept"] == expected
            assert answer["upgrade"].lower() == "websocket"
            assert "upgrade" in answer["connection"].lower()
        else:
            length = int(answer.get("content-length", "0"))
            client.body = await asyncio.wait_for(reader.readexactly(length), 5)
        return client

    @classmethod
    async def unix(cls, path: str, target: str = "/v1/events", **kwargs: Any) -> WebSocketClient:
        reader, writer = await asyncio.open_unix_connection(path)
        return await cls.connect(reader, writer, target, **kwargs)

    @classmethod
    async def tcp(
        cls, address: tuple[str, int], target: str = "/v1/events", **kwargs: Any
    ) -> WebSocketClient:
        reader, writer = await asyncio.open_connection(*address)
        return await cls.connect(reader, writer, target, **kwargs)

    def json(self) -> Any:
        return json.loads(self.body)

    async def send(self, raw: bytes) -> None:
        self.writer.write(raw)
        await self.writer.drain()

    async def send_frame(self, opcode: int, payload: bytes = b"", *, fin: bool = True) -> None:
        await self.send(frame_bytes(opcode, payload, fin=fin))

    async def frame(self, timeout: float = 5.0) -> Frame | None:
        """The next frame from the server; None when the connection ended."""
        try:
            head = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            return None
        fin, opcode = bool(head[0] & 0x80), head[0] & 0x0F
        assert head[0] & 0x70 == 0, "no extension was agreed: RSV bits must be 0"
        assert not head[1] & 0x80, "a server must not mask its frames (RFC 6455 §5.1)"
        length = head[1] & 0x7F
        if length == 126:
            length = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        payload = await asyncio.wait_for(self.reader.readexactly(length), timeout)
        frame = Frame(opcode, payload, fin)
        self.frames.append(frame)
        return frame

    async def message(self, timeout: float = 5.0, *, pong: bool = True) -> str | None:
        """The next text message (pings answered when ``pong``); None at a close or the end."""
        while True:
            frame = await self.frame(timeout)
            if frame is None or frame.opcode == CLOSE:
                return None
            if frame.opcode == PING:
                if pong:
                    await self.send_frame(PONG, frame.payload)
                continue
            assert frame.opcode == TEXT and frame.fin, frame
            return frame.payload.decode("utf-8")

    async def event(self, timeout: float = 5.0) -> dict[str, Any] | None:
        text = await self.message(timeout)
        return None if text is None else json.loads(text)

    async def messages_until(self, needle: str, timeout: float = 5.0) -> list[str]:
        """Text messages up to and with the first holding ``needle``."""
        found = []
        while True:
            text = await self.message(timeout)
            assert text is not None, "the stream ended"
            found.append(text)
            if needle in text:
                return found

    async def closing_frame(self, timeout: float = 5.0) -> Frame | None:
        """Skip to the server's close frame (None when the connection ended without one)."""
        while True:
            frame = await self.frame(timeout)
            if frame is None or frame.opcode == CLOSE:
                return frame

    async def ended(self, timeout: float = 5.0) -> bool:
        """True when the server closed the TCP connection (EOF) within ``timeout``."""
        try:
            while await asyncio.wait_for(self.reader.read(65536), timeout):
                pass
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.writer.close()
