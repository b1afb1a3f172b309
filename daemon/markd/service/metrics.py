"""The daemon's Prometheus metrics: plain counters on the scan path, everything else read at
scrape time (``GET /metrics``; names, types and labels in docs/metrics.md).

Two halves, so that a scrape never costs a scan anything:

* :class:`VerdictMetrics` holds markd's own counts — verdicts by decision, reason and source,
  scans per scanner, the verdict latency histogram's buckets, when each check source last gave
  an answer a verdict rested on. :class:`MetricsListener` updates them from the
  :class:`~markd.service.listeners.Notifier`, on the event loop: a few dictionary increments and
  a bisect, no lock and no ``prometheus_client`` object on the scan path.
* :class:`StatusCollector` is the one custom collector. At scrape time it turns those counts
  and the service's status snapshot (the same data as ``GET /v1/status``: check sources, CDN
  hosts, the Local Module, the store, scanners, the printer and its fiscal health) into metric
  families. The scrape runs on the event loop too (the control API's route), so it reads the
  counts between two scans and needs no lock either.

:func:`metrics_registry` puts the collector into a registry of the service's own (never the
library's global default registry, which would mix in whatever else the process imports)
together with the library's process and platform collectors.

Label values come from closed sets only, each written out here or taken from the module that
defines it: decisions, reason codes (the decision table's, the parser's and the service's own),
sources, failure kinds, states, and the configured scanners' names (and ``api``). A value not
in its set is counted as ``other`` (:func:`known`), so a marking code or a КИ can never reach a
label, whatever a future bug hands us.

Only API present in prometheus_client 0.16 (Debian 12) is used: the metric families,
``CollectorRegistry``, ``ProcessCollector``, ``PlatformCollector``, ``generate_latest``.
"""

from __future__ import annotations

import bisect
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, get_args

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from markd.api.messages import COUNTED_REFUSALS as API_REFUSALS
from markd.checks.policy import POLICY_GAP, RULES, STORE_ONLY_ALLOW
from markd.checks.results import FAILURE_KINDS, SOURCE_KINDS, SourceAnswer, SourceFailure
from markd.checks.verdict import Decision, Source
from markd.codes import REASONS as PARSER_REASONS
from markd.config.schema import SCANNER_NAME_PATTERN

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from markd.checks.verdict import Verdict
    from markd.service.listeners import CheckedScan

#: Upper bounds (seconds) of the verdict latency histogram. Fixed, so that every kiosk of a
#: fleet has the same buckets: fine steps around the store-only path (well under 5 ms), the
#: online budget (1.5 s) and beyond it.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
)

#: A check chain's role (its ``[check.*]`` section) → the source name verdicts use.
ROLE_SOURCES = {"online": "cdn", "local_module": "lm", "tspiot": "tspiot"}
#: Outcomes of a receipt's close or cancel (``markd.fiscal.outcomes.ReceiptStatus``).
RECEIPT_OUTCOMES = ("closed", "cancelled", "failed", "pending", "empty")
#: Results of a sale recovery that had something to do (``SaleDesk.recoveries``).
RECOVERY_RESULTS = ("finished", "pending", "failed")
#: Results of a fleet sync run (``StoreSync.runs``).
SYNC_RESULTS = ("ok", "failed", "refused")
#: States of the Local Module a one-hot gauge shows; anything else the module reports is
#: ``other`` (the module's own text never becomes a label).
LOCAL_MODULE_STATES = ("ready", "initialization", "not_configured", "sync_error")
#: States of the ТС ПИоТ: its last answer came from the online check or from its own
#: offline store, or its last exchange failed.
TSPIOT_STATES = ("online", "offline", "failing")
#: What stops a receipt on the ККТ (``DeviceStatus.problems``), one gauge each.
PRINTER_PROBLEMS = ("paper-out", "cover-open", "fn-error", "device-blocked", "receipt-open")
#: The control API's listeners.
API_LISTENERS = ("unix", "tcp", "metrics")

