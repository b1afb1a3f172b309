"""The daemon's periodic fleet sync: ``markctl store sync`` in a child process.

With ``[store] sync_url`` set, the service starts a :class:`StoreSync` once it is ready (after
``READY=1``) and stops it first thing at stop; a reload that changes ``[store]`` restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

from markd.service.wiring import main_config_file

if TYPE_CHECKING:
    from markd.config import Config
    from markd.systemd import EventLog

#: The first fleet sync runs this many seconds after start, drawn at random: a fleet that boots
#: together after a power cut does not hit the file server in the same second.
SYNC_START_DELAY_S = (5.0, 60.0)
#: A sync (download and import of a 10-million-entry snapshot on a slow link included) that has
#: not finished after this long is killed; the next one resumes its download.
SYNC_TIMEOUT_S = 1800.0
#: How long a sync child gets to exit after SIGTERM before it is killed.
SYNC_STOP_GRACE_S = 5.0


class StoreSync:
    """The daemon's periodic fleet sync (``[store] sync_url``, ``[store] sync_interval_s``).

    Each run is ``python -m markd.cli.markctl store sync URL --store PATH --json --progress
    none`` in a **child process**: a snapshot import may grow the LMDB map, which must not happen
    under the daemon's own readers, while LMDB lets the daemon keep reading from another
    process and see the new version at its next lookup, without a restart. One run at a time
    (each waits for the previous one), the first after a random delay in ``start_delay_s``,
    then every ``sync_interval_s`` ± 10 %; a run longer than ``timeout_s`` is killed (the
    download resumes next time). Each run logs ``store-sync`` (with the versions) or
    ``store-sync-failed`` (warning, with the reason), or ``store-sync-refused`` (error) when the
    sync was refused as untrusted (a missing or bad signature, an unknown key, a file that
    does not match the signed index, an unsigned sync over ``http://``); the URL in the log
    never carries the user, password or query string. :attr:`refused` holds the latest
    refusal until a sync succeeds (for the status).

    :meth:`stop` cancels the schedule and ends a running child (SIGTERM, then SIGKILL): LMDB
    keeps the store at the old or the new version whatever moment it is killed at.
    """

    def __init__(
        self,
        config: Config,
        event_log: EventLog,
        *,
        start_delay_s: tuple[float, float] = SYNC_START_DELAY_S,
        timeout_s: float = SYNC_TIMEOUT_S,
        python: str = sys.executable,
    ) -> None:
        from markd.store.fleet import redact_url

        self.url = config.store.sync_url
        self.safe_url = redact_url(self.url)
        self.store_path = config.store.path
        self.interval_s = float(config.store.sync_interval_s)
        self.public_keys = config.store.sync_public_keys
        self.allow_unsigned = config.store.sync_allow_unsigned
        self.max_file_mb = config.store.sync_max_file_mb
        self.config_file = main_config_file(config)
        self.event_log = event_log
        self.start_delay_s = start_delay_s
        self.timeout_s = timeout_s
        self.python = python
        #: The running child, if any (tests look at it).
        self.process: asyncio.subprocess.Process | None = None
        #: Results of the latest finished runs (at most 16): the sync's JSON (``SyncResult``)
        #: or ``{"error": …}``.
        self.results: deque[dict[str, Any]] = deque(maxlen=16)
        #: Finished runs since start by result: ``ok``, ``failed``, ``refused`` (untrusted).
        self.runs: Counter[str] = Counter()
        #: Unix time the latest run finished, None before the first.
        self.finished_at: float | None = None
        #: How the latest run ended (``ok``, ``failed``, ``refused``), None before the first.
        self.last_result: str | None = None
        self._task: asyncio.Task[None] | None = None
        #: The latest untrusted-sync refusal (``{"reason", "message"}``), None once a sync
        #: succeeds.
        self.refused: dict[str, str] | None = None
        #: Syncs refused as untrusted since start (``GET /metrics``).
        self.refusals = 0

    def command(self) -> list[str]:
        """The child's command line. The URL is not in it (it may hold credentials, and any
        local user can read a command line); the child gets it from ``MARKD_SYNC_URL``."""
        command = [self.python, "-m", "markd.cli.markctl", "store", "sync"]
        command += ["--store", self.store_path, "--json", "--progress", "none"]
        # The trust settings the daemon runs with, not whatever the file says by now.
        for key in self.public_keys:
            command += ["--public-key", key]
        if self.allow_unsigned:
            command.append("--allow-unsigned")
        command += ["--max-file-mb", str(self.max_file_mb)]
        if self.config_file is not None:
            command += ["--config", self.config_file]
        return command

    def start(self) -> None:
        """Schedule the runs on the running event loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._schedule(), name="markd-store-sync")

    async def stop(self) -> None:
        """Cancel the schedule and end a running sync child."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _schedule(self) -> None:
        delay = random.uniform(*self.start_delay_s)
        while True:
            await asyncio.sleep(delay)
            await self.run_once()
            delay = self.interval_s * random.uniform(0.9, 1.1)

    async def run_once(self) -> dict[str, Any]:
        """One sync in a child process; log and return its result."""
        started = time.monotonic()
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.command(),
                env={**os.environ, "MARKD_SYNC_URL": self.url},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            return self._failed("sync-failed", f"cannot start {self.python}: {exc.strerror}")
        try:
            out, err = await asyncio.wait_for(self.process.communicate(), self.timeout_s)
        except TimeoutError:
            await self._end_child()
            return self._failed(
                "sync-timeout", f"not finished after {self.timeout_s:g} s; stopped (resumes next)"
            )
        finally:
            if self.process.returncode is None:  # cancelled: the service is stopping
                await self._end_child()
            returncode = self.process.returncode
            self.process = None
        data = _last_json_line(out)
        if returncode == 0 and data is not None and "error" not in data:
            self.results.append(data)
            self.runs["ok"] += 1
            self.last_result = "ok"
            self.finished_at = time.time()
            self.refused = None
            self.event_log.event(
                "store-sync",
                f"blocklist v{data.get('after_version')} from {self.safe_url} "
                f"({data.get('action')}; was v{data.get('before_version')})",
                url=self.safe_url,
                action=data.get("action"),
                version=data.get("after_version"),
                previous_version=data.get("before_version"),
                deltas=data.get("deltas_applied"),
                downloaded_bytes=data.get("downloaded_bytes"),
                seconds=round(time.monotonic() - started, 3),
            )
            return data
        error = (data or {}).get("error") or {}
        reason = str(error.get("reason") or "sync-failed")
        message = str(error.get("message") or "")
        if not message:
            lines = err.decode("utf-8", "replace").strip().splitlines()
            message = lines[-1][:300] if lines else f"markctl exited with status {returncode}"
        return self._failed(reason, message, exit_status=returncode)

    def _failed(self, reason: str, message: str, **fields: Any) -> dict[str, Any]:
        from markd.errors import OVERSIZED_SYNC_REASONS, UNTRUSTED_SYNC_REASONS
        from markd.store.fleet import hide_secrets

        message = hide_secrets(message, self.url)
        result = {"error": {"reason": reason, "message": message}}
        self.results.append(result)
        self.finished_at = time.time()
        if reason in UNTRUSTED_SYNC_REASONS or reason in OVERSIZED_SYNC_REASONS:
            self.runs["refused"] += 1
            self.last_result = "refused"
            self.refused = {"reason": reason, "message": message}
            self.refusals += 1
            self.event_log.event(
                "store-sync-refused",
                f"blocklist sync from {self.safe_url} REFUSED ({reason}), nothing changed: "
                f"{message}",
                priority="error",
                url=self.safe_url,
                reason=reason,
                **fields,
            )
            return result
        self.runs["failed"] += 1
        self.last_result = "failed"
        self.event_log.event(
            "store-sync-failed",
            f"blocklist sync from {self.safe_url} failed: {message}",
            priority="warning",
            url=self.safe_url,
            reason=reason,
            **fields,
        )
        return result

    async def _end_child(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), SYNC_STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


def _last_json_line(output: bytes) -> dict[str, Any] | None:
    for line in reversed(output.decode("utf-8", "replace").splitlines()):
        if line.strip():
            try:
                data = json.loads(line)
            except ValueError:
                return None
            return data if isinstance(data, dict) else None
    return None
