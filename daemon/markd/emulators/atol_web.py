"""An emulated ATOL Web Requests server (the web server of ATOL's ДТО10 driver, port 16732) in
front of the virtual ККТ (:class:`~markd.emulators.virtual_kkt.VirtualKkt`).

::

    POST /api/v2/requests          {"uuid": "<id>", "request": [task, …]}   (or one task object)
                                   → 201 {"uuid", "number"}; the tasks are queued and run in
                                     order
                                   → 409 {"error": {…}} when the uuid is known (its first
                                     request's results stand; no public source names the
                                     status, so it is ``repost_status``)
                                   → 400 {"error": {…}} for a body that is not such an object
    GET  /api/v2/requests/<uuid>   → 200 {"results": [{"status", "errorCode",
                                     "errorDescription", "result"}, …]}; ``status`` is
                                     ``wait`` while queued, ``inProgress`` while running,
                                     then ``ready``, ``error`` or ``interrupted``; ``blocked``
                                     (``block_next``): result unknown, the queue stopped
                                     until :meth:`AtolWebEmulator.unblock` (then ``ready`` /
                                     ``error``, or ``canceled`` if it never ran)
                                   → 404 {"error": {…}} for an unknown uuid

Every request may name a device with ``?deviceID=NAME`` (or a ``deviceID`` header), as
ATOL's server does (domain.md §7.4a); without one it goes to the default device (whose id is
``default_device``, ``default`` unless set). Each device is a virtual ККТ of its own (more with
``devices=`` or :meth:`AtolWebEmulator.add_device`, their state in
``state_dir/devices/NAME``); its requests run on it and its results are read from it (a GET
naming another device does not find them). An unknown device is 404 ``{"error": {…}}`` (what
the real server answers is not published). With ``auth=(user, password)`` every request
needs HTTP Basic credentials: 401 with ``WWW-Authenticate`` without them or with wrong ones
(the status the real server uses is not published either; 401 is HTTP's).

The ККТ behind it is the same device the ``emulator://`` printer backend drives in process,
with its state in ``state_dir``: shifts, documents and the answers to requests that changed the
device survive a restart of this server (a request posted before the restart is still answered
under its uuid). The shape of the poll answer is what domain.md §7.5 describes as unconfirmed;
the real server's may differ in details, which the ``atol`` backend tolerates.

Fault injection: the device's own (:meth:`VirtualKkt.set_faults`: ``paper_out``, ``fn_error``,
``ism``, ``gone``, ``gone_in_receipt``, ``validation_delay_ms``, ``shift_expired``, ``codes``) —
from Python through :attr:`AtolWebEmulator.kkt`, or over HTTP — and the server's: ``latency_ms``
(time each task takes, so a client sees ``inProgress``).

Admin endpoints (``admin=True``, never logged):

* ``GET /_emulator/state`` → the device state; ``GET /_emulator/documents`` → every document;
* ``POST /_emulator/faults`` with ``{"paper_out": true, …}`` merges faults (null removes one);
  ``DELETE /_emulator/faults`` clears them;
* ``POST /_emulator/settings`` with ``{"latency_ms": 200}``;
* ``GET /_emulator/requests`` → the request log; ``DELETE`` clears it;
* ``POST /_emulator/reset`` → clears the log, the results held in memory and the device's
  faults (the device's shift and documents stay).

Statuses, the POST answer and the error shapes follow the public client
``Bedunkevich/atol`` (``src/types.ts``: ``TaskResultStatus`` wait, inProgress, ready,
error, interrupted, blocked, canceled; ``src/api.ts``: the POST answers ``{uuid}``, errors
come as ``error: {code, description}``) and domain.md §7.4a. ``error_shape`` (``fields`` |
``object``) chooses how a task's error is written in a result; ``POST /_emulator/settings``
takes ``latency_ms``, ``error_shape``, ``block_next``, ``auth`` (``{"user", "password"}`` or
null) and ``devices`` (ids to add); ``POST /_emulator/unblock`` resolves a blocked request.

From a shell::

    python -m markd.emulators atol_web --port 16732 --state-dir /tmp/kkt [--scenario S.json]
        [--auth USER:PASSWORD] [--device NAME …]

where the scenario is ``{"faults": {…}, "latency_ms": 0}`` (JSON or TOML, every key optional).
"""

from __future__ import annotations

import base64
import binascii
import collections
import json
import queue
import re
import tempfile
import threading
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from markd.emulators.scenario import ScenarioError
from markd.emulators.server import HTTPEmulator, Reply, Request, Route
from markd.emulators.virtual_kkt import FAULT_KEYS, VirtualKkt

