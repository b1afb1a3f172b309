"""The simulated USB bus behaves like libusb under pyusb's real code, and the USB session
(markd.scanners.usb_common) takes and gives back interfaces the way the kernel expects."""

from __future__ import annotations

import doctest
import errno
import os
import threading
import time
from pathlib import Path

import pytest
import usb.core
import usb.util

from markd.errors import ScannerError, ScannerGone
from markd.scanners import simulated, usb_common
from markd.scanners.simulated import SimulatedDevice, SimulatedInterface, SimulatedUsb
from markd.scanners.usb_common import UsbSession, find_device


@pytest.fixture
def bus() -> SimulatedUsb:
    return SimulatedUsb()


def test_module_examples_run() -> None:
    assert doctest.testmod(simulated).failed == 0


def test_pyusb_finds_devices_and_reads_descriptors(bus: SimulatedUsb) -> None:
    bus.add(SimulatedDevice(0x0C2E, 0x0B61, serial="K1", product="Voyager"))
    bus.add(SimulatedDevice(0x1EAB, 0x0010, kind="hid-pos"))
    found = list(usb.core.find(find_all=True, backend=bus))
    assert [(d.idVendor, d.idProduct) for d in found] == [(0x0C2E, 0x0B61), (0x1EAB, 0x0010)]
    keyboard, pos = found
    assert keyboard.product == "Voyager" and keyboard.serial_number == "K1"
    assert pos.serial_number is None
    intf = keyboard.get_active_configuration()[(0, 0)]
    assert (intf.bInterfaceClass, intf.bInterfaceSubClass, intf.bInterfaceProtocol) == (3, 1, 1)
    assert intf[0].bEndpointAddress == 0x81 and intf[0].wMaxPacketSize == 8
    assert pos.get_active_configuration()[(0, 0)][0].wMaxPacketSize == 64


def test_claim_needs_the_kernel_driver_detached(bus: SimulatedUsb) -> None:
    device = bus.add(SimulatedDevice(0x0C2E, 0x0B61))
    dev = usb.core.find(backend=bus)
    with pytest.raises(usb.core.USBError) as err:
        usb.util.claim_interface(dev, 0)
    assert err.value.errno == errno.EBUSY
    assert dev.is_kernel_driver_active(0)
    dev.detach_kernel_driver(0)
    usb.util.claim_interface(dev, 0)
    device.queue(b"\x00\x00\x04\x00\x00\x00\x00\x00")
    assert bytes(dev.read(0x81, 8, 100)) == b"\x00\x00\x04\x00\x00\x00\x00\x00"
    with pytest.raises(usb.core.USBTimeoutError):
        dev.read(0x81, 8, 20)
    usb.util.release_interface(dev, 0)
    dev.attach_kernel_driver(0)
    usb.util.dispose_resources(dev)
    assert device.log == ["plug 2", "open", "detach 0", "claim 0", "release 0", "attach 0", "close"]


def test_unplug_fails_a_waiting_read_at_once_with_enodev(bus: SimulatedUsb) -> None:
    device = bus.add(SimulatedDevice(0x0C2E, 0x0B61))
    dev = usb.core.find(backend=bus)
    dev.detach_kernel_driver(0)
    usb.util.claim_interface(dev, 0)
    threading.Timer(0.1, bus.unplug, (device,)).start()
    started = time.monotonic()
    with pytest.raises(usb.core.USBError) as err:
        dev.read(0x81, 8, 5000)
    assert err.value.errno == errno.ENODEV
    assert time.monotonic() - started < 1.0
    assert usb.core.find(backend=bus) is None
    # A handle from before the unplug stays dead after the replug (a new address).
    bus.plug(device)
    with pytest.raises(usb.core.USBError):
        dev.read(0x81, 8, 10)
    assert usb.core.find(backend=bus).address == device.address != 2


def test_queued_unplug_and_delays(bus: SimulatedUsb) -> None:
    device = bus.add(SimulatedDevice(0x0C2E, 0x0B61))
    dev = usb.core.find(backend=bus)
    dev.detach_kernel_driver(0)
    device.queue(bytes(8), delay=0.15)
    device.queue_unplug()
    started = time.monotonic()
    dev.read(0x81, 8, 1000)
    assert time.monotonic() - started >= 0.14
    with pytest.raises(usb.core.USBError) as err:
        dev.read(0x81, 8, 1000)
    assert err.value.errno == errno.ENODEV and not device.plugged


