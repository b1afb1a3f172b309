"""Where a verdict goes: one list of listeners, each handed every verdict in turn.

Every scan ends in exactly one verdict (:mod:`markd.service.scanloop`), and a verdict has
several readers: the journal, the control API's event stream, the verdict counts behind
``STATUS=``, the metrics behind ``GET /metrics``, the optional verdict sink (the demo, tests)
and, in kiosk mode, the sale desk. A :class:`Notifier` holds them in one list and hands each
:class:`CheckedScan` to all of them, in the order they were added::

    scan loop ─CheckedScan─▶ Notifier ─┬▶ JournalListener      verdict record (journald/stderr)
                                       ├▶ EventStreamListener  ``verdict`` event, GET /v1/events
                                       ├▶ CountingListener     verdict counts → STATUS=
                                       ├▶ MetricsListener      plain counters → GET /metrics
                                       ├▶ SinkListener         the service's verdict_sink
                                       └▶ SaleDeskListener     kiosk: an allowed unit to the desk

(:class:`~markd.service.metrics.MetricsListener` lives with the rest of the metrics, in
:mod:`markd.service.metrics`.) Listeners are isolated from each other: one that raises is
reported as a ``service-error`` record and the others still get the verdict. A listener runs
on the event loop and must not block it; one with slow work (the sale desk and its ККТ)
starts a task and returns. Each listener's time is a stage of the scan's trace
(``verdict-record`` …, see :mod:`markd.service.tracing`).

A caller that answers someone on a socket (the Mark Unit front) has only the journal record
written before its answer; the other listeners get that verdict right after the answer is
written (:mod:`markd.checks.after_answer`).

The module also holds the other record one scan leaves in the journal,
:class:`ExchangeJournal` (each request to a check service and its answer, redacted), and
:func:`log_internal_error`, the ``service-error`` record of a failure inside markd itself.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from markd.checks.after_answer import AFTER_ANSWER
from markd.checks.record import CURRENT_SCAN, Exchange
from markd.checks.stages import CURRENT_STAGES
from markd.checks.verdict import Verdict
from markd.errors import MarkdError, raised_at

if TYPE_CHECKING:
    from markd.codes import MarkingCode
    from markd.events import EventPublisher
    from markd.sale import SaleDesk
    from markd.systemd import EventLog

#: What the service calls with every verdict of a scan (the demo and tests collect them).
VerdictSink = Callable[[Verdict], None]


@dataclass(frozen=True)
class CheckedScan:
    """One scan's outcome, as the listeners get it."""

    verdict: Verdict
    #: The parsed code; None when the scan did not parse or was never checked (stopping).
    code: MarkingCode | None = None
    #: The scan came from a scanner: a unit offered for sale (the kiosk takes it, the verdict
    #: sink sees it). False for a question through the control API (``POST /v1/check``).
    for_sale: bool = True
    #: Fields the journal record gets beside the verdict's (the Mark Unit front: the till,
    #: its shift and receipt number, the organisation).
    context: Mapping[str, str] = field(default_factory=dict)


class VerdictListener(Protocol):
    """One reader of verdicts (see the module docstring). A listener whose work must be done
    before anyone acts on the verdict (the journal record) says so with a class attribute
    ``before_answer = True``; the others may be handed a till's verdict after its answer
    (:meth:`Notifier.notify`)."""

    #: Names the listener in the ``service-error`` record when it fails.
    name: str

    def on_verdict(self, checked: CheckedScan) -> None:
        """Take one verdict. Runs on the event loop; must not block it."""
        ...


def log_internal_error(event_log: EventLog, what: str, exc: BaseException) -> None:
    """The ``service-error`` record: ``what`` failed inside markd (a bug, not the customer's
    input). A :class:`MarkdError`'s message is written to be shown; any other exception is
    named by its type and where it was raised, never its text or a traceback, which could
    hold a code's crypto tail or a secret."""
    if isinstance(exc, MarkdError):
        detail = f"{type(exc).__name__}: {exc}"
    else:
        detail = f"{type(exc).__name__} at {raised_at(exc)}"
    event_log.event(
        "service-error",
        f"{what} failed: {detail}",
        priority="error",
        error=type(exc).__name__,
    )


class Notifier:
    """Hands each verdict to every listener in one list (python-can's ``Notifier`` shape).

    :param listeners: the first listeners, in order; more come with :meth:`add_listener`.
    :param on_error: called with the listener's name and the exception when one fails.
    """

    def __init__(
        self,
        listeners: Iterable[VerdictListener],
        on_error: Callable[[str, BaseException], None],
    ) -> None:
        self.listeners: list[VerdictListener] = list(listeners)
        self.on_error = on_error

    def add_listener(self, listener: VerdictListener) -> None:
        self.listeners.append(listener)

    def remove_listener(self, listener: VerdictListener) -> None:
        """Take ``listener`` off the list (one not on it is ignored)."""
        if listener in self.listeners:
            self.listeners.remove(listener)

    def notify(self, checked: CheckedScan) -> None:
        """Hand ``checked`` to every listener; never raises for a listener's failure.

        When the caller answers someone as soon as the verdict is journaled (a collector of
        :mod:`markd.checks.after_answer` is current: the Mark Unit front), only the listeners
        marked ``before_answer`` (the journal record) are handed it now; the others get it,
        in their order, once the answer is written, and are not stages of the scan's trace.
        """
        stages = CURRENT_STAGES.get()  # the scan's stage log when it is traced
        later = AFTER_ANSWER.get()
        deferred: list[VerdictListener] = []
        for listener in list(self.listeners):  # a listener may change the list
            if later is not None and not getattr(listener, "before_answer", False):
                deferred.append(listener)
                continue
            began = 0.0 if stages is None else stages.clock()
            self._hand(listener, checked)
            if stages is not None:
                stages.add(listener_stage(listener), began)
        if later is not None and deferred:
            later.add(self._hand_all, deferred, checked)

    def _hand(self, listener: VerdictListener, checked: CheckedScan) -> None:
        try:
            listener.on_verdict(checked)
        except Exception as exc:  # noqa: BLE001 - one failing reader must not cost the others
            self.on_error(listener.name, exc)

    def _hand_all(self, listeners: list[VerdictListener], checked: CheckedScan) -> None:
        for listener in listeners:
            self._hand(listener, checked)


