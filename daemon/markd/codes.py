"""Marking codes (КМ): normalisation, repair and parsing.  [interface stub; being written]"""

from __future__ import annotations

from dataclasses import dataclass, field

from markd.errors import CodeError

GS = "\x1d"


@dataclass(frozen=True)
class CodesOptions:
    recover_lost_gs: bool = True
    serial_lengths: tuple[int, ...] = (13, 6, 7)
    ki_serial_lengths: tuple[int, ...] = (13,)


@dataclass(frozen=True)
class MarkingCode:
    km: str = field(repr=False)
    ki: str
    gtin: str
    serial: str
    crypto: dict[str, str] = field(repr=False)
    mrp_kopecks: int | None
    shape: str
    group: str
    group_id: int | None = None
    extra: dict[str, str] = field(default_factory=dict)
    repairs: tuple[str, ...] = ()
    symbology: str | None = None


RESCAN_REASONS = frozenset({"ambiguous-lost-gs"})


def parse(text: str | bytes, options: CodesOptions | None = None) -> MarkingCode:
    raise CodeError("not implemented yet", "malformed")
