"""Installation and confirmation IDs: bytes written as groups of decimal digits for telephone use.

Offline activation reads an installation ID (IID) to an operator and types back a confirmation ID
(CID). Both are decimal digits in groups of 7 -- 6 data digits and 1 check digit -- so that a
mistyped group is named and only that group has to be read again::

    1234560-2345671-...

Layout: one length byte ``L`` (0..255) is put in front of the payload and the whole is read as a
big-endian integer, written in decimal, left-padded with zeros to a multiple of 6 digits (at least
one group), cut into groups of 6 and given a check digit each. The length byte keeps leading zero
bytes of the payload; it is never zero for a non-empty payload, so the integer's size gives the
length back and a wrong length byte is caught. Decoding also requires the canonical form (no extra
leading zero groups), so one payload has exactly one ID.

Check digit: the Damm algorithm. Its table is a totally anti-symmetric quasigroup of order 10
with zeros on the diagonal; the check digit of a group is the running value after its data
digits, so running over all 7 digits ends in 0. That detects

* every single-digit substitution (each row and column of a quasigroup is a permutation), and
* every transposition of adjacent differing digits, ``(c*x)*y != (c*y)*x`` for ``x != y`` --
  including the last data digit with the check digit, because the check digit is just one more
  digit in a string that must run to 0.

Damm rather than Verhoeff: one 10x10 table instead of a dihedral group table, a permutation table
and an inverse table; the same guarantees for the errors people make when reading digits aloud.
An adjacent transposition across a group boundary changes one digit in each of the two groups,
so it is caught too (and the first group is named). Swapping two whole groups is not caught.

``tests/unit/test_digits.py`` checks the table's properties and every single substitution and
adjacent transposition exhaustively on sample IDs.
"""

from __future__ import annotations

from adba.errors import InvalidInput

__all__ = [
    "GROUP_DATA_DIGITS",
    "GROUP_DIGITS",
    "MAX_PAYLOAD",
    "check_digit",
    "decode_digits",
    "encode_digits",
]

GROUP_DATA_DIGITS = 6  #: data digits in each group
GROUP_DIGITS = GROUP_DATA_DIGITS + 1  #: characters in each group: data digits and a check digit
MAX_PAYLOAD = 255  #: the most payload bytes an ID carries (the length is one byte)

_DIGITS = "0123456789"
_SEPARATORS = frozenset(" \t\r\n-")

#: the Damm quasigroup: row = running value, column = next digit
_DAMM: tuple[tuple[int, ...], ...] = (
    (0, 3, 1, 7, 5, 9, 8, 6, 4, 2),
    (7, 0, 9, 2, 1, 5, 4, 8, 6, 3),
    (4, 2, 0, 6, 8, 7, 1, 3, 5, 9),
    (1, 7, 5, 0, 9, 8, 3, 4, 2, 6),
    (6, 1, 2, 3, 0, 4, 5, 9, 7, 8),
    (3, 6, 7, 4, 2, 0, 9, 5, 8, 1),
    (5, 8, 6, 9, 7, 2, 0, 1, 3, 4),
    (8, 9, 4, 5, 3, 6, 2, 0, 1, 7),
    (9, 4, 3, 8, 6, 1, 7, 2, 0, 5),
    (2, 5, 8, 1, 4, 3, 6, 7, 9, 0),
)

# the longest canonical ID: 256 bytes (length byte + 255 payload bytes) in decimal, in groups
_MAX_GROUPS = -(-len(str(256 ** (MAX_PAYLOAD + 1) - 1)) // GROUP_DATA_DIGITS)


def _damm(digits: str) -> int:
    interim = 0
    for char in digits:
        interim = _DAMM[interim][ord(char) - 48]
    return interim


def check_digit(data: str) -> str:
    """The Damm check digit for one group of :data:`GROUP_DATA_DIGITS` data digits."""
    if len(data) != GROUP_DATA_DIGITS or any(c not in _DIGITS for c in data):
        raise InvalidInput(f"a group has {GROUP_DATA_DIGITS} data digits, not {data!r}")
    return _DIGITS[_damm(data)]


def encode_digits(payload: bytes | bytearray | memoryview) -> str:
    """Write up to :data:`MAX_PAYLOAD` bytes as digit groups ``"1234560-2345671-..."``."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise InvalidInput(f"payload must be bytes, not {type(payload).__name__}")
    data = bytes(payload)
    if len(data) > MAX_PAYLOAD:
        raise InvalidInput(f"payload has {len(data)} bytes: at most {MAX_PAYLOAD} fit in an ID")
    value = int.from_bytes(bytes([len(data)]) + data, "big")
    decimal = str(value)
    width = max(1, -(-len(decimal) // GROUP_DATA_DIGITS)) * GROUP_DATA_DIGITS
    decimal = decimal.zfill(width)
    groups = (decimal[i : i + GROUP_DATA_DIGITS] for i in range(0, width, GROUP_DATA_DIGITS))
    return "-".join(group + check_digit(group) for group in groups)


def _compact(text: str, kind: str) -> str:
    digits: list[str] = []
    for position, char in enumerate(text, start=1):
        if char in _SEPARATORS:
            continue
        if char not in _DIGITS:
            group = len(digits) // GROUP_DIGITS + 1
            raise InvalidInput(
                f"{kind} character {position} ({char!r}) is not a digit",
                position=position,
                character=char,
                group=group,
            )
        digits.append(char)
    return "".join(digits)


def decode_digits(text: str, *, kind: str = "ID") -> bytes:
    """Read back the payload of :func:`encode_digits`; spaces and dashes do not matter.

    ``kind`` names the ID in messages (``"installation ID"``, ``"confirmation ID"``). Raises
    :class:`~adba.errors.InvalidInput`: for a character that is not a digit (with ``position``,
    1-based in ``text``), for a digit count that is not a whole number of groups, for the first
    group whose check digit does not match (with ``group``, 1-based), and for digits that are
    well formed but do not hold an ID.
    """
    if not isinstance(text, str):
        raise InvalidInput(f"{kind} must be text, not {type(text).__name__}")
    digits = _compact(text, kind)
    count = len(digits)
    if count == 0 or count % GROUP_DIGITS:
        raise InvalidInput(
            f"{kind} has {count} digits: expected groups of {GROUP_DIGITS}", length=count
        )
    data: list[str] = []
    for index, start in enumerate(range(0, count, GROUP_DIGITS), start=1):
        group = digits[start : start + GROUP_DIGITS]
        if _damm(group) != 0:
            raise InvalidInput(
                f"{kind} group {index} ({group}) is mistyped: check it digit by digit", group=index
            )
        data.append(group[:GROUP_DATA_DIGITS])
    invalid = f"these digits are not a valid {kind}"
    if count // GROUP_DIGITS > _MAX_GROUPS:
        raise InvalidInput(invalid)
    value = int("".join(data))
    size = (value.bit_length() + 7) // 8
    raw = value.to_bytes(size, "big")
    if size and raw[0] != size - 1:
        raise InvalidInput(invalid)
    payload = raw[1:]
    if encode_digits(payload).replace("-", "") != digits:
        raise InvalidInput(invalid)  # extra leading zero groups: not the one canonical form
    return payload
