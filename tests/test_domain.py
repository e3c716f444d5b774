"""Value objects: signals (strict parsing, degenerate values, distance), case numbers, tiers,
confidence, case status and PINs."""

from __future__ import annotations

import hashlib
import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry import errors
from registry.domain import (
    CASE_NUMBER_BITS,
    CaseNumber,
    CaseStatus,
    Match,
    QueryResult,
    Scope,
    Signal,
    SignalKind,
    Thresholds,
    Tier,
    confidence,
    generate_pin,
    normalise_pin,
)

KINDS = [k for k in SignalKind if not k.packed]  # fixed-width hex kinds
DIGITS = {SignalKind.PDQ: 64, SignalKind.PHASH: 16, SignalKind.MD5: 32, SignalKind.SHA256: 64}


def hex_with_popcount(kind: SignalKind, ones: int, spread: bool = True) -> str:
    """A hex value of ``kind`` with exactly ``ones`` bits set (spread out, or packed low)."""
    bits = kind.bits
    if spread:
        positions = [i * bits // ones for i in range(ones)] if ones else []
        value = sum(1 << p for p in positions)
    else:
        value = (1 << ones) - 1
    assert value.bit_count() == ones
    return f"{value:0{bits // 4}x}"


def balanced(kind: SignalKind) -> str:
    """Half the bits set, with letters among the digits (so case changes show)."""
    text = "a5c3" * (kind.bits // 16)
    assert int(text, 16).bit_count() == kind.bits // 2
    return text


# --- SignalKind ---------------------------------------------------------------------------------
def test_signal_kinds():
    assert [k.value for k in SignalKind] == ["pdq", "phash", "md5", "sha256", "local", "vpdq"]
    assert [k.packed for k in SignalKind] == [False] * 4 + [True, True]
    assert {k: k.bits for k in KINDS} == {
        SignalKind.PDQ: 256,
        SignalKind.PHASH: 64,
        SignalKind.MD5: 128,
        SignalKind.SHA256: 256,
    }
    assert [k.perceptual for k in KINDS] == [True, True, False, False]
    assert SignalKind.parse("phash") is SignalKind.PHASH


@pytest.mark.parametrize("name", ["PDQ", "pdq ", "sha-256", "sha1", "", "dhash"])
def test_unknown_signal_kind(name):
    with pytest.raises(errors.UnknownSignal) as info:
        SignalKind.parse(name)
    assert info.value.code == "unknown_signal"
    assert "pdq, phash, md5, sha256" in info.value.message
    with pytest.raises(errors.UnknownSignal):
        Signal.parse(name, balanced(SignalKind.PDQ))


# --- Signal.parse -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_parse_round_trip(kind):
    text = balanced(kind)
    signal = Signal.parse(kind.value, text)
    assert signal.kind is kind and signal.hex == text
    assert len(signal.value) * 8 == kind.bits
    assert Signal.parse(kind, text) == signal  # the enum is accepted as well as its name


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("delta", [-2, -1, 1, 2])
def test_parse_wrong_length(kind, delta):
    good = balanced(kind)
    text = good[:delta] if delta < 0 else good + "a" * delta
    with pytest.raises(errors.InvalidHash) as info:
        Signal.parse(kind, text)
    assert info.value.code == "invalid_hash"
    assert f"{DIGITS[kind]} hex digits" in info.value.message
    assert str(len(text)) in info.value.message


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "change",
    [
        lambda t: t.upper(),
        lambda t: t[:-1] + "A",
        lambda t: t[:-1] + "g",
        lambda t: " " + t[1:],
        lambda t: t[:-1] + "\n",
        lambda t: "0x" + t[2:],
        lambda t: t[:-1] + "\u0663",  # ARABIC-INDIC DIGIT THREE: a digit, but not ASCII
        lambda t: t[:-1] + "\uff41",  # FULLWIDTH LATIN SMALL LETTER A
        lambda t: t[:-2] + "-1",
    ],
    ids=["upper", "one-upper", "g", "space", "newline", "0x", "arabic", "fullwidth", "minus"],
)
def test_parse_rejects_non_lowercase_hex(kind, change):
    text = change(balanced(kind))
    assert len(text) == DIGITS[kind]
    with pytest.raises(errors.InvalidHash) as info:
        Signal.parse(kind, text)
    assert "lowercase hex" in info.value.message


@pytest.mark.parametrize(
    "value", [None, 12345, b"00ff", bytearray(b"ab"), ["ab"], 1.5], ids=lambda v: type(v).__name__
)
def test_parse_rejects_non_strings(value):
    with pytest.raises(errors.InvalidHash) as info:
        Signal.parse("pdq", value)
    assert "string" in info.value.message


def test_parse_errors_are_invalid_input():
    for error in (errors.InvalidHash, errors.UnknownSignal, errors.DegenerateHash):
        assert issubclass(error, errors.InvalidInput)


# --- degenerate values ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [SignalKind.PDQ, SignalKind.PHASH])
def test_all_zeros_and_all_ones_are_degenerate(kind):
    for text in ("0" * DIGITS[kind], "f" * DIGITS[kind]):
        with pytest.raises(errors.DegenerateHash) as info:
            Signal.parse(kind, text)
        assert info.value.code == "degenerate_hash"
        assert f"of {kind.bits} bits set" in info.value.message


@pytest.mark.parametrize("kind", [SignalKind.PDQ, SignalKind.PHASH])
@pytest.mark.parametrize("spread", [True, False], ids=["spread", "packed"])
def test_popcount_extremes(kind, spread):
    """At most 1/8 or at least 7/8 of the bits set is degenerate; just inside is accepted."""
    eighth = kind.bits // 8
    for ones in (1, eighth - 1, eighth, kind.bits - eighth, kind.bits - 1):
        with pytest.raises(errors.DegenerateHash):
            Signal.parse(kind, hex_with_popcount(kind, ones, spread))
    for ones in (eighth + 1, kind.bits // 2, kind.bits - eighth - 1):
        assert Signal.parse(kind, hex_with_popcount(kind, ones, spread)).popcount == ones


def test_digests_of_the_empty_file_are_degenerate():
    md5 = hashlib.md5(b"").hexdigest()
    sha256 = hashlib.sha256(b"").hexdigest()
    assert md5 == "d41d8cd98f00b204e9800998ecf8427e"
    for kind, text in ((SignalKind.MD5, md5), (SignalKind.SHA256, sha256)):
        with pytest.raises(errors.DegenerateHash) as info:
            Signal.parse(kind, text)
        assert "empty file" in info.value.message
    # Any other digest is fine, whatever its popcount: digests are not median-thresholded.
    assert Signal.parse("md5", hashlib.md5(b"x").hexdigest()).kind is SignalKind.MD5
    assert Signal.parse("md5", "0" * 31 + "1").popcount == 1


def test_check_not_degenerate_on_constructed_signals():
    Signal(SignalKind.PDQ, bytes.fromhex(balanced(SignalKind.PDQ))).check_not_degenerate()
    with pytest.raises(errors.DegenerateHash):
        Signal(SignalKind.PHASH, bytes(8)).check_not_degenerate()
    with pytest.raises(errors.DegenerateHash):
        Signal(SignalKind.SHA256, hashlib.sha256(b"").digest()).check_not_degenerate()


# --- distance ---------------------------------------------------------------------------------
@given(st.integers(0, 2**256 - 1), st.integers(0, 2**256 - 1))
def test_distance_is_hamming(a, b):
    x = Signal(SignalKind.PDQ, a.to_bytes(32, "big"))
    y = Signal(SignalKind.PDQ, b.to_bytes(32, "big"))
    assert x - y == y - x == (a ^ b).bit_count()
    assert x - x == 0
    assert 0 <= x - y <= 256


def test_distance_examples():
    a = Signal.parse("phash", "00000000ffffffff")
    b = Signal.parse("phash", "00000001fffffffe")
    assert a - b == 2
    c, d = Signal.parse("phash", "0f0f0f0f0f0f0f0f"), Signal.parse("phash", "f0f0f0f0f0f0f0f0")
    assert c - d == 64


def test_distance_between_kinds_is_an_error():
    with pytest.raises(TypeError):
        _ = Signal.parse("pdq", balanced(SignalKind.PDQ)) - Signal.parse(
            "sha256", balanced(SignalKind.SHA256)
        )


def test_signal_is_immutable_and_hashable():
    s = Signal.parse("phash", balanced(SignalKind.PHASH))
    with pytest.raises(AttributeError):
        s.value = b""  # type: ignore[misc]
    assert {s, Signal.parse("phash", balanced(SignalKind.PHASH))} == {s}


# --- case numbers -----------------------------------------------------------------------------
CASE_FORMAT = re.compile(r"[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}-.")
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CHECK = CROCKFORD + "*~$=U"
case_values = st.integers(0, 2**CASE_NUMBER_BITS - 1)


@given(case_values)
def test_case_number_round_trip(value):
    number = CaseNumber(value)
    text = str(number)
    assert CASE_FORMAT.fullmatch(text)
    assert text[-1] in CHECK
    assert CaseNumber.parse(text) == number
    assert CaseNumber.parse(text.lower()) == number
    assert CaseNumber.parse(text.replace("-", "")) == number
    assert CaseNumber.parse(" " + text.replace("-", " ") + "\n") == number


@given(case_values)
def test_case_number_lookalikes_are_accepted(value):
    text = str(CaseNumber(value))
    body, check = text[:-1], text[-1]
    lookalike = body.replace("1", "I").replace("0", "O")
    assert CaseNumber.parse(lookalike + check) == CaseNumber(value)
    assert CaseNumber.parse((body.replace("1", "l") + check).lower()) == CaseNumber(value)


def test_case_number_examples():
    assert str(CaseNumber(0)) == "0000-0000-0000-0"
    assert str(CaseNumber(2**60 - 1)) == f"ZZZZ-ZZZZ-ZZZZ-{CHECK[(2**60 - 1) % 37]}"
    assert CaseNumber.parse("oooo-oooo-oooo-o") == CaseNumber(0)
    assert CaseNumber.parse("0000-0000-0001-1") == CaseNumber(1)
    assert CaseNumber.parse("0000-0000-000i-i") == CaseNumber(1)
    assert CaseNumber.parse("0000-0000-0010-*") == CaseNumber(32)  # check 32 % 37 = 32: *
    assert CaseNumber.parse("0000-0000-0014-u") == CaseNumber(36)  # check 36: U
    assert CaseNumber.parse("0000-0000-0015-0") == CaseNumber(37)


def test_generated_case_numbers():
    numbers = {CaseNumber.generate() for _ in range(200)}
    assert len(numbers) == 200
    for n in numbers:
        assert 0 <= n.value < 2**CASE_NUMBER_BITS
        assert CaseNumber.parse(str(n)) == n


def compact(value: int) -> list[str]:
    return list(str(CaseNumber(value)).replace("-", ""))


@given(case_values, st.integers(0, 12), st.integers(1, 36))
def test_case_number_single_changed_character_is_rejected(value, position, shift):
    chars = compact(value)
    alphabet = CROCKFORD if position < 12 else CHECK
    original = alphabet.index(chars[position])
    replacement = alphabet[(original + shift) % len(alphabet)]
    if replacement == chars[position]:
        return
    chars[position] = replacement
    with pytest.raises(errors.InvalidCaseNumber) as info:
        CaseNumber.parse("".join(chars))
    assert info.value.code == "invalid_case_number"


@given(case_values, st.integers(0, 11))
def test_case_number_swapped_adjacent_pair_is_rejected(value, position):
    chars = compact(value)
    if chars[position] == chars[position + 1]:
        return
    chars[position], chars[position + 1] = chars[position + 1], chars[position]
    with pytest.raises(errors.InvalidCaseNumber):
        CaseNumber.parse("".join(chars))


def test_case_number_single_change_exhaustive_for_one_number():
    chars = compact(0x0123456789ABCDE)
    for position in range(13):
        for c in CHECK if position == 12 else CROCKFORD:
            if c == chars[position]:
                continue
            changed = chars.copy()
            changed[position] = c
            with pytest.raises(errors.InvalidCaseNumber):
                CaseNumber.parse("".join(changed))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0000-0000-0000",  # no check character
        "0000-0000-0000-00",  # too long
        "0000-0000-000U-0",  # U only exists as a check symbol
        "0000-0000-000*-0",
        "0000_0000_0000_0",
        "0000.0000.0000.0",
        "\uff10" * 12 + "0",  # full-width digits
    ],
)
def test_case_number_malformed(text):
    with pytest.raises(errors.InvalidCaseNumber) as info:
        CaseNumber.parse(text)
    message = info.value.message
    assert message[0].isupper() and message.endswith(".")


