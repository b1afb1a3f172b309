"""The simulated USB bus and the real libusb path must answer pyusb alike.

Not collected by a plain ``pytest`` run; tests/integration/test_scanner_libusb.py runs it
under umockdev's preload. One script of pyusb calls (the ones markd's USB backends make, and
the failures they handle) runs twice: over :class:`markd.scanners.simulated.SimulatedUsb`,
and over pyusb's libusb1 backend with the device node emulated at the kernel interface
(tests/umockdev_usb.py). Every step's outcome (a value, or the exception with its errno)
must be the same. The simulated bus is what most scanner tests run on; where it disagreed
with the real path, it was corrected.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import usb.core
import usb.util

from markd.scanners.simulated import (
    KEYBOARD_REPORT_DESCRIPTOR,
    SimulatedDevice,
    SimulatedInterface,
    SimulatedUsb,
    keyboard_reports,
)
from markd.scanners.usb_common import get_backend
from umockdev_usb import Profile, available, shared_bus


@pytest.fixture(autouse=True)
def _needs_umockdev() -> None:
    reason = available()
    if reason is not None:
        pytest.skip(reason)


def outcome(step: Callable[[], Any]) -> str:
    try:
        value = step()
    except usb.core.USBTimeoutError as exc:
        return f"USBTimeoutError errno {exc.errno}"
    except usb.core.USBError as exc:
        return f"USBError errno {exc.errno}"
    except (ValueError, NotImplementedError) as exc:
        return type(exc).__name__
    if isinstance(value, bool | int | str) or value is None:
        return f"ok {value!r}"
    return f"ok {bytes(value).hex()}"


def script(
    find: Callable[[], list[Any]],
    send: Callable[[bytes], None],
    unplug: Callable[[], None],
    plug: Callable[[], None],
) -> list[tuple[str, str]]:
    steps: list[tuple[str, str]] = []

    def step(name: str, call: Callable[[], Any]) -> None:
        steps.append((name, outcome(call)))

    devices = find()
    steps.append(("find", f"{len(devices)} device(s)"))
    d = devices[0]
    step("serial", lambda: d.serial_number)
    step("driver active", lambda: d.is_kernel_driver_active(0))
    step("claim while the driver holds it", lambda: usb.util.claim_interface(d, 0))
    step("set configuration while the driver holds it", lambda: d.set_configuration())
    step("detach", lambda: d.detach_kernel_driver(0))
    step("driver active after detach", lambda: d.is_kernel_driver_active(0))
    step("detach again", lambda: d.detach_kernel_driver(0))
    step("claim", lambda: usb.util.claim_interface(d, 0))
    # A second handle on the same device (another program): the interface is taken.
    other = find()[0]
    step("claim by a second handle", lambda: usb.util.claim_interface(other, 0))
    step("set configuration while claimed", lambda: d.set_configuration())
    step("dispose the second handle", lambda: usb.util.dispose_resources(other))
    step(
        "report descriptor",
        lambda: len(d.ctrl_transfer(0x81, 0x06, 0x2200, 0, 4096, 1000)),
    )
    step("set protocol boot", lambda: d.ctrl_transfer(0x21, 0x0B, 0, 0, None, 1000))
    step(
        "LED report to a device without LEDs",
        lambda: d.ctrl_transfer(0x21, 0x09, 0x0200, 0, b"\x01", 1000),
    )
    step("idle read", lambda: d.read(0x81, 8, 50))
    send(keyboard_reports("A", terminator="")[0])
    step("read", lambda: d.read(0x81, 8, 1000))
    step("read from an endpoint that is not there", lambda: d.read(0x82, 8, 50))
    step("attach while claimed", lambda: d.attach_kernel_driver(0))
    step("release", lambda: usb.util.release_interface(d, 0))
    step("attach", lambda: d.attach_kernel_driver(0))
    step("driver active after attach", lambda: d.is_kernel_driver_active(0))
    step("attach again", lambda: d.attach_kernel_driver(0))
    step("detach once more", lambda: d.detach_kernel_driver(0))
    step("claim once more", lambda: usb.util.claim_interface(d, 0))
    unplug()
    step("read after unplug", lambda: d.read(0x81, 8, 200))
    step("driver active after unplug", lambda: d.is_kernel_driver_active(0))
    step("release after unplug", lambda: usb.util.release_interface(d, 0))
    step("attach after unplug", lambda: d.attach_kernel_driver(0))
    step("dispose", lambda: usb.util.dispose_resources(d))
    plug()
    deadline = time.monotonic() + 5
    while not (found := find()) and time.monotonic() < deadline:
        time.sleep(0.05)
    steps.append(("find after replug", f"{len(found)} device(s)"))
    return steps


def test_the_simulated_bus_answers_like_the_real_libusb_path() -> None:
    simulated_bus = SimulatedUsb()
    # A keyboard without LEDs: its descriptor has no output report, and it STALLs SET_REPORT.
    interface = SimulatedInterface("keyboard", leds=False)
    simulated = simulated_bus.add(
        SimulatedDevice(0x0C2E, 0x0B62, serial="K8", interfaces=[interface])
    )
    simulated_steps = script(
        lambda: list(usb.core.find(find_all=True, backend=simulated_bus, idProduct=0x0B62)),
        lambda report: simulated.queue(report),
        lambda: simulated_bus.unplug(simulated),
        lambda: simulated_bus.plug(simulated),
    )

    profile = Profile(
        kind="keyboard", pid=0x0B62, serial="K8", report_descriptor=KEYBOARD_REPORT_DESCRIPTOR
    )
    real = shared_bus().add(profile, leds=False)
    backend = get_backend()
    try:
        real_steps = script(
            lambda: list(usb.core.find(find_all=True, backend=backend, idProduct=0x0B62)),
            lambda report: real.queue(report),
            real.unplug,
            real.plug,
        )
    finally:
        real.unplug()
        real.close()

    differences = [
        f"{name}: simulated {mine}, real {theirs}"
        for (name, mine), (_, theirs) in zip(simulated_steps, real_steps, strict=True)
        if mine != theirs
    ]
    assert not differences, "\n".join(["the simulated bus disagrees:", *differences])
    assert not real.unknown, real.unknown


async def test_an_open_idle_scanner_costs_little_cpu_on_the_real_path() -> None:
    """libusb polls the node for finished URBs; umockdev's node is a socket and is always
    "ready", so the emulation holds an empty reap as a blocking poll would (REAP_HOLD_S).
    Without that an idle open scanner spins a core (0.8 s of CPU a second, measured)."""
    import asyncio

    from markd.scanners import ScannerEvent, ScannerState, open_scanner

    device = shared_bus().add(Profile(kind="hid-pos", vid=0x1EAB, pid=0x0C11, serial="IDLE"))
    scanner = open_scanner("idle", "hid-pos://1eab:0c11")
    queue: asyncio.Queue[ScannerEvent] = asyncio.Queue()
    scanner.start(asyncio.get_running_loop(), queue)
    try:
        state = await asyncio.wait_for(queue.get(), 10)
        assert isinstance(state, ScannerState) and state.present, state
        await asyncio.sleep(0.3)
        cpu, wall = time.process_time(), time.monotonic()
        await asyncio.sleep(1.0)
        per_second = (time.process_time() - cpu) / (time.monotonic() - wall)
        assert per_second < 0.4, f"an idle open scanner used {per_second:.2f} s of CPU a second"
    finally:
        await asyncio.to_thread(scanner.close)
        device.unplug()
        device.close()
