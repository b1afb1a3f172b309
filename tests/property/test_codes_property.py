"""Property tests: parse() never raises anything but CodeError, and repairs never change a code."""

from __future__ import annotations

import string

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tests.unit.test_codes import typed_in_russian_layout

from markd.codes import GS, GS1_CHARSET_82, REASONS, CodesOptions, gtin_check_digit, parse
from markd.errors import CodeError

SETTINGS = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(text, options=None):
    """parse() result, or the CodeError's reason; any other exception fails the test."""
    try:
        return parse(text, options)
    except CodeError as exc:
        assert exc.reason in REASONS, exc.reason
        assert exc.reason != "internal-error", exc.__cause__
        assert exc.message
        return exc.reason


@SETTINGS
@given(st.text(max_size=300))
@example("\x1d" * 50)
@example("]d2")
@example("01" + "9" * 14 + "21")
def test_any_text_gives_a_code_or_a_code_error(text):
    outcome(text)


@SETTINGS
@given(st.binary(max_size=300))
def test_any_bytes_give_a_code_or_a_code_error(data):
    outcome(data)


ALPHABET = st.sampled_from(GS1_CHARSET_82 + GS + "<>[]{}\\u\r\nйцукЁ]d2")


@SETTINGS
@given(
    st.lists(
        st.sampled_from(["01", "21", "91", "92", "93", "8005", "17", "3103", GS, "0", "9"])
        | ALPHABET,
        max_size=60,
    ).map("".join)
)
def test_structured_noise_gives_a_code_or_a_code_error(text):
    outcome(text)


@SETTINGS
@given(
    st.lists(st.sampled_from(["01", "21", "91", "92", "93", GS, "8005"]) | ALPHABET, max_size=80),
    st.booleans(),
    st.lists(st.integers(1, 20), max_size=4).map(tuple),
    st.lists(st.integers(1, 20), max_size=3).map(tuple),
)
def test_options_never_break_the_contract(parts, recover, serial_lengths, ki_lengths):
    options = CodesOptions(recover, serial_lengths, ki_lengths)
    outcome("01046078095962372" + "1" + "".join(parts), options)


# --- valid codes and their mangled forms -----------------------------------------------------

base64ish = st.text(alphabet=string.ascii_letters + string.digits + "+/", min_size=4, max_size=4)
serial_chars = st.sampled_from(GS1_CHARSET_82)


@st.composite
def gtins(draw):
    body = draw(st.text(alphabet=string.digits, min_size=13, max_size=13))
    return body + str(gtin_check_digit(body))


@st.composite
def gs1_codes(draw):
    gtin = draw(gtins())
    kind = draw(st.sampled_from(["91-92", "water", "milk", "block"]))
    key = draw(base64ish)
    if kind == "91-92":
        serial = draw(st.text(serial_chars, min_size=13, max_size=13))
        sig = draw(st.sampled_from([44, 88]))
        tail = draw(st.text(alphabet=string.ascii_letters + "+/=", min_size=sig, max_size=sig))
        return f"01{gtin}21{serial}{GS}91{key}{GS}92{tail}"
    if kind == "water":
        serial = draw(st.text(serial_chars, min_size=13, max_size=13))
        return f"01{gtin}21{serial}{GS}93{key}"
    if kind == "milk":
        serial = draw(st.text(serial_chars, min_size=6, max_size=6))
        return f"01{gtin}21{serial}{GS}93{key}"
    serial = draw(st.text(serial_chars, min_size=7, max_size=7))
    mrp = draw(st.integers(0, 999999))
    return f"01{gtin}21{serial}{GS}8005{mrp:06d}{GS}93{key}"


@SETTINGS
@given(gs1_codes())
def test_valid_codes_parse_to_themselves(km):
    code = parse(km)
    assert code.km == km
    assert km.startswith(code.ki + GS)


@SETTINGS
@given(
    gs1_codes(),
    st.sampled_from(["", "\r", "\n", "\r\n", "\t"]),
    st.sampled_from(["", "]d2", "]C1", GS, "]d2" + GS]),
    st.sampled_from([GS, "\\u001d", "<GS>", "[GS]", "{GS}"]),
    st.booleans(),
)
def test_mangled_valid_codes_repair_to_the_same_code(km, suffix, prefix, gs, russian):
    if gs == "<GS>" and "<GS>" in km:
        return  # a serial that itself holds "<GS>" cannot be told from the token
    text = prefix + km.replace(GS, gs) + suffix
    if russian:
        text = typed_in_russian_layout(text)
    result = outcome(text)
    if isinstance(result, str):
        # Only a serial that itself looks like a token or an escape may be refused.
        assert any(t in km for t in ("<", "[", "{", "\\")), (result, text)
        return
    assert result.km == km


@SETTINGS
@given(gs1_codes(), st.data())
def test_lost_gs_is_recovered_exactly_or_refused(km, data):
    """Removing some or every GS never yields a *different* code: the same one, or a refusal."""
    parts = km.split(GS)
    keep = data.draw(st.lists(st.booleans(), min_size=len(parts) - 1, max_size=len(parts) - 1))
    text = parts[0] + "".join((GS if k else "") + p for k, p in zip(keep, parts[1:], strict=True))
    result = outcome(text)
    if isinstance(result, str):
        assert result in (
            "ambiguous-lost-gs",
            "bad-ai-value",
            "unknown-ai",
            "missing-crypto",
            "bad-shape",
            "bad-serial",
        ), result
    else:
        assert result.km == km
