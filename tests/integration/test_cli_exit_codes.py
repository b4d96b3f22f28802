"""Each row of the exit-code table, produced by a real command (real slapd, named,
authority; a fake only for 1, which no correct command produces), with its one-line error."""

from __future__ import annotations

import base64
import contextlib
import io
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from adba import errors
from adba.cli import main
from tests.servers import TestNamed, TestSlapd

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CSVLK = "Nimbus Server 2026 CSVLK"


@pytest.fixture(scope="module")
def bare_slapd() -> Iterator[Any]:
    """A slapd ADBA has not prepared, serving a second suffix too (two naming contexts)."""
    from adba.directory.connection import ConnectionOptions, session
    from adba.lab import Slapd

    with Slapd() as lab:
        second = lab.dir / "second"
        second.mkdir()
        with session(ConnectionOptions(uri=lab.ldapi_uri)) as conn:
            assert conn.add(
                "olcDatabase=mdb,cn=config",
                ["olcDatabaseConfig", "olcMdbConfig"],
                {
                    "olcDatabase": "mdb",
                    "olcSuffix": "dc=second,dc=test",
                    "olcDbDirectory": str(second),
                },
            ), conn.result
        yield lab


class Ctx:
    def __init__(self, request: pytest.FixtureRequest, tmp: Path) -> None:
        self.request = request
        self.tmp = tmp

    def fixture(self, name: str) -> Any:
        return self.request.getfixturevalue(name)

    def minted_key_file(self) -> Path:
        from adba.authority import LocalAuthority
        from adba.catalog import load_catalog
        from adba.keys import KeyType

        auth = LocalAuthority.open(str(self.fixture("authority_dir")))
        key = auth.mint(KeyType.CSVLK, CSVLK, load_catalog(), now=int(time.time()))
        path = self.tmp / "csvlk.txt"
        path.write_text(key.text + "\n")
        return path

    def published(self) -> str:
        slapd: TestSlapd = self.fixture("slapd")
        name = self.fixture("ao_name")
        dn = slapd.publish_csvlk(self.fixture("authority_dir"), CSVLK, name, int(time.time()))
        self.fixture("janitor").append(dn)
        return dn


def _run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


def _c0(ctx: Ctx) -> list[str]:
    return ["--version"]


def _c1(ctx: Ctx) -> list[str]:
    import adba.cli.agent

    def broken(_args: object) -> int:
        raise RuntimeError("a bug")

    ctx.fixture("monkeypatch").setattr(adba.cli.agent, "cmd_status", broken)
    return ["agent", "status"]


def _c2(ctx: Ctx) -> list[str]:
    return ["ao", "show", "not a dn", "-H", "ldap://127.0.0.1:1"]


def _c3(ctx: Ctx) -> list[str]:
    slapd = ctx.fixture("slapd")
    return ["ao", "show", f"cn=nope,{slapd.container}", *slapd.cli_args("admin")]


def _c4(ctx: Ctx) -> list[str]:
    slapd = ctx.fixture("slapd")
    wrong = ctx.tmp / "wrong.pw"
    wrong.write_text("not the password\n")
    args = slapd.cli_args("admin")
    args[args.index("--password-file") + 1] = str(wrong)
    return ["ao", "list", *args]


def _c5(ctx: Ctx) -> list[str]:
    dn = ctx.published()
    return ["ao", "delete", "--yes", dn, *ctx.fixture("slapd").cli_args("computer")]


def _c6(ctx: Ctx) -> list[str]:
    return ["ao", "list", "-H", "ldap://127.0.0.1:1", "-b", "dc=example,dc=test"]


def _c7(ctx: Ctx) -> list[str]:
    slapd = ctx.fixture("slapd")
    args = slapd.cli_args("admin")
    i = args.index("--ca-file")
    del args[i : i + 2]  # the system CAs do not know the lab's CA
    return ["ao", "list", *args]


