"""Recovery's reading back of the documents made since a close attempt
(:meth:`markd.fiscal.recovery.Recovery._receipt_document`): which one is the receipt, and when
nobody can tell yet.

The printer here answers ``describe_document`` from a table (a document, a refusal, or
nothing); the decision is the recovery's alone, so no device is needed. The same decision
runs against the Shtrih emulator's ``FF0A`` in ``tests/integration/test_sale_recovery.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from markd.errors import PrinterFault, PrinterUnavailable
from markd.fiscal.base import DocumentSummary
from markd.fiscal.recovery import DOCUMENTS_READ_BACK, Recovery


@dataclass
class TablePrinter:
    """Documents by number: a summary, an exception to raise, or absent (cannot say)."""

    documents: dict[int, Any] = field(default_factory=dict)
    asked: list[int] = field(default_factory=list)

    def describe_document(self, number: int) -> DocumentSummary | None:
        self.asked.append(number)
        found = self.documents.get(number)
        if isinstance(found, Exception):
            raise found
        return found


@dataclass
class Steps:
    printer: TablePrinter

    async def device(self, call: Any, *args: Any) -> Any:
        return call(*args)


@dataclass
class Receipt:
    kind: str = "sell"
    total_kopecks: int = 8990


@dataclass
class Status:
    last_document_number: int


def receipt_doc(number: int, kind: str = "sell", total: int = 8990) -> DocumentSummary:
    return DocumentSummary(number, kind, total, str(1000 + number), None)


async def read_back(printer: TablePrinter, before: int, last: int, **receipt: Any) -> Any:
    recovery = Recovery(Steps(printer))  # type: ignore[arg-type]
    return await recovery._receipt_document(Receipt(**receipt), before, Status(last))  # type: ignore[arg-type]


async def test_the_receipt_is_found_among_other_documents() -> None:
    printer = TablePrinter(
        {41: DocumentSummary(41, "closeShift"), 42: DocumentSummary(42, "openShift")}
        | {43: receipt_doc(43)}
    )

    found = await read_back(printer, 40, 43)

    assert found is not None and found is not False and found.number == 43


async def test_a_return_is_matched_as_a_return_and_by_its_total() -> None:
    printer = TablePrinter({41: receipt_doc(41, "sell"), 42: receipt_doc(42, "return", 500)})

    assert await read_back(printer, 40, 42, kind="return", total_kopecks=8990) is False
    found = await read_back(printer, 40, 42, kind="return", total_kopecks=500)
    assert found is not None and found is not False and found.number == 42


async def test_a_device_that_reads_nothing_back_leaves_it_to_the_counter() -> None:
    assert await read_back(TablePrinter(), 40, 42) is None


async def test_every_document_read_and_none_is_the_receipt() -> None:
    printer = TablePrinter({41: DocumentSummary(41, "closeShift")})

    assert await read_back(printer, 40, 41) is False


@pytest.mark.parametrize("unreadable", [41, 42])
async def test_a_document_that_cannot_be_read_leaves_the_receipt_pending(unreadable: int) -> None:
    """One of them could not be read (it may be the receipt), none read is it: no guess —
    neither taken for the receipt nor the receipt registered again."""
    documents: dict[int, Any] = {
        41: DocumentSummary(41, "closeShift"),
        42: receipt_doc(42, "sell", 1),
    }
    documents[unreadable] = PrinterFault("no such document", "fn-error")
    printer = TablePrinter(documents)

    with pytest.raises(PrinterUnavailable) as err:
        await read_back(printer, 40, 42)

    assert "could not be read" in err.value.message
    assert printer.asked == [41, 42]  # read on past the unreadable one


async def test_an_unreadable_first_document_does_not_hide_the_receipt_behind_it() -> None:
    printer = TablePrinter({41: PrinterFault("no such document", "fn-error"), 42: receipt_doc(42)})

    found = await read_back(printer, 40, 42)

    assert found is not None and found is not False and found.number == 42


async def test_more_documents_than_are_read_back_leave_the_receipt_pending() -> None:
    last = 40 + DOCUMENTS_READ_BACK + 3
    printer = TablePrinter({n: DocumentSummary(n, "closeShift") for n in range(41, last + 1)})

    with pytest.raises(PrinterUnavailable) as err:
        await read_back(printer, 40, last)

    assert "3 were not read" in err.value.message
    assert len(printer.asked) == DOCUMENTS_READ_BACK


async def test_a_link_failure_while_reading_back_is_raised() -> None:
    printer = TablePrinter({41: PrinterUnavailable("the ККТ does not answer")})

    with pytest.raises(PrinterUnavailable):
        await read_back(printer, 40, 41)
