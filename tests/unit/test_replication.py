"""Replication's pure parts: syncrepl values, CSNs, lag, rule ordering, refusals."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import adba
from adba.directory import replication
from adba.errors import InvalidInput

ROOT = "dc=lab,dc=example,dc=test"
R = f"cn=adba-replicator,{ROOT}"


def _want(tmp_path: Path, **kw: object) -> replication.Replication:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    args: dict[str, object] = {
        "role": "provider",
        "peers": ("ldaps://ldap2.example.test",),
        "replicator_dn": R,
        "replicator_password": "s3cret",
        "peer_ca_file": str(ca),
        "server_id": 1,
    }
    args.update(kw)
    return replication.Replication(**args)  # type: ignore[arg-type]


def test_a_syncrepl_value_round_trips(tmp_path: Path) -> None:
    want = _want(tmp_path, peers=("ldap://ldap2.example.test",))
    value = replication._syncrepl(7, want.peers[0], want, ROOT)
    got = replication.parse_syncrepl("{3}" + value)
    assert got["rid"] == "007" and got["provider"] == "ldap://ldap2.example.test"
    assert got["binddn"] == R and got["credentials"] == "s3cret" and got["searchbase"] == ROOT
    assert got["retry"] == replication.DEFAULT_RETRY and got["type"] == "refreshAndPersist"
    assert got["tls_reqcert"] == "demand" and got["starttls"] == "critical"
    assert "starttls" not in replication.parse_syncrepl(
        replication._syncrepl(1, "ldaps://x", want, ROOT)
    )


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"peers": ()}, "at least one"),
        ({"peers": ("http://x",)}, "not an ldaps"),
        ({"peers": ("ldaps://a", "LDAPS://A")}, "twice"),
        ({"server_id": None}, "server-id"),
        ({"server_id": 4096}, "server-id"),
        ({"replicator_dn": "ou=x," + ROOT}, "cn= or uid="),
        ({"replicator_dn": "cn=r,dc=other"}, "must be under"),
        ({"replicator_password": 'a"b'}, "password"),
        ({"retry": "soon"}, "retry"),
        ({"peer_ca_file": "/nonexistent.pem"}, "does not exist"),
        ({"role": "mirror"}, "role"),
    ],
)
def test_bad_settings_are_refused_before_anything_happens(
    tmp_path: Path, change: dict[str, object], why: str
) -> None:
    with pytest.raises(InvalidInput, match=why):
        _want(tmp_path, **change).validate(ROOT)


def test_a_consumer_needs_no_server_id(tmp_path: Path) -> None:
    _want(tmp_path, role="consumer", server_id=None).validate(ROOT)


def test_csns_and_lag() -> None:
    assert replication.parse_csn("20260921120000.000000Z#000000#002#000000") == (2, 1789992000.0)
    a = "20260921120000.000000Z#000000#001#000000"
    b = "20260921120002.500000Z#000000#001#000000"
    c = "20260921120001.000000Z#000000#002#000000"
    assert replication._behind({"p1": {1: b, 2: c}, "p2": {1: b, 2: c}}) == []
    assert replication._behind({"p1": {1: b, 2: c}, "p2": {1: a}}) == [
        "p2 is 2.500 s behind server ID 1; nothing yet from server ID 2"
    ]


def test_the_replication_rules_stay_first() -> None:
    lead = replication.replicator_rules(R)
    adba_rule = 'to dn.subtree="cn=Configuration,dc=lab" by * none'
    got_lead, rest = replication.split_rules([adba_rule, *lead, "to * by self read"])
    assert got_lead == lead and rest == [adba_rule, "to * by self read"]


def test_library_connections_never_chase_referrals() -> None:
    """The sweep: every ldap3 connection the package opens turns automatic referrals off
    (ldap3's default re-sends the bind DN and password to whatever host a referral names)."""
    calls = 0
    for path in Path(adba.__file__).parent.rglob("*.py"):
        text = path.read_text()
        # ldap3's class, or connection.Connection (its subclass that wraps every error)
        for match in re.finditer(r"(?<![\w.])(?:ldap3\.)?Connection\(", text):
            if text[text.rfind("\n", 0, match.start()) + 1 : match.start()].startswith("class "):
                continue
            end = text.find("\n    )", match.end())
            line_end = text.find("\n", match.end())
            call = text[match.end() : max(end, line_end)]
            assert "auto_referrals=False" in call, f"{path}: {text[match.start() : line_end]}"
            calls += 1
    assert calls >= 2
