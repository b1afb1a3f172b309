"""The parser's verdict: a re-scan where scanning again may help, a refusal otherwise."""

from __future__ import annotations

import pytest

from markd.checks.verdict import parser_verdict
from markd.codes import parse
from markd.errors import CodeError


def test_rescan_flag():
    with pytest.raises(CodeError) as info:
        parse("0104680029460908215jcmHzLmkd938p9E")  # serial 10: no configured length
    assert info.value.reason == "ambiguous-lost-gs"
    assert parser_verdict(info.value, scanner="front").decision == "rescan"
    with pytest.raises(CodeError) as info:
        parse("4607809596237")
    assert parser_verdict(info.value, scanner="front").decision == "deny"
