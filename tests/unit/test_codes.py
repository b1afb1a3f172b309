"""markd.codes: every shape, every repair, every error reason."""

from __future__ import annotations

import gc
import random

import pytest

from markd import samples
from markd.codes import (
    DEFAULT_OPTIONS,
    GS,
    REASONS,
    CodesOptions,
    gtin_check_digit,
    gtin_is_valid,
    mrp_from_base80,
    mrp_to_base80,
    parse,
)
from markd.errors import CodeError

SIG44 = "MEUCIQDtkqFC+ZxPrUZsGJb9Pq0Rq1gm3kGmV1NfTcT/wA=="[:44]
SHOES = f"0104607809596237215<(q!mLp*jIb3{GS}91FFD0{GS}92{SIG44}"
WATER = f"0104680029460908215jcmHzLmkdPML{GS}938p9E"
MILK = f"0104670540176099215LpGKy{GS}93dGVz"
BEER = f"0104813445003293215TmiV,g{GS}93dGVz"
PACK = "00000046233219!SX-RqRADpU7Cev"
BLOCK = f"0104600000000015215AbC-9x{GS}8005022500{GS}93Xy7+"

# How a keyboard-mode scanner's keys come out under the Russian ЙЦУКЕН layout, written out key
# by key here (independently of the parser's own table) so a wrong entry there fails a test.
_US_ROWS = [
    "qwertyuiop[]",
    "asdfghjkl;'",
    "zxcvbnm,./",
    "QWERTYUIOP{}",
    'ASDFGHJKL:"',
    "ZXCVBNM<>?",
]
_RU_ROWS = [
    "йцукенгшщзхъ",
    "фывапролджэ",
    "ячсмитьбю.",
    "ЙЦУКЕНГШЩЗХЪ",
    "ФЫВАПРОЛДЖЭ",
    "ЯЧСМИТЬБЮ,",
]
_SHIFTED_DIGITS = {"@": '"', "#": "№", "$": ";", "^": ":", "&": "?", "|": "/"}
TYPE_RU = {
    u: r for us, ru in zip(_US_ROWS, _RU_ROWS, strict=True) for u, r in zip(us, ru, strict=True)
}
TYPE_RU.update(_SHIFTED_DIGITS)


def typed_in_russian_layout(text: str) -> str:
    return "".join(TYPE_RU.get(ch, ch) for ch in text)


def reason_of(text, **opts) -> str:
    options = CodesOptions(**opts) if opts else None
    with pytest.raises(CodeError) as info:
        parse(text, options)
    return info.value.reason


# ---------------------------------------------------------------------------------------------
# arithmetic


def test_gtin_check_digit_domain_example():
    assert gtin_check_digit("0460780959623") == 7
    assert gtin_is_valid("04607809596237")
    assert not gtin_is_valid("04607809596238")


@pytest.mark.parametrize("ean", ["4600000000008", "12345670", "036000291452"])
def test_gtin_check_digit_known_barcodes(ean):
    assert gtin_is_valid(ean)


@pytest.mark.parametrize("text,kopecks", [("ACW.", 14630), ("ADpU", 22500), ("AAAA", 0)])
def test_base80_mrp(text, kopecks):
    assert mrp_from_base80(text) == kopecks
    assert mrp_to_base80(kopecks) == text


# ---------------------------------------------------------------------------------------------
# shapes


def test_shoes_91_92():
    code = parse(SHOES)
    assert code.shape == "gs1-91-92"
    assert code.gtin == "04607809596237"
    assert code.serial == "5<(q!mLp*jIb3"
    assert code.ki == "0104607809596237215<(q!mLp*jIb3"
    assert code.crypto == {"91": "FFD0", "92": SIG44}
    assert code.km == SHOES
    assert code.mrp_kopecks is None
    assert code.repairs == ()


def test_91_92_with_88_character_signature():
    km = f"0104607809596237215<(q!mLp*jIb3{GS}91FFD0{GS}92{SIG44 * 2}"
    assert parse(km).crypto["92"] == SIG44 * 2