REQUESTS_PATH = "/api/v2/requests"
#: How many requests' results the server keeps in memory (changing ones also live on disk).
MAX_REQUESTS = 2048
SCENARIO_KEYS = frozenset({"faults", "latency_ms", "description"})
#: How a task's error is written in a result: beside it (``errorCode`` / ``errorDescription``)
#: or as an object (``error: {code, description}``); both shapes are published.
ERROR_SHAPES = ("fields", "object")
#: ``block_next``: the next request is blocked before it runs on the device, or after.
BLOCK_MODES = ("before", "after")
#: What a device id may look like here (the real server's rule is not published).
DEVICE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def load_scenario(value: Mapping[str, Any] | str | Path | None) -> dict[str, Any]:
    """This emulator's scenario: ``{"faults": {…}, "latency_ms": n}`` from a dict or a
    ``.json`` / ``.toml`` file; unknown keys are errors."""
    if value is None:
        return {}
    if isinstance(value, str | Path):
        path = Path(value)
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except OSError as exc:
            raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from exc
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise ScenarioError(f"{path}: not valid JSON/TOML: {exc}") from exc
        where = str(path)
    else:
        data, where = dict(value), "scenario"
    if not isinstance(data, Mapping):
        raise ScenarioError(f"{where}: expected an object")
    unknown = set(data) - SCENARIO_KEYS
    if unknown:
        raise ScenarioError(
            f"{where}: unknown keys {sorted(unknown)}; known: {sorted(SCENARIO_KEYS)}"
        )
    faults = data.get("faults", {})
    if not isinstance(faults, Mapping) or set(faults) - FAULT_KEYS:
        raise ScenarioError(f"{where}: faults: known keys are {sorted(FAULT_KEYS)}")
    latency = data.get("latency_ms", 0)
    if isinstance(latency, bool) or not isinstance(latency, int) or latency < 0:
        raise ScenarioError(f"{where}: latency_ms is a non-negative integer")
    return {"faults": dict(faults), "latency_ms": latency}


class _Job:
    __slots__ = ("uuid", "tasks", "results", "outcomes", "device", "kkt")

    def __init__(self, uuid: str, tasks: list[Any], device: str, kkt: VirtualKkt) -> None:
        self.uuid = uuid
        self.tasks = tasks
        #: The device the request named (its id), and the ККТ it runs on.
        self.device = device
        self.kkt = kkt
        #: The device's answers when it ran (a blocked request may or may not have).
        self.outcomes: list[dict[str, Any]] | None = None
        self.results: list[dict[str, Any]] = [
            {"status": "wait", "errorCode": 0, "errorDescription": "", "result": None}
            for _ in tasks
        ]


