from __future__ import annotations

import pytest

from adba.errors import InvalidInput, InvalidKey
from adba.keys import (
    ALPHABET,
    KeyType,
    ProductKey,
    authority_tag,
    make_key,
    parse_key,
    public_tag,
    verify_tag,
)

SECRET = b"\x01" * 32

SAMPLES = [
    make_key(KeyType.GVLK, 101, 0, public_tag(KeyType.GVLK, 101, 0)),
    make_key(KeyType.CSVLK, 2, 1, authority_tag(SECRET, KeyType.CSVLK, 2, 1)),
    make_key(KeyType.MAK, 0xFFFF, 0xFFFFFFFF, (1 << 48) - 1),
    make_key(KeyType.GVLK, 0, 0, 0),
    make_key(KeyType.MAK, 202, 123456, authority_tag(SECRET, KeyType.MAK, 202, 123456)),
    make_key(KeyType.CSVLK, 4242, 77, 0x0123456789AB),
    make_key(KeyType.CSVLK, 1, 2, authority_tag(b"other", KeyType.CSVLK, 1, 2)),
]


def _compact(key: ProductKey) -> str:
    return key.text.replace("-", "")


@pytest.mark.parametrize(
    ("key_type", "code", "serial", "tag"),
    [
        (KeyType.GVLK, 0, 0, 0),
        (KeyType.CSVLK, 1, 1, 1),
        (KeyType.MAK, 0xFFFF, 0xFFFFFFFF, (1 << 48) - 1),
        (KeyType.CSVLK, 0x1234, 0xDEADBEEF, 0xABCDEF012345),
    ],
)
def test_round_trip(key_type: KeyType, code: int, serial: int, tag: int) -> None:
    key = make_key(key_type, code, serial, tag)
    assert len(key.text) == 29
    assert [len(g) for g in key.text.split("-")] == [5] * 5
    assert set(_compact(key)) <= set(ALPHABET)
    parsed = parse_key(key.text)
    assert parsed == key
    assert (parsed.type, parsed.code, parsed.serial, parsed.tag) == (key_type, code, serial, tag)


def test_every_substitution_and_adjacent_transposition_is_caught() -> None:
    checked = 0
    for key in SAMPLES:
        chars = _compact(key)
        assert parse_key(chars) == key
        for i in range(25):
            for symbol in ALPHABET:
                if symbol == chars[i]:
                    continue
                typo = chars[:i] + symbol + chars[i + 1 :]
                with pytest.raises(InvalidKey):
                    parse_key(typo)
                checked += 1
        for i in range(24):
            if chars[i] == chars[i + 1]:
                continue
            swapped = chars[:i] + chars[i + 1] + chars[i] + chars[i + 2 :]
            with pytest.raises(InvalidKey):
                parse_key(swapped)
            checked += 1
    assert checked >= len(SAMPLES) * 25 * 23


def test_substitution_in_payload_fails_the_checksum() -> None:
    chars = _compact(SAMPLES[1])
    typo = ("C" if chars[3] != "C" else "D").join((chars[:3], chars[4:]))
    with pytest.raises(InvalidKey, match="checksum does not match: check for a typo"):
        parse_key(typo)


def test_invalid_character_names_its_position() -> None:
    chars = list(_compact(SAMPLES[0]))
    chars[6] = "A"
    with pytest.raises(InvalidKey, match="character 7 'A' is not allowed in product keys") as exc:
        parse_key("".join(chars))
    assert exc.value.context["position"] == 7


def test_dashes_count_for_nothing_in_positions() -> None:
    text = SAMPLES[0].text
    with pytest.raises(InvalidKey, match="character 6 '0'"):
        parse_key(text[:6] + "0" + text[7:])


@pytest.mark.parametrize("text", ["", "BCDFG", "BCDFG-HJKMP-QRTVW-XY234-6789B-C", "B" * 24])
def test_wrong_length(text: str) -> None:
    with pytest.raises(InvalidKey, match="25 characters"):
        parse_key(text)


def test_normalisation() -> None:
    key = SAMPLES[1]
    assert parse_key("  " + key.text.lower() + "\n") == key
    assert parse_key(_compact(key)) == key
    assert parse_key(key.text.replace("-", " ")) == key


def test_reserved_bits_and_type_are_checked() -> None:
    # a payload of all "9" has every high bit set; give it a valid check value
    payload = [len(ALPHABET) - 1] * 23
    check = sum((i + 1) * d for i, d in enumerate(payload)) % 571
    text = "".join(ALPHABET[d] for d in [*payload, check // 24, check % 24])
    with pytest.raises(InvalidKey, match="not an ADBA product key"):
        parse_key(text)


def test_masked_repr_hides_secret_keys() -> None:
    for key in SAMPLES:
        secret_part = key.text[:-5]
        shown = [repr(key), str(key), f"{key}", key.masked(), repr([key])]
        if key.type is KeyType.GVLK:
            assert str(key) == key.text
        else:
            for text in shown:
                assert secret_part not in text
                assert _compact(key)[:20] not in text
                assert hex(key.tag) not in text and str(key.tag) not in text
            assert str(key) == "*****-*****-*****-*****-" + key.partial
        assert key.masked().endswith(key.partial)
        assert key.partial == key.text[-5:]


def test_partial_keys_differ_between_serials() -> None:
    partials = {
        make_key(KeyType.MAK, 101, serial, authority_tag(SECRET, KeyType.MAK, 101, serial)).partial
        for serial in range(1, 200)
    }
    assert len(partials) > 190


def test_tag_verification() -> None:
    csvlk = SAMPLES[1]
    assert verify_tag(csvlk, SECRET)
    assert not verify_tag(csvlk, b"\x02" * 32)
    assert not verify_tag(SAMPLES[6], SECRET)
    gvlk = SAMPLES[0]
    assert verify_tag(gvlk, b"whatever: GVLKs carry the public tag")
    assert not verify_tag(SAMPLES[3], b"")
    assert authority_tag(SECRET, KeyType.CSVLK, 2, 1) < 1 << 48
    assert authority_tag(SECRET, KeyType.CSVLK, 2, 1) != authority_tag(SECRET, KeyType.MAK, 2, 1)


@pytest.mark.parametrize(
    ("key_type", "code", "serial", "tag"),
    [
        (KeyType.MAK, -1, 0, 0),
        (KeyType.MAK, 1 << 16, 0, 0),
        (KeyType.MAK, 0, 1 << 32, 0),
        (KeyType.MAK, 0, 0, 1 << 48),
        (KeyType.MAK, 0, 0, -1),
        (7, 0, 0, 0),
    ],
)
def test_make_key_range_checks(key_type: KeyType, code: int, serial: int, tag: int) -> None:
    with pytest.raises(InvalidInput):
        make_key(key_type, code, serial, tag)
