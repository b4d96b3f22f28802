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


def _avma_state(d: Path, guests: dict[str, bool]) -> Path:
    """An AVMA host's state directory as `adba avma serve` leaves it (host id, guest records)."""
    from adba.avma.host import HOST_JSON
    from adba.avma.store import GUESTS_DB, GuestStore

    d.mkdir(exist_ok=True)
    (d / HOST_JSON).write_text(json.dumps({"host_id": "hv1", "certificate": "00"}))
    store = GuestStore(d / GUESTS_DB)
    sku = "1e804406-284d-45d3-b919-cb08ca26e71d"  # Nimbus Server Standard
    for name, licensed in guests.items():
        answer = "activated" if licensed else "avma-host-unlicensed"
        # the guests' requests are recorded now: licensed ones until a week from now
        store.record(f"id-{name}", name, sku, answer, NOW, NOW + 7 * DAY if licensed else None)
    return d


def test_avma_guests_are_imported_from_the_hosts_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from adba.cli import main

    monkeypatch.setattr("time.time", lambda: NOW + 60)
    state = _avma_state(tmp_path / "hv1", {"vm1": True, "vm2": False})
    db_path = str(tmp_path / "inv.sqlite")
    argv = ["inventory", "import", "--db", db_path, "--avma-state", str(state), "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == [{"host": "hv1", "guests": 2}]
    with InventoryDB(db_path) as db:
        rows = {g["name"]: g for g in db.avma_guests()}
    assert set(rows) == {"vm1", "vm2"}
    vm1, vm2 = rows["vm1"], rows["vm2"]
    assert (vm1["host"], vm1["guest_id"], vm1["edition"]) == (
        "hv1",
        "id-vm1",
        "Nimbus Server Standard",
    )
    assert (vm1["licensed"], vm1["last_answer"], vm1["licensed_until"]) == (
        True,
        "activated",
        NOW + 7 * DAY,
    )
    assert (vm2["licensed"], vm2["last_answer"]) == (False, "avma-host-unlicensed")
    assert vm1["last_seen"] == NOW and vm1["requests"] == 1 and vm1["imported"] == NOW + 60
    assert main(["inventory", "list", "--db", db_path, "--what", "avma-guests", "--json"]) == 0
    assert [g["name"] for g in json.loads(capsys.readouterr().out)] == ["vm1", "vm2"]
    # the host's records are the truth: a guest it no longer lists is gone on the next import
    import sqlite3 as sq

    from adba.avma.store import GUESTS_DB

    raw = sq.connect(state / GUESTS_DB)
    raw.execute("DELETE FROM guests WHERE name = 'vm2'")
    raw.commit()
    raw.close()
    assert main(argv[:-1]) == 0
    assert "1 guests imported from the AVMA host hv1" in capsys.readouterr().out
    with InventoryDB(db_path) as db:
        assert [g["name"] for g in db.avma_guests()] == ["vm1"]
        assert [s["kind"] for s in db.scans()].count("import-avma") == 2


def test_an_avma_import_from_a_directory_that_is_no_host_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from adba.cli import main

    good = _avma_state(tmp_path / "hv1", {"vm1": True})
    db_path = str(tmp_path / "inv.sqlite")
    argv = ["inventory", "import", "--db", db_path, "--avma-state", str(good)]
    assert main([*argv, "--avma-state", str(tmp_path)]) == 2  # all read before any is kept
    assert "not an AVMA host's state directory" in capsys.readouterr().err
    with InventoryDB(db_path) as db:
        assert db.avma_guests() == []
    with pytest.raises(InvalidInput, match="without an id"), InventoryDB(db_path) as db:
        db.replace_avma_guests("hv1", [{"name": "x"}])


def test_an_inventory_of_schema_2_gains_the_avma_table(tmp_path: Path) -> None:
    from adba.inventory.db import MIGRATIONS

    path = tmp_path / "inv.sqlite"
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for version in (1, 2):
        for statement in MIGRATIONS[version]:
            raw.execute(statement)
        raw.execute("INSERT INTO schema_version VALUES (?)", (version,))
    raw.execute(
        "INSERT INTO machines (name, source, first_seen) VALUES ('pc1', 'manual', ?)", (NOW,)
    )
    raw.close()
    with InventoryDB(path) as db:
        assert db.version() == SCHEMA_VERSION >= 3
        assert [m["name"] for m in db.machines()] == ["pc1"]  # kept
        db.replace_avma_guests(
            "hv1", [{"guest_id": "g", "name": "vm", "last_answer": "activated", "licensed": True}]
        )
        assert db.avma_guests()[0]["licensed"] is True
