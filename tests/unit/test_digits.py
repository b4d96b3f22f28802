from __future__ import annotations

import random

import pytest

from adba.digits import (
    _DAMM,
    GROUP_DATA_DIGITS,
    GROUP_DIGITS,
    MAX_PAYLOAD,
    check_digit,
    decode_digits,
    encode_digits,
)
from adba.errors import InvalidInput

_RNG = random.Random(20240611)


def _random_bytes(length: int) -> bytes:
    return bytes(_RNG.randrange(256) for _ in range(length))


PAYLOADS = [
    b"",
    b"\x00",
    b"\x01",
    b"\xff",
    b"\x00" * 16,
    b"\x00\x00\x07" + _random_bytes(13),
    _random_bytes(16),
    b"\x00" + _random_bytes(30),
    _random_bytes(31),
    b"\x00\x00" + _random_bytes(67),
    _random_bytes(69),
    _random_bytes(200),
    b"\x00" * 5 + _random_bytes(195),
    b"\xff" * MAX_PAYLOAD,
    b"\x00" * MAX_PAYLOAD,
]

# a few IDs to mutate exhaustively (every position, every digit)
SAMPLES = [
    encode_digits(p)
    for p in (b"", b"\x00", _random_bytes(16), b"\x00\x00" + _random_bytes(29), _random_bytes(69))
]


def _compact(text: str) -> str:
    return text.replace("-", "")


def _group_of(index: int) -> int:
    """1-based group of the 0-based digit index."""
    return index // GROUP_DIGITS + 1


# -- the Damm table ---------------------------------------------------------------------------
def test_damm_table_is_a_weakly_totally_anti_symmetric_quasigroup() -> None:
    digits = set(range(10))
    for row in _DAMM:
        assert set(row) == digits  # Latin square: rows ...
    for column in range(10):
        assert {row[column] for row in _DAMM} == digits  # ... and columns are permutations
    assert all(_DAMM[i][i] == 0 for i in range(10))  # zero diagonal
    for c in range(10):
        for x in range(10):
            for y in range(10):
                if x != y:
                    assert _DAMM[_DAMM[c][x]][y] != _DAMM[_DAMM[c][y]][x]


def test_check_digit_known_value_and_group_runs_to_zero() -> None:
    assert check_digit("000572") == "4"  # the textbook Damm example: 572 -> 4
    rng = random.Random(7)
    for _ in range(200):
        data = "".join(rng.choice("0123456789") for _ in range(GROUP_DATA_DIGITS))
        interim = 0
        for digit in data + check_digit(data):
            interim = _DAMM[interim][int(digit)]
        assert interim == 0  # the whole group, check digit included, runs to 0


@pytest.mark.parametrize("bad", ["12345", "1234567", "12345a", ""])
def test_check_digit_rejects_a_bad_group(bad: str) -> None:
    with pytest.raises(InvalidInput):
        check_digit(bad)


# -- encoding ---------------------------------------------------------------------------------
@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: f"{len(p)}B-{bytes(p[:2]).hex()}")
def test_round_trip(payload: bytes) -> None:
    text = encode_digits(payload)
    groups = text.split("-")
    assert groups
    assert all(len(g) == GROUP_DIGITS and g.isdigit() for g in groups)
    assert all(g[-1] == check_digit(g[:-1]) for g in groups)
    assert decode_digits(text) == payload
    assert decode_digits(text, kind="confirmation ID") == payload


@pytest.mark.parametrize("length", [0, 1, 16, 31, 69, 200, 255])
def test_round_trip_random_lengths(length: int) -> None:
    rng = random.Random(length)
    for _ in range(20):
        payload = bytes(rng.randrange(256) for _ in range(length))
        leading = bytes(min(length, rng.randrange(4)))
        payload = leading + payload[len(leading) :]
        assert decode_digits(encode_digits(payload)) == payload


def test_leading_zero_bytes_are_kept() -> None:
    encoded = {encode_digits(b"\x00" * n + b"\x01") for n in range(10)}
    assert len(encoded) == 10
    for n in range(10):
        assert decode_digits(encode_digits(b"\x00" * n + b"\x01")) == b"\x00" * n + b"\x01"


def test_encode_accepts_bytes_like_and_rejects_the_rest() -> None:
    assert encode_digits(bytearray(b"ab")) == encode_digits(b"ab")
    assert encode_digits(memoryview(b"ab")) == encode_digits(b"ab")
    with pytest.raises(InvalidInput, match="at most 255"):
        encode_digits(b"\x00" * (MAX_PAYLOAD + 1))
    with pytest.raises(InvalidInput):
        encode_digits("text")  # type: ignore[arg-type]


def test_empty_payload_is_one_group() -> None:
    assert encode_digits(b"") == "0000000"
    assert decode_digits("0000000") == b""


# -- typing errors: exhaustive ----------------------------------------------------------------
def test_every_substitution_is_caught_and_names_its_group() -> None:
    checked = 0
    for sample in SAMPLES:
        digits = _compact(sample)
        for i, original in enumerate(digits):
            for replacement in "0123456789":
                if replacement == original:
                    continue
                typo = digits[:i] + replacement + digits[i + 1 :]
                with pytest.raises(InvalidInput) as info:
                    decode_digits(typo)
                group = _group_of(i)
                assert info.value.group == group  # type: ignore[attr-defined]
                wrong = typo[(group - 1) * GROUP_DIGITS : group * GROUP_DIGITS]
                assert info.value.message == (
                    f"ID group {group} ({wrong}) is mistyped: check it digit by digit"
                )
                checked += 1
    assert checked == 9 * sum(len(_compact(s)) for s in SAMPLES)


