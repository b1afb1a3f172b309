"""Helpers for the control API tests: a running service, and a raw HTTP/1.1 client on asyncio
streams (raw, so tests can also send what no well-behaved client would)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from conftest import make_config
from markd.service import Service


def api_config(store_path: str, scanners: dict[str, str], **api: Any) -> Any:
    """:func:`conftest.make_config` with ``[api]`` keys changed."""
    config = make_config(store_path, scanners)
    return dataclasses.replace(config, api=dataclasses.replace(config.api, **api))


@contextlib.asynccontextmanager
async def running(config: Any, event_log: Any, **kwargs: Any) -> AsyncIterator[Service]:
    """A started :class:`Service` (start-up errors are raised), stopped on exit."""
    service = Service(config, event_log=event_log, **kwargs)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    ready = asyncio.create_task(service.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready.cancel()
        task.result()
    assert ready in done, "the service did not start within 5 s"
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Conversation:
    """One HTTP connection to the API (Unix socket or TCP)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    sent: list[bytes] = field(default_factory=list)

    @classmethod
    async def unix(cls, path: str) -> Conversation:
        reader, writer = await asyncio.open_unix_connection(path)
        return cls(reader, writer)

    @classmethod
    async def tcp(cls, host: str, port: int) -> Conversation:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, raw: bytes) -> None:
        self.writer.write(raw)
        await self.writer.drain()

    async def request(
        self,
        method: str,
        target: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        payload = b""
        if isinstance(body, bytes):
            payload = body
        elif body is not None:
            payload = json.dumps(body).encode()
        lines = [f"{method} {target} HTTP/1.1", "Host: localhost"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if payload or method == "POST":
            lines.append(f"Content-Length: {len(payload)}")
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        return await self.answer()

    async def answer(self) -> Answer:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), 5)
        return Answer(int(status_line.split(" ")[1]), headers, body)

    async def closed_by_server(self) -> bool:
        """True when the server closed the connection (EOF within 5 s)."""
        try:
            return await asyncio.wait_for(self.reader.read(1), 5) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.writer.close()


@dataclass
class EventStream:
    """An open ``GET /v1/events``: the response head, then event blocks as they come."""

    conversation: Conversation
    head: Answer
    raw: bytearray = field(default_factory=bytearray)

    @classmethod
    async def open(
        cls,
        conversation: Conversation,
        target: str = "/v1/events",
        headers: dict[str, str] | None = None,
    ) -> EventStream:
        lines = [f"GET {target} HTTP/1.1", "Host: localhost"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        await conversation.send(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
        head = await asyncio.wait_for(conversation.reader.readuntil(b"\r\n\r\n"), 5)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return cls(conversation, Answer(int(status_line.split(" ")[1]), headers, b""))

    async def block(self, timeout: float = 5.0) -> dict[str, str] | None:
        """The next block's fields (``id``, ``event``, ``data``, or ``comment``), None at EOF."""
        reader = self.conversation.reader
        fields: dict[str, str] = {}
        while True:
            line = await asyncio.wait_for(reader.readline(), timeout)
            self.raw += line
            if not line:
                return None
            text = line.decode("utf-8").rstrip("\n")
            if not text:
                if fields:
                    return fields
                continue
            if text.startswith(":"):
                fields["comment"] = text[1:].strip()
                continue
            name, _, value = text.partition(":")
            fields[name] = value.removeprefix(" ")

    async def event(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The next event (as its ``data:`` JSON), skipping comments and ``retry:``; None at
        the end of the stream."""
        while True:
            fields = await self.block(timeout)
            if fields is None:
                return None
            if "data" in fields:
                event = json.loads(fields["data"])
                assert fields["event"] == event["kind"] and fields["id"] == event["id"]
                return event