#: Decisions and sources: the verdict's own types.
DECISIONS: frozenset[str] = frozenset(get_args(Decision))
SOURCES: frozenset[str] = frozenset(get_args(Source))
#: Every reason code a verdict can carry: the decision table's rows, the parser's codes and
#: those the service gives itself (a store it cannot read, a bug, a scan left at a stop).
REASONS: frozenset[str] = frozenset(
    {rule.reason for rule in (*RULES, STORE_ONLY_ALLOW)}
    | set(PARSER_REASONS)
    | {POLICY_GAP, "store-error", "internal-error", "service-stopping"}
)
CHECK_SOURCES: frozenset[str] = frozenset(SOURCE_KINDS)
#: Kinds of blocklist entries (``Store.stats``).
STORE_KINDS: frozenset[str] = frozenset({"ki", "gtin", "series"})
FAILURES: frozenset[str] = frozenset(FAILURE_KINDS)


def known(value: str, allowed: Collection[str]) -> str:
    """``value`` when it is in its closed set ``allowed``, else ``other``."""
    return value if value in allowed else "other"


_SCANNER = re.compile(SCANNER_NAME_PATTERN)


def scanner_label(name: str) -> str:
    """A configured scanner's label: its name as it is (the configuration allows 1 to 32
    letters, digits, ``_`` and ``-``, and reserves ``api`` and ``other``), so two scanners never
    share a series; anything else is ``other``. Only for names taken from the configuration:
    a verdict's scanner is checked against the configured set (:class:`VerdictMetrics`)."""
    return name if _SCANNER.fullmatch(name) else "other"


