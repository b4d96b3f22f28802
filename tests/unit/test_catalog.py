from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from adba.catalog import Catalog, load_catalog
from adba.errors import CatalogError, UnknownProduct
from adba.keys import KeyType, make_key, parse_key, public_tag

BUILTIN = Path(__file__).resolve().parents[2] / "adba" / "data" / "catalog.json"


@pytest.fixture
def catalog() -> Catalog:
    return load_catalog()


def _document() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(BUILTIN.read_text())
    return data


def _write(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(document))
    return path


def test_builtin_loads_and_is_cached(catalog: Catalog) -> None:
    assert len(catalog.groups) == 2
    assert [e.kind for e in catalog.editions].count("client") >= 2
    assert [e.kind for e in catalog.editions].count("server") >= 2
    assert len(catalog.csvlks) == 2
    assert load_catalog() is catalog
    assert catalog.source.endswith("catalog.json")


def test_gvlks_parse_to_their_edition(catalog: Catalog) -> None:
    for edition in catalog.editions:
        key = parse_key(edition.gvlk)
        assert key.type is KeyType.GVLK
        assert catalog.edition_by_code(key.code) == edition
        assert edition.gvlk == key.text


def test_lookups(catalog: Catalog) -> None:
    standard = catalog.edition("nimbus SERVER standard")
    assert catalog.edition(standard.sku) is standard
    assert catalog.edition(str(standard.sku).upper()) is standard
    assert catalog.group(standard.group).name == "Nimbus Server 2026"
    assert catalog.group_name(standard.group) == "Nimbus Server 2026"
    unknown = uuid.uuid4()
    assert catalog.group_name(unknown) == str(unknown)
    assert catalog.sku_name(standard.sku) == "Nimbus Server Standard"
    server_csvlk = catalog.csvlk("Nimbus Server 2026 CSVLK")
    assert catalog.sku_name(server_csvlk.sku) == server_csvlk.name
    assert catalog.csvlk_by_code(server_csvlk.code) is server_csvlk
    assert catalog.sku_name(unknown) is None
    with pytest.raises(UnknownProduct):
        catalog.group(unknown)
    with pytest.raises(UnknownProduct):
        catalog.edition_by_code(9999)
    with pytest.raises(UnknownProduct):
        catalog.csvlk_by_code(9999)


def test_csvlk_coverage(catalog: Catalog) -> None:
    server = catalog.csvlk("Nimbus Server 2026 CSVLK")
    client = catalog.csvlk("Nimbus Client 2026 CSVLK")
    workstation = catalog.edition("Nimbus Workstation Enterprise")
    datacenter = catalog.edition("Nimbus Server Datacenter")
    assert catalog.csvlk_covers(server, workstation)
    assert catalog.csvlk_covers(server, datacenter)
    assert catalog.csvlk_covers(client, workstation)
    assert not catalog.csvlk_covers(client, datacenter)


def test_unknown_edition_lists_valid_names(catalog: Catalog) -> None:
    with pytest.raises(UnknownProduct, match=r"'Nimbus Cloud'.*Nimbus Workstation Enterprise"):
        catalog.edition("Nimbus Cloud")
    with pytest.raises(UnknownProduct, match="Nimbus Client 2026 CSVLK"):
        catalog.csvlk("Nimbus Server Standard")
    with pytest.raises(UnknownProduct):
        catalog.edition(uuid.uuid4())


def test_explicit_path_loads(tmp_path: Path) -> None:
    loaded = load_catalog(_write(tmp_path, _document()))
    assert loaded.editions == load_catalog().editions
    assert loaded.source == str(tmp_path / "catalog.json")