def test_case_number_wrong_check_message():
    with pytest.raises(errors.InvalidCaseNumber) as info:
        CaseNumber.parse("0000-0000-0001-2")
    assert "mistyped" in info.value.message


# --- tiers and confidence ---------------------------------------------------------------------
def test_tier_boundaries_are_inclusive():
    t = Thresholds(strong=31, weak=52)
    assert t.tier(0) is Tier.STRONG
    assert t.tier(31) is Tier.STRONG
    assert t.tier(32) is Tier.WEAK
    assert t.tier(52) is Tier.WEAK
    assert t.tier(53) is None
    assert t.tier(256) is None
    equal = Thresholds(strong=4, weak=4)
    assert (equal.tier(4), equal.tier(5)) == (Tier.STRONG, None)
    zero = Thresholds(0, 0)
    assert (zero.tier(0), zero.tier(1)) == (Tier.STRONG, None)


@pytest.mark.parametrize(("strong", "weak"), [(-1, 5), (6, 5), (-2, -1)])
def test_invalid_thresholds(strong, weak):
    with pytest.raises(ValueError, match="strong <= weak"):
        Thresholds(strong, weak)


@given(st.integers(0, 128), st.integers(0, 128))
def test_confidence_monotone_in_distance(a, b):
    strong, weak = min(a, b), max(a, b)
    t = Thresholds(strong, weak)
    scores = []
    for distance in range(weak + 1):
        tier = t.tier(distance)
        assert tier is not None
        c = confidence(tier, distance, t)
        assert 0.0 <= c <= 1.0
        if tier is Tier.STRONG:
            assert c > 0.75  # strong matches never fall below 0.75
        else:
            assert 0.3 <= c <= 0.7
        scores.append(c)
    assert all(x >= y for x, y in itertools.pairwise(scores))
    assert scores[0] == 1.0


