"""Shared bench helpers: a prepared lab slapd, cold-process timing, slapd stats parsing."""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import TestSlapd  # noqa: E402


def precompile() -> None:
    """Byte-compile adba as an installed package would be (pip writes .pyc at install time).

    Without it, a machine with PYTHONDONTWRITEBYTECODE=1 (this one) recompiles adba's sources
    in every cold process while ldap3 in site-packages loads its cached bytecode.
    """
    import compileall

    compileall.compile_dir(str(ROOT / "adba"), quiet=1)


def prepared_slapd(debug_level: int = 0) -> TestSlapd:
    precompile()
    lab = TestSlapd()
    lab.debug_level = debug_level
    lab.start()
    lab.adba_init()
    return lab


def time_process(argv: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        out.append(time.perf_counter() - t)
    return out


def side_by_side(cases: dict[str, list[str]], runs: int, warmup: int = 3) -> dict[str, float]:
    """Median wall time of each command, runs interleaved so noise hits all alike."""
    for argv in cases.values():
        time_process(argv, warmup)
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(runs):
        for name, argv in cases.items():
            samples[name] += time_process(argv, 1)
    return {k: statistics.median(v) for k, v in samples.items()}


_OP = re.compile(r"conn=(\d+) op=(\d+) (\w+)")


def messages_per_connection(log_text: str) -> list[Counter[str]]:
    """Client->server operations per connection, from slapd's -d 256 'stats' lines."""
    ops: dict[str, dict[str, str]] = defaultdict(dict)
    for line in log_text.splitlines():
        m = _OP.search(line)
        if m and m.group(3) not in ("RESULT", "SEARCH") and m.group(2) not in ops[m.group(1)]:
            ops[m.group(1)][m.group(2)] = m.group(3)
    return [Counter(o.values()) for o in ops.values()]


#: the minimal ldap3 lookup every benchmark compares with: bind, one search, unbind
BASELINE_LOOKUP = """
import sys, uuid
import ldap3
from ldap3.utils.conv import escape_bytes
uri, dn, pw, base, kms = sys.argv[1:6]
conn = ldap3.Connection(ldap3.Server(uri, get_info=ldap3.NONE), dn, pw, auto_bind=True)
conn.search(base, "(&(objectClass=msSPP-ActivationObject)(msSPP-KMSIds=%s))"
            % escape_bytes(uuid.UUID(kms).bytes_le), ldap3.LEVEL, attributes=["*"])
assert len(conn.response) == 1, conn.result
conn.unbind()
"""