def test_set_configuration_is_busy_while_a_driver_is_bound(bus: SimulatedUsb) -> None:
    bus.add(SimulatedDevice(0x0C2E, 0x0B61))
    dev = usb.core.find(backend=bus)
    with pytest.raises(usb.core.USBError) as err:
        dev.set_configuration()
    assert err.value.errno == errno.EBUSY
    dev.detach_kernel_driver(0)
    dev.set_configuration()


def test_session_claims_an_unconfigured_device_and_restores_everything(bus: SimulatedUsb) -> None:
    device = bus.add(SimulatedDevice(0x0C2E, 0x0B61, configured=False))
    session = UsbSession.claim(find_device("0c2e:0b61", None, bus), None, boot_protocol=True)
    assert "set_configuration 1" in device.log and session.boot_protocol
    device.queue(bytes([0, 0, 5, 0, 0, 0, 0, 0]))
    assert session.read(0.5) == bytes([0, 0, 5, 0, 0, 0, 0, 0])
    assert session.read(0.01) is None
    session.close()
    session.close()
    assert device.log[-3:] == ["set_protocol 0 report", "release 0", "close"]


def test_session_detaches_and_reattaches_the_kernel_driver(bus: SimulatedUsb) -> None:
    device = bus.add(SimulatedDevice(0x0C2E, 0x0B61))
    session = UsbSession.claim(find_device("0c2e:0b61", None, bus), None, boot_protocol=True)
    assert device.kernel_driver == {0: False}
    session.close()
    assert device.kernel_driver == {0: True}
    assert session.reattach_error is None
    assert "attach 0" in device.log


def test_session_read_after_unplug_is_scanner_gone(bus: SimulatedUsb) -> None:
    device = bus.add(SimulatedDevice(0x0C2E, 0x0B61))
    session = UsbSession.claim(find_device("0c2e:0b61", None, bus))
    bus.unplug(device)
    with pytest.raises(ScannerGone):
        session.read(1.0)
    session.close()  # never raises on a dead device
    assert session.reattach_error is not None  # the kernel driver cannot come back now


def test_second_claim_of_the_same_interface_is_busy(bus: SimulatedUsb) -> None:
    bus.add(SimulatedDevice(0x0C2E, 0x0B61))
    first = UsbSession.claim(find_device("0c2e:0b61", None, bus))
    try:
        with pytest.raises(ScannerError) as err:
            UsbSession.claim(find_device("0c2e:0b61", None, bus))
        assert err.value.reason == "scanner-busy"
    finally:
        first.close()


def test_access_denied_names_the_udev_rules(bus: SimulatedUsb) -> None:
    device = bus.add(SimulatedDevice(0x0C2E, 0x0B61))
    bus.deny_access(device)
    with pytest.raises(ScannerError) as err:
        UsbSession.claim(find_device("0c2e:0b61", None, bus))
    assert err.value.reason == "scanner-access-denied" and "udev" in err.value.message
    UsbSession.claim(find_device("0c2e:0b61", None, bus)).close()


def test_device_selection_by_serial_and_ambiguity(bus: SimulatedUsb) -> None:
    bus.add(SimulatedDevice(0x0C2E, 0x0B61, serial="A"))
    second = bus.add(SimulatedDevice(0x0C2E, 0x0B61, serial="B"))
    with pytest.raises(ScannerError) as err:
        find_device("0c2e:0b61", None, bus)
    assert err.value.reason == "ambiguous-scanner" and "?serial=" in err.value.message
    assert find_device("0c2e:0b61", "B", bus).address == second.address
    with pytest.raises(ScannerGone):
        find_device("0c2e:0b61", "C", bus)
    with pytest.raises(ScannerGone):
        find_device("05e0:1200", None, bus)


def test_device_selection_by_udev_symlink(bus: SimulatedUsb, tmp_path: Path) -> None:
    device = bus.add(SimulatedDevice(0x0C2E, 0x0B61))
    link = tmp_path / "scanner-0c2e-10d3-sn-SIM0001"
    with pytest.raises(ScannerGone):
        find_device(str(link), None, bus)
    os.symlink(f"/dev/bus/usb/001/{device.address:03d}", link)
    assert find_device(str(link), None, bus).address == device.address
    other = tmp_path / "not-usb"
    os.symlink("/dev/ttyACM0", other)
    with pytest.raises(ScannerError) as err:
        find_device(str(other), None, bus)
    assert err.value.reason == "bad-device-path"


