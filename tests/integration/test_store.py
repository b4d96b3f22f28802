"""Validation before the server (OpenLDAP enforces no length bound) and large licenses."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid

import pytest

from adba.directory import store
from adba.directory.connection import session
from adba.directory.schema import MAX_LICENSE_BYTES
from adba.errors import InvalidInput, NotAnActivationObject, ObjectNotFound
from tests.servers import TestSlapd

pytestmark = pytest.mark.integration


def sample(name: str) -> store.ActivationObject:
    return store.ActivationObject.build(
        cn=name,
        kms_ids=[uuid.uuid4()],
        csvlk_sku=uuid.uuid4(),
        partial_key="3V66T",
        pid="ADBA-01001-0000000001-2026328",
    )


@pytest.mark.parametrize(
    "change",
    [
        {"kms_ids": (b"\x01" * 17,)},
        {"kms_ids": (b"\x01" * 15,)},
        {"kms_ids": ()},
        {"csvlk_sku": b"\x02" * 3},
        {"partial_key": "3V66TX"},
        {"partial_key": "3V6"},
        {"pid": "x" * 513},
        {"installation_id": "1" * 513},
        {"licenses": {"msSPP-IssuanceLicense": b"\0" * (MAX_LICENSE_BYTES + 1)}},
        {"licenses": {"userPassword": b"x"}},
    ],
    ids=lambda c: next(iter(c)),
)
def test_bad_values_are_refused_before_the_server(
    slapd: TestSlapd, ao_name: str, change: dict[str, object]
) -> None:
    ao = dataclasses.replace(sample(ao_name), **change)
    with session(slapd.options(slapd.admin)) as conn:
        with pytest.raises(InvalidInput):
            store.publish(conn, slapd.container, ao)
        with pytest.raises(ObjectNotFound):
            store.show(conn, f"cn={ao_name},{slapd.container}")


def test_a_5_mib_license_publishes_and_reads_back_intact(
    slapd: TestSlapd, ao_name: str, janitor: list[str]
) -> None:
    blob = hashlib.shake_256(b"adba").digest(MAX_LICENSE_BYTES)
    ao = dataclasses.replace(sample(ao_name), licenses={"msSPP-IssuanceLicense": blob})
    with session(slapd.options(slapd.admin)) as conn:
        dn = store.publish(conn, slapd.container, ao)
        janitor.append(dn)
    with session(slapd.options(slapd.computer)) as conn:
        back = store.show(conn, dn)
    assert back.issuance_license == blob
    assert back.kms_ids == ao.kms_ids and back.csvlk_sku == ao.csvlk_sku


def test_filter_values_are_escaped(slapd: TestSlapd, ao_name: str, janitor: list[str]) -> None:
    """A KMS ID whose bytes spell filter syntax matches only itself."""
    nasty = uuid.UUID(bytes_le=b"*)(|(cn=*)\\\x00abcd")
    ao = store.ActivationObject.build(
        cn=ao_name + " (*)",
        kms_ids=[nasty],
        csvlk_sku=uuid.uuid4(),
        partial_key="3V66T",
        pid="p",
    )
    with session(slapd.options(slapd.admin)) as conn:
        dn = store.publish(conn, slapd.container, ao)
        janitor.append(dn)
        found = store.search_objects(conn, slapd.container, nasty)
        assert [o.dn for o in found] == [dn]
        assert store.search_objects(conn, slapd.container, uuid.uuid4()) == []


def test_show_refuses_an_entry_that_is_not_an_activation_object(slapd: TestSlapd) -> None:
    with session(slapd.options(slapd.root)) as conn, pytest.raises(NotAnActivationObject):
        store.show(conn, slapd.container)
