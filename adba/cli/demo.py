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
its status, deletes the object; a second slapd joins as a replicating provider (`directory
replicate`), an object published on the first is verified on the second, the client fails
over to it while the first is down, and a delete made there meanwhile reaches the first when
it is back; then installs a KMS host key, serves KMS, and boots five
servers outside any domain until the count activates them; starts two more KMS hosts that
publish their own SRV records (weights 2 and 1) into a throwaway named, and boots a server
that finds them in DNS and moves to the other host when its own stops; a laptop activates a
MAK; (where PostgreSQL is installed) an authority with its records on PostgreSQL and two
replicas hold one MAK count between them; a Datacenter host activates two virtual machines
(AVMA); the vendor retires its signing key. Last, the admin's inventory gathers the demo's
machines, the KMS host's clients and the MAK's activations left, and the web console shows
them: the demo signs in to it once and prints its overview's machine count; with --console
it keeps the console (and the servers) running, printing the URL and a user to sign in
with, until Ctrl-C. Then it cleans everything up.

example:
  adba demo
  adba demo --console  # then open the printed https:// URL; Ctrl-C ends it
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
    p.add_argument(
        "--console",
        action="store_true",
        help="keep the web console running at the end (until Ctrl-C)",
    )
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

    def __init__(
        self, step: _Step, title: str, argv: list[str], log: Path, port: int | str
    ) -> None:
        """``port``: the TCP port on 127.0.0.1, or the Unix socket path, it listens on."""
        import socket
        import subprocess

        self.step = step
        step.n += 1
        print(f"\n[{step.n}] {title}\n$ adba {shlex.join(argv)} &", flush=True)
        self.name = " ".join(argv[:2])
        self.port = port
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
            unix = isinstance(port, str)
            where: str | tuple[str, int] = port if isinstance(port, str) else ("127.0.0.1", port)
            with socket.socket(socket.AF_UNIX if unix else socket.AF_INET) as probe:
                if probe.connect_ex(where) == 0:
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


def _flags(server: Any, ident: Any) -> list[str]:
    """``adba`` connection flags for ``server`` (its URI, its certificate, the forest root) as
    the lab identity ``ident``."""
    return [
        "-H",
        server.uri,
        "--ca-file",
        server.ca_file,
        "-b",
        server.suffix,
        "-D",
        ident.dn,
        "--password-file",
        ident.password_file,
    ]


def _write_agent_toml(
    path: Path, lab: Any, work: Path, root_key: str, dc_uris: list[str], ca_file: str
) -> None:
    """The client's agent.toml: its DCs, the CA it checks them with, both products."""
    uris = ", ".join(f'"{uri}"' for uri in dc_uris)
    path.write_text(
        f'dc_uris = [{uris}]\nbase = "{lab.suffix}"\nca_file = "{ca_file}"\n'
        f'root_key = "{root_key}"\nstate_path = "{work / "agent-state.json"}"\n\n'
        f'[machine]\ndn = "{lab.computer.dn}"\n'
        f'password_file = "{lab.computer.password_file}"\n\n'
        '[[products]]\nedition = "Nimbus Server Standard"\n\n'
        '[[products]]\nedition = "Nimbus Workstation Enterprise"\n'
    )


def _kms_part(
    step: _Step, work: Path, authority: str, url: str, root_key: str, inventory: str
) -> None:
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
    api_port = free_port()
    token = work / "clients.token"
    import secrets

    token.write_text(secrets.token_urlsafe(24) + "\n")
    token.chmod(0o600)
    serve = ["kms", "serve", "--state-dir", state, "--listen", "127.0.0.1", "--port", str(port)]
    serve += ["--clients-api", str(api_port), "--clients-token-file", str(token)]
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
        step(
            "the admin's inventory imports them through the host's read-only clients API",
            [
                "inventory",
                "import",
                "--db",
                inventory,
                "--kms",
                f"http://127.0.0.1:{api_port}",
                "--kms-token-file",
                str(token),
            ],
            require="5 clients imported",
        )
    finally:
        host.stop()