def test_water_93():
    code = parse(WATER)
    assert (code.shape, code.group, code.group_id) == ("gs1-93", "water", 13)
    assert code.ki == "0104680029460908215jcmHzLmkdPML"
    assert code.crypto == {"93": "8p9E"}


def test_dairy_serial_6():
    code = parse(MILK)
    assert (code.shape, code.group, code.group_id, code.serial) == ("gs1-93", "milk", 8, "5LpGKy")


def test_dairy_with_weight_and_expiry():
    code = parse(MILK + f"{GS}3103000350" + "17250601")
    assert code.extra == {"3103": "000350", "17": "250601"}
    assert code.group == "milk"
    assert code.km == MILK + f"{GS}3103000350{GS}17250601"


def test_beer_serial_7_is_a_guess():
    code = parse(BEER)
    assert code.serial == "5TmiV,g"
    assert (code.group, code.group_id) == ("beer", None)


def test_tobacco_block_with_8005():
    code = parse(BLOCK)
    assert code.shape == "tobacco-block"
    assert code.group == "tobacco" and code.group_id == 3
    assert code.mrp_kopecks == 22500
    assert code.ki == "0104600000000015215AbC-9x"
    assert code.crypto == {"93": "Xy7+"}
    assert code.extra == {"8005": "022500"}


def test_tobacco_pack_domain_worked_example():
    code = parse(PACK)
    assert code.shape == "tobacco-pack"
    assert code.gtin == "00000046233219"
    assert code.serial == "!SX-RqR"
    assert code.ki == "00000046233219!SX-RqR"
    assert code.mrp_kopecks == 22500
    assert code.crypto == {"tail": "7Cev"}


def test_bare_ki_only_where_configured():
    ki = "0104607809596237215<(q!mLp*jIb3"
    assert reason_of(ki) == "missing-crypto"
    code = parse(ki, CodesOptions(ki_serial_lengths=(13,)))
    assert code.shape == "ki"
    assert code.crypto == {} and not code.has_crypto


@pytest.mark.parametrize("shape", samples.SHAPES)
def test_every_sample_shape_round_trips(shape):
    rng = random.Random(shape)
    for _ in range(200):
        km = samples.make(shape, rng)
        code = parse(km)
        assert code.km == km
        assert code.repairs == ()
        assert km.startswith(code.ki)


# ---------------------------------------------------------------------------------------------
# repairs


@pytest.mark.parametrize("suffix", ["\r", "\n", "\r\n", "\t", " \r\n"])
def test_scanner_suffix_stripped(suffix):
    code = parse(WATER + suffix)
    assert code.km == WATER
    assert code.repairs == ("suffix-stripped",)


@pytest.mark.parametrize("prefix", ["]d2", "]C1", "]Q3", "]e0"])
def test_symbology_prefix(prefix):
    code = parse(prefix + WATER)
    assert code.km == WATER
    assert code.symbology == prefix
    assert "symbology-prefix" in code.repairs


def test_symbology_prefix_followed_by_fnc1():
    code = parse("]d2" + GS + SHOES)
    assert code.km == SHOES
    assert code.repairs == ("symbology-prefix", "leading-gs-dropped")


def test_leading_fnc1_as_gs():
    code = parse(GS + MILK)
    assert code.km == MILK and code.repairs == ("leading-gs-dropped",)


def test_trailing_and_double_gs():
    assert parse(WATER + GS).repairs == ("trailing-gs-dropped",)
    doubled = WATER.replace(GS, GS + GS)
    assert parse(doubled).repairs == ("double-gs-collapsed",)
    assert parse(doubled).km == WATER


@pytest.mark.parametrize("escape", ["\\u001d", "\\u001D", "\\x1d"])
def test_literal_escape_text(escape):
    code = parse(SHOES.replace(GS, escape))
    assert code.km == SHOES
    assert code.repairs == ("gs-escape",)


@pytest.mark.parametrize("token", ["<GS>", "[GS]", "{GS}", "<gs>", "<FNC1>", "\u241d"])
def test_text_tokens(token):
    code = parse(SHOES.replace(GS, token))
    assert code.km == SHOES
    assert code.repairs == ("gs-token",)