class VerdictMetrics:
    """markd's own counts, kept as plain Python values by the event loop's thread.

    :param clock: monotonic seconds (when a source last answered); tests may pass their own.
    :param scanner_names: the configured scanners' names, asked at each verdict.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        scanner_names: Callable[[], Collection[str]] = tuple,
    ) -> None:
        self.clock = clock
        #: The configured scanners' names now (the service passes its current configuration,
        #: so a reload is followed): only these and ``api`` become a ``scanner`` label.
        self.scanner_names = scanner_names
        #: ``(decision, reason, source)`` → verdicts given.
        self.verdicts: Counter[tuple[str, str, str]] = Counter()
        #: scanner name → scans that ended in a verdict (``api`` for ``POST /v1/check``).
        self.scans: Counter[str] = Counter()
        #: Verdicts per latency bucket, not cumulative; the last slot is above every bound.
        self.latency_counts: list[int] = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.latency_sum_s = 0.0
        #: source → :attr:`clock` time of the last verdict resting on its answer.
        self.last_answer: dict[str, float] = {}
        #: check source → its requests per latency bucket (as :attr:`latency_counts`) and the
        #: sum of their times; every answer and failure counts.
        self.source_counts: dict[str, list[int]] = {}
        self.source_sum_s: dict[str, float] = {}
        #: ``(source, failure kind)`` → failures.
        self.source_failures: Counter[tuple[str, str]] = Counter()

    def record(self, verdict: Verdict) -> None:
        """Count one verdict (the scan path: increments only)."""
        source = verdict.source
        self.verdicts[
            (
                known(verdict.decision, DECISIONS),
                known(verdict.reason, REASONS),
                known(source, SOURCES),
            )
        ] += 1
        scanner = verdict.scanner
        # "api": the control API's checks; "mark-unit": the tills' (both reserved names).
        configured = scanner in ("api", "mark-unit") or scanner in self.scanner_names()
        self.scans[scanner if configured else "other"] += 1
        seconds = max(verdict.latency_ms, 0.0) / 1000
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.latency_sum_s += seconds
        if verdict.checked:
            # An offline answer of the ТС ПИоТ is still the ТС ПИоТ answering.
            answered = "tspiot" if source == "tspiot-offline" else source
            if answered in CHECK_SOURCES:
                self.last_answer[answered] = self.clock()

    def record_source(self, result: SourceAnswer | SourceFailure) -> None:
        """Count one request to a check source, answered or failed (the chain's observer)."""
        source = known(result.source, CHECK_SOURCES)
        counts = self.source_counts.get(source)
        if counts is None:
            counts = self.source_counts[source] = [0] * (len(LATENCY_BUCKETS_S) + 1)
            self.source_sum_s[source] = 0.0
        seconds = max(result.latency_ms, 0.0) / 1000
        counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.source_sum_s[source] += seconds
        if isinstance(result, SourceFailure):
            self.source_failures[(source, known(result.kind, FAILURES))] += 1


class MetricsListener:
    """Each verdict into :class:`VerdictMetrics` (a listener of the
    :class:`~markd.service.listeners.Notifier`)."""

    name = "verdict metrics"

    def __init__(self, metrics: VerdictMetrics) -> None:
        self.metrics = metrics

    def on_verdict(self, checked: CheckedScan) -> None:
        self.metrics.record(checked.verdict)


class StatusCollector:
    """The one collector of markd's series: :class:`VerdictMetrics` and the service's status
    snapshot, read at scrape time. A value the snapshot does not have (no printer, no Local
    Module, a device that did not say) leaves its series out rather than inventing one.

    :param snapshot: the service's ``status_snapshot`` (cheap: no device or network I/O).
    :param now: wall-clock seconds, for ages computed from timestamps.
    """

    def __init__(
        self,
        snapshot: Callable[[], Mapping[str, Any]],
        verdicts: VerdictMetrics,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.snapshot = snapshot
        self.verdicts = verdicts
        self.now = now
        #: The control API's own part of the status for the scrape under way (its
        #: connections and refused requests); the service sets it around each scrape.
        self.api: Mapping[str, Any] | None = None

    def describe(self) -> list[Metric]:
        # Nothing to announce at registration: the series depend on the configuration.
        return []

    def collect(self) -> Iterator[Metric]:
        status = self.snapshot()
        yield from self._verdict_families()
        yield from self._scanner_families(status.get("scanners") or {})
        yield from self._source_families(status.get("sources") or {})
        store = status.get("store")
        if store is not None:
            readable = "error" not in store
            yield GaugeMetricFamily(
                "markd_store_up",
                "1 while markd's store can be read, 0 while reading it fails.",
                value=1.0 if readable else 0.0,
            )
            if readable:
                yield from self._store_families(store)
        printer = status.get("printer")
        if printer:
            yield from self._printer_families(printer)
        if self.api is not None:
            yield from self._api_families(self.api)

    # -- markd's own counts -----------------------------------------------------------------

    def _verdict_families(self) -> Iterator[Metric]:
        counts = self.verdicts
        verdicts = CounterMetricFamily(
            "markd_verdicts_total",
            "Verdicts given, by decision, reason code and the source that decided.",
            labels=["decision", "reason", "source"],
        )
        for (decision, reason, source), value in sorted(counts.verdicts.items()):
            verdicts.add_metric([decision, reason, source], value)
        yield verdicts
        scans = CounterMetricFamily(
            "markd_scans_total",
            "Scans that ended in a verdict, by scanner (api: POST /v1/check).",
            labels=["scanner"],
        )
        for scanner, value in sorted(counts.scans.items()):
            scans.add_metric([scanner], value)
        yield scans
        latency = HistogramMetricFamily(
            "markd_verdict_duration_seconds",
            "Time from a scan's last byte to its verdict.",
        )
        latency.add_metric([], _buckets(counts.latency_counts), counts.latency_sum_s)
        yield latency
        requests = HistogramMetricFamily(
            "markd_source_request_duration_seconds",
            "Time of each check request to a source, answered or failed.",
            labels=["source"],
        )
        for source, per_bucket in sorted(counts.source_counts.items()):
            requests.add_metric([source], _buckets(per_bucket), counts.source_sum_s[source])
        yield requests
        failures = CounterMetricFamily(
            "markd_source_failures_total",
            "Check requests to a source that gave no usable answer, by failure kind.",
            labels=["source", "kind"],
        )
        for (source, kind), value in sorted(counts.source_failures.items()):
            failures.add_metric([source, kind], value)
        yield failures

    # -- the status snapshot ----------------------------------------------------------------

    def _scanner_families(self, scanners: Mapping[str, Any]) -> Iterator[Metric]:
        present = GaugeMetricFamily(
            "markd_scanner_present",
            "1 while a configured scanner's device is present, 0 while it is missing.",
            labels=["scanner"],
        )
        reconnects = CounterMetricFamily(
            "markd_scanner_reconnects_total",
            "Times a configured scanner's device came back after it was missing.",
            labels=["scanner"],
        )
        for name, scanner in sorted(scanners.items()):
            label = scanner_label(name)
            if scanner.get("present") is not None:  # not seen nor missed yet: unknown
                present.add_metric([label], 1.0 if scanner["present"] else 0.0)
            reconnects.add_metric([label], scanner.get("reconnects") or 0)
        yield present
        yield reconnects

    def _source_families(self, sources: Mapping[str, Any]) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "markd_source_up",
            "1 while a check source is usable as markd last saw it, else 0.",
            labels=["source"],
        )
        for role, source_status in sorted(sources.items()):
            source = ROLE_SOURCES.get(role)
            if source is None:
                continue
            value = _source_up(source, source_status)
            if value is not None:
                up.add_metric([source], value)
        yield up
        last = GaugeMetricFamily(
            "markd_source_last_success_age_seconds",
            "Seconds since a verdict last rested on this check source's answer.",
            labels=["source"],
        )
        now = self.verdicts.clock()
        for source, at in sorted(self.verdicts.last_answer.items()):
            last.add_metric([source], max(0.0, now - at))
        yield last
        online = sources.get("online")
        if online is not None:
            yield from self._cdn_families(online)
        local_module = sources.get("local_module")
        if local_module is not None:
            yield from self._local_module_families(local_module)
        tspiot = sources.get("tspiot")
        if tspiot is not None:
            yield from self._tspiot_families(tspiot)

    def _cdn_families(self, online: Mapping[str, Any]) -> Iterator[Metric]:
        hosts = online.get("hosts") or []
        quarantined = sum(1 for h in hosts if h.get("quarantined"))
        family = GaugeMetricFamily(
            "markd_cdn_hosts",
            "CDN hosts of the host list: available to checks, and quarantined now.",
            labels=["state"],
        )
        family.add_metric(["available"], len(hosts) - quarantined)
        family.add_metric(["quarantined"], quarantined)
        yield family
        age = online.get("list_age_s")
        if age is not None:
            yield GaugeMetricFamily(
                "markd_cdn_host_list_age_seconds",
                "Seconds since the CDN host list was fetched from the list service.",
                value=age,
            )

    def _local_module_families(self, lm: Mapping[str, Any]) -> Iterator[Metric]:
        if not lm.get("polled"):
            return  # no status read yet: its state is unknown
        if lm.get("reachable") is False:
            current = "unreachable"
        elif lm.get("state") in LOCAL_MODULE_STATES:
            current = lm["state"]
        else:
            current = "other"
        state = GaugeMetricFamily(
            "markd_local_module_state",
            "The Local Module's state as last polled: 1 for the current state, 0 otherwise.",
            labels=["state"],
        )
        for name in (*LOCAL_MODULE_STATES, "unreachable", "other"):
            state.add_metric([name], 1.0 if name == current else 0.0)
        yield state
        # The client's own figure (None while the module never synchronised: lastSync 0),
        # not an age computed here from a timestamp of 1970.
        hours = lm.get("last_sync_age_hours")
        if isinstance(hours, int | float):
            yield GaugeMetricFamily(
                "markd_local_module_last_sync_age_seconds",
                "Seconds since the Local Module last synchronised with Честный ЗНАК.",
                value=max(0.0, hours * 3600.0),
            )

    def _tspiot_families(self, tspiot: Mapping[str, Any]) -> Iterator[Metric]:
        if tspiot.get("last_error") is not None:
            current = "failing"
        elif tspiot.get("last_offline") is True:
            current = "offline"
        elif tspiot.get("last_offline") is False:
            current = "online"
        else:
            return  # it never answered a check yet
        state = GaugeMetricFamily(
            "markd_tspiot_state",
            "The ТС ПИоТ as last seen: online or offline answers, or failing.",
            labels=["state"],
        )
        for name in TSPIOT_STATES:
            state.add_metric([name], 1.0 if name == current else 0.0)
        yield state

    def _store_families(self, store: Mapping[str, Any]) -> Iterator[Metric]:
        if store.get("version") is not None:
            yield GaugeMetricFamily(
                "markd_store_list_version",
                "Version of the blocklist in markd's store.",
                value=store["version"],
            )
        if store.get("age_s") is not None:
            yield GaugeMetricFamily(
                "markd_store_blocklist_age_seconds",
                "Seconds since the blocklist was last confirmed current.",
                value=store["age_s"],
            )
        if store.get("synced_at") is not None:
            yield GaugeMetricFamily(
                "markd_store_last_sync_timestamp_seconds",
                "Unix time the blocklist was last confirmed current.",
                value=store["synced_at"],
            )
        if store.get("max_age_s") is not None:
            yield GaugeMetricFamily(
                "markd_store_max_age_seconds",
                "Age beyond which the blocklist counts as stale ([store] max_age_hours).",
                value=store["max_age_s"],
            )
        yield GaugeMetricFamily(
            "markd_store_stale",
            "1 while the blocklist is older than its configured freshness.",
            value=1.0 if store.get("stale") else 0.0,
        )
        entries = GaugeMetricFamily(
            "markd_store_entries",
            "Blocklist entries by kind (ki, gtin, series; manual: blocked by hand).",
            labels=["kind"],
        )
        for kind, count in sorted((store.get("blocked") or {}).items()):
            entries.add_metric([known(kind, STORE_KINDS)], count)
        if store.get("blocked_by_hand") is not None:
            entries.add_metric(["manual"], store["blocked_by_hand"])
        yield entries
        yield GaugeMetricFamily(
            "markd_store_last_sync_refused",
            "1 from a refused fleet sync until the next one that succeeds, else 0.",
            value=1.0 if store.get("sync_refused") else 0.0,
        )
        if store.get("sync_refusals") is not None:
            yield CounterMetricFamily(
                "markd_store_sync_refused_total",
                "Fleet syncs refused as untrusted since start.",
                value=store["sync_refusals"],
            )
        runs = store.get("sync_runs")
        if runs is not None:
            yield _counts(
                "markd_store_syncs_total",
                "Fleet syncs finished since start, by result (ok, failed, refused).",
                "result",
                SYNC_RESULTS,
                runs,
            )
        last = store.get("sync_last_result")
        if last is not None:
            yield _one_hot(
                "markd_store_last_sync_result",
                "How the latest fleet sync run ended: 1 for its result, 0 for the others.",
                "result",
                SYNC_RESULTS,
                last,
            )
        if store.get("sync_finished_at") is not None:
            yield GaugeMetricFamily(
                "markd_store_last_sync_attempt_timestamp_seconds",
                "Unix time the latest fleet sync finished, whatever its result.",
                value=store["sync_finished_at"],
            )

    def _printer_families(self, printer: Mapping[str, Any]) -> Iterator[Metric]:
        outcomes = printer.get("receipt_outcomes")
        if outcomes is not None:
            yield _counts(
                "markd_receipts_total",
                "Receipts closed or cancelled since start, by outcome.",
                "outcome",
                RECEIPT_OUTCOMES,
                outcomes,
            )
        recoveries = printer.get("recoveries")
        if recoveries is not None:
            yield _counts(
                "markd_receipt_recoveries_total",
                "Sale recoveries that had something to settle, by result.",
                "result",
                RECOVERY_RESULTS,
                recoveries,
            )
        yield GaugeMetricFamily(
            "markd_printer_queue_blocked",
            "1 while the fiscal driver's request queue is blocked (ATOL Web Requests).",
            value=1.0 if printer.get("queue_blocked") else 0.0,
        )
        device = printer.get("device")
        yield GaugeMetricFamily(
            "markd_printer_up",
            "1 while the fiscal printer answered its last status request, else 0.",
            value=1.0 if device is not None and printer.get("state") != "stopped" else 0.0,
        )
        if printer.get("auto_shift") is not None:
            yield GaugeMetricFamily(
                "markd_fiscal_auto_shift",
                "1 while markd closes an expired shift and opens a new one by itself.",
                value=1.0 if printer["auto_shift"] else 0.0,
            )
        if printer.get("health_interval_s") is not None:
            yield GaugeMetricFamily(
                "markd_fiscal_health_interval_seconds",
                "How often an idle kiosk reads the printer's status (0: only around receipts).",
                value=printer["health_interval_s"],
            )
        checked = _iso_timestamp(printer.get("checked_at"))
        if checked is not None:
            yield GaugeMetricFamily(
                "markd_printer_status_timestamp_seconds",
                "Unix time the printer's status and fiscal figures were last read.",
                value=checked,
            )
        if device is None:
            return  # nothing else is known of a printer not reached
        problems = set(device.get("problems") or ())
        family = GaugeMetricFamily(
            "markd_printer_problem",
            "1 while this problem stops receipts on the printer, as last seen, else 0.",
            labels=["problem"],
        )
        for problem in PRINTER_PROBLEMS:
            family.add_metric([problem], 1.0 if problem in problems else 0.0)
        yield family
        yield GaugeMetricFamily(
            "markd_printer_paper_present",
            "1 while the printer has paper, as last seen.",
            value=1.0 if device.get("paper_present") else 0.0,
        )
        shift = device.get("shift_state")
        if shift is not None:
            yield GaugeMetricFamily(
                "markd_fiscal_shift_open",
                "1 while a shift is open (expired included), 0 while it is closed.",
                value=1.0 if shift in ("opened", "expired") else 0.0,
            )
            yield GaugeMetricFamily(
                "markd_fiscal_shift_expired",
                "1 while the open shift is past its 24 hours.",
                value=1.0 if shift == "expired" else 0.0,
            )
        if device.get("unsent_documents") is not None:
            yield GaugeMetricFamily(
                "markd_fiscal_unsent_documents",
                "Fiscal documents not yet sent to the ОФД.",
                value=device["unsent_documents"],
            )
        health = device.get("health") or {}
        if health.get("fn_days_left") is not None:
            yield GaugeMetricFamily(
                "markd_fiscal_fn_remaining_seconds",
                "Time until the ФН's validity ends (the device counts whole days).",
                value=health["fn_days_left"] * 86400,
            )
        # The ages grow between two status reads (every [fiscal] health_interval_s): the age
        # the ККТ reported, plus the time since it did, so a scrape is never a read behind.
        since = 0.0 if checked is None else max(0.0, self.now() - checked)
        ages = (
            (
                "unsent_oldest_days",
                "markd_fiscal_oldest_unsent_age_seconds",
                "Age of the oldest document not yet sent to the ОФД.",
                86400,
            ),
            (
                "shift_hours",
                "markd_fiscal_shift_age_seconds",
                "Seconds since the open shift was opened.",
                3600,
            ),
        )
        for key, name, documentation, scale in ages:
            if health.get(key) is not None:
                yield GaugeMetricFamily(name, documentation, value=health[key] * scale + since)

    def _api_families(self, api: Mapping[str, Any]) -> Iterator[Metric]:
        connections = GaugeMetricFamily(
            "markd_api_connections",
            "Open connections to the control API, by listener.",
            labels=["listener"],
        )
        for listener, count in sorted((api.get("connections_by_listener") or {}).items()):
            if listener in API_LISTENERS:
                connections.add_metric([listener], count)
        yield connections
        if api.get("event_clients") is not None:
            yield GaugeMetricFamily(
                "markd_api_event_clients",
                "Clients following the event stream (GET /v1/events) now.",
                value=api["event_clients"],
            )
        refused = CounterMetricFamily(
            "markd_api_requests_refused_total",
            "Requests the control API refused, by listener and error code.",
            labels=["listener", "error"],
        )
        for entry in api.get("refused") or ():
            refused.add_metric(
                [known(entry["listener"], API_LISTENERS), known(entry["error"], API_REFUSALS)],
                entry["count"],
            )
        yield refused


def _counts(
    name: str, documentation: str, label: str, values: Iterable[str], counts: Mapping[str, int]
) -> CounterMetricFamily:
    """A counter with one series for each of a closed set of ``values`` (0 for those not
    counted yet, so every series exists from the start)."""
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value in values:
        family.add_metric([value], counts.get(value, 0))
    return family


def _one_hot(
    name: str, documentation: str, label: str, values: Iterable[str], current: str
) -> GaugeMetricFamily:
    """A gauge with one series for each of ``values``: 1 for ``current``, 0 for the others."""
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for value in values:
        family.add_metric([value], 1.0 if value == current else 0.0)
    return family


def _buckets(per_bucket: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts (the last above every bound) → the cumulative buckets of a histogram
    sample, bounds as text."""
    buckets: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip(
        (*(repr(b) for b in LATENCY_BUCKETS_S), "+Inf"), per_bucket, strict=True
    ):
        total += count
        buckets.append((bound, total))
    return buckets


def _source_up(source: str, status: Mapping[str, Any]) -> float | None:
    """Whether a check source is usable, from its client's status; None when not known yet."""
    if source == "cdn":
        # A refused token (an alert) fails every check without quarantining a host.
        if status.get("alert"):
            return 0.0
        hosts = status.get("hosts") or []
        return 1.0 if any(not h.get("quarantined") for h in hosts) else 0.0
    if source == "lm":
        if not status.get("polled") or status.get("reachable") is None:
            return None
        return 1.0 if status.get("reachable") and status.get("state") == "ready" else 0.0
    # The ТС ПИоТ: down after a failure, up once it answered; unknown before either.
    if status.get("last_error") is not None:
        return 0.0
    if status.get("version") is None and status.get("last_latency_ms") is None:
        return None
    return 1.0


def _iso_timestamp(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def metrics_registry(collector: StatusCollector) -> CollectorRegistry:
    """A registry of the service's own: ``collector`` plus the library's process metrics
    (``process_*``: CPU, memory, open files), platform facts (``python_info``) and the
    garbage collector's (``python_gc_*``): the library's default collectors."""
    registry = CollectorRegistry()
    registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format 0.0.4 (what ``generate_latest`` writes)."""
    return generate_latest(registry)


#: Metric families written in one turn of the event loop by :func:`exposition_in_turns`.
FAMILIES_PER_TURN = 6


class _Collected:
    """A collector that hands back families already collected (one part of a scrape)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)

    def describe(self) -> list[Metric]:
        return []


async def exposition_in_turns(
    registry: CollectorRegistry, turn: Callable[[], Awaitable[None]]
) -> bytes:
    """:func:`exposition`, written a few families at a time with ``turn()`` awaited between
    them (``asyncio.sleep(0)``): the values are read at once (one consistent snapshot), but
    the text, most of a scrape's cost, never holds the event loop for more than a few
    families, so a scan that arrives meanwhile waits a fraction of a millisecond, not the
    whole scrape. The bytes are those :func:`exposition` writes for the same values: the
    format is a sequence of independent families."""
    families = list(registry.collect())
    parts: list[bytes] = []
    for start in range(0, len(families), FAMILIES_PER_TURN):
        await turn()
        part = CollectorRegistry(auto_describe=False)
        part.register(_Collected(families[start : start + FAMILIES_PER_TURN]))
        parts.append(generate_latest(part))
    return b"".join(parts)