def _replication_part(
    step: _Step,
    lab: Any,
    work: Path,
    key_file: Path,
    authority: str,
    root_key: str,
    agent_toml: Path,
    cleanup: list[Any],
    *,
    keep: bool,
) -> Path:
    """A second OpenLDAP provider joins the lab's (multi-provider syncrepl over TLS, a
    replication identity that reads everything and writes nothing): an object published on
    one is verified on the other, the client fails over to it while the first is down, and a
    delete made meanwhile reaches the first when it is back. Both serve the rest of the demo.
    Returns the second server's directory."""
    import secrets

    from ..lab import Slapd

    print("\n--- a replicated directory: two OpenLDAP providers ---")
    ldap2 = Slapd(empty=True, keep=keep)
    cleanup.append(ldap2.destroy)
    ldap2.start()
    print(
        f"ldap2: a second slapd {ldap2.uri} (ldaps {ldap2.ldaps_uri}, ldapi {ldap2.dir}/ldapi), "
        f"pid {ldap2.proc.pid if ldap2.proc else '?'}, with an empty database"
    )
    peers_ca = work / "peers-ca.pem"  # each lab server's certificate is its own CA
    peers_ca.write_text(Path(lab.ca_file).read_text() + Path(ldap2.ca_file).read_text())
    password = work / "replicator.password"
    password.write_text(secrets.token_urlsafe(16) + "\n")
    password.chmod(0o600)
    common = [
        "--replicator-password-file",
        str(password),
        "--peer-ca-file",
        str(peers_ca),
        "--timeout",
        "2",
    ]
    for n, (server, peer, title) in enumerate(
        (
            (lab, ldap2, "ldap1, which holds the tree, becomes provider 1 of a group with ldap2"),
            (ldap2, lab, "ldap2 joins as provider 2: it receives the tree from ldap1"),
        ),
        start=1,
    ):
        step(
            f"{title} (over ldapi as root)",
            [
                "directory",
                "replicate",
                "--server-id",
                str(n),
                "--peer",
                peer.ldaps_uri,
                *common,
                "--config-uri",
                server.ldapi_uri,
                *_flags(server, server.root),
            ],
            require="replicating with",
        )
    _wait_replicated(ldap2, lab.computers, present=True)
    step(
        "ldap2 gets its cn=config part: schema, index, limits, ACLs (the tree came by replication)",
        [
            "directory",
            "init",
            "--config-uri",
            ldap2.ldapi_uri,
            "--admin-group",
            lab.admin_group,
            "--computers",
            lab.computers,
            *_flags(ldap2, ldap2.root),
        ],
    )
    admin1, admin2 = _flags(lab, lab.admin), _flags(ldap2, lab.admin)
    step(
        "ldap1 checks its peer: reachable, the same contextCSN, the identity's read rights",
        ["directory", "check", "--config-uri", lab.ldapi_uri, *admin1],
        require="agree on every contextCSN",
    )
    published = step(
        "the admin publishes the CSVLK's object on ldap1 (no new activation)",
        [
            "ao",
            "publish",
            "--key-file",
            str(key_file),
            "--authority",
            authority,
            "--json",
            *admin1,
        ],
    )
    import json

    dn = json.loads(published)["dn"]
    took = _wait_replicated(ldap2, dn, present=True)
    print(f"\n(on ldap2 {took * 1000:.0f} ms after ldap1 acknowledged it)")
    step(
        "a computer reads it on ldap2 and verifies its license",
        ["ao", "list", "--root-key", root_key, *_flags(ldap2, lab.computer)],
        require="verified",
    )
    _write_agent_toml(agent_toml, lab, work, root_key, [lab.uri, ldap2.uri], str(peers_ca))
    print(
        f'\nthe client\'s {agent_toml.name} now lists both: dc_uris = ["{lab.uri}", "{ldap2.uri}"]'
    )
    lab.stop()
    print("ldap1 stopped")
    step(
        "the client boots with ldap1 down: its agent activates through ldap2",
        ["agent", "run", "--once", "--config", str(agent_toml)],
        require=ldap2.uri,
    )
    step(
        "the admin deletes the object on ldap2 meanwhile",
        ["ao", "delete", "--yes", dn, *admin2],
    )
    lab.restart()
    took = _wait_replicated(lab, dn, present=False)
    print(f"\nldap1 started again: the delete reached it {took * 1000:.0f} ms after it answered")
    step("nothing left on ldap1 either", ["ao", "list", *admin1])
    return ldap2.dir


