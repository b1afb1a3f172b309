#!/usr/bin/env python3
"""Soak benchmark: a real ``markd`` process, a pty scanner and the check emulators, N scans.

Usage::

    tools/bench/soak.py [--scans N] [--window W] [--distinct D] [--mode offline|store]
                        [--trace-ms T] [--cpu-quota PERCENT [--rate SCANS_PER_S]]
                        [--scrape-every SECONDS [--compare-scrape [--block-s B]]]

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
  (p50/p99/p99.9 and the maximum; target for the offline path: p99 ≤ 5 ms, and for the
  slowest scan of a million ≤ 50 ms);
* the cause of each of the five slowest scans: markd runs with ``[check] slow_scan_ms = T``
  (``--trace-ms``, default 5), so every scan slower than that inside markd leaves a
  ``slow-scan`` line with the time of each stage (queue, parse, store, lm, the listeners,
  gc …); a slow scan without one spent its time outside markd's handling (the pty and the
  reader thread before framing, or the stderr pipe and this script after the verdict), which
  the verdict line's own ``latency_ms`` (framing → verdict) tells apart;
* markd's RSS and open descriptors after warm-up and at the end (growth ≤ 10 MB; equal);
* time from ``exec`` to ``READY=1`` (target ≤ 500 ms).

``--cpu-quota 25`` runs markd (not the emulator, not this script) on a quarter of one CPU, as
on a weak kiosk, and paces the scans (``--rate``, default 50 a second, a scan every 20 ms:
far more than a till, so the quota is what markd has to share with its own bursts). The
quota is set the first way that works here (or the one ``--cpu-method`` names), and the run
says which: ``systemd-run --scope -p CPUQuota=25%``; a cgroup v2 ``cpu.max``; a cgroup v1
``cpu.cfs_quota_us`` (both 25 ms in every 100 ms); else ``taskset``: markd pinned to one core
beside three busy processes pinned to the same core. Its target: p99 ≤ 5 ms.

``--scrape-every 1`` scrapes ``GET /metrics`` on the control socket once a second during the
scans, as a Prometheus server would (issue 17: a scrape a second must not move p99 by more
than 10 %); the result adds the scrapes made and the slowest one.

``--compare-scrape`` measures that 10 %: the same run, the same markd, alternate blocks of
``--block-s`` seconds (default 5) without and with a scrape every ``--scrape-every`` seconds
(default 1). Two runs one after the other would charge whatever drifts during a run (the
store's pages in the page cache, the emulator's and markd's heaps, the CPU's clock, another
tenant of the host) to one side; alternating blocks of a few seconds expose both sides to the
same. Each scan belongs to the block it was sent in (the scraper thread switches blocks
between two scrapes, so no scrape straddles a switch); the first ``WARMUP_SCANS`` are left
out of both. Printed for each side: scans, p50, p99, max; the ratio of the p99s (target
≤ 1.10); the scrapes made and the slowest; and the scans that overlapped a scrape (sent
before it ended, answered after it began): how many, their p99 and maximum — what a scrape
does to the scans it meets, which a p99 over a whole side dilutes; and markd's own part of
theirs (each verdict line's ``latency_ms``, framing → verdict), which tells a loop held up
by the scrape from time lost outside markd.

Prints progress and human lines, then one JSON object as the final line.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markd import samples
from markd.codes import parse
from markd.store import Store

TARGET_P99_MS = 5.0
#: Issue 17: the store path (mode store-only) with metrics on, p99 over 100 k scans.
TARGET_STORE_P99_MS = 2.0
TARGET_MAX_MS = 50.0
TARGET_RSS_GROWTH_MB = 10.0
TARGET_READY_MS = 500.0
#: Issue 17: a scrape a second may raise p99 by at most this share.
TARGET_SCRAPE_P99_RISE = 0.10
#: Scans before the "start" RSS and descriptor figures are taken: imports, caches, the first
#: connections to the Local Module settle first.
WARMUP_SCANS = 2_000
#: How many of the slowest scans the run explains.
SLOWEST_SHOWN = 5
#: The quota's period (systemd's default for CPUQuota=): markd may run quota/period of it.
CFS_PERIOD_US = 100_000


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
        # --history: the emulator's request log would grow by a million records, and its
        # full collections with it (pauses of 100-500 ms charged to "lm").
        [sys.executable, "-m", "markd.emulators", "local_module", "--port", "0"]
        + ["--history", "1000"],
        stdout=subprocess.PIPE,
        stderr=open(workdir / "local_module.log", "wb"),  # noqa: SIM115 - lives with the child
    )
    assert process.stdout is not None
    url = process.stdout.readline().decode().strip()
    if not url.startswith("http"):
        raise SystemExit(f"the Local Module emulator did not start (see {workdir})")
    return process, url


def write_config(workdir: Path, scanner: str, lm_url: str, mode: str, trace_ms: int) -> Path:
    token = workdir / "crpt-token"
    token.write_text("0b9f4c7e-2a51-4d8e-9c3b-6e1f7a2d5c40\n")
    password = workdir / "lm-password"
    password.write_text("admin\n")
    check = f'mode = "{"direct" if mode == "offline" else "store-only"}"\n'
    check += f"slow_scan_ms = {trace_ms}\n"
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


# ---------------------------------------------------------------------------------------------
# A quarter of one CPU


@dataclass
class CpuShare:
    """How markd is held to a share of one CPU: a command prefix, or a function its child runs
    before ``exec`` (joining a cgroup), and what to undo afterwards."""

    method: str
    prefix: list[str] = field(default_factory=list)
    cgroup: Path | None = None
    busy: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def preexec(self) -> None:
        if self.cgroup is not None:
            (self.cgroup / "cgroup.procs").write_text(str(os.getpid()))

    def throttling(self) -> dict[str, int] | None:
        """The cgroup's ``cpu.stat`` (periods throttled, time throttled), when there is one."""
        if self.cgroup is None:
            return None
        try:
            text = (self.cgroup / "cpu.stat").read_text()
        except OSError:
            return None
        return {k: int(v) for k, v in (line.split() for line in text.splitlines() if line)}

    def close(self) -> None:
        for process in self.busy:
            process.kill()
            process.wait()
        if self.cgroup is not None:
            for _ in range(50):  # markd has exited; the kernel empties the group soon after
                try:
                    self.cgroup.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