def test_gs_token_lookalike_inside_a_tobacco_pack_is_kept():
    # "<GS>" is made of characters a serial may hold; when reading it as GS fails, the
    # code is read as it came.
    pack = "00000046233219<GS>RqRADpU7Cev"
    code = parse(pack)
    assert code.shape == "tobacco-pack"
    assert code.serial == "<GS>RqR"
    assert code.repairs == ()


@pytest.mark.parametrize("km", [SHOES, WATER, MILK, PACK, BLOCK])
def test_cyrillic_layout_repaired(km):
    typed = typed_in_russian_layout(km)
    assert typed != km
    code = parse(typed)
    assert code.km == km
    assert "cyrillic-layout" in code.repairs


def test_cyrillic_layout_with_symbology_prefix_and_token():
    typed = typed_in_russian_layout("]d2" + WATER.replace(GS, "<GS>") + "\r")
    assert "ъв2" in typed and "БПЫЮ" in typed
    code = parse(typed)
    assert code.km == WATER
    assert code.repairs == ("suffix-stripped", "cyrillic-layout", "gs-token", "symbology-prefix")


def test_cyrillic_that_does_not_map_back_to_a_code_is_refused():
    assert reason_of("0104680029460908215jcmHzLmkdЁML" + GS + "938p9E") == "invalid-characters"


def test_leading_zero_restored():
    code = parse(WATER[1:])
    assert code.km == WATER
    assert code.repairs == ("leading-zero-restored",)


@pytest.mark.parametrize(
    "km",
    [
        WATER,  # serial 13 + 93
        MILK,  # serial 6 + 93
        SHOES,  # serial 13 + 91 + 92
        f"0104607809596237215<(q!mLp*jIb3{GS}91FFD0{GS}92{SIG44 * 2}",  # 92 of 88
        BLOCK,  # serial 7 + 8005 + 93
    ],
)
def test_lost_gs_recovered_where_unambiguous(km):
    code = parse(km.replace(GS, ""))
    assert code.km == km
    assert code.repairs == ("lost-gs-recovered",)


def test_partly_lost_gs_between_91_and_92():
    code = parse(SHOES.replace(GS + "92", "92"))
    assert code.km == SHOES and code.repairs == ("lost-gs-recovered",)


def test_partly_lost_gs_after_serial():
    broken = SHOES.replace(GS + "91", "91", 1)
    assert parse(broken).km == SHOES


def test_dairy_extras_glued_after_93():
    code = parse(MILK + "3103000350")
    assert code.extra == {"3103": "000350"}
    assert code.repairs == ("lost-gs-recovered",)


def test_clean_gs_after_serial_is_believed_over_lengths():
    # Serial of 10 characters (not a configured length) with a proper GS: accepted as sent.
    km = f"0104680029460908215jcmHzLmkd{GS}938p9E"
    assert parse(km).serial == "5jcmHzLmkd"


# ---------------------------------------------------------------------------------------------
# ambiguity and options


def test_beer_without_gs_collides_with_a_bare_ki_when_those_are_accepted():
    # 31 characters: a beer code whose GS was lost, or a bare 13-character-serial КИ that
    # happens to hold "93" at that spot. Never guess.
    assert reason_of(BEER.replace(GS, ""), ki_serial_lengths=(13,)) == "ambiguous-lost-gs"


def test_beer_without_gs_recovered_by_default():
    code = parse(BEER.replace(GS, ""))
    assert code.km == BEER and code.repairs == ("lost-gs-recovered",)


def test_tobacco_block_with_only_the_first_gs_lost():
    # The serial would otherwise read as 17 characters holding "8005…": a wrong КИ.
    broken = BLOCK.replace(GS, "", 1)
    code = parse(broken)
    assert code.km == BLOCK
    assert code.ki == "0104600000000015215AbC-9x"
    assert code.repairs == ("lost-gs-recovered",)


def test_duplicate_serial_lengths_do_not_make_readings_ambiguous():
    code = parse(WATER.replace(GS, ""), CodesOptions(serial_lengths=(13, 13, 6)))
    assert code.km == WATER