def _wait_replicated(server: Any, dn: str, *, present: bool, timeout: float = 10.0) -> float:
    """Seconds until ``dn`` is there (or gone) on ``server``, read as its root DN."""
    from ..directory.connection import ConnectionOptions, session

    options = ConnectionOptions(
        uri=server.uri,
        bind_dn=server.root.dn,
        password=server.root.password,
        ca_file=server.ca_file,
        connect_timeout=2.0,
    )
    start = time.monotonic()
    while True:
        try:
            with session(options) as conn:
                while True:
                    conn.search(dn, "(objectClass=*)", "BASE", attributes=["1.1"])
                    if (conn.result["result"] == 0) == present:
                        return time.monotonic() - start
                    if time.monotonic() - start > timeout:
                        break
                    time.sleep(0.005)
        except AdbaError:
            if time.monotonic() - start > timeout:
                raise
            time.sleep(0.05)
            continue
        raise AdbaError(
            f"demo: {dn} not {'replicated to' if present else 'gone from'} "
            f"{server.uri} within {timeout:.0f} s"
        )


def _kms_hosts_part(step: _Step, work: Path, url: str, root_key: str, *, keep: bool) -> None:
    """Several hosts for one domain: each publishes its own SRV record (weights 2 and 1) into
    a throwaway named; a machine finds them in DNS, and moves on when its host stops."""
    import json

    from ..discovery import kms_srv_names, locate, make_resolver
    from ..kms.host import status_view
    from ..lab import LabError, Named, free_port

    print("\n--- KMS: several hosts for one domain, found in DNS ---")
    try:
        named = Named(keep=keep).start()
    except LabError as exc:
        print(f"(skipped: {exc.message})")
        return
    zone, ns = named.zone, named.nameserver
    print(f"named {ns}, zone {zone}, updatable with the TSIG key {named.key_file}")
    hosts: dict[str, tuple[str, int, _Background]] = {}
    try:
        for name, weight in (("kms2", 2), ("kms3", 1)):
            state = str(work / name)
            step(
                f"{name}: the same KMS host key on one more host (which keeps its own counts)",
                ["kms", "install-key", "--state-dir", state, "--key-file",
                 str(work / "kms-csvlk.txt"), "--online", url, "--host-id", f"demo-{name}"],
            )  # fmt: skip
            port = free_port()
            serve = ["kms", "serve", "--state-dir", state, "--listen", "127.0.0.1", "--port",
                     str(port), "--publish", zone, "--weight", str(weight), "--dns-server", ns,
                     "--tsig-key-file", named.key_file, "--host-name", f"{name}.{zone}",
                     "--address", "127.0.0.1"]  # fmt: skip
            title = f"{name} serves and publishes its own SRV record, weight {weight}"
            hosts[name] = (state, port, _Background(step, title, serve, work / f"{name}.log", port))
        resolver = make_resolver([ns])
        deadline = time.monotonic() + 10
        while len(locate(kms_srv_names(zone), resolver)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        step(
            "kms2 says where it is published (kms3 too: neither removed the other's record)",
            ["kms", "status", "--state-dir", hosts["kms2"][0]],
            require=f"SRV published in: {zone} (priority 0, weight 2, via {ns})",
        )
        cfg = work / "srvd.toml"
        cfg.write_text(
            f'domain = "{zone}"\ndns_servers = ["{ns}"]\nroot_key = "{root_key}"\n'
            f'state_path = "{work / "srvd.json"}"\nmachine_name = "SRV-D"\n'
            "[intervals]\ntimeout = 1.0\n"
            '[[products]]\nedition = "Nimbus Server Standard"\n'
        )
        agent = ["agent", "run", "--once", "--config", str(cfg)]
        step("server SRV-D boots in the domain: DNS gives both hosts, 2:1 by weight", agent)
        step("... which host it used", ["agent", "status", "--config", str(cfg)], require="KMS")
        used = json.loads((work / "srvd.json").read_text())["kms"]["port"]
        first = next(n for n, (_s, port, _b) in hosts.items() if port == used)
        other = "kms3" if first == "kms2" else "kms2"
        hosts[first][2].stop()
        print(f"\n(the host SRV-D used, {first}, stops)")
        step(
            f"SRV-D boots again: its cached host does not answer, DNS gives {other}",
            agent,
            require=f"KMS host 127.0.0.1:{hosts[other][1]}",
        )
        deadline = time.monotonic() + 5  # the host saves its records once a second
        while not status_view(hosts[other][0])["count"] and time.monotonic() < deadline:
            time.sleep(0.05)
        step(f"{other} counts its own machines", ["kms", "status", "--state-dir", hosts[other][0]])
    finally:
        for _state, _port, background in hosts.values():
            background.stop()
        named.destroy()


def _mak_part(step: _Step, work: Path, authority: str, url: str, root_key: str) -> Path:
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
    mak_file = work / "mak.txt"
    mak_file.write_text(mak + "\n")
    mak_file.chmod(0o600)
    return mak_file


def _avma_part(
    step: _Step, work: Path, authority: str, url: str, root_key: str, inventory: str
) -> None:
    """A virtualization host, itself activated (MAK here), activates its guests (AVMA); the
    admin's inventory imports the host's guests (the console lists them at the end)."""
    from ..catalog import load_catalog

    print("\n--- AVMA: a Datacenter host activates its virtual machines ---")
    mak = step(
        "the vendor mints a MAK for the host's Datacenter edition",
        [
            "authority",
            "mint",
            "--path",
            authority,
            "--type",
            "mak",
            "--product",
            "Nimbus Server Datacenter",
            "--count",
            "1",
        ],
    ).strip()
    host_cfg = work / "hv1.toml"
    host_state = work / "hv1.json"
    host_cfg.write_text(
        f'authority_url = "{url}"\nroot_key = "{root_key}"\n'
        f'state_path = "{host_state}"\nmachine_name = "HV1"\n'
        f'[[products]]\nedition = "Nimbus Server Datacenter"\nkey = "{mak}"\n'
    )
    host_cfg.chmod(0o600)
    step(
        "the host's own agent activates its Datacenter edition (any channel will do)",
        ["agent", "run", "--once", "--config", str(host_cfg)],
        require="activated by MAK",
    )
    avma_dir = str(work / "hv1-avma")
    mak_file = work / "hv1-mak.txt"
    mak_file.write_text(mak + "\n")
    mak_file.chmod(0o600)
    step(
        "the authority certifies the host's AVMA key online: its Datacenter MAK proves it",
        [
            "avma",
            "init",
            "--state-dir",
            avma_dir,
            "--online",
            url,
            "--key-file",
            str(mak_file),
            "--host-id",
            "HV1",
        ],
        require="certified AVMA host HV1",
    )
    sock = str(work / "avma.sock")
    host = _Background(
        step,
        "the host serves its guests (vsock in production; a Unix socket here)",
        [
            "avma",
            "serve",
            "--state-dir",
            avma_dir,
            "--listen",
            f"unix:{sock}",
            "--agent-state",
            str(host_state),
        ],
        work / "avma.log",
        sock,
    )
    try:
        catalog = load_catalog()
        for name, edition in (
            ("VM1", "Nimbus Server Standard"),
            ("VM2", "Nimbus Server Datacenter"),
        ):
            guest = catalog.avma_guest(catalog.edition(edition).sku)
            assert guest is not None
            cfg = work / f"{name.lower()}.toml"
            cfg.write_text(
                f'root_key = "{root_key}"\nstate_path = "{work / (name.lower() + ".json")}"\n'
                f'avma_host = "unix:{sock}"\nmachine_name = "{name}"\n'
                f'[[products]]\nedition = "{edition}"\nkey = "{guest.key}"\n'
            )
            step(
                f"guest {name} ({edition}, its public AVMA key) boots: no DC, DNS or KMS",
                ["agent", "run", "--once", "--config", str(cfg)],
                require="activated by AVMA host",
            )
        step(
            "... it is licensed for 7 days and renews daily while it runs",
            ["agent", "status", "--config", str(cfg)],
            require="licensed (AVMA)",
        )
        step(
            "the host keeps its guests' records (and history)",
            ["avma", "guests", "--state-dir", avma_dir],
            require="VM2",
        )
        step(
            "the admin's inventory imports the host's guests (the console's AVMA page)",
            ["inventory", "import", "--db", inventory, "--avma-state", avma_dir],
            require="2 guests imported from the AVMA host HV1",
        )
    finally:
        host.stop()


def _replicas_part(step: _Step, work: Path) -> None:
    """The vendor at scale: records on PostgreSQL, two replicas, one limit between them."""
    from ..lab import Postgres, free_port, postgres_missing

    print("\n--- The vendor at scale: records on PostgreSQL, two authority replicas ---")
    reason = postgres_missing()
    if reason:
        print(f"(skipped: {reason})")
        return
    with Postgres() as pg:
        authority = str(work / "authority-pg")
        step(
            "a vendor keeps its records on PostgreSQL (the keys stay files in DIR)",
            ["authority", "init", "--path", authority, "--database", pg.new_database()],
        )
        mak = step(
            "it mints a MAK good for 1 activation",
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
                "1",
            ],
        ).strip()
        replicas = []
        try:
            for n in (1, 2):
                port = free_port()
                replicas.append(
                    _Background(
                        step,
                        f"replica {n} of the authority, on the same database",
                        ["authority", "serve", "--path", authority, "--port", str(port)],
                        work / f"replica-{n}.log",
                        port,
                    )
                )
            for n, replica in enumerate(replicas, 1):
                cfg = work / f"laptop-pg-{n}.toml"
                cfg.write_text(
                    f'authority_url = "http://127.0.0.1:{replica.port}"\n'
                    f'root_key = "{authority}/root.pub"\n'
                    f'state_path = "{work / f"laptop-pg-{n}.json"}"\nmachine_name = "PG{n}"\n'
                    f'[[products]]\nedition = "Nimbus Workstation Enterprise"\nkey = "{mak}"\n'
                )
                cfg.chmod(0o600)
                if n == 1:
                    step(
                        "a laptop activates the MAK through replica 1",
                        ["agent", "run", "--once", "--config", str(cfg)],
                        require="activated by MAK",
                    )
                else:
                    step(
                        "another laptop asks replica 2: the one activation is used up there too",
                        ["agent", "run", "--once", "--config", str(cfg)],
                        require="no activations left",
                    )
            step(
                "the audit agrees (1 of 1 used)",
                ["authority", "report", "--path", authority],
                require="1 of 1 activations used",
            )
        finally:
            for replica in replicas:
                replica.stop()


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


