"""The ``emulator`` backend: the virtual ККТ (:mod:`markd.fiscal.virtual_kkt`) in process.

URL: ``emulator:///ABSOLUTE/STATE/DIR`` (``emulator:///var/lib/markd/kkt`` by default), option
``ism=online|offline|timeout`` to set how the emulated ОИСМ answers when the printer is opened
(without it the state directory's setting stays). The directory holds ``state.json`` and
``documents.jsonl`` (every fiscal document, one JSON line each), so the device's shift, its
document counter and the receipts survive a restart of markd, and a technician or a test can
read what was "printed".

It is the same :class:`~markd.fiscal.atol.AtolPrinter` as for a real ATOL device: the tasks are
built and the answers read by the same code; only the transport is a function call instead of
HTTP or libfptr. Faults are set on the device (:meth:`VirtualKkt.set_faults`), which
:attr:`EmulatorPrinter.kkt` exposes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from markd.fiscal.atol import AtolPrinter, TaskOutcome
from markd.fiscal.base import Option, PrinterSettings, PrinterURL
from markd.fiscal.virtual_kkt import ISM_MODES, VirtualKkt


def _ism(text: str) -> str:
    if text not in ISM_MODES:
        raise ValueError(text)
    return text


class InProcessTransport:
    """ATOL JSON tasks handed to a :class:`VirtualKkt` by a function call."""

    def __init__(self, kkt: VirtualKkt) -> None:
        self.kkt = kkt

    def run(
        self, op_id: str, tasks: list[dict[str, Any]], timeout_s: float, mutating: bool
    ) -> list[TaskOutcome]:
        return [TaskOutcome.from_json(o) for o in self.kkt.run(op_id, tasks)]

    def lookup(self, op_id: str, timeout_s: float) -> list[TaskOutcome] | None:
        kept = self.kkt.lookup(op_id)
        return None if kept is None else [TaskOutcome.from_json(o) for o in kept]

    def cancel_receipt(self, op_id: str, timeout_s: float) -> list[TaskOutcome]:
        return self.run(op_id, [{"type": "cancelReceipt"}], timeout_s, True)

    def close(self) -> None:
        pass


class EmulatorPrinter(AtolPrinter):
    """``emulator:///STATE/DIR``: the virtual ККТ, its state in that directory."""

    OPTIONS: ClassVar[Mapping[str, Option]] = {
        "ism": Option(_ism, None, "|".join(ISM_MODES)),
    }

    def __init__(self, url: PrinterURL, settings: PrinterSettings) -> None:
        super().__init__(url, settings)
        self.kkt = VirtualKkt(url.target)
        if url.options.get("ism"):
            self.kkt.set_faults(ism=url.options["ism"])
        self.transport = InProcessTransport(self.kkt)

    @classmethod
    def target_from_url(cls, host: str, port: int | None, path: str) -> str:
        if host or port is not None:
            raise ValueError("no host is expected: the path starts right after emulator://")
        if not path.startswith("/") or path == "/":
            raise ValueError("an absolute state directory is required")
        return path.rstrip("/")
