"""Who may do what, as the exact LDAP result code each identity gets from a real slapd
prepared by `adba directory init`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import ldap3
import pytest

from tests.servers import TestSlapd

pytestmark = pytest.mark.integration

KMS = uuid.UUID("8456efd3-0c04-4089-8740-5b7238535a65")
SKU = uuid.UUID("b74263e4-0d2d-4e4d-8d3a-7b2d0b6c2c3a")


def bind(lab: TestSlapd, who: str | None) -> ldap3.Connection:
    server = ldap3.Server(lab.uri, get_info=ldap3.NONE)
    if who is None:
        return ldap3.Connection(server, auto_bind=True)
    ident = getattr(lab, who)
    return ldap3.Connection(server, ident.dn, ident.password, auto_bind=True)


def ao_attrs(**extra: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "objectClass": ["msSPP-ActivationObject"],
        "msSPP-KMSIds": [KMS.bytes_le],
        "msSPP-CSVLKSkuId": SKU.bytes_le,
        "msSPP-CSVLKPartialProductKey": "3V66T",
        "msSPP-CSVLKPid": "ADBA-TEST-PID",
    }
    attrs.update(extra)
    return attrs


@pytest.fixture
def existing(slapd: TestSlapd, ao_name: str) -> Iterator[str]:
    """An activation object published by the admin (deleted by root afterwards)."""
    dn = f"cn={ao_name},{slapd.container}"
    admin = bind(slapd, "admin")
    assert admin.add(dn, attributes=ao_attrs()), admin.result
    admin.unbind()
    yield dn
    root = bind(slapd, "root")
    root.delete(dn)
    root.unbind()


def code(conn: ldap3.Connection) -> int:
    return int(conn.result["result"])


def test_admin_adds_and_deletes_but_never_modifies_or_renames(
    slapd: TestSlapd, existing: str, ao_name: str
) -> None:
    admin = bind(slapd, "admin")
    admin.modify(existing, {"description": [(ldap3.MODIFY_REPLACE, ["x"])]})
    assert code(admin) == 50
    admin.modify(existing, {"msSPP-KMSIds": [(ldap3.MODIFY_ADD, [SKU.bytes_le])]})
    assert code(admin) == 50
    admin.modify(existing, {"msSPP-InstallationId": [(ldap3.MODIFY_ADD, ["123"])]})
    assert code(admin) == 50
    admin.modify_dn(existing, f"cn={ao_name}-renamed")
    assert code(admin) == 50
    # another class under the container, and an object elsewhere: refused
    admin.add(f"cn={ao_name}-c,{slapd.container}", attributes={"objectClass": ["container"]})
    assert code(admin) == 50
    admin.add(
        f"cn={ao_name},cn=Microsoft SPP,cn=Services,cn=Configuration,{slapd.suffix}",
        attributes=ao_attrs(),
    )
    assert code(admin) == 50
    admin.delete(slapd.container)
    assert code(admin) == 50
    admin.delete(existing)
    assert code(admin) == 0
    admin.unbind()


def test_computer_reads_but_cannot_write(slapd: TestSlapd, existing: str, ao_name: str) -> None:
    comp = bind(slapd, "computer")
    comp.search(
        slapd.container,
        f"(msSPP-KMSIds={ldap3.utils.conv.escape_bytes(KMS.bytes_le)})",
        ldap3.LEVEL,
        attributes=["msSPP-KMSIds"],
    )
    assert code(comp) == 0
    assert existing in [e["dn"] for e in comp.response if e["type"] == "searchResEntry"]
    comp.add(f"cn={ao_name}-by-computer,{slapd.container}", attributes=ao_attrs())
    assert code(comp) == 50
    comp.modify(existing, {"description": [(ldap3.MODIFY_REPLACE, ["x"])]})
    assert code(comp) == 50
    comp.delete(existing)
    assert code(comp) == 50
    comp.search(slapd.people, "(objectClass=*)", ldap3.SUBTREE)
    assert code(comp) == 32
    comp.unbind()


def test_authenticated_non_member_sees_nothing_and_cannot_add(
    slapd: TestSlapd, existing: str, ao_name: str
) -> None:
    user = bind(slapd, "user")
    user.search(f"cn=Configuration,{slapd.suffix}", "(objectClass=*)", ldap3.SUBTREE)
    assert code(user) == 32 and not user.response
    user.add(f"cn={ao_name}-by-user,{slapd.container}", attributes=ao_attrs())
    assert code(user) == 50
    user.unbind()


def test_anonymous_gets_32_on_search_and_8_on_writes(
    slapd: TestSlapd, existing: str, ao_name: str
) -> None:
    anon = bind(slapd, None)
    anon.search(slapd.container, "(objectClass=*)", ldap3.SUBTREE)
    assert code(anon) == 32 and not anon.response
    anon.add(f"cn={ao_name}-anon,{slapd.container}", attributes=ao_attrs())
    assert code(anon) == 8
    anon.delete(existing)
    assert code(anon) == 8
    anon.unbind()


@pytest.mark.parametrize(
    "aux",
    [
        {"objectClass": ["msSPP-ActivationObject", "simpleSecurityObject"], "userPassword": "x"},
        {"objectClass": ["msSPP-ActivationObject", "extensibleObject"], "mail": "a@b.c"},
    ],
    ids=["simpleSecurityObject", "extensibleObject"],
)
def test_auxiliary_class_on_an_object_gets_65(
    slapd: TestSlapd, ao_name: str, aux: dict[str, Any]
) -> None:
    admin = bind(slapd, "admin")
    admin.add(f"cn={ao_name},{slapd.container}", attributes=ao_attrs(**aux))
    assert code(admin) == 65
    admin.unbind()


def test_wrong_password_is_49(slapd: TestSlapd) -> None:
    conn = ldap3.Connection(ldap3.Server(slapd.uri, get_info=ldap3.NONE), slapd.computer.dn, "nope")
    assert not conn.bind()
    assert code(conn) == 49
    conn.unbind()