def test_confidence_values():
    t = Thresholds(31, 52)
    assert confidence(Tier.EXACT, 0, t) == 1.0
    assert confidence(Tier.STRONG, 0, t) == 1.0
    assert confidence(Tier.STRONG, 31, t) == round(1 - 0.25 * 31 / 32, 4)
    assert confidence(Tier.WEAK, 32, t) == 0.7
    assert confidence(Tier.WEAK, 52, t) == round(0.7 - 0.4 * 20 / 21, 4)
    assert confidence(Tier.STRONG, 10, None) == 1.0


# --- cases, PINs, scopes, results ---------------------------------------------------------------
def test_case_status_transition():
    assert CaseStatus.ACTIVE.withdraw() is CaseStatus.WITHDRAWN
    with pytest.raises(errors.InvalidTransition) as info:
        CaseStatus.ACTIVE.withdraw().withdraw()
    assert info.value.code == "invalid_transition"
    assert "already been withdrawn" in info.value.message


@pytest.mark.parametrize(
    "text", ["1234-5678-9012", "1234 5678 9012", "123456789012", " 1234\t5678-9012 \n"]
)
def test_normalise_pin(text):
    assert normalise_pin(text) == "123456789012"


def test_normalise_pin_keeps_only_digits():
    assert normalise_pin("") == ""
    assert normalise_pin("abc-def") == ""
    assert normalise_pin("12a34") == "1234"


def test_normalise_pin_maps_unicode_digits_to_ascii():
    assert normalise_pin("\uff11\uff12\uff13\uff14-5678-9012") == "123456789012"  # full-width
    assert normalise_pin("1234-5678-901\u00b2") == "12345678901"  # a superscript is no digit


def test_generate_pin():
    pins = {generate_pin() for _ in range(100)}
    assert len(pins) == 100
    for pin in pins:
        assert re.fullmatch(r"\d{4}-\d{4}-\d{4}", pin)
        assert len(normalise_pin(pin)) == 12


def test_scope_parse():
    assert Scope.parse("match") is Scope.MATCH
    with pytest.raises(errors.InvalidScope) as info:
        Scope.parse("admin")
    assert "match, feed" in info.value.message


def test_match_json_hides_case_unless_asked():
    m = Match("m1", SignalKind.PDQ, 12, Tier.STRONG, "submissions", 0.9, 7, case="ABCD")
    assert "case" not in m.to_json()
    assert m.to_json(with_case=True)["case"] == "ABCD"
    assert m.to_json()["signal"] == "pdq" and m.to_json()["tier"] == "strong"
    assert not QueryResult("q").matched
    assert QueryResult("q", (m,)).matched
