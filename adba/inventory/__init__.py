"""The admin's inventory of the fleet (what VAMT's database is to Windows): machines found in
the directory, each machine's license status collected over SSH (every collection kept as
history), what KMS hosts and the authority know, exported as CSV or JSON.

- :mod:`.db`: the database (SQLite by default), versioned schema migrations;
- :mod:`.discover`: computer objects from the directory (OpenLDAP and AD);
- :mod:`.collect`: ``adba agent status --json`` on each machine over SSH, host keys verified;
- :mod:`.importers`: a KMS host's client table, the authority's key status;
- :mod:`.export`: the machine list as CSV or JSON.
"""

from __future__ import annotations

__all__ = ["default_db_path"]


def default_db_path() -> str:
    """/var/lib/adba/inventory.sqlite for root, else ~/.local/share/adba/inventory.sqlite."""
    import os

    if os.geteuid() == 0:
        return "/var/lib/adba/inventory.sqlite"
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "adba", "inventory.sqlite")
