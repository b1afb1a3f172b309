"""markd.numbers: the one reader of device integers — what it reads, what it refuses, and that
no value a device or service can send makes it raise."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from markd.numbers import DEFAULT_MAX_DIGITS, read_int, read_number

FIVE_THOUSAND_DIGITS = "9" * 5000

ACCEPTED: list[tuple[Any, int]] = [
    (0, 0),
    (42, 42),
    (-7, -7),
    (2**64 - 1, 2**64 - 1),  # 20 digits: the widest protobuf integer
    (1.0, 1),
    (-3.0, -3),
    (1.735e12, 1_735_000_000_000),
    ("42", 42),
    ("007", 7),
    ("-7", -7),
    ("+7", 7),
    ("-0", 0),
    (" 42 ", 42),
    ("\t42\r\n", 42),
    ("18446744073709551615", 2**64 - 1),
]

REFUSED: list[Any] = [
    None,
    True,
    False,
    b"42",
    [42],
    {"value": 42},
    1.5,
    math.nan,
    math.inf,
    -math.inf,
    1e300,  # integral, but 301 digits
    10**20,  # 21 digits
    "",
    "   ",
    "+",
    "-",
    "+-1",
    "--1",
    "1 000",
    "1_000",  # int() reads it as 1000
    "1.0",
    "1e3",
    "0x10",
    "²",  # isdigit() says yes, int() raises
    "1²",
    "٣",  # Arabic-Indic three: int() reads it as 3
    "１２",  # fullwidth digits: int() reads them as 12
    "\u00a042",  # a no-break space is not ASCII white space
    "123456789012345678901",  # 21 digits
    "0" * 21,  # leading zeros count
    FIVE_THOUSAND_DIGITS,  # past int()'s 4,300-digit limit
    "-" + FIVE_THOUSAND_DIGITS,
    " " * 100_000,
]


@pytest.mark.parametrize(("value", "expected"), ACCEPTED)
def test_reads_numbers_digit_strings_and_integral_floats(value: Any, expected: int) -> None:
    assert read_int(value) == expected
    assert type(read_int(value)) is int


@pytest.mark.parametrize("value", REFUSED, ids=lambda v: repr(v)[:30])
def test_refuses_everything_else_with_none(value: Any) -> None:
    assert read_int(value) is None


def test_bounds_refuse_values_outside_them() -> None:
    assert read_int("5", lo=1) == 5
    assert read_int("0", lo=1) is None
    assert read_int(-1, lo=0) is None
    assert read_int(65535, hi=65535) == 65535
    assert read_int("65536", hi=65535) is None


def test_max_digits_narrows_the_reader_for_every_type() -> None:
    assert read_int("999", max_digits=3) == 999
    assert read_int("1000", max_digits=3) is None
    assert read_int(1000, max_digits=3) is None
    assert read_int(1000.0, max_digits=3) is None
    assert read_int("9" * 4300, max_digits=4300) == int("9" * 4300)
    with pytest.raises(ValueError):  # the caller's mistake, not the device's
        read_int("1", max_digits=4301)
    with pytest.raises(ValueError):
        read_int("1", max_digits=0)


def test_read_number_takes_finite_json_numbers_only() -> None:
    assert read_number(12) == 12.0 and read_number(12.5) == 12.5
    assert read_number(-1.0, lo=0) is None and read_number(7, hi=5) is None
    for value in (None, True, "12", math.nan, math.inf, -math.inf, 10**400, [1]):
        assert read_number(value) is None, value


# -- never raises -----------------------------------------------------------------------------

_digit_strings = st.text(alphabet="0123456789", max_size=6000)
#: Text a device could send where a number belongs: any Unicode (digits of every script
#: included), ASCII digits with signs, spaces and separators, and very long digit runs.
_texts = (
    st.text(max_size=60)
    | st.text(alphabet=st.characters(categories=["Nd", "No", "Zs"]), max_size=30)
    | st.text(alphabet="0123456789+-_ .eE\t\n²³¹", max_size=40)
    | st.builds(
        lambda sign, digits: sign + digits, st.sampled_from(["", "+", "-", " "]), _digit_strings
    )
)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | _texts
)
_json_like = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(_json_like, st.integers(min_value=1, max_value=4300))
def test_read_int_never_raises_and_keeps_its_promises(value: Any, max_digits: int) -> None:
    number = read_int(value, max_digits=max_digits)
    if number is None:
        return
    assert type(number) is int
    assert abs(number) < 10**max_digits
    if isinstance(value, str):
        # Only ASCII digits with an optional sign, ASCII white space around them.
        body = value.strip(" \t\n\r\x0b\x0c").lstrip("+-")
        assert body.isascii() and body.isdigit()
    else:
        assert not isinstance(value, bool) and isinstance(value, int | float)
        assert number == value


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=-(10**DEFAULT_MAX_DIGITS) + 1, max_value=10**DEFAULT_MAX_DIGITS - 1))
def test_every_integer_reads_back_from_each_of_its_spellings(number: int) -> None:
    assert read_int(number) == number
    assert read_int(str(number)) == number
    assert read_int(f"  {number}\n") == number
    assert read_int(json.loads(json.dumps(str(number)))) == number


@settings(max_examples=300, deadline=None)
@given(_json_like)
def test_read_number_never_raises(value: Any) -> None:
    number = read_number(value)
    assert number is None or (type(number) is float and math.isfinite(number))