def test_every_adjacent_transposition_within_a_group_is_caught() -> None:
    checked = 0
    for sample in SAMPLES:
        digits = _compact(sample)
        for i in range(len(digits) - 1):
            if _group_of(i) != _group_of(i + 1) or digits[i] == digits[i + 1]:
                continue
            typo = digits[:i] + digits[i + 1] + digits[i] + digits[i + 2 :]
            with pytest.raises(InvalidInput, match=r"is mistyped") as info:
                decode_digits(typo)
            assert info.value.group == _group_of(i)  # type: ignore[attr-defined]
            checked += 1
    assert checked > 100


def test_transposition_across_groups_names_the_first_group() -> None:
    checked = 0
    for sample in SAMPLES:
        digits = _compact(sample)
        for i in range(GROUP_DIGITS - 1, len(digits) - 1, GROUP_DIGITS):
            if digits[i] == digits[i + 1]:
                continue
            typo = digits[:i] + digits[i + 1] + digits[i] + digits[i + 2 :]
            with pytest.raises(InvalidInput) as info:
                decode_digits(typo)
            assert info.value.group == _group_of(i)  # type: ignore[attr-defined]
            checked += 1
    assert checked > 0


def test_first_bad_group_is_named() -> None:
    digits = _compact(SAMPLES[-1])
    bad = list(digits)
    for index in (3 * GROUP_DIGITS + 2, 5 * GROUP_DIGITS + 1):
        bad[index] = "1" if bad[index] != "1" else "2"
    with pytest.raises(InvalidInput) as info:
        decode_digits("".join(bad))
    assert info.value.group == 4  # type: ignore[attr-defined]


# -- separators and malformed input -----------------------------------------------------------
@pytest.mark.parametrize("sample", SAMPLES)
def test_separators_do_not_matter(sample: str) -> None:
    payload = decode_digits(sample)
    groups = sample.split("-")
    assert decode_digits(" ".join(groups)) == payload
    assert decode_digits("".join(groups)) == payload
    assert decode_digits("  " + " - ".join(groups) + "\n") == payload
    digits = "".join(groups)
    assert decode_digits(" ".join(digits[i : i + 3] for i in range(0, len(digits), 3))) == payload


def test_a_letter_is_rejected_naming_its_position() -> None:
    sample = SAMPLES[2]
    text = sample[:9] + "O" + sample[10:]  # position 10 of the text, in group 2
    with pytest.raises(InvalidInput, match=r"character 10 \('O'\) is not a digit") as info:
        decode_digits(text)
    assert info.value.position == 10  # type: ignore[attr-defined]
    assert info.value.group == 2  # type: ignore[attr-defined]
    with pytest.raises(InvalidInput, match=r"character 1 \('x'\)"):
        decode_digits("x" + sample)


@pytest.mark.parametrize("text", ["\uff11\uff12\uff13\uff14\uff15\uff16\uff10", "123456\u0663"])
def test_non_ascii_digits_are_rejected(text: str) -> None:
    with pytest.raises(InvalidInput, match="is not a digit"):
        decode_digits(text)


def test_a_missing_digit_is_rejected_with_the_length() -> None:
    digits = _compact(SAMPLES[2])
    for i in range(len(digits)):
        with pytest.raises(InvalidInput, match=rf"^ID has {len(digits) - 1} digits: expected"):
            decode_digits(digits[:i] + digits[i + 1 :])
    with pytest.raises(InvalidInput, match=rf"has {len(digits) + 1} digits: expected groups of 7"):
        decode_digits(digits + "1")


@pytest.mark.parametrize("text", ["", "   ", "--"])
def test_empty_input_is_rejected(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"has 0 digits: expected groups of 7"):
        decode_digits(text)


def test_well_formed_digits_that_are_not_an_id() -> None:
    def groups(data: str) -> str:
        chunks = [data[i : i + GROUP_DATA_DIGITS] for i in range(0, len(data), 6)]
        return "-".join(c + check_digit(c) for c in chunks)

    # length byte says 5, but only one byte follows
    with pytest.raises(InvalidInput, match=r"^these digits are not a valid ID$"):
        decode_digits(groups("000005"))
    # an extra leading zero group: not the canonical form
    with pytest.raises(InvalidInput, match="not a valid ID"):
        decode_digits("0000000-" + encode_digits(b"abc"))
    # too many groups for any payload (and too many digits for int())
    with pytest.raises(InvalidInput, match="not a valid ID"):
        decode_digits(groups("9" * 6 * 1000))
    with pytest.raises(InvalidInput, match="not a valid confirmation ID"):
        decode_digits(groups("000005"), kind="confirmation ID")


# -- kind in messages -------------------------------------------------------------------------
def test_kind_appears_in_every_message() -> None:
    kind = "confirmation ID"
    digits = _compact(SAMPLES[2])
    typo = digits[:3] + str((int(digits[3]) + 1) % 10) + digits[4:]
    with pytest.raises(InvalidInput, match=r"^confirmation ID group 1 \(\d{7}\) is mistyped"):
        decode_digits(typo, kind=kind)
    with pytest.raises(InvalidInput, match=rf"^confirmation ID has {len(digits) - 1} digits"):
        decode_digits(digits[1:], kind=kind)
    with pytest.raises(InvalidInput, match=r"^confirmation ID character 1 \('Z'\)"):
        decode_digits("Z" + digits, kind=kind)
    with pytest.raises(InvalidInput, match=r"^installation ID group 2 "):
        decode_digits(digits[:7] + digits[8] + digits[7] + digits[9:], kind="installation ID")