def _c8(ctx: Ctx) -> list[str]:
    lab = ctx.fixture("bare_slapd")
    return [
        "directory", "check", "--admin-group", lab.admin_group, "--computers", lab.computers,
        "-H", lab.uri, "--ca-file", lab.ca_file, "-b", lab.suffix,
        "-D", lab.admin.dn, "--password-file", lab.admin.password_file,
    ]  # fmt: skip


def _c9(ctx: Ctx) -> list[str]:
    """A confirmation ID checked under another root key than the one that signed it."""
    from adba.authority import LocalAuthority

    slapd = ctx.fixture("slapd")
    key = ctx.minted_key_file()
    code, iid = _run(
        ["ao", "publish", "--key-file", str(key), "--get-iid", *slapd.cli_args("admin")]
    )
    assert code == 0
    code, cid = _run(
        ["authority", "confirm", "--path", str(ctx.fixture("authority_dir")), iid.strip()]
    )
    assert code == 0
    other = ctx.tmp / "other-authority"
    LocalAuthority.init(other, now=int(time.time()))
    return [
        "ao", "publish", "--key-file", str(key), "--apply-cid", cid.strip().splitlines()[-1],
        "--root-key", str(other / "root.pub"), *slapd.cli_args("admin"),
    ]  # fmt: skip


def _c10(ctx: Ctx) -> list[str]:
    dn = ctx.published()
    name = dn.split(",", 1)[0].split("=", 1)[1]
    key = ctx.minted_key_file()
    authority = str(ctx.fixture("authority_dir"))
    slapd = ctx.fixture("slapd")
    return ["ao", "publish", "--key-file", str(key), "--authority", authority, "--name", name,
            *slapd.cli_args("admin")]  # fmt: skip


def _c11(ctx: Ctx) -> list[str]:
    key = ctx.tmp / "typo.txt"
    key.write_text("BG8J3-JFP3D-3VVKW-JMMYG-GPJPX\n")
    return ["ao", "publish", "--key-file", str(key), "-H", "ldap://127.0.0.1:1"]


def _c12(ctx: Ctx) -> list[str]:
    authority = str(ctx.fixture("authority_dir"))
    return [
        "authority",
        "mint",
        "--path",
        authority,
        "--type",
        "mak",
        "--product",
        "Nimbus Toaster",
    ]


def _c13(ctx: Ctx) -> list[str]:
    return ["authority", "mint", "--path", str(ctx.tmp), "--type", "csvlk", "--product", CSVLK]


def _c14(ctx: Ctx) -> list[str]:
    slapd = ctx.fixture("slapd")
    return ["ao", "delete", "--yes", slapd.admin.dn, *slapd.cli_args("admin")]


def _c15(ctx: Ctx) -> list[str]:
    return ["agent", "run", "--once", "--config", str(ctx.tmp / "missing.toml")]


def _c16(ctx: Ctx) -> list[str]:
    import adba.lab

    ctx.fixture("monkeypatch").setattr(adba.lab, "SLAPD", str(ctx.tmp / "no-slapd"))
    return ["demo"]


def _agent_toml(ctx: Ctx) -> Path:
    slapd = ctx.fixture("slapd")
    cfg = ctx.tmp / "agent.toml"
    cfg.write_text(
        'dc_uris = ["ldap://127.0.0.1:1"]\n'
        f'root_key = "{ctx.fixture("authority_dir") / "root.pub"}"\n'
        f'state_path = "{ctx.tmp / "state.json"}"\n'
        f'[machine]\ndn = "{slapd.computer.dn}"\npassword_file = "{slapd.computer.password_file}"\n'
        "[intervals]\nconnect_timeout = 0.5\n"
        '[[products]]\nedition = "Nimbus Server Standard"\n'
    )
    return cfg


def _c17(ctx: Ctx) -> list[str]:
    return ["agent", "run", "--once", "--strict", "--config", str(_agent_toml(ctx))]


