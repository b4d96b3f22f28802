"""The audit trail on a real Samba AD DC: a published object's creation time and owner, and the
deleted object's tombstone (the show-deleted control), read back with `adba ao history`."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime
from typing import Any

import pytest

from adba.cli import main
from adba.directory import store
from adba.directory.connection import session

pytestmark = pytest.mark.integration


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_history_shows_the_publish_and_the_deletion(
    samba: Any, ao_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = store.ActivationObject.build(
        cn=ao_name, kms_ids=[uuid.uuid4()], csvlk_sku=uuid.uuid4(), partial_key="3V66T", pid="P"
    )
    before = time.time() - 2  # whenCreated has whole seconds
    with session(samba.options(samba.admin)) as conn:
        dn = store.publish(conn, samba.container, sample)
    capsys.readouterr()
    assert main(["ao", "history", "--json", *samba.cli_args("admin")]) == 0
    live = [e for e in json.loads(capsys.readouterr().out) if e["dn"].lower() == dn.lower()]
    assert [(e["action"], e["source"]) for e in live] == [("publish", "object")]
    # Samba: ADBA names BUILTIN\Administrators owner (the publisher must not own it)
    assert live[0]["owner_sid"] == "S-1-5-32-544" and live[0]["who"] == "Administrators"
    assert before <= _stamp(live[0]["when"]) <= time.time() + 2

    assert main(["ao", "delete", "--yes", dn, *samba.cli_args("admin")]) == 0
    capsys.readouterr()
    # tombstones are for Domain Admins (as on Windows): the delegated admin no longer sees it
    assert main(["ao", "history", "--json", *samba.cli_args("admin")]) == 0
    assert dn.lower() not in [e["dn"].lower() for e in json.loads(capsys.readouterr().out)]
    assert main(["ao", "history", "--json", *samba.cli_args("root")]) == 0
    events = json.loads(capsys.readouterr().out)
    mine = [e for e in events if e["dn"].lower() == dn.lower()]
    assert [(e["action"], e["source"]) for e in mine] == [
        ("publish", "deleted-objects"),
        ("delete", "deleted-objects"),
    ], events
    assert mine[1]["who"] is None  # AD does not record who deleted
    assert _stamp(mine[0]["when"]) <= _stamp(mine[1]["when"]) <= time.time() + 2
    # --since after the deletion: nothing of it
    capsys.readouterr()
    assert main(["ao", "history", "--json", "--since", "2099-01-01", *samba.cli_args("root")]) == 0
    assert json.loads(capsys.readouterr().out) == []