def _agent_status(config: Path) -> Any:
    """A demo machine's `adba agent status --json` (what the inventory runs over SSH)."""
    import contextlib
    import io
    import json

    from . import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["agent", "status", "--json", "--config", str(config)])
    return json.loads(out.getvalue())


def _console_part(
    step: _Step,
    lab: Any,
    work: Path,
    inventory: str,
    url: str,
    mak_file: Path,
    as_root: list[str],
    *,
    keep_running: bool,
) -> None:
    """The admin's view: the inventory of the demo's machines in the web console."""
    from ..inventory.collect import summarize
    from ..inventory.db import InventoryDB
    from ..lab import free_port

    print("\n--- the admin's inventory and web console ---")
    db = ["--db", inventory]
    step(
        "discover the directory's computer objects (as root: the lab's admin may not read them)",
        ["inventory", "discover", *db, "--computers", lab.computers, *as_root],
    )
    machines = {"kmsclient1": work / "agent.toml", "laptop1": work / "laptop.toml"}
    machines.update({f"srv{i}": work / f"server{i}.toml" for i in range(1, 6)})
    step("add the machines outside the directory", ["inventory", "add", *db, *sorted(machines)])
    # each machine's own `adba agent status --json`, recorded as `adba inventory collect`
    # records what it runs over SSH (the demo has no sshd: it runs the command here)
    now = int(time.time())
    with InventoryDB(inventory) as idb:
        scan = idb.start_scan("collect", source="demo")
        results = [summarize(n, now, _agent_status(c)) for n, c in sorted(machines.items())]
        idb.record(scan, results)
        idb.finish_scan(scan, total=len(results), failed=0)
    print("\neach machine's `adba agent status --json`, recorded as `inventory collect` does:")
    for r in results:
        print(f"    {r.machine}: {r.status} ({r.channel or '-'})")
    step(
        "the authority tells the customer what its MAK has left",
        ["inventory", "import", *db, "--authority", url, "--key-file", str(mak_file)],
        require="1 of 2 activations left",
    )
    step("the fleet at a glance", ["inventory", "summary", *db])
    port = free_port()
    tls = lab.dir / "tls"
    serve = [
        "console",
        "serve",
        "-H",
        lab.uri,
        "--ca-file",
        lab.ca_file,
        "-b",
        lab.suffix,
        *db,
        "--port",
        str(port),
        "--tls-cert",
        str(tls / "cert.pem"),
        "--tls-key",
        str(tls / "key.pem"),
        "--user-template",
        f"uid={{}},{lab.people}",
    ]
    console = _Background(
        step,
        "the web console (HTTPS; users sign in with their directory account)",
        serve,
        work / "console.log",
        port,
    )
    try:
        base = f"https://127.0.0.1:{port}"
        count, guests = _console_overview(base, lab)
        print(f"the console answered its overview page: {count} machines")
        print(f"its AVMA hosts page lists {guests} guests")
        print(
            f"\n  console:  {base}/  (certificate: the lab's own, {lab.ca_file})\n"
            f"  sign in:  adbaadmin  password {lab.admin.password}  (an ADBA admin; or the DN"
            f" {lab.admin.dn})"
        )
        if not keep_running:
            print("  to keep it running and open it in a browser: adba demo --console")
            return
        print("  running until Ctrl-C ...", flush=True)
        try:
            while True:
                console.check()
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("\nstopping the console")
    finally:
        console.stop()