def test_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text('{"version": 1,')
    with pytest.raises(CatalogError, match=re.escape(str(path)) + ".*not valid JSON"):
        load_catalog(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read the catalogue"):
        load_catalog(tmp_path / "nope.json")


def test_missing_field(tmp_path: Path) -> None:
    document = _document()
    del document["editions"][1]["kind"]
    with pytest.raises(CatalogError, match=r"catalog\.json: editions\[1\]\.kind: Field required"):
        load_catalog(_write(tmp_path, document))


def test_wrong_field_type(tmp_path: Path) -> None:
    document = _document()
    document["csvlks"][0]["kms_ids"][0] = "not-a-guid"
    with pytest.raises(CatalogError, match=r"csvlks\[0\]\.kms_ids\[0\]"):
        load_catalog(_write(tmp_path, document))
    document = _document()
    document["editions"][0]["code"] = "101"
    with pytest.raises(CatalogError, match=r"editions\[0\]\.code"):
        load_catalog(_write(tmp_path, document))
    document = _document()
    document["editions"][0]["code"] = 70000
    with pytest.raises(CatalogError, match=r"editions\[0\]\.code"):
        load_catalog(_write(tmp_path, document))


def test_unknown_field_and_version(tmp_path: Path) -> None:
    document = _document()
    document["editions"][0]["colour"] = "blue"
    with pytest.raises(CatalogError, match=r"editions\[0\]\.colour"):
        load_catalog(_write(tmp_path, document))
    document = _document()
    document["version"] = 2
    with pytest.raises(CatalogError, match="version"):
        load_catalog(_write(tmp_path, document))


def test_duplicate_code(tmp_path: Path) -> None:
    document = _document()
    document["editions"][1]["code"] = document["editions"][0]["code"]
    with pytest.raises(CatalogError, match="duplicate edition code 101"):
        load_catalog(_write(tmp_path, document))


def test_duplicate_sku_and_name(tmp_path: Path) -> None:
    document = _document()
    document["csvlks"][0]["sku"] = document["editions"][0]["sku"]
    with pytest.raises(CatalogError, match="duplicate SKU"):
        load_catalog(_write(tmp_path, document))
    document = _document()
    document["editions"][1]["name"] = document["editions"][0]["name"].upper()
    with pytest.raises(CatalogError, match="duplicate product name"):
        load_catalog(_write(tmp_path, document))


def test_gvlk_with_wrong_code(tmp_path: Path) -> None:
    document = _document()
    document["editions"][0]["gvlk"] = document["editions"][1]["gvlk"]
    with pytest.raises(CatalogError, match=r"editions\[0\].*gvlk.*product code 102, not 101"):
        load_catalog(_write(tmp_path, document))


def test_gvlk_typo_and_wrong_type_and_tag(tmp_path: Path) -> None:
    document = _document()
    gvlk = document["editions"][0]["gvlk"]
    document["editions"][0]["gvlk"] = gvlk[:3] + ("B" if gvlk[3] != "B" else "C") + gvlk[4:]
    with pytest.raises(CatalogError, match=r"gvlk: product key checksum"):
        load_catalog(_write(tmp_path, document))
    document = _document()
    code = document["editions"][0]["code"]
    document["editions"][0]["gvlk"] = make_key(KeyType.MAK, code, 0, 5).text
    with pytest.raises(CatalogError, match="this is a MAK, not a GVLK"):
        load_catalog(_write(tmp_path, document))
    document["editions"][0]["gvlk"] = make_key(KeyType.GVLK, code, 0, 5).text
    with pytest.raises(CatalogError, match="public GVLK tag"):
        load_catalog(_write(tmp_path, document))
    document["editions"][0]["gvlk"] = make_key(
        KeyType.GVLK, code, 0, public_tag(KeyType.GVLK, code, 0)
    ).text.lower()
    assert load_catalog(_write(tmp_path, document)).editions[0].gvlk.isupper()


def test_dangling_group_references(tmp_path: Path) -> None:
    document = _document()
    document["editions"][0]["group"] = str(uuid.uuid4())
    with pytest.raises(CatalogError, match=r"editions\[0\].*group: no activation group"):
        load_catalog(_write(tmp_path, document))
    document = _document()
    document["csvlks"][1]["kms_ids"].append(str(uuid.uuid4()))
    with pytest.raises(CatalogError, match=r"csvlks\[1\].*kms_ids: no activation group"):
        load_catalog(_write(tmp_path, document))


def test_imports_stay_lean() -> None:
    """The agent's path imports these modules: pydantic and cryptography load only on use."""
    code = (
        "import sys, adba.keys, adba.catalog, adba.license\n"
        "heavy = sorted({'pydantic', 'cryptography'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=BUILTIN.parents[2])
