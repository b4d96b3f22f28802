"""schema/ holds the rendering of adba.directory.schema; the two must never drift apart."""

from __future__ import annotations

from pathlib import Path

from adba.directory import schema

SCHEMA = Path(__file__).resolve().parents[2] / "schema" / "openldap"


def test_shipped_files_match_the_definitions() -> None:
    assert (SCHEMA / "adba.ldif").read_text() == schema.render_cn_config_ldif()
    assert (SCHEMA / "adba.schema").read_text() == schema.render_slapd_conf()
    assert (SCHEMA / "acl.ldif.in").read_text() == schema.render_acl_ldif()


def test_microsoft_oids_and_names() -> None:
    oids = {a.name: a.oid for a in schema.ATTRIBUTES}
    assert oids["msSPP-KMSIds"] == "1.2.840.113556.1.4.2082"
    assert oids["msSPP-CSVLKSkuId"] == "1.2.840.113556.1.4.2081"
    assert oids["msSPP-CSVLKPartialProductKey"] == "1.2.840.113556.1.4.2106"
    assert oids["msSPP-CSVLKPid"] == "1.2.840.113556.1.4.2105"
    assert oids["msSPP-IssuanceLicense"] == "1.2.840.113556.1.4.2088"
    classes = {c.name: c.oid for c in schema.CLASSES}
    assert classes == {
        "container": "1.2.840.113556.1.3.23",
        "msSPP-ActivationObjectsContainer": "1.2.840.113556.1.5.266",
        "msSPP-ActivationObject": "1.2.840.113556.1.5.267",
    }
    multi = [a.name for a in schema.ATTRIBUTES if not a.single]
    assert multi == ["msSPP-KMSIds"]


def test_container_path() -> None:
    assert schema.container_dn("dc=example,dc=test") == (
        "cn=Activation Objects,cn=Microsoft SPP,cn=Services,cn=Configuration,dc=example,dc=test"
    )


def test_ldif_lines_are_folded() -> None:
    lines = schema.render_cn_config_ldif().splitlines()
    assert all(len(line) <= 76 for line in lines if not line.startswith("#"))