class AtolWebEmulator(HTTPEmulator):
    """ATOL Web Requests on ``host:port`` (port 0: any free one), the virtual ККТ in
    ``state_dir`` (None: a temporary directory, removed on :meth:`close`)."""

    name = "atol_web"

    def __init__(
        self,
        scenario: Mapping[str, Any] | str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: bool = False,
        admin: bool = True,
        verbose: bool = False,
        certificate: tuple[Path, Path] | None = None,
        state_dir: str | Path | None = None,
        auth: tuple[str, str] | None = None,
        default_device: str = "default",
        devices: Iterable[str] = (),
    ) -> None:
        settings = load_scenario(scenario)
        super().__init__(
            host=host, port=port, tls=tls, admin=admin, verbose=verbose, certificate=certificate
        )
        self._own_dir = None
        if state_dir is None:
            self._own_dir = tempfile.TemporaryDirectory(prefix="markd-atol-web-")
            state_dir = self._own_dir.name
        self.state_dir = Path(state_dir)
        #: The default device (requests without ``deviceID``, or naming ``default_device``).
        self.kkt = VirtualKkt(self.state_dir)
        if not DEVICE_ID.fullmatch(default_device):
            raise ValueError(f"a device id matches {DEVICE_ID.pattern}, got {default_device!r}")
        self.default_device = default_device
        #: Device id → its ККТ.
        self.devices: dict[str, VirtualKkt] = {default_device: self.kkt}
        for device_id in devices:
            self.add_device(device_id)
        #: ``(user, password)`` every request must carry as HTTP Basic; None: no auth.
        self.auth = auth
        if settings.get("faults"):
            self.kkt.set_faults(**settings["faults"])
        self.latency_ms = int(settings.get("latency_ms", 0))
        #: See :data:`ERROR_SHAPES`.
        self.error_shape = "fields"
        #: HTTP status of a POST whose uuid is known (no public source says; 409 here).
        self.repost_status = 409
        #: ``before`` | ``after``: block the next request (see :meth:`unblock`); None: no.
        self.block_next: str | None = None
        #: Only a request holding a task of this type is blocked (None: the next one).
        self.block_task: str | None = None
        self._blocked: _Job | None = None
        self._resume = threading.Event()
        self._posted = 0
        self._jobs: collections.OrderedDict[str, _Job] = collections.OrderedDict()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._worker: threading.Thread | None = None

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> AtolWebEmulator:
        if self._worker is None:
            self._worker = threading.Thread(
                target=self._work, name=f"atol-web-{self.port}", daemon=True
            )
            self._worker.start()
        super().start()
        return self

    def close(self) -> None:
        super().close()
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=5)
            self._worker = None
        if self._own_dir is not None:
            self._own_dir.cleanup()
            self._own_dir = None

    def reset_state(self) -> None:
        with self._lock:
            self._jobs.clear()
        for kkt in list(self.devices.values()):
            kkt.clear_faults()

    def add_device(self, device_id: str) -> VirtualKkt:
        """Another ККТ the server drives, chosen with ``?deviceID=device_id``; its state in
        ``state_dir/devices/device_id``. Returns it (an existing one when already added)."""
        if not DEVICE_ID.fullmatch(device_id):
            raise ValueError(f"a device id matches {DEVICE_ID.pattern}, got {device_id!r}")
        with self._lock:
            kkt = self.devices.get(device_id)
            if kkt is None:
                kkt = VirtualKkt(self.state_dir / "devices" / device_id)
                self.devices[device_id] = kkt
            return kkt

    def _device(self, request: Request) -> tuple[str, VirtualKkt | None]:
        """The device a request names (``?deviceID=``, else the ``deviceID`` header, else the
        default one) and its ККТ (None: no such device)."""
        named = (request.query.get("deviceID") or [""])[-1] or request.header("deviceID") or ""
        device = named or self.default_device
        with self._lock:
            return device, self.devices.get(device)

    def _unauthorized(self, request: Request) -> Reply | None:
        """401 unless the request carries the configured Basic credentials."""
        if self.auth is None:
            return None
        scheme, _, token = (request.header("Authorization") or "").partition(" ")
        try:
            user, _, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = password = ""
        if scheme.lower() == "basic" and (user, password) == self.auth:
            return None
        reply = self.error(401, "Требуется авторизация", 401)
        reply.headers["WWW-Authenticate"] = 'Basic realm="ATOL Web Requests"'
        return reply

    # -- the protocol ---------------------------------------------------------------------------

    def route(self, method: str, path: str) -> Route | None:
        if path.rstrip("/") == REQUESTS_PATH:
            return Route("requests", None, ("POST",), self._post)
        if path.startswith(REQUESTS_PATH + "/") and path.count("/") == 4:
            return Route("requests/result", None, ("GET",), self._get)
        return None

    def error_body(self, status: int, code: int | None, description: str | None) -> Any:
        return {"error": {"code": status if code is None else code, "description": description}}

    def _post(self, request: Request) -> Reply:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        device, kkt = self._device(request)
        if kkt is None:
            return self.error(404, f"Устройство {device} не найдено", 404)
        body = request.json
        if request.json_error is not None or not isinstance(body, Mapping):
            return self.error(400, "тело запроса должно быть JSON-объектом", 400)
        uuid = body.get("uuid")
        tasks = body.get("request")
        if isinstance(tasks, Mapping):
            tasks = [tasks]
        if not isinstance(uuid, str) or not uuid or len(uuid) > 128 or "/" in uuid:
            return self.error(400, "нет uuid запроса", 400)
        if not isinstance(tasks, list) or not tasks:
            return self.error(400, "нет заданий (request)", 400)
        with self._lock:
            if uuid in self._jobs or kkt.lookup(uuid) is not None:
                return self.error(self.repost_status, f"запрос {uuid} уже существует", 409)
            job = _Job(uuid, list(tasks), device, kkt)
            self._jobs[uuid] = job
            while len(self._jobs) > MAX_REQUESTS:
                self._jobs.popitem(last=False)
            self._posted += 1
            number = self._posted
        self._queue.put(job)
        return Reply(201, {"uuid": uuid, "number": number})

    def _get(self, request: Request) -> Reply:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        device, kkt = self._device(request)
        if kkt is None:
            return self.error(404, f"Устройство {device} не найдено", 404)
        uuid = request.path.rsplit("/", 1)[1]
        with self._lock:
            job = self._jobs.get(uuid)
            if job is not None and job.device == device:
                return Reply(200, {"results": [self._shaped(r) for r in job.results]})
        kept = kkt.lookup(uuid)
        if kept is not None:
            return Reply(200, {"results": [self._shaped(_result(o)) for o in kept]})
        return self.error(404, f"запрос {uuid} не найден", 404)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            for result in job.results:
                result["status"] = "inProgress"
            if self.latency_ms and self._stopping.wait(self.latency_ms * len(job.tasks) / 1000):
                return
            block = self.block_next if self._blocks(job) else None
            if block is not None:
                self.block_next = None
            if block != "before":
                job.outcomes = job.kkt.run(job.uuid, job.tasks)
            if block is not None:
                # Result unknown, queue stopped: later requests stay ``wait`` until a
                # person resolves this one (:meth:`unblock`).
                with self._lock:
                    for result in job.results:
                        result["status"] = "blocked"
                    self._blocked = job
                self._resume.clear()
                while not self._resume.wait(0.05):
                    if self._stopping.is_set():
                        return
                continue
            with self._lock:
                job.results[:] = [_result(o) for o in job.outcomes or []]

    def _blocks(self, job: _Job) -> bool:
        """Whether ``block_next`` takes this request (``block_task``: only one holding a task
        of that type)."""
        if self.block_next is None:
            return False
        if self.block_task is None:
            return True
        return any(isinstance(t, Mapping) and t.get("type") == self.block_task for t in job.tasks)

    def unblock(self) -> None:
        """What a technician does on the driver: the blocked request gets its real results
        (``ready`` / ``error`` when it ran on the device, ``canceled`` when it did not) and
        the queue moves again."""
        with self._lock:
            job, self._blocked = self._blocked, None
            if job is not None:
                if job.outcomes is not None:
                    job.results[:] = [_result(o) for o in job.outcomes]
                else:
                    for result in job.results:
                        result.update(status="canceled")
        self._resume.set()

    def _shaped(self, result: Mapping[str, Any]) -> dict[str, Any]:
        shaped = dict(result)
        if self.error_shape == "object":
            code = shaped.pop("errorCode", 0)
            description = shaped.pop("errorDescription", "")
            if code:
                shaped["error"] = {"code": code, "description": description}
        return shaped

    # -- admin ----------------------------------------------------------------------------------

    def _admin_request(self, method: str, path: str, payload: Any) -> Reply | None:
        # Faults live in the device, not in the HTTP layer: they are set here, not played by
        # the server.
        if path == "/_emulator/state" and method == "GET":
            return Reply(200, self.kkt.state())
        if path == "/_emulator/documents" and method == "GET":
            return Reply(200, self.kkt.documents())
        if path == "/_emulator/faults":
            if method == "POST" and isinstance(payload, Mapping):
                self.kkt.set_faults(**payload)
                return Reply(200, {"ok": True, "faults": self.kkt.faults})
            if method == "DELETE":
                self.kkt.clear_faults()
                return Reply(200, {"ok": True})
            return None
        if path == "/_emulator/settings" and method == "POST":
            if not isinstance(payload, Mapping):
                return Reply(400, {"error": "latency_ms is a non-negative integer"})
            if "latency_ms" in payload or not payload:
                latency = payload.get("latency_ms")
                if isinstance(latency, bool) or not isinstance(latency, int) or latency < 0:
                    return Reply(400, {"error": "latency_ms is a non-negative integer"})
                self.latency_ms = latency
            if "error_shape" in payload:
                if payload["error_shape"] not in ERROR_SHAPES:
                    return Reply(400, {"error": f"error_shape is one of {ERROR_SHAPES}"})
                self.error_shape = payload["error_shape"]
            if "block_next" in payload:
                if payload["block_next"] not in (None, *BLOCK_MODES):
                    return Reply(400, {"error": f"block_next is one of {BLOCK_MODES}"})
                self.block_next = payload["block_next"]
                self.block_task = payload.get("block_task")
            if "auth" in payload:
                auth = payload["auth"]
                if auth is None:
                    self.auth = None
                elif (
                    isinstance(auth, Mapping)
                    and isinstance(auth.get("user"), str)
                    and isinstance(auth.get("password"), str)
                ):
                    self.auth = (auth["user"], auth["password"])
                else:
                    return Reply(400, {"error": "auth is {user, password} or null"})
            if "devices" in payload:
                devices = payload["devices"]
                if not isinstance(devices, list) or not all(
                    isinstance(d, str) and DEVICE_ID.fullmatch(d) for d in devices
                ):
                    return Reply(400, {"error": f"devices is a list of ids ({DEVICE_ID.pattern})"})
                for device_id in devices:
                    self.add_device(device_id)
            return Reply(200, {"ok": True})
        if path == "/_emulator/unblock" and method == "POST":
            self.unblock()
            return Reply(200, {"ok": True})
        return super()._admin_request(method, path, payload)


def _result(outcome: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "status": outcome.get("status", "error"),
        "errorCode": outcome.get("errorCode", 0),
        "errorDescription": outcome.get("errorDescription", ""),
        "result": outcome.get("result"),
    }