def test_mixed_script_is_not_taken_for_a_keyboard_layout():
    # One Cyrillic look-alike inside a Latin code is damage, not a layout: refuse it.
    text = WATER.replace("kdPML", "k\u041cPML".encode().decode("unicode_escape"))
    assert reason_of(text) == "invalid-characters"


def test_lost_gs_with_unconfigured_serial_length_is_ambiguous():
    km = f"0104680029460908215jcmHzLmkd{GS}938p9E"  # serial 10
    assert reason_of(km.replace(GS, "")) == "ambiguous-lost-gs"


def test_recovery_can_be_switched_off():
    assert reason_of(WATER.replace(GS, ""), recover_lost_gs=False) == "ambiguous-lost-gs"
    assert parse(WATER, CodesOptions(recover_lost_gs=False)).km == WATER


def test_serial_lengths_are_configurable():
    assert reason_of(MILK.replace(GS, ""), serial_lengths=(13,)) == "ambiguous-lost-gs"


# ---------------------------------------------------------------------------------------------
# error reasons


#: Texts that are no usable code, and the reason each gets.
ERROR_CASES = [
    ("", "empty"),
    ("\r\n", "empty"),
    ("]d2", "empty"),
    ("0" * 600, "too-long"),
    ("0104680029460908215jcmHz LmkdPML" + GS + "938p9E", "invalid-characters"),
    ("01046800294609082\x00", "invalid-characters"),
    ("4607809596237", "not-a-marking-code"),  # EAN-13
    ("46078095", "not-a-marking-code"),  # EAN-8 shape (check digit wrong)
    ("036000291452", "not-a-marking-code"),  # UPC-A
    ("00146000000000000012", "not-a-marking-code"),  # SSCC
    ("https://example.org/x", "invalid-characters"),  # '/' fine, but ':' ok, 'h' … see below
    ("hello", "not-a-marking-code"),
    ("0104607809596237", "not-a-marking-code"),  # GTIN only
    ("01046078095962372", "truncated"),  # cut inside AI 21
    ("010460780959623717260101", "not-a-marking-code"),  # GS1 without serial
    ("01046078095", "truncated"),
    ("0104607809596238215<(q!mLp*jIb3" + GS + "91FFD0", "bad-gtin-check-digit"),
    ("01046078095962372" + "1" + "x" * 25 + GS + "93abcd", "bad-serial"),
    (WATER + GS + "42abc", "unknown-ai"),
    (f"0104607809596237215<(q!mLp*jIb3{GS}91FFD0{GS}92short", "bad-ai-value"),
    (f"0104680029460908215jcmHzLmkdPML{GS}93abc", "bad-ai-value"),
    (f"0104680029460908215jcmHzLmkdPML{GS}8005abcdef{GS}93abcd", "bad-ai-value"),
    (f"0104607809596237215<(q!mLp*jIb3{GS}92{SIG44}", "bad-shape"),  # 92 without 91
    (f"0104680029460908215jcmHzLmkdPML{GS}938p9E{GS}93abcd", "bad-shape"),  # 93 twice
    (f"0104680029460908215jcmHzLmkdPML{GS}17250601", "missing-crypto"),
    ("0104680029460908215jcmHzLmkd", "missing-crypto"),  # bare КИ, serial 10
    ("00000046233219!SX-RqR(DpU7Cev", "bad-mrp"),
    ("00000046233218!SX-RqRADpU7Cev", "bad-gtin-check-digit"),
]


@pytest.mark.parametrize("text,reason", ERROR_CASES)
def test_error_reasons(text, reason):
    if text.startswith("https"):
        reason = reason_of(text)  # lowercase letters and ':' are legal characters …
        assert reason == "not-a-marking-code"  # … but it is no marking code
        return
    assert reason_of(text) == reason


def _cycles_left(texts: list[tuple[str, CodesOptions]]) -> int:
    """Objects the cyclic collector finds after parsing each text (refused or not)."""
    gc.collect()
    gc.disable()
    try:
        for text, options in texts:
            try:
                parse(text, options)
            except CodeError:
                pass
        return gc.collect()
    finally:
        gc.enable()