def listener_stage(listener: VerdictListener) -> str:
    """The listener's stage in a ``slow-scan`` record: its name, dashed (``verdict-record``)."""
    return listener.name.replace(" ", "-")


# --------------------------------------------------------------------------------------------
# The listeners


def journal_verdict(
    event_log: EventLog, verdict: Verdict, context: Mapping[str, str] | None = None
) -> None:
    """Write ``verdict`` to ``event_log`` as one ``verdict`` record: a line a technician
    reads, and the verdict's journal fields (``MARKD_DECISION``, ``MARKD_KI`` …) to filter
    on. ``allow`` at priority info, anything else at notice."""
    subject = verdict.ki if verdict.ki is not None else "(unparsed scan)"
    message = (
        f"{verdict.decision} {subject} from {verdict.scanner}: {verdict.reason} "
        f"({verdict.message_ru})"
    )
    priority = "info" if verdict.decision == "allow" else "notice"
    fields: dict[str, str | float] = {k: v for k, v in (context or {}).items() if v}
    fields.update(verdict.journal_fields())
    event_log.event("verdict", message, priority=priority, **fields)


class JournalListener:
    """Each verdict into the journal (:func:`journal_verdict`)."""

    name = "verdict record"
    #: The record of a verdict exists before the till (or anyone) is answered with it: a
    #: crash after the answer never leaves a verdict acted on without its journal record.
    before_answer = True

    def __init__(self, event_log: EventLog) -> None:
        self.event_log = event_log

    def on_verdict(self, checked: CheckedScan) -> None:
        journal_verdict(self.event_log, checked.verdict, checked.context)


class EventStreamListener:
    """Each verdict to the control API's event stream, whole (``verdict`` events)."""

    name = "verdict event"

    def __init__(self, publisher: EventPublisher) -> None:
        self.publisher = publisher

    def on_verdict(self, checked: CheckedScan) -> None:
        self.publisher.publish_verdict(checked.verdict)


class CountingListener:
    """Counts verdicts by decision (``allow``, ``deny``, ``rescan``) into ``counts`` and calls
    ``on_change`` after each (the status line's throttled ``STATUS=`` update)."""

    name = "verdict counts"

    def __init__(self, counts: Counter[str], on_change: Callable[[], None]) -> None:
        self.counts = counts
        self.on_change = on_change

    def on_verdict(self, checked: CheckedScan) -> None:
        self.counts[checked.verdict.decision] += 1
        self.on_change()


class SinkListener:
    """The verdicts of scans (not of API questions) to a plain callable."""

    name = "verdict sink"

    def __init__(self, sink: VerdictSink) -> None:
        self.sink = sink

    def on_verdict(self, checked: CheckedScan) -> None:
        if checked.for_sale:
            self.sink(checked.verdict)


class SaleDeskListener:
    """Kiosk mode: a scanned unit and its verdict to the sale desk, which puts an allowed one
    on the open receipt in a task of its own (:meth:`~markd.sale.SaleDesk.take`): the scan
    loop does not wait for the ККТ."""

    name = "sale desk"

    def __init__(self, desk: SaleDesk) -> None:
        self.desk = desk

    def on_verdict(self, checked: CheckedScan) -> None:
        if checked.for_sale and checked.code is not None:
            self.desk.take(checked.verdict, checked.code)


class ExchangeJournal:
    """The check chain's recorder: every request to a check service and its answer, redacted,
    into the journal as ``check-exchange``, with the scan it was made for."""

    def __init__(self, event_log: EventLog) -> None:
        self.event_log = event_log

    def __call__(self, exchange: Exchange) -> None:
        exchange.scan_id = exchange.scan_id or CURRENT_SCAN.get()
        status = exchange.status if exchange.status is not None else "no answer"
        self.event_log.event(
            "check-exchange",
            f"{exchange.source} {exchange.method} {exchange.url} → {status} in "
            f"{exchange.latency_ms:.1f} ms" + (f" ({exchange.error})" if exchange.error else ""),
            priority="info" if exchange.status == 200 else "notice",
            source=exchange.source,
            url=exchange.url,
            http_status=exchange.status,
            latency_ms=f"{exchange.latency_ms:.1f}",
            request=exchange.request,
            response=exchange.response,
            scan=exchange.scan_id,
        )
