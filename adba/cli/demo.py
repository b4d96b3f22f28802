"""``adba demo`` -- the whole path that works today, on throwaway local servers.

Each step is a real ``adba`` command run in-process, printed before it runs so it can be
copied. The servers and files live in one temp directory that is removed on any exit
(success, error, Ctrl-C or SIGTERM) unless ``--keep`` is given.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from ..errors import AdbaError
from ._common import Formatter

DEMO = """\
Starts a throwaway slapd on 127.0.0.1, prepares it with `adba directory init`, creates an
activation authority, mints a CSVLK, publishes an activation object, lists and shows it (as
a computer, verifying the license), runs the client agent (activated through ADBA) and asks
its status, deletes the object; then installs a KMS host key, serves KMS, and boots five
servers outside any domain until the count activates them; and cleans everything up.

example:
  adba demo
  adba demo --keep     # leave the temp directory (and its log) behind
"""

SERVER_CSVLK = "Nimbus Server 2026 CSVLK"


def register(nouns: Any) -> None:
    p = nouns.add_parser(
        "demo",
        help="run the whole path on throwaway local servers",
        description=DEMO,
        formatter_class=Formatter,
    )
    p.add_argument("--keep", action="store_true", help="keep the temp directory and server logs")
    p.set_defaults(func=cmd_demo)


class _Step:
    """Runs one demo step in-process and checks its real outcome: the exit code, the text its
    output must show (``require``), and that the background servers are still running."""

    def __init__(self) -> None:
        self.n = 0
        self.background: list[_Background] = []

    def __call__(
        self, title: str, argv: list[str], *, expect: int = 0, require: str | None = None
    ) -> str:
        from . import main

        for server in self.background:
            server.check()
        self.n += 1
        print(f"\n[{self.n}] {title}\n$ adba {shlex.join(argv)}", flush=True)
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(argv)
        text = out.getvalue()
        sys.stdout.write(text)
        sys.stdout.flush()
        if code == 130:  # Ctrl-C inside the step: the demo is interrupted, not failed
            raise KeyboardInterrupt
        if code != expect:
            raise AdbaError(f"demo step {self.n} ({title}) exited with {code}, expected {expect}")
        if require is not None and require not in text:
            raise AdbaError(
                f"demo step {self.n} ({title}) did not show {require!r}: see its output above"
            )
        return text


class _Background:
    """An `adba` server started in the background for the demo (stopped on any exit)."""

    def __init__(self, step: _Step, title: str, argv: list[str], log: Path, port: int) -> None:
        import socket
        import subprocess

        self.step = step
        step.n += 1
        print(f"\n[{step.n}] {title}\n$ adba {shlex.join(argv)} &", flush=True)
        self.name = " ".join(argv[:2])
        self.log_path = log
        self.log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "adba", *argv],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.proc.poll() is None:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    step.background.append(self)
                    return
            time.sleep(0.05)
        self.stop()
        raise AdbaError(f"demo: `adba {argv[0]} {argv[1]}` did not start (see {log})")

    def check(self) -> None:
        """A server the next step relies on must still be running."""
        code = self.proc.poll()
        if code is not None:
            raise AdbaError(
                f"demo: `adba {self.name}` exited with {code} (see {self.log_path}); stopping"
            )

    def stop(self) -> None:
        if self in self.step.background:
            self.step.background.remove(self)
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


def _kms_part(step: _Step, work: Path, authority: str, url: str, root_key: str) -> None:
    """Machines outside any domain: a KMS host, found statically, activates the fifth."""
    from ..lab import free_port

    print("\n--- KMS: machines that are not in a domain ---")
    key = step(
        "the vendor mints a KMS host key",
        ["authority", "mint", "--path", authority, "--type", "csvlk", "--product", SERVER_CSVLK],
    ).strip()
    key_file = work / "kms-csvlk.txt"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    state = str(work / "kms")
    step(
        "the KMS host operator installs it; the authority certifies the host's own key",
        [
            "kms",
            "install-key",
            "--state-dir",
            state,
            "--key-file",
            str(key_file),
            "--online",
            url,
            "--host-id",
            "demo-kms-1",
        ],
    )
    port = free_port()
    serve = ["kms", "serve", "--state-dir", state, "--listen", "127.0.0.1", "--port", str(port)]
    host = _Background(
        step,
        "the host starts answering: two processes on one port, one count (in the background)",
        [*serve, "--workers", "2"],
        work / "kms.log",
        port,
    )
    try:
        step(
            "a health check: a protocol v2 round trip that counts nothing",
            ["kms", "probe", f"127.0.0.1:{port}"],
            require="protocol v2",
        )
        for i in range(1, 6):
            cfg = work / f"server{i}.toml"
            cfg.write_text(
                f'kms_host = "127.0.0.1:{port}"\nroot_key = "{root_key}"\n'
                f'state_path = "{work / f"server{i}.json"}"\nmachine_name = "SRV{i}"\n'
                '[[products]]\nedition = "Nimbus Server Standard"\n'
            )
            step(
                f"server SRV{i} boots (a server activates once the host counts 5)",
                ["agent", "run", "--once", "--config", str(cfg)],
                require="activated by KMS host" if i == 5 else None,
            )
        time.sleep(1.2)  # the host saves its records once a second
        step("the operator looks at the host", ["kms", "status", "--state-dir", state])
        step("... and its clients", ["kms", "clients", "--state-dir", state])
    finally:
        host.stop()


def _mak_part(step: _Step, work: Path, authority: str, url: str, root_key: str) -> None:
    """A laptop that never sees the corporate network: MAK, activated online once."""
    print("\n--- MAK: a laptop outside the network ---")
    mak = step(
        "the vendor mints a MAK good for 2 activations",
        [
            "authority",
            "mint",
            "--path",
            authority,
            "--type",
            "mak",
            "--product",
            "Nimbus Workstation Enterprise",
            "--count",
            "2",
        ],
    ).strip()
    cfg = work / "laptop.toml"
    cfg.write_text(
        f'authority_url = "{url}"\nroot_key = "{root_key}"\n'
        f'state_path = "{work / "laptop.json"}"\nmachine_name = "LAPTOP1"\n'
        f'[[products]]\nedition = "Nimbus Workstation Enterprise"\nkey = "{mak}"\n'
    )
    cfg.chmod(0o600)  # it holds a secret: the MAK
    step(
        "the laptop boots: its agent activates the MAK with the authority",
        ["agent", "run", "--once", "--config", str(cfg)],
        require="activated by MAK",
    )
    step(
        "... and is licensed for good (a MAK activation does not expire)",
        ["agent", "status", "--config", str(cfg)],
        require="licensed (MAK)",
    )
    step("the vendor's audit", ["authority", "report", "--path", authority])


def _retire_part(
    step: _Step, authority: str, key_file: Path, as_admin: list[str], agent_cfg: list[str]
) -> None:
    """The vendor retires its signing key: the agent refuses what the old key signed."""
    step(
        "the admin publishes the CSVLK's object again (no new activation; the current key signs)",
        ["ao", "publish", "--key-file", str(key_file), "--authority", authority, *as_admin],
    )
    step(
        "the vendor rotates the signing key and retires the old one (DIR/retired.pem)",
        ["authority", "rotate", "--path", authority, "--retire"],
    )
    step(
        "the client pins retired.pem beside root.pub: it refuses the object the old key signed",
        ["agent", "run", "--once", *agent_cfg],
        require="which the authority has retired",
    )


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..lab import Slapd

    previous = signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="adba-demo-", dir="/tmp"))
    print("ADBA demo: every step below is a real adba command against a real slapd.")
    try:
        cleanup: list[Any] = []
        with Slapd(keep=args.keep) as lab:
            print(
                f"slapd {lab.uri} (ldaps {lab.ldaps_uri}, ldapi {lab.dir}/ldapi), "
                f"pid {lab.proc.pid if lab.proc else '?'}, forest root {lab.suffix}"
            )
            tls = ["-H", lab.uri, "--ca-file", lab.ca_file, "-b", lab.suffix]
            as_root = [*tls, "-D", lab.root.dn, "--password-file", lab.root.password_file]
            as_admin = [*tls, "-D", lab.admin.dn, "--password-file", lab.admin.password_file]
            as_computer = [
                *tls,
                "-D",
                lab.computer.dn,
                "--password-file",
                lab.computer.password_file,
            ]
            authority = str(work / "authority")
            step = _Step()
            step(
                "prepare the directory: schema, index, limits, ACLs, container (over ldapi as root)",
                [
                    "directory",
                    "init",
                    "--config-uri",
                    lab.ldapi_uri,
                    "--admin-group",
                    lab.admin_group,
                    "--computers",
                    lab.computers,
                    *as_root,
                ],
            )
            step(
                "check it",
                [
                    "directory",
                    "check",
                    "--config-uri",
                    lab.ldapi_uri,
                    "--admin-group",
                    lab.admin_group,
                    "--computers",
                    lab.computers,
                    *as_admin,
                ],
            )
            step(
                "the vendor creates an activation authority",
                ["authority", "init", "--path", authority],
            )
            from ..lab import free_port

            auth_port = free_port()
            url = f"http://127.0.0.1:{auth_port}"
            service = _Background(
                step,
                "... and serves it (HTTP here; TLS with --tls-cert/--tls-key)",
                ["authority", "serve", "--path", authority, "--port", str(auth_port)],
                work / "authority.log",
                auth_port,
            )
            cleanup.append(service.stop)
            key = step(
                "the vendor mints a CSVLK for the customer",
                [
                    "authority",
                    "mint",
                    "--path",
                    authority,
                    "--type",
                    "csvlk",
                    "--product",
                    SERVER_CSVLK,
                ],
            ).strip()
            key_file = work / "csvlk.txt"
            key_file.write_text(key + "\n")
            key_file.chmod(0o600)
            step(
                "an ADBA admin activates it for this forest and publishes the object",
                ["ao", "publish", "--key-file", str(key_file), "--online", url, *as_admin],
            )
            root_key = f"{authority}/root.pub"
            step(
                "a computer lists the objects and verifies each license against the pinned root",
                ["ao", "list", "--root-key", root_key, *as_computer],
            )
            listed = step(
                "... the same as JSON, for scripts",
                ["ao", "list", "--root-key", root_key, "--json", *as_computer],
            )
            import json

            dn = json.loads(listed)[0]["dn"]
            step("show one object", ["ao", "show", dn, "--root-key", root_key, *as_computer])
            agent_toml = work / "agent.toml"
            agent_toml.write_text(
                f'dc_uris = ["{lab.uri}"]\nbase = "{lab.suffix}"\nca_file = "{lab.ca_file}"\n'
                f'root_key = "{root_key}"\nstate_path = "{work / "agent-state.json"}"\n\n'
                f'[machine]\ndn = "{lab.computer.dn}"\n'
                f'password_file = "{lab.computer.password_file}"\n\n'
                '[[products]]\nedition = "Nimbus Server Standard"\n\n'
                '[[products]]\nedition = "Nimbus Workstation Enterprise"\n'
            )
            print(f"\nthe client's {agent_toml.name} (both products use their public GVLK):")
            print("    " + agent_toml.read_text().strip().replace("\n", "\n    "))
            agent_cfg = ["--config", str(agent_toml)]
            step(
                "the client boots: its agent finds the object, verifies it and activates",
                ["agent", "run", "--once", *agent_cfg],
            )
            step(
                "anyone on the client can ask whether it is licensed",
                ["agent", "status", *agent_cfg],
                require="licensed (ADBA)",
            )
            step(
                "a computer may not delete it (refused by the directory: exit 5)",
                ["ao", "delete", "--yes", dn, *as_computer],
                expect=5,
            )
            step("the admin deletes it", ["ao", "delete", "--yes", dn, *as_admin])
            step("nothing left", ["ao", "list", *as_admin])
            step(
                "the audit trail: who published and who deleted it, and when (accesslog)",
                ["ao", "history", *as_admin],
                require="delete",
            )
            step(
                "the next boot finds no object: still licensed until the 180 days run out",
                ["agent", "run", "--once", *agent_cfg],
                require="still licensed until",
            )
            _kms_part(step, work, authority, url, root_key)
            _mak_part(step, work, authority, url, root_key)
            _retire_part(step, authority, key_file, as_admin, agent_cfg)
            if args.keep:
                print(f"\nkept {lab.dir} and {work}")
    finally:  # an error goes on to main()'s one error printer, after the clean-up
        for stop in reversed(cleanup):
            stop()
        signal.signal(signal.SIGTERM, previous)
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    print(
        f"\ndemo finished in {time.monotonic() - started:.1f} s; servers stopped, temp files removed"
    )
    return 0
