"""The ``atol-lib`` backend: the libfptr10 binding loaded lazily, a clear error without it, and
the JSON round trip through a stand-in binding whose ``processJson`` is the virtual ККТ."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from markd.codes import parse
from markd.emulators.virtual_kkt import VirtualKkt
from markd.errors import PrinterFault, PrinterUnavailable
from markd.fiscal.base import new_op_id, open_printer
from markd.fiscal.model import IndustryTags, MarkedItem, Position
from markd.receipts import Payment
from markd.testing import fiscal as testing

#: A stand-in for ATOL's ``libfptr10.py``: the same class, constants and calls, with the virtual
#: ККТ (state directory from the library path argument) where the device would be.
FAKE_BINDING = """
import json
from markd.emulators.virtual_kkt import VirtualKkt

class IFptr:
    LIBFPTR_PARAM_JSON_DATA = 65645
    LIBFPTR_SETTING_MODEL = "Model"
    LIBFPTR_SETTING_PORT = "Port"
    LIBFPTR_SETTING_COM_FILE = "ComFile"
    LIBFPTR_SETTING_BAUDRATE = "BaudRate"
    LIBFPTR_SETTING_IPADDRESS = "IPAddress"
    LIBFPTR_SETTING_IPPORT = "IPPort"
    LIBFPTR_MODEL_ATOL_AUTO = 500
    LIBFPTR_PORT_COM = 0
    LIBFPTR_PORT_USB = 1
    LIBFPTR_PORT_TCPIP = 2
    LIBFPTR_PORT_BR_115200 = 11
    LIBFPTR_PORT_BR_57600 = 10
    calls = []

    def __init__(self, lib_path=""):
        if not lib_path:
            raise OSError("libfptr10.so: cannot open shared object file")
        self._kkt = VirtualKkt(lib_path.removesuffix("/libfptr10.so"))
        self._params = {}
        self._error = (0, "")
        self.opened = False

    def setSettings(self, settings):
        IFptr.calls.append(("setSettings", dict(settings)))

    def open(self):
        self.opened = True
        return 0

    def close(self):
        self.opened = False
        return 0

    def setParam(self, key, value):
        self._params[key] = value

    def getParamString(self, key):
        return self._params.get(key, "")

    def processJson(self):
        task = json.loads(self._params[self.LIBFPTR_PARAM_JSON_DATA])
        IFptr.calls.append(("processJson", task["type"]))
        outcome = self._kkt.run("", [task])[0]
        if outcome["status"] != "ready":
            self._error = (outcome["errorCode"], outcome["errorDescription"])
            return -1
        self._params[self.LIBFPTR_PARAM_JSON_DATA] = json.dumps(outcome["result"])
        return 0

    def cancelReceipt(self):
        IFptr.calls.append(("cancelReceipt", None))
        outcome = self._kkt.run("", [{"type": "cancelReceipt"}])[0]
        if outcome["status"] != "ready":
            self._error = (outcome["errorCode"], outcome["errorDescription"])
            return -1
        return 0

    def errorCode(self):
        return self._error[0]

    def errorDescription(self):
        return self._error[1]
"""


@pytest.fixture
def binding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[type]:
    directory = tmp_path / "binding"
    directory.mkdir()
    (directory / "libfptr10.py").write_text(textwrap.dedent(FAKE_BINDING), encoding="utf-8")
    monkeypatch.syspath_prepend(str(directory))
    sys.modules.pop("libfptr10", None)
    import libfptr10  # type: ignore[import-not-found]

    libfptr10.IFptr.calls.clear()
    try:
        yield libfptr10.IFptr
    finally:
        sys.modules.pop("libfptr10", None)  # no other test may see the stand-in


def test_a_sale_through_process_json(binding: type, tmp_path: Path) -> None:
    kkt_dir = tmp_path / "kkt"
    url = f"atol-lib:///dev/ttyACM0?baudrate=57600&lib={kkt_dir}/libfptr10.so"
    with open_printer(url, testing.FAST) as printer:
        printer.ensure_shift(new_op_id())
        km = testing.SHOES
        check = printer.check_code(new_op_id(), km, parse(km).ki, 1)
        printer.open_receipt(new_op_id())
        printer.add_position(
            new_op_id(),
            Position(
                "x",
                100,
                mark=MarkedItem(
                    km,
                    parse(km).ki,
                    1,
                    industry=IndustryTags(tag1265="UUID=u&Time=1"),
                    validation=check.validation,
                ),
            ),
        )
        result = printer.close_receipt(new_op_id(), [Payment(100)])
        finding, _ = printer.find_receipt(new_op_id())

    assert check.accepted and result.document_number == 3
    assert finding == "unknown"  # the library keeps no request table
    settings = binding.calls[0][1]
    assert settings == {"Model": 500, "Port": 0, "ComFile": "/dev/ttyACM0", "BaudRate": 10}
    kinds = [name for kind, name in binding.calls if kind == "processJson"]
    assert kinds[-1] == "sell" and "beginMarkingCodeValidation" in kinds


def test_errors_of_the_library_become_reasons(binding: type, tmp_path: Path) -> None:
    with open_printer(f"atol-lib://usb?lib={tmp_path}/kkt/libfptr10.so", testing.FAST) as printer:
        VirtualKkt(tmp_path / "kkt").set_faults(paper_out=True)  # the "device" behind it
        with pytest.raises(PrinterFault) as err:
            printer.open_shift(new_op_id())
        printer.cancel_receipt(new_op_id())  # nothing open: tolerated

    assert (err.value.reason, err.value.device_code) == ("paper-out", 44)
    assert ("cancelReceipt", None) in binding.calls
    assert binding.calls[0][1]["Port"] == 1  # USB


def test_a_missing_shared_library_is_named(binding: type) -> None:
    with pytest.raises(PrinterUnavailable) as err:
        open_printer("atol-lib://192.0.2.20:5555")  # no lib=: the stand-in finds no .so

    assert err.value.reason == "driver-missing" and "libfptr10.so" in str(err.value)