def test_choose_by_interface_number(bus: SimulatedUsb) -> None:
    device = bus.add(
        SimulatedDevice(
            0x1EAB,
            0x0010,
            interfaces=[SimulatedInterface("keyboard"), SimulatedInterface("hid-pos")],
        )
    )
    session = UsbSession.claim(find_device("1eab:0010", None, bus), None, interface_number=1)
    assert session.number == 1 and session.endpoint.bEndpointAddress == 0x82
    session.close()
    assert device.kernel_driver == {0: True, 1: True}
    with pytest.raises(ScannerError):
        UsbSession.claim(find_device("1eab:0010", None, bus), None, interface_number=5)


def test_backend_hook_restores_the_previous_backend() -> None:
    bus = SimulatedUsb()
    with usb_common.use_backend(bus):
        assert usb_common.get_backend() is bus
        with usb_common.use_backend(SimulatedUsb()) as inner:
            assert usb_common.get_backend() is inner
        assert usb_common.get_backend() is bus
    assert usb_common._backend_override is None


def test_led_output_report_is_taken_recorded_and_reset_by_a_replug(bus: SimulatedUsb) -> None:
    # The kernel synced the console's Caps Lock on when it bound; a replug does so again.
    device = bus.add(SimulatedDevice(0x0C2E, 0x0B61, leds=0x03))
    session = UsbSession.claim(find_device("0c2e:0b61", None, bus), None, boot_protocol=True)
    assert device.leds == 0x03
    assert session.set_output_report(0, b"\x01")
    assert device.leds == 0x01 and device.output_reports == [(0, 0x0200, b"\x01")]
    assert "set_report 0 0x0200 01" in device.log
    # With a report ID, the data starts with it (HID 1.11 §7.2.2).
    assert session.set_output_report(1, b"\x01\x02") and device.leds == 0x02
    assert not session.set_output_report(1, b"\x05\x02")  # the ID does not match: STALL
    session.close()
    bus.unplug(device)
    bus.plug(device)
    assert device.leds == 0x03


def test_a_keyboard_without_leds_stalls_set_report(bus: SimulatedUsb) -> None:
    device = bus.add(
        SimulatedDevice(0x0C2E, 0x0B61, interfaces=[SimulatedInterface("keyboard", leds=False)])
    )
    session = UsbSession.claim(find_device("0c2e:0b61", None, bus), None, boot_protocol=True)
    assert not session.set_output_report(0, b"\x01")  # a STALL is an answer, not an error
    assert "set_report 0 0x0200 stalled" in device.log
    session.close()


def test_a_non_boot_keyboard_refuses_the_boot_protocol(bus: SimulatedUsb) -> None:
    device = bus.add(
        SimulatedDevice(0x0C2E, 0x0B61, interfaces=[SimulatedInterface("keyboard", boot=False)])
    )
    dev = usb.core.find(backend=bus)
    intf = dev.get_active_configuration()[(0, 0)]
    assert (intf.bInterfaceClass, intf.bInterfaceSubClass, intf.bInterfaceProtocol) == (3, 0, 0)
    session = UsbSession.claim(find_device("0c2e:0b61", None, bus), None, boot_protocol=True)
    assert not session.boot_protocol and not any("set_protocol" in e for e in device.log)
    assert session._set_protocol(0) is False
    session.close()


def test_auto_caps_lock_scanner_types_as_the_leds_say(bus: SimulatedUsb) -> None:
    device = bus.add(SimulatedDevice(0x0C2E, 0x0B61, leds=0x03, auto_caps_lock=True))
    device.type_text("aB", terminator="")
    # Caps Lock believed on: Shift+A for 'a', plain B for 'B', and no Caps Lock press.
    assert [r[:3] for r in simulated.keyboard_reports("aB", terminator="") if any(r)] == [
        b"\x00\x00\x04",
        b"\x02\x00\x05",
    ]
    dev = usb.core.find(backend=bus)
    dev.detach_kernel_driver(0)
    usb.util.claim_interface(dev, 0)
    typed = [bytes(dev.read(0x81, 8, 100))[:3] for _ in range(device.pending())]
    assert [r for r in typed if any(r)] == [b"\x02\x00\x04", b"\x00\x00\x05"]