#: The ways to hold markd to a share of one CPU, in the order ``auto`` tries them.
CPU_METHODS = ("systemd-run", "cgroup2", "cgroup1", "taskset")


def cpu_share(percent: int, method: str = "auto") -> CpuShare:
    """Hold markd to ``percent`` of one CPU: by ``method``, or (``auto``) the first of
    :data:`CPU_METHODS` that works here (module docstring)."""
    for candidate in CPU_METHODS if method == "auto" else (method,):
        share = _TRY[candidate](percent)
        if share is not None:
            return share
    raise SystemExit(f"markd cannot be held to {percent}% of a CPU by {method} here")


def _by_systemd_run(percent: int) -> CpuShare | None:
    if not shutil.which("systemd-run"):
        say("  systemd-run: not installed")
        return None
    command = ["systemd-run", "--scope", "--quiet", "-p", f"CPUQuota={percent}%"]
    probe = subprocess.run([*command, "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        say(f"  systemd-run: {probe.stderr.decode(errors='replace').strip().splitlines()[-1]}")
        return None
    return CpuShare(f"systemd-run --scope -p CPUQuota={percent}%", prefix=[*command, "--"])


def _cgroup_name() -> str:
    return f"markd-soak-{os.getpid()}"


def _by_cgroup2(percent: int) -> CpuShare | None:
    quota_us = CFS_PERIOD_US * percent // 100
    for root in _cgroup2_roots():
        if "cpu" not in (root / "cgroup.controllers").read_text().split():
            say(f"  cgroup v2 at {root}: no cpu controller")
            continue
        try:
            group = root / _cgroup_name()
            group.mkdir()
            (group / "cpu.max").write_text(f"{quota_us} {CFS_PERIOD_US}")
        except OSError as exc:
            say(f"  cgroup v2 at {root}: {exc}")
            continue
        return CpuShare(f"cgroup v2 {group}/cpu.max = {quota_us} {CFS_PERIOD_US}", cgroup=group)
    return None


def _by_cgroup1(percent: int) -> CpuShare | None:
    quota_us = CFS_PERIOD_US * percent // 100
    v1 = Path("/sys/fs/cgroup/cpu")
    if not (v1 / "cpu.cfs_quota_us").exists():
        say(f"  cgroup v1: no cpu controller at {v1}")
        return None
    try:
        group = v1 / _cgroup_name()
        group.mkdir()
        (group / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(quota_us))
    except OSError as exc:
        say(f"  cgroup v1 at {v1}: {exc}")
        return None
    return CpuShare(
        f"cgroup v1 {group}: cpu.cfs_quota_us = {quota_us} per {CFS_PERIOD_US} µs", cgroup=group
    )


def _by_taskset(percent: int) -> CpuShare | None:
    if not shutil.which("taskset"):
        say("  taskset: not installed")
        return None
    cpu = max(os.sched_getaffinity(0))
    count = max(1, round(100 / percent) - 1)  # 25 %: markd and three busy processes
    busy = [
        subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-c", "while True: pass"])
        for _ in range(count)
    ]
    return CpuShare(
        f"taskset: markd on CPU {cpu} beside {count} busy process(es) pinned there "
        f"(about 1/{count + 1} of it when all want it)",
        prefix=["taskset", "-c", str(cpu)],
        busy=busy,
    )


_TRY = {
    "systemd-run": _by_systemd_run,
    "cgroup2": _by_cgroup2,
    "cgroup1": _by_cgroup1,
    "taskset": _by_taskset,
}


def _cgroup2_roots() -> list[Path]:
    roots = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                roots.append(Path(parts[1]))
    return roots


# ---------------------------------------------------------------------------------------------
# markd and its lines


def _before_exec(share: CpuShare | None, nice: int) -> Callable[[], None] | None:
    """What markd's child process does before ``exec``: join the cgroup, take the nice level."""
    if not nice and (share is None or share.cgroup is None):
        return None

    def prepare() -> None:
        if share is not None:
            share.preexec()
        if nice:
            os.nice(nice)

    return prepare


class Daemon:
    """markd as a child process, with its stderr read line by line without blocking."""

    def __init__(
        self, config: Path, workdir: Path, share: CpuShare | None = None, nice: int = 0
    ) -> None:
        self.notify_path = str(workdir / "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        env = dict(os.environ, NOTIFY_SOCKET=self.notify_path, PYTHONUNBUFFERED="1")
        markd = Path(sys.executable).with_name("markd")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [*(share.prefix if share else []), str(markd), "--config", str(config)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=env,
            preexec_fn=_before_exec(share, nice),  # noqa: PLW1509
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


_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def line_fields(line: str) -> dict[str, str]:
    """The ``name=value`` pairs after the `` | `` of one of markd's stderr lines."""
    _, _, pairs = line.partition(" | ")
    return {
        name: json.loads(value) if value.startswith('"') else value
        for name, value in _FIELD.findall(pairs)
    }


def verdict_latency_ms(line: bytes) -> float:
    """The verdict's own ``latency_ms``: markd's time from framing the scan to the verdict."""
    found = re.search(rb" latency_ms=([0-9.]+)", line)
    return float(found.group(1)) if found else float("nan")


# ---------------------------------------------------------------------------------------------
# The run


class Scraper:
    """Scrapes ``GET /metrics`` on the control socket every ``every_s`` seconds in a thread of
    its own, counting the scrapes and timing each (a refused or broken one stops the run's
    claim: :attr:`failures`).

    With ``block_ticks`` (``--compare-scrape``) it scrapes only in every other block of that
    many ticks, starting with a block without: :attr:`scraping` says which block the scans
    sent now belong to. It changes right after a tick's wait, before that tick's scrape, so a
    scrape never straddles a change of block."""

    def __init__(self, socket_path: Path, every_s: float, block_ticks: int = 0) -> None:
        self.socket_path = socket_path
        self.every_s = every_s
        self.block_ticks = block_ticks
        self.scraping = not block_ticks
        self.durations_s: list[float] = []
        #: (start, end) of each scrape answered, ``time.perf_counter()``.
        self.intervals: list[tuple[float, float]] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(self.every_s):
            tick += 1
            self.scraping = in_scraping_block(tick, self.block_ticks)
            if not self.scraping:
                continue
            began = time.perf_counter()
            try:
                ok = self._scrape()
            except OSError:
                ok = False
            if ok:
                ended = time.perf_counter()
                self.durations_s.append(ended - began)
                self.intervals.append((began, ended))
            else:
                self.failures += 1

    def _scrape(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(5)
            conn.connect(str(self.socket_path))
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        answer = b"".join(chunks)
        return answer.startswith(b"HTTP/1.1 200 ") and b"markd_verdicts_total" in answer


def in_scraping_block(tick: int, block_ticks: int) -> bool:
    """Whether tick ``tick`` of the scraper (1, 2, …; 0 is the start of the run) falls in a
    block with scrapes: blocks of ``block_ticks`` ticks alternate, the first one without
    (``block_ticks`` 0: no blocks, a scrape at every tick)."""
    return not block_ticks or (tick // block_ticks) % 2 == 1


def percentiles_ms(latencies_s: list[float]) -> dict[str, float]:
    """p50, p99 and the maximum of some latencies, in ms (zeros for none)."""
    if not latencies_s:
        return {"scans": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    ordered = sorted(latencies_s)
    n = len(ordered)

    def pct(p: float) -> float:
        return round(ordered[min(n - 1, int(p * n))] * 1000, 3)

    return {"scans": n, "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": pct(1.0)}


def compare_scrape(
    sent_at: list[float],
    latencies: list[float],
    scraping: list[bool],
    scraper: Scraper,
    block_s: float,
    warmup: int = WARMUP_SCANS,
    markd_ms: list[float] | None = None,
) -> dict[str, Any]:
    """The scans without and with scraping (after the first ``warmup``), the ratio of their
    p99s, and the scans whose time in flight overlapped a scrape (module docstring); with
    ``markd_ms`` (each verdict's own framing → verdict time), markd's part of theirs too."""
    quiet: list[float] = []
    scraped: list[float] = []
    intervals = sorted(scraper.intervals)
    starts = [start for start, _ in intervals]
    overlapped: list[float] = []
    overlapped_in_markd: list[float] = []
    for i in range(min(warmup, len(latencies)), len(latencies)):
        latency = latencies[i]
        (scraped if scraping[i] else quiet).append(latency)
        sent, answered = sent_at[i], sent_at[i] + latency
        # Of the scrapes begun before the scan was answered, only the last can have ended
        # after it was sent: one thread scrapes, one scrape after the other.
        j = bisect.bisect_left(starts, answered) - 1
        if j >= 0 and intervals[j][1] > sent:
            overlapped.append(latency)
            if markd_ms is not None:
                overlapped_in_markd.append(markd_ms[i] / 1000)
    without, with_ = percentiles_ms(quiet), percentiles_ms(scraped)
    ratio = with_["p99_ms"] / without["p99_ms"] if without["p99_ms"] else float("nan")
    durations = scraper.durations_s
    return {
        "warmup_scans": warmup,
        "block_s": block_s,
        "every_s": scraper.every_s,
        "without_scraping": without,
        "with_scraping": with_,
        "p99_ratio": round(ratio, 3),
        "scrapes_made": len(durations),
        "scrapes_failed": scraper.failures,
        "scrape_median_ms": round(sorted(durations)[len(durations) // 2] * 1000, 2)
        if durations
        else 0.0,
        "scrape_slowest_ms": round(max(durations, default=0.0) * 1000, 2),
        "overlapping_scans": percentiles_ms(overlapped),
        "overlapping_scans_in_markd": percentiles_ms(overlapped_in_markd),
    }


def describe_comparison(c: dict[str, Any]) -> list[str]:
    """The comparison's human lines."""
    without, with_, met = c["without_scraping"], c["with_scraping"], c["overlapping_scans"]
    inside = c["overlapping_scans_in_markd"]
    return [
        f"scrape comparison: alternate {c['block_s']:g} s blocks without and with a scrape "
        f"every {c['every_s']:g} s (the first {c['warmup_scans']:,} scans left out)",
        f"  without scraping: {without['scans']:,} scans, p50 {without['p50_ms']} ms, "
        f"p99 {without['p99_ms']} ms, max {without['max_ms']} ms",
        f"  with scraping:    {with_['scans']:,} scans, p50 {with_['p50_ms']} ms, "
        f"p99 {with_['p99_ms']} ms, max {with_['max_ms']} ms",
        f"  p99 with / without: {c['p99_ratio']:.3f} (target ≤ {1 + TARGET_SCRAPE_P99_RISE:.2f})",
        f"  scrapes: {c['scrapes_made']} made, {c['scrapes_failed']} failed, "
        f"median {c['scrape_median_ms']} ms, slowest {c['scrape_slowest_ms']} ms",
        f"  scans overlapping a scrape: {met['scans']:,}, p50 {met['p50_ms']} ms, "
        f"p99 {met['p99_ms']} ms, max {met['max_ms']} ms",
        f"    of which in markd (framing → verdict): p50 {inside['p50_ms']} ms, "
        f"p99 {inside['p99_ms']} ms, max {inside['max_ms']} ms",
    ]


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
    config = write_config(workdir, scanner, lm_url, args.mode, args.trace_ms)
    share = cpu_share(args.cpu_quota, args.cpu_method) if args.cpu_quota else None
    if share is not None:
        say(f"markd held to {args.cpu_quota}% of one CPU by {share.method}")
    throttled_before = share.throttling() if share else None
    if args.nice:
        say(f"markd runs at nice {args.nice}")
    daemon = Daemon(config, workdir, share, args.nice)
    rate = args.rate if args.rate else (50.0 if share else 0.0)
    block_ticks = max(1, round(args.block_s / args.scrape_every)) if args.compare_scrape else 0
    scraper = (
        Scraper(workdir / "control.sock", args.scrape_every, block_ticks)
        if args.scrape_every
        else None
    )
    try:
        ready_s = daemon.wait_ready()
        say(f"markd READY=1 after {ready_s * 1000:.0f} ms (exec to READY=1)")
        if scraper is not None:
            scraper.start()
            if block_ticks:
                say(
                    f"scraping GET /metrics every {args.scrape_every:g} s in every other block "
                    f"of {block_ticks * args.scrape_every:g} s"
                )
            else:
                say(f"scraping GET /metrics every {args.scrape_every:g} s")
        if share is not None:
            throttled_before = share.throttling()
        payloads = [code.encode() + b"\r" for code in codes]
        sent_at: list[float] = []
        #: Per scan: sent while the scraper was in a block with scrapes.
        scraping: list[bool] = []
        latencies: list[float] = []
        markd_ms: list[float] = []
        #: scan index → the fields of its slow-scan line
        traced: dict[int, dict[str, str]] = {}
        decisions = {"allow": 0, "deny": 0}
        expected_deny = sum(parse(code).ki in blocked for code in codes)
        start_figures: tuple[float, int] | None = None
        total = args.scans
        next_report = time.perf_counter() + 5
        # This script's own collections would stretch the latencies it measures.
        gc.collect()
        gc.disable()
        began = time.perf_counter()
        received = 0
        while received < total:
            wait = 10.0
            while len(sent_at) - received < args.window and len(sent_at) < total:
                if rate:
                    due = began + len(sent_at) / rate
                    now = time.perf_counter()
                    if now < due:
                        wait = due - now
                        break
                os.write(master, payloads[len(sent_at) % len(payloads)])
                sent_at.append(time.perf_counter())
                scraping.append(scraper is not None and scraper.scraping)
            for line in daemon.lines(wait):
                if line.startswith(b"slow-scan: "):
                    traced[received - 1] = line_fields(line.decode(errors="replace"))
                    continue
                if not is_verdict(line):
                    continue
                now = time.perf_counter()
                latencies.append(now - sent_at[received])
                markd_ms.append(verdict_latency_ms(line))
                text = line.decode(errors="replace")
                for decision in decisions:
                    if f" decision={decision} " in text:
                        decisions[decision] += 1
                received += 1
                if received == WARMUP_SCANS:
                    start_figures = proc_status(daemon.process.pid)
            if time.perf_counter() > next_report:
                rate_now = received / (time.perf_counter() - began)
                say(f"  {received:,}/{total:,} verdicts ({rate_now:,.0f}/s)")
                next_report = time.perf_counter() + 5
            if not latencies and time.perf_counter() - began > 30:
                raise SystemExit("no verdict in 30 s; see markd.log in the work directory")
        # The slow-scan line of the last scan follows its verdict line.
        for line in daemon.lines(0.2):
            if line.startswith(b"slow-scan: "):
                traced[received - 1] = line_fields(line.decode(errors="replace"))
        end_figures = proc_status(daemon.process.pid)
        if start_figures is None:
            start_figures = end_figures
        elapsed = time.perf_counter() - began
        gc.enable()
        throttled_after = share.throttling() if share else None
    finally:
        gc.enable()
        if scraper is not None:
            scraper.stop()
        exit_code = daemon.stop()
        if share is not None:
            share.close()
        if lm_process is not None:
            lm_process.terminate()
            lm_process.wait()
        os.close(master)
        os.close(slave)
    order = sorted(range(len(latencies)), key=latencies.__getitem__)
    n = len(order)

    def pct(p: float) -> float:
        return round(latencies[order[min(n - 1, int(p * n))]] * 1000, 3)

    slowest = [
        explain(i, latencies[i], markd_ms[i], traced.get(i)) for i in order[::-1][:SLOWEST_SHOWN]
    ]
    rss_growth = end_figures[0] - start_figures[0]
    per_cycle = expected_deny * total / len(codes)
    max_ms = round(latencies[order[-1]] * 1000, 3)
    result: dict[str, Any] = {
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
        "latency_max_ms": max_ms,
        "slowest": slowest,
        "slow_scan_records": len(traced),
        "trace_ms": args.trace_ms,
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
    if args.mode == "store":
        result["targets"]["store_p99_le_2ms"] = pct(0.99) <= TARGET_STORE_P99_MS
    if total >= 1_000_000:
        result["targets"]["max_le_50ms"] = max_ms <= TARGET_MAX_MS
    if args.nice:
        result["nice"] = args.nice
    if scraper is not None:
        durations = scraper.durations_s
        result["scrapes"] = {
            "every_s": args.scrape_every,
            "made": len(durations),
            "failed": scraper.failures,
            "slowest_ms": round(max(durations, default=0.0) * 1000, 2),
        }
        result["targets"]["scrapes_all_answered"] = scraper.failures == 0
        if block_ticks:
            comparison = compare_scrape(
                sent_at,
                latencies,
                scraping,
                scraper,
                block_ticks * args.scrape_every,
                markd_ms=markd_ms,
            )
            result["scrape_comparison"] = comparison
            result["targets"]["scrape_p99_rise_le_10pct"] = (
                comparison["p99_ratio"] <= 1 + TARGET_SCRAPE_P99_RISE
            )
    if share is not None:
        result["cpu_quota"] = {
            "percent": args.cpu_quota,
            "method": share.method,
            "rate_per_s": rate,
            "throttled": _throttled(throttled_before, throttled_after),
        }
    return result


def _throttled(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, float]:
    """Periods markd's cgroup was throttled in, and for how long, during the scans."""
    if not before or not after:
        return {}
    periods = after.get("nr_throttled", 0) - before.get("nr_throttled", 0)
    # v1: throttled_time in ns; v2: throttled_usec
    if "throttled_usec" in after:
        ms = (after["throttled_usec"] - before.get("throttled_usec", 0)) / 1000
    else:
        ms = (after.get("throttled_time", 0) - before.get("throttled_time", 0)) / 1e6
    total = after.get("nr_periods", 0) - before.get("nr_periods", 0)
    return {"periods": total, "periods_throttled": periods, "throttled_ms": round(ms, 1)}


def explain(index: int, latency_s: float, markd_ms: float, trace: dict[str, str] | None) -> dict:
    """One slow scan: its end-to-end time, markd's own part of it and, when markd traced it,
    where that went; otherwise the time was outside markd's handling of the scan."""
    total_ms = latency_s * 1000
    entry: dict[str, Any] = {
        "scan": index,
        "ms": round(total_ms, 3),
        "markd_ms": round(markd_ms, 3),
    }
    if trace is not None:
        stages = {k: float(v) for k, v in (p.split("=") for p in trace.get("stages", "").split())}
        entry["traced_ms"] = float(trace.get("total_ms", "nan"))
        entry["cause"] = trace.get("slowest", "?")
        entry["stages"] = stages
        if trace.get("gc_generations"):
            entry["gc_generations"] = trace["gc_generations"]
    else:
        entry["cause"] = "outside markd's handling"
    # The verdict line is written as the verdict is made: the rest of the end-to-end time was
    # spent before framing (pty, reader thread) or after the line (pipe, this script).
    entry["outside_markd_ms"] = round(max(0.0, total_ms - markd_ms), 3)
    return entry


def describe(entry: dict[str, Any]) -> str:
    text = f"{entry['ms']:.1f} ms (scan {entry['scan']:,}): "
    if "stages" in entry:
        top = sorted(entry["stages"].items(), key=lambda kv: -kv[1])[:3]
        text += f"markd {entry['traced_ms']:.1f} ms, mostly {entry['cause']}"
        if entry.get("gc_generations"):
            text += f" (generations {entry['gc_generations']})"
        text += "; " + ", ".join(f"{k} {v:.1f}" for k, v in top)
        if entry["outside_markd_ms"] >= 1:
            text += f"; {entry['outside_markd_ms']:.1f} ms outside markd"
    else:
        text += (
            f"markd {entry['markd_ms']:.2f} ms framing → verdict, {entry['outside_markd_ms']:.1f} "
            "ms outside (pty and reader thread before framing, or stderr and this script after)"
        )
    return text


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
    ap.add_argument(
        "--trace-ms",
        type=int,
        default=5,
        help="markd's [check] slow_scan_ms: scans slower inside markd are traced (5)",
    )
    ap.add_argument(
        "--cpu-quota",
        type=int,
        default=0,
        metavar="PERCENT",
        help="hold markd to this share of one CPU (25: a quarter); paces the scans",
    )
    ap.add_argument(
        "--cpu-method",
        choices=("auto", *CPU_METHODS),
        default="auto",
        help="how --cpu-quota is imposed (auto: the first that works, in this order)",
    )
    ap.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="scans a second at most (default: as fast as verdicts come; 50 with --cpu-quota)",
    )
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        help="markd's nice level, as a unit's Nice= would set it (-10: ahead of busy work)",
    )
    ap.add_argument(
        "--scrape-every",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="scrape GET /metrics on the control socket this often during the scans (off)",
    )
    ap.add_argument(
        "--compare-scrape",
        action="store_true",
        help="alternate blocks without and with scraping and compare them (module docstring); "
        "scrapes every second unless --scrape-every says otherwise",
    )
    ap.add_argument(
        "--block-s",
        type=float,
        default=5.0,
        help="with --compare-scrape: the length of each block, seconds (5)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    if args.compare_scrape and not args.scrape_every:
        args.scrape_every = 1.0
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
        f"p99.9 {result['latency_p999_ms']} ms, max {result['latency_max_ms']} ms, "
        f"RSS {result['rss_start_mb']} → {result['rss_end_mb']} MiB, "
        f"fds {result['fds_start']} → {result['fds_end']}, READY in {result['ready_ms']} ms"
    )
    say(
        f"the {SLOWEST_SHOWN} slowest scans ({result['slow_scan_records']} slow-scan records "
        f"above {result['trace_ms']} ms):"
    )
    for entry in result["slowest"]:  # type: ignore[union-attr]
        say("  " + describe(entry))
    if "cpu_quota" in result:
        quota = result["cpu_quota"]
        say(f"CPU: {quota['percent']}% of one CPU by {quota['method']}")
        say(f"  scans paced at {quota['rate_per_s']:g} a second")
        if quota["throttled"]:
            say(f"  throttled: {quota['throttled']}")
    if "scrape_comparison" in result:
        for line in describe_comparison(result["scrape_comparison"]):  # type: ignore[arg-type]
            say(line)
    for name, met in result["targets"].items():  # type: ignore[union-attr]
        say(f"target {name:<28} {'met' if met else 'NOT MET'}")
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
