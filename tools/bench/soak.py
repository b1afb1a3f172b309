#!/usr/bin/env python3
"""Soak benchmark: a real ``markd`` process, a pty scanner and the check emulators, N scans.

Usage::

    tools/bench/soak.py [--scans N] [--window W] [--distinct D] [--mode offline|store]

What runs (all on loopback, in a temporary directory):

* the Local Module emulator (``python -m markd.emulators local_module``) in its own process;
* ``markd`` itself, started the way systemd starts it (``NOTIFY_SOCKET`` bound by this script,
  log lines on stderr), configured for ``[check] mode = "direct"`` with the True API CDN
  unreachable (a closed port), so every scan takes the offline path: local store, then the
  Local Module. ``--mode store`` uses ``store-only`` instead (no HTTP at all);
* a pty standing in for a serial scanner: scans are written to its master side, CR-terminated,
  with at most ``W`` scans in flight.

Measured:

* scans sent and verdicts received (each verdict is one ``verdict`` line on markd's stderr,
  matched to its scan in order);
* end-to-end latency from the write of a scan's last byte to the arrival of its verdict line
  (p50/p99; target for the offline path: p99 ≤ 5 ms);
* markd's RSS and open descriptors after warm-up and at the end (growth ≤ 10 MB; equal);
* time from ``exec`` to ``READY=1`` (target ≤ 500 ms).

Prints progress and human lines, then one JSON object as the final line.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tty
from pathlib import Path

from markd import samples
from markd.codes import parse
from markd.store import Store

TARGET_P99_MS = 5.0
TARGET_RSS_GROWTH_MB = 10.0
TARGET_READY_MS = 500.0
#: Scans before the "start" RSS and descriptor figures are taken: imports, caches, the first
#: connections to the Local Module settle first.
WARMUP_SCANS = 2_000


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def proc_status(pid: int) -> tuple[float, int]:
    """(RSS in MiB, open descriptors) of a process."""
    rss_kb = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def start_local_module(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "markd.emulators", "local_module", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=open(workdir / "local_module.log", "wb"),  # noqa: SIM115 - lives with the child
    )
    assert process.stdout is not None
    url = process.stdout.readline().decode().strip()
    if not url.startswith("http"):
        raise SystemExit(f"the Local Module emulator did not start (see {workdir})")
    return process, url


def write_config(workdir: Path, scanner: str, lm_url: str, mode: str) -> Path:
    token = workdir / "crpt-token"
    token.write_text("0b9f4c7e-2a51-4d8e-9c3b-6e1f7a2d5c40\n")
    password = workdir / "lm-password"
    password.write_text("admin\n")
    check = f'mode = "{"direct" if mode == "offline" else "store-only"}"\n'
    if mode == "offline":
        check += (
            '\n[check.online]\nurl = "http://127.0.0.1:9"\n'  # discard port: nothing listens
            f'token_file = "{token}"\n'
            f'\n[check.local_module]\nurl = "{lm_url}"\napi = 2\n'
            f'password_file = "{password}"\n'
        )
    config = workdir / "markd.toml"
    config.write_text(
        f'[log]\ntarget = "stderr"\nlevel = "info"\n\n'
        f'[store]\npath = "{workdir / "store"}"\n\n'
        f'[api]\nsocket = "{workdir / "control.sock"}"\n\n'
        f'[scanners.soak]\nurl = "serial://{scanner}?terminator=cr"\n\n'
        f"[check]\n{check}"
    )
    return config


def prepare_store(workdir: Path, codes: list[str]) -> set[str]:
    """Block every tenth distinct КИ; return the blocked КИ."""
    blocked = {parse(code).ki for code in codes[::10]}
    with Store.open(str(workdir / "store")) as store:
        for ki in sorted(blocked):
            store.block(ki, "soak: blocked by hand")
    return blocked


class Daemon:
    """markd as a child process, with its stderr read line by line without blocking."""

    def __init__(self, config: Path, workdir: Path) -> None:
        self.notify_path = str(workdir / "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        env = dict(os.environ, NOTIFY_SOCKET=self.notify_path, PYTHONUNBUFFERED="1")
        markd = Path(sys.executable).with_name("markd")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [str(markd), "--config", str(config)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=env,
        )
        assert self.process.stderr is not None
        self.stderr = self.process.stderr.fileno()
        os.set_blocking(self.stderr, False)
        self.buffer = b""
        self.log = open(workdir / "markd.log", "wb")  # noqa: SIM115 - closed in stop()

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Seconds from exec to READY=1; afterwards a thread keeps reading the socket, as the
        service manager does (a full datagram queue would block markd's notifications)."""
        self.notify.settimeout(timeout)
        while True:
            message = self.notify.recv(4096).decode()
            if "READY=1" in message.split("\n"):
                ready = time.perf_counter() - self.started
                break
        self.notify.settimeout(None)
        threading.Thread(target=self._drain_notify, daemon=True).start()
        return ready

    def _drain_notify(self) -> None:
        while True:
            try:
                if not self.notify.recv(4096):
                    return
            except OSError:
                return

    def lines(self, timeout: float) -> list[bytes]:
        ready, _, _ = select.select([self.stderr], [], [], timeout)
        if not ready:
            return []
        chunk = os.read(self.stderr, 1 << 16)
        if not chunk:
            raise SystemExit(f"markd exited ({self.process.wait()}); see markd.log")
        self.log.write(chunk)
        self.buffer += chunk
        *complete, self.buffer = self.buffer.split(b"\n")
        return complete

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        while True:
            try:
                chunk = os.read(self.stderr, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            self.log.write(chunk)
        self.log.close()
        self.notify.close()
        return code


def is_verdict(line: bytes) -> bool:
    """markd's stderr line for a verdict event: ``verdict: <decision> <КИ> from <scanner>…``."""
    return line.startswith(b"verdict: ")


def run(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    codes = samples.batch(args.distinct, seed=7)
    blocked = prepare_store(workdir, codes)
    lm_process = None
    lm_url = ""
    if args.mode == "offline":
        lm_process, lm_url = start_local_module(workdir)
    master, slave = pty.openpty()
    tty.setraw(slave)
    scanner = os.ttyname(slave)
    config = write_config(workdir, scanner, lm_url, args.mode)
    daemon = Daemon(config, workdir)
    try:
        ready_s = daemon.wait_ready()
        say(f"markd READY=1 after {ready_s * 1000:.0f} ms (exec to READY=1)")
        payloads = [code.encode() + b"\r" for code in codes]
        sent_at: list[float] = []
        latencies: list[float] = []
        decisions = {"allow": 0, "deny": 0}
        expected_deny = sum(parse(code).ki in blocked for code in codes)
        start_figures: tuple[float, int] | None = None
        total = args.scans
        next_report = time.perf_counter() + 5
        began = time.perf_counter()
        received = 0
        while received < total:
            while len(sent_at) - received < args.window and len(sent_at) < total:
                os.write(master, payloads[len(sent_at) % len(payloads)])
                sent_at.append(time.perf_counter())
            for line in daemon.lines(10.0):
                if not is_verdict(line):
                    continue
                now = time.perf_counter()
                latencies.append(now - sent_at[received])
                text = line.decode(errors="replace")
                for decision in decisions:
                    if f" decision={decision} " in text:
                        decisions[decision] += 1
                received += 1
                if received == WARMUP_SCANS:
                    start_figures = proc_status(daemon.process.pid)
            if time.perf_counter() > next_report:
                rate = received / (time.perf_counter() - began)
                say(f"  {received:,}/{total:,} verdicts ({rate:,.0f}/s)")
                next_report = time.perf_counter() + 5
            if not latencies and time.perf_counter() - began > 30:
                raise SystemExit("no verdict in 30 s; see markd.log in the work directory")
        end_figures = proc_status(daemon.process.pid)
        if start_figures is None:
            start_figures = end_figures
        elapsed = time.perf_counter() - began
    finally:
        exit_code = daemon.stop()
        if lm_process is not None:
            lm_process.terminate()
            lm_process.wait()
        os.close(master)
        os.close(slave)
    latencies.sort()
    n = len(latencies)

    def pct(p: float) -> float:
        return round(latencies[min(n - 1, int(p * n))] * 1000, 3)

    rss_growth = end_figures[0] - start_figures[0]
    per_cycle = expected_deny * total / len(codes)
    return {
        "mode": args.mode,
        "scans_sent": len(sent_at),
        "verdicts_received": received,
        "decisions": decisions,
        "denies_expected_about": round(per_cycle),
        "seconds": round(elapsed, 1),
        "scans_per_s": round(received / elapsed),
        "latency_p50_ms": pct(0.50),
        "latency_p99_ms": pct(0.99),
        "latency_p999_ms": pct(0.999),
        "latency_max_ms": round(latencies[-1] * 1000, 3),
        "rss_start_mb": round(start_figures[0], 1),
        "rss_end_mb": round(end_figures[0], 1),
        "rss_growth_mb": round(rss_growth, 1),
        "fds_start": start_figures[1],
        "fds_end": end_figures[1],
        "ready_ms": round(ready_s * 1000, 1),
        "markd_exit_code": exit_code,
        "targets": {
            "verdicts_equal_scans": received == len(sent_at),
            "p99_le_5ms": pct(0.99) <= TARGET_P99_MS,
            "rss_growth_le_10mb": rss_growth <= TARGET_RSS_GROWTH_MB,
            "fds_equal": start_figures[1] == end_figures[1],
            "ready_le_500ms": ready_s * 1000 <= TARGET_READY_MS,
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scans", type=int, default=1_000_000, help="scans to push (1,000,000)")
    ap.add_argument("--window", type=int, default=1, help="scans in flight at once (1)")
    ap.add_argument("--distinct", type=int, default=20_000, help="distinct codes cycled")
    ap.add_argument(
        "--mode",
        choices=("offline", "store"),
        default="offline",
        help="offline: CDN unreachable, Local Module emulator answers; store: store-only",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="markd-soak-"))
    say(f"markd soak: {args.scans:,} scans, mode {args.mode}, work dir {workdir}")
    try:
        result = run(args, workdir)
    finally:
        if not args.keep:
            subprocess.run(["rm", "-rf", str(workdir)], check=False)
    say(
        f"verdicts {result['verdicts_received']:,}/{result['scans_sent']:,}, "
        f"p50 {result['latency_p50_ms']} ms, p99 {result['latency_p99_ms']} ms, "
        f"RSS {result['rss_start_mb']} → {result['rss_end_mb']} MiB, "
        f"fds {result['fds_start']} → {result['fds_end']}, READY in {result['ready_ms']} ms"
    )
    for name, met in result["targets"].items():  # type: ignore[union-attr]
        say(f"target {name:<28} {'met' if met else 'NOT MET'}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
