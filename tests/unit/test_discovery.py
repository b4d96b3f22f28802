"""Pure parts of adba.discovery: key files, publish entries, RFC 2782 ordering."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from adba.discovery import (
    PublishEntry,
    ServiceTarget,
    TsigKey,
    kms_srv_names,
    load_tsig_key,
    order_targets,
    parse_publish_entry,
)
from adba.errors import InvalidInput

SECRET = "ywrsszJMeNh25YUcmiOOzrECxn9kA3LqVLTp7Rirtz8="


def test_import_does_not_load_dnspython() -> None:
    code = "import sys, adba.discovery; print(any(m.startswith('dns') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_kms_srv_names() -> None:
    assert kms_srv_names("example.test.") == ["_vlmcs._tcp.example.test"]


@pytest.mark.parametrize(
    "text",
    [
        # tsig-keygen -a hmac-sha256 adba-update.
        f'key "adba-update." {{\n\talgorithm hmac-sha256;\n\tsecret "{SECRET}";\n}};\n',
        # one line, no dot, upper case algorithm, comments of all three kinds around it
        f"# made by hand\n// really\n/* yes */ key adba-update {{ algorithm HMAC-SHA256; "
        f'secret "{SECRET}"; }}; # done\n',
        # ddns-confgen: the key plus comments, an update-policy and a bare nsupdate line
        f'# To activate this key ...\nkey "adba-update." {{\n\talgorithm hmac-sha256;\n'
        f'\tsecret "{SECRET}";\n}};\n\n# Then ...\nupdate-policy {{\n\t  grant adba-update. '
        f"zonesub ANY;\n}};\n\n# After ...\nnsupdate -k <keyfile>\n",
    ],
)
def test_load_tsig_key(tmp_path: Path, text: str) -> None:
    path = tmp_path / "k.key"
    path.write_text(text)
    assert load_tsig_key(str(path)) == TsigKey("adba-update.", "hmac-sha256", SECRET)


def test_secret_with_slashes_is_not_a_comment(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    path.write_text('key "k." { algorithm hmac-sha512; secret "ab//cd+/AA=="; }; // end')
    assert load_tsig_key(str(path)) == TsigKey("k.", "hmac-sha512", "ab//cd+/AA==")


def test_tsig_key_repr_hides_the_secret() -> None:
    assert SECRET not in repr(TsigKey("k.", "hmac-sha256", SECRET))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "this is not a key file",
        'key "k." { algorithm hmac-sha256; };',
        f'key "k." {{ algorithm hmac-foo; secret "{SECRET}"; }};',
        'key "k." { algorithm hmac-sha256; secret "not base64!"; };',
        f'key "k." {{ algorithm hmac-sha256; secret {SECRET}; }};',
        f'key "k." {{ algorithm hmac-sha256 secret "{SECRET}"; }};',
        f'key "k." {{ algorithm hmac-sha256; secret "{SECRET}";',
        f'key "bad name!" {{ algorithm hmac-sha256; secret "{SECRET}"; }};',
        f'key "a." {{ algorithm hmac-sha256; secret "{SECRET}"; }};\n'
        f'key "b." {{ algorithm hmac-sha256; secret "{SECRET}"; }};',
    ],
)
def test_load_tsig_key_malformed(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.key"
    path.write_text(text)
    with pytest.raises(InvalidInput, match=re.escape(str(path))):
        load_tsig_key(str(path))


def test_load_tsig_key_missing_or_binary(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot read the TSIG key file"):
        load_tsig_key(str(tmp_path / "absent.key"))
    (tmp_path / "bin.key").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InvalidInput, match=r"bin\.key"):
        load_tsig_key(str(tmp_path / "bin.key"))


@pytest.mark.parametrize(
    ("text", "entry"),
    [
        ("example.test", PublishEntry("example.test", 0, 0)),
        ("example.test.", PublishEntry("example.test", 0, 0)),
        (" example.test , 10 ", PublishEntry("example.test", 10, 0)),
        ("example.test,10,50", PublishEntry("example.test", 10, 50)),
        ("ad.example.test,0,0", PublishEntry("ad.example.test", 0, 0)),
        ("x,65535,65535", PublishEntry("x", 65535, 65535)),
    ],
)
def test_parse_publish_entry(text: str, entry: PublishEntry) -> None:
    assert parse_publish_entry(text) == entry


@pytest.mark.parametrize(
    "text",
    [
        "",
        ",10",
        "example..test",
        "exa mple.test",
        "-bad.test",
        "example.test,",
        "example.test,x",
        "example.test,-1",
        "example.test,65536",
        "example.test,1,2,3",
        "example.test,1.5",
        "a" * 64 + ".test",
    ],
)
def test_parse_publish_entry_junk(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_publish_entry(text)


def _t(host: str, priority: int, weight: int) -> ServiceTarget:
    return ServiceTarget(host, 1688, priority, weight, ())


def test_order_targets_priorities_and_weights() -> None:
    targets = [_t("p10", 10, 100), _t("w1", 0, 1), _t("w3", 0, 3)]
    rng = random.Random(1)
    draws = 2000
    first = {"w1": 0, "w3": 0}
    for _ in range(draws):
        order = [t.host for t in order_targets(targets, rng)]
        assert sorted(order[:2]) == ["w1", "w3"] and order[2] == "p10"
        first[order[0]] += 1
    assert abs(first["w3"] / draws - 0.75) <= 0.04


def test_order_targets_zero_weights() -> None:
    rng = random.Random(7)
    # all weight 0: every order is possible
    seen = {
        tuple(t.host for t in order_targets([_t("a", 0, 0), _t("b", 0, 0)], rng))
        for _ in range(200)
    }
    assert seen == {("a", "b"), ("b", "a")}
    # weight 0 next to weight 100: RFC 2782's very small chance, 1 in 101
    zero_first = sum(
        order_targets([_t("z", 0, 0), _t("h", 0, 100)], rng)[0].host == "z" for _ in range(5000)
    )
    assert 20 <= zero_first <= 80  # mean 49.5, sd 7


def test_order_targets_empty_and_single() -> None:
    assert order_targets([]) == []
    assert order_targets([_t("only", 5, 0)]) == [_t("only", 5, 0)]
