"""The inventory's database, summaries and exports, and the agent's Prometheus textfile."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from adba.agent.report import render, write_textfile
from adba.errors import InvalidInput
from adba.inventory.collect import summarize
from adba.inventory.db import SCHEMA_VERSION, Collection, InventoryDB
from adba.inventory.export import to_csv, to_json

NOW = 1_790_000_000
DAY = 86400


def test_a_fresh_database_is_migrated_and_a_newer_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "inv.sqlite"
    with InventoryDB(path) as db:
        assert db.version() == SCHEMA_VERSION
    with InventoryDB(path) as db:  # opening again applies nothing twice
        assert db.migrate() == SCHEMA_VERSION
    raw = sqlite3.connect(path)
    raw.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    raw.commit()
    raw.close()
    with pytest.raises(InvalidInput, match="newer adba"):
        InventoryDB(path)


def test_machines_collections_and_history(tmp_path: Path) -> None:
    with InventoryDB(tmp_path / "inv.sqlite") as db:
        assert (
            db.add_machines([("PC1", "10.0.0.1", None), ("pc2", None, "cn=pc2")], source="m") == 2
        )
        assert db.add_machines([("pc1", None, "cn=pc1")], source="directory", now=NOW) == 0
        [pc1, _pc2] = db.machines()
        assert (pc1["name"], pc1["address"], pc1["dn"], pc1["source"]) == (
            "pc1",
            "10.0.0.1",
            "cn=pc1",
            "m",
        )
        for at, status in ((NOW, "grace"), (NOW + 60, "licensed")):
            scan = db.start_scan("collect", now=at)
            db.record(scan, [Collection("pc1", at, True, status=status, channel="ADBA")])
            db.finish_scan(scan, total=1, failed=0, now=at)
        assert [h["status"] for h in db.history("PC1")] == ["licensed", "grace"]
        assert db.machines(["pc1"])[0]["status"] == "licensed"
        with pytest.raises(InvalidInput):
            db.add_machines([("bad name", None, None)], source="m")


def test_summary_is_the_worst_product_and_bad_output_is_refused() -> None:
    doc = {
        "schema": 1,
        "products": [
            {"status": "licensed", "channel": "KMS", "expires_at": NOW + 9 * DAY},
            {"status": "grace", "last_error_code": "no-object", "last_error_message": "none"},
        ],
    }
    c = summarize("pc1", NOW, doc)
    assert (c.status, c.channel, c.expires_at, c.error_code) == (
        "grace",
        "KMS",
        NOW + 9 * DAY,
        "no-object",
    )
    for bad in ([], {"schema": 2, "products": []}, {"schema": 1, "products": "x"}):
        with pytest.raises(ValueError):
            summarize("pc1", NOW, bad)


def test_csv_export_defuses_formulas_and_json_has_days_left() -> None:
    machines = [
        {"name": "pc1", "status": "licensed", "expires_at": NOW + 10 * DAY},
        {"name": "pc2", "error_message": "=HYPERLINK(evil)"},
    ]
    rows = list(csv.DictReader(io.StringIO(to_csv(machines, NOW))))
    assert rows[0]["days_left"] == "10" and rows[1]["error_message"] == "'=HYPERLINK(evil)"
    assert json.loads(to_json(machines, NOW))[1]["days_left"] is None


def _state() -> dict[str, object]:
    return {
        "products": {
            "sku-1": {
                "edition": 'Nimbus "Server"',
                "channel": "ADBA",
                "expires_at": NOW + 30 * DAY,
            },
            "sku-2": {
                "edition": "Nimbus Workstation",
                "grace_until": NOW + DAY,
                "last_error": {"code": "no-object", "message": "x"},
            },
        }
    }


def test_textfile_parses_with_the_prometheus_parser(tmp_path: Path) -> None:
    path = tmp_path / "adba.prom"
    write_textfile(str(path), _state(), NOW)
    assert [p.name for p in tmp_path.iterdir()] == ["adba.prom"]  # no temp file left
    assert path.stat().st_mode & 0o777 == 0o644
    families = {f.name: f for f in text_string_to_metric_families(path.read_text())}
    status = {
        (s.labels["edition"], s.labels["status"]): s.value
        for s in families["adba_product_status"].samples
    }
    assert status[('Nimbus "Server"', "licensed")] == 1
    assert status[('Nimbus "Server"', "grace")] == 0
    assert status[("Nimbus Workstation", "grace")] == 1
    [channel] = families["adba_product_channel"].samples
    assert channel.labels == {"edition": 'Nimbus "Server"', "sku": "sku-1", "channel": "ADBA"}
    days = {s.labels["sku"]: s.value for s in families["adba_product_days_left"].samples}
    assert days == {"sku-1": 30.0, "sku-2": 1.0}
    [error] = families["adba_product_last_error"].samples
    assert error.labels["code"] == "no-object" and error.labels["sku"] == "sku-2"
    assert families["adba_report_timestamp_seconds"].samples[0].value == NOW


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "adba.prom"
    path.write_text("old\n")
    bad = _state()
    bad["products"]["sku-1"]["expires_at"] = "not a number"  # type: ignore[index]
    with pytest.raises((ValueError, TypeError)):
        write_textfile(str(path), bad, NOW)
    assert path.read_text() == "old\n" and len(list(tmp_path.iterdir())) == 1


def test_render_has_no_series_without_products() -> None:
    text = render({"products": {}}, NOW)
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    assert [s.name for s in samples] == ["adba_report_timestamp_seconds"]


def test_the_report_module_is_not_imported_unless_configured() -> None:
    code = (
        "import sys; import adba.agent, adba.cli.agent; print('adba.agent.report' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_computer_objects_are_named_by_their_dns_name_else_cn() -> None:
    from adba.inventory.discover import _computer

    ad = {"cn": ["WS1"], "dNSHostName": "WS1.Example.Test", "objectClass": ["computer"]}
    assert _computer("cn=WS1,cn=Computers", ad) == (
        "ws1.example.test",
        "WS1.Example.Test",
        "cn=WS1,cn=Computers",
    )
    assert _computer("cn=WS2$", {"cn": ["WS2$"]}) == ("ws2", None, "cn=WS2$")
    assert _computer("cn=x", {"cn": ["ip only"], "ipHostNumber": ["192.0.2.7"]}) is None
    ip = {"cn": ["ws3"], "ipHostNumber": ["192.0.2.7"]}
    assert _computer("cn=ws3", ip) == ("ws3", "192.0.2.7", "cn=ws3")