def test_a_refused_text_leaves_no_reference_cycle():
    # A caught error kept in a local holds, by its traceback, the frame that holds it: a
    # cycle only the cyclic collector frees, and its collections pause later checks.
    assert _cycles_left([(text, DEFAULT_OPTIONS) for text, _ in ERROR_CASES]) == 0


def test_a_lost_gs_leaves_no_reference_cycle_read_or_refused():
    # The GS1 reader keeps the error of the reading as delimited while it tries the cuts at
    # the serial lengths: a code read by a cut, and one refused as ambiguous, go out other
    # ways than the error's.
    texts = [
        (WATER.replace(GS, ""), DEFAULT_OPTIONS),  # read
        (BLOCK.replace(GS, "", 1), DEFAULT_OPTIONS),  # read
        (BEER.replace(GS, ""), CodesOptions(ki_serial_lengths=(13,))),  # ambiguous
        ("0104680029460908215jcmHzLmkd938p9E", DEFAULT_OPTIONS),  # ambiguous, no length fits
        (WATER.replace(GS, ""), CodesOptions(recover_lost_gs=False)),  # refused
    ]
    assert parse(texts[0][0]).km == WATER  # the texts are what they say
    with pytest.raises(CodeError):
        parse(texts[2][0], texts[2][1])
    assert _cycles_left(texts) == 0


def test_every_reason_has_both_texts():
    for reason, (en, ru) in REASONS.items():
        assert en and ru, reason


def test_bytes_input_and_bad_utf8():
    assert parse(WATER.encode()).km == WATER
    with pytest.raises(CodeError) as info:
        parse(b"0104\xff")
    assert info.value.reason == "invalid-characters"
    assert "0xFF" in info.value.message and "offset 4" in info.value.message


def test_invalid_character_position_named():
    with pytest.raises(CodeError) as info:
        parse(WATER.replace("jcm", "j~m"))
    assert "position 21" in info.value.message  # 1-based


# ---------------------------------------------------------------------------------------------
# secrets stay out of repr, messages and default JSON


def test_repr_hides_crypto():
    code = parse(SHOES)
    text = repr(code) + str(code)
    assert SIG44 not in text and "FFD0" not in text
    assert code.ki in text


def test_to_dict_hides_crypto_unless_asked():
    code = parse(SHOES)
    hidden = code.to_dict()
    assert "km" not in hidden
    assert SIG44 not in str(hidden) and "FFD0" not in str(hidden)
    assert set(hidden["crypto"]) == {"91", "92"}
    shown = code.to_dict(show_crypto=True)
    assert shown["crypto"] == {"91": "FFD0", "92": SIG44}
    assert shown["km"] == SHOES


@pytest.mark.parametrize(
    "broken",
    [
        SHOES.replace("92" + SIG44, "92" + SIG44[:40]),
        SHOES.replace(GS, "") + "X",
        "0104680029460908215jcmHzLmkd938p9E",
        SHOES.replace("04607809596237", "04607809596230"),
        SHOES.replace(GS + "92", GS + "42"),
    ],
)
def test_error_messages_never_hold_the_crypto_tail(broken):
    with pytest.raises(CodeError) as info:
        parse(broken)
    message = info.value.message
    for secret in ("FFD0", "dGVz"):
        assert secret not in message
    # No 3-character piece of the signature (SIG44 holds no digits, so no GTIN can match).
    assert not any(SIG44[i : i + 3] in message for i in range(len(SIG44) - 2)), message


def test_unknown_ai_message_quotes_nothing_of_the_code():
    with pytest.raises(CodeError) as info:
        parse(SHOES.replace(GS + "92", GS + "42"))
    assert info.value.reason == "unknown-ai"
    assert "ME" not in info.value.message and "42" not in info.value.message
    # All-digit crypto values (a 91 key like 5807) must not be quoted either.
    with pytest.raises(CodeError) as info:
        parse(f"0104607809596237215<(q!mLp*jIb3{GS}5807{GS}92{SIG44}")
    assert "5807" not in info.value.message
    assert "element 1" in info.value.message
