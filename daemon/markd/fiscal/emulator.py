"""The ``emulator`` backend: the virtual ККТ in process.

URL: ``emulator:///ABSOLUTE/STATE/DIR`` (``emulator:///var/lib/markd/kkt`` by default), option
``ism=online|offline|timeout`` to set how the emulated ОИСМ answers when the printer is opened
(without it the state directory's setting stays). The directory holds ``state.json`` and
``documents.jsonl`` (every fiscal document, one JSON line each), so the device's shift, its
document counter and the receipts survive a restart of markd, and a technician or a test can
read what was "printed".

It is the same :class:`~markd.fiscal.atol.AtolPrinter` as for a real ATOL device: the tasks are
built and the answers read by the same code; only the transport is a function call instead of
HTTP or libfptr. The device is the emulators' virtual ККТ
(``markd.emulators.virtual_kkt.VirtualKkt``), named here by a string and imported when an
``emulator://`` printer is opened: the fiscal package holds no import of the emulators, which
are test equipment, not part of the fiscal code. Faults are set on the device (its
``set_faults``), which :attr:`EmulatorPrinter.kkt` exposes.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

from markd.fiscal.atol import AtolPrinter, TaskOutcome
from markd.fiscal.base import Option, PrinterSettings, PrinterURL

#: The device behind ``emulator://``, as ``module:class``.
DEVICE = "markd.emulators.virtual_kkt:VirtualKkt"
#: How the emulated ОИСМ may answer (the device's ``ism`` fault).
ISM_MODES = ("online", "offline", "timeout")


class VirtualDevice(Protocol):
    """What this backend uses of the device: ATOL JSON tasks in, outcomes out."""

    def run(self, request_id: str, tasks: list[Any]) -> list[dict[str, Any]]: ...

    def lookup(self, request_id: str) -> list[dict[str, Any]] | None: ...

    def set_faults(self, **faults: Any) -> None: ...


def open_device(state_dir: str) -> VirtualDevice:
    """The virtual ККТ with its state in ``state_dir``."""
    module_name, _, class_name = DEVICE.partition(":")
    device_class = getattr(importlib.import_module(module_name), class_name)
    device: VirtualDevice = device_class(state_dir)
    return device


def _ism(text: str) -> str:
    if text not in ISM_MODES:
        raise ValueError(text)
    return text


class InProcessTransport:
    """ATOL JSON tasks handed to the virtual ККТ by a function call."""

    def __init__(self, kkt: VirtualDevice) -> None:
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

    def cancel_leftover(self, op_id: str, timeout_s: float) -> None:
        return None  # the virtual ККТ's fiscal tasks cancel a leftover receipt themselves

    def close(self) -> None:
        pass


class EmulatorPrinter(AtolPrinter):
    """``emulator:///STATE/DIR``: the virtual ККТ, its state in that directory."""

    OPTIONS: ClassVar[Mapping[str, Option]] = {
        "ism": Option(_ism, None, "|".join(ISM_MODES)),
    }

    def __init__(self, url: PrinterURL, settings: PrinterSettings) -> None:
        super().__init__(url, settings)
        #: The device (``markd.emulators.virtual_kkt.VirtualKkt``): its faults, its documents.
        self.kkt: Any = open_device(url.target)
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