def _console_overview(base: str, lab: Any) -> tuple[int, int]:
    """Sign in to the console as the admin and read the overview's machine count and how
    many AVMA guests its AVMA hosts page lists."""
    import re
    import ssl

    import httpx

    verify = ssl.create_default_context(cafile=lab.ca_file)
    with httpx.Client(base_url=base, verify=verify, timeout=20) as client:
        form = client.get("/signin").text
        token = re.search(r'name="csrf" value="([^"]+)"', form)
        answer = client.post(
            "/signin",
            data={
                "csrf": token.group(1) if token else "",
                "user": "adbaadmin",
                "password": lab.admin.password,
            },
            follow_redirects=True,
        )
        found = re.search(r'id="machine-count">(\d+)<', answer.text)
        if answer.status_code != 200 or not found:
            raise AdbaError(f"demo: the console did not show its overview ({answer.status_code})")
        avma = client.get("/avma")
        if avma.status_code != 200:
            raise AdbaError(f"demo: the console did not show its AVMA page ({avma.status_code})")
        return int(found.group(1)), avma.text.count('<tr class="guest">')


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
            as_root = _flags(lab, lab.root)
            as_admin = _flags(lab, lab.admin)
            as_computer = _flags(lab, lab.computer)
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
            _write_agent_toml(agent_toml, lab, work, root_key, [lab.uri], lab.ca_file)
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
            ldap2_dir = _replication_part(
                step,
                lab,
                work,
                key_file,
                authority,
                root_key,
                agent_toml,
                cleanup,
                keep=args.keep,
            )
            inventory = str(work / "inventory.sqlite")
            _kms_part(step, work, authority, url, root_key, inventory)
            _kms_hosts_part(step, work, url, root_key, keep=args.keep)
            mak_file = _mak_part(step, work, authority, url, root_key)
            _replicas_part(step, work)
            _avma_part(step, work, authority, url, root_key, inventory)
            _retire_part(step, authority, key_file, as_admin, agent_cfg)
            _console_part(
                step, lab, work, inventory, url, mak_file, as_root, keep_running=args.console
            )
            if args.keep:
                print(f"\nkept {lab.dir}, {ldap2_dir} and {work}")
    finally:  # an error goes on to main()'s one error printer, after the clean-up
        for stop in reversed(cleanup):
            stop()
        signal.signal(signal.SIGTERM, previous)
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    print(
        f"\ndemo finished in {time.monotonic() - started:.1f} s; servers stopped, temp files "
        + ("kept" if args.keep else "removed")
    )
    return 0