def _c18(ctx: Ctx) -> list[str]:
    """An update signed with a key the DNS server does not know."""
    named: TestNamed = ctx.fixture("named")
    key = ctx.tmp / "wrong.key"
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    key.write_text(
        f'key "{named.keyname}" {{\n\talgorithm hmac-sha256;\n\tsecret "{secret}";\n}};\n'
    )
    return [
        "kms", "publish", "--publish", named.zone, "--dns-server", named.nameserver,
        "--tsig-key-file", str(key), "--host-name", f"kms1.{named.zone}", "--address", "192.0.2.1",
    ]  # fmt: skip


def _c19(ctx: Ctx) -> list[str]:
    return ["kms", "serve", "--state-dir", str(ctx.tmp / "kms"), "--port", "1"]


def _c20(ctx: Ctx) -> list[str]:
    lab = ctx.fixture("bare_slapd")
    return ["ao", "list", "-H", lab.uri, "--ca-file", lab.ca_file]


PRODUCERS: dict[int, Callable[[Ctx], list[str]]] = {
    0: _c0, 1: _c1, 2: _c2, 3: _c3, 4: _c4, 5: _c5, 6: _c6, 7: _c7, 8: _c8, 9: _c9, 10: _c10,
    11: _c11, 12: _c12, 13: _c13, 14: _c14, 15: _c15, 16: _c16, 17: _c17, 18: _c18, 19: _c19,
    20: _c20,
}  # fmt: skip


#: rows produced by their own tests: 130 and 141 below; 21 (a read-only replica's referral)
#: needs a replicating cluster, in tests/integration/test_replication.py
ELSEWHERE = {21, 130, 141}


def test_every_row_has_a_test() -> None:
    assert set(PRODUCERS) | ELSEWHERE == set(errors.EXIT_CODES)


@pytest.mark.parametrize("code", sorted(PRODUCERS))
def test_exit_code_row(
    code: int,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    for var in list(os.environ):
        if var.startswith("ADBA_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    argv = PRODUCERS[code](Ctx(request, tmp_path))
    capsys.readouterr()
    got = main(argv)
    out, err = capsys.readouterr()
    assert got == code, f"adba {' '.join(argv)}\n{out}{err}"
    assert "Traceback" not in err
    if code:
        lines = [line for line in err.splitlines() if line.startswith(("adba: error:", "adba ao"))]
        assert len(lines) == 1, err


def _ao_list_json(slapd: TestSlapd) -> list[str]:
    return [sys.executable, "-m", "adba", "ao", "list", "--json", *slapd.cli_args("computer")]


def test_130_sigint(slapd: TestSlapd) -> None:
    """Ctrl-C while `ao publish --key-file -` waits for the key."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "adba",
            "ao",
            "publish",
            "--key-file",
            "-",
            *slapd.cli_args("admin"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130 and err == "adba: interrupted\n"


def test_141_ao_list_json_into_a_closed_pipe(
    slapd: TestSlapd, tmp_path: Path, authority_dir: Path, ao_name: str, janitor: list[str]
) -> None:
    """`adba ao list --json | head -1` where head has gone: quiet, 141, nothing on stderr."""
    janitor.append(slapd.publish_csvlk(authority_dir, CSVLK, ao_name, int(time.time())))
    with open(tmp_path / "err", "wb") as err:
        proc = subprocess.Popen(_ao_list_json(slapd), stdout=subprocess.PIPE, stderr=err, cwd=ROOT)
        assert proc.stdout is not None
        proc.stdout.close()
        assert proc.wait(timeout=30) == 141
    assert (tmp_path / "err").read_bytes() == b""
    shell = subprocess.run(
        ["bash", "-c", " ".join(_ao_list_json(slapd)) + " | head -1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert shell.stdout == "[\n" and "Traceback" not in shell.stderr and not shell.stderr
