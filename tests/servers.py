"""Test servers: controller classes over :mod:`adba.lab` (render -> validate -> launch ->
probe -> stop), kept on failure so the run directory and server log can be read."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Callable

from adba.lab import Postgres, Slapd


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, wait, SIGKILL if it will not go."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes], what: str, log: object, timeout: float = 20
) -> None:
    """Until something accepts on 127.0.0.1:port; the process must stay alive meanwhile."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode}: {log()}")  # type: ignore[operator]
        with socket.socket() as probe:
            probe.settimeout(0.2)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.03)
    raise RuntimeError(f"{what} not ready: {log()}")  # type: ignore[operator]


class _ServerProcess:
    """What a test server run as one child process shares: its log, stop and restart."""

    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def start(self):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def log_text(self) -> str:
        try:
            return str(self.log_path.read_text())
        except OSError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(no log)"

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


class TestSlapd(Slapd):
    """A lab slapd prepared for ADBA with the real ``adba directory init``."""

    __test__ = False  # not a pytest test class

    def __init__(self, *, empty: bool = False) -> None:
        super().__init__(prefix="adba-test-", empty=empty)

    def adba_init(self) -> None:
        from adba.directory import openldap
        from adba.directory.connection import ConnectionOptions

        openldap.init(
            ConnectionOptions(uri=self.ldapi_uri),
            self.options(self.root),
            root=self.suffix,
            admin_group=self.admin_group,
            computers=self.computers,
        )

    #: the name the server certificate carries, when the URI holds an address (Samba AD)
    tls_name: str | None = None

    def options(self, ident: object | None = None, **kw: object):  # type: ignore[no-untyped-def]
        from adba.directory.connection import ConnectionOptions

        bind = {} if ident is None else {"bind_dn": ident.dn, "password": ident.password}  # type: ignore[attr-defined]
        return ConnectionOptions(
            uri=self.uri,
            ca_file=self.ca_file,
            tls_name=self.tls_name,
            **bind,
            **kw,  # type: ignore[arg-type]
        )

    def cli_args(self, who: str) -> list[str]:
        """Connection flags for `adba` as one of the lab identities (TLS, lab CA)."""
        ident = getattr(self, who)
        name = ["--tls-name", self.tls_name] if self.tls_name else []
        return [
            "-H",
            self.uri,
            "--ca-file",
            self.ca_file,
            *name,
            "-b",
            self.suffix,
            "-D",
            ident.dn,
            "--password-file",
            ident.password_file,
        ]

    def publish_csvlk(self, authority: object, product: str, name: str, now: int) -> str:
        """Mint a CSVLK with ``authority`` (a directory), activate it for this forest and
        publish the object as the admin, through the library; returns the DN."""
        from adba.authority import LocalAuthority
        from adba.catalog import load_catalog
        from adba.directory.objects import publish_csvlk
        from adba.keys import KeyType

        auth = LocalAuthority.open(str(authority))
        cat = load_catalog()
        key = auth.mint(KeyType.CSVLK, product, cat, now=now)
        dn, _view = publish_csvlk(
            self.options(self.admin),
            root=self.suffix,
            key=key.text,
            activator=auth,
            catalog=cat,
            name=name,
            now=now,
        )
        return dn

    @property
    def container(self) -> str:
        from adba.directory.schema import container_dn

        return container_dn(self.suffix)


class TestNamed:
    """A throwaway BIND9 named, authoritative for the lab zone, updatable with TSIG.

    Lifecycle as for slapd: render named.conf + zone -> named-checkconf -> launch ``named -g``
    -> ready when both UDP and TCP answer an SOA query (named drops queries while loading,
    so polls use short timeouts) -> SIGTERM.
    """

    __test__ = False
    zone = "lab.example.test"
    keyname = "adba-update."
    #: a key the zone knows that may update one A record only (a key without rights)
    limited_keyname = "adba-limited."
    named = "/usr/sbin/named"
    checkconf = "/usr/bin/named-checkconf"

    def __init__(self) -> None:
        import base64
        import os
        import secrets
        import tempfile
        from pathlib import Path

        for binary in (self.named, self.checkconf):
            if not os.access(binary, os.X_OK):
                raise RuntimeError(
                    f"{binary} not found: apt-get install --no-install-recommends bind9 bind9-utils"
                )
        self.dir = Path(tempfile.mkdtemp(prefix="adba-named-", dir="/tmp"))
        self.secret = base64.b64encode(secrets.token_bytes(32)).decode()
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.keep = False

    def gen_config(self) -> str:
        d = self.dir
        return f"""key "{self.keyname}" {{ algorithm hmac-sha256; secret "{self.secret}"; }};
key "{self.limited_keyname}" {{ algorithm hmac-sha256; secret "{self.secret}"; }};
options {{
    directory "{d}"; pid-file "{d}/named.pid"; session-keyfile "{d}/session.key";
    managed-keys-directory "{d}"; dump-file "{d}/cache.db"; statistics-file "{d}/stats";
    memstatistics-file "{d}/mem.stats";
    listen-on port {self.port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }};
    recursion no; allow-query {{ 127.0.0.1; }}; allow-transfer {{ none; }};
    dnssec-validation no; notify no;
}};
controls {{ }};
zone "{self.zone}" {{
    type primary; file "{d}/zone.db"; journal "{d}/zone.db.jnl";
    update-policy {{
        grant {self.keyname} zonesub ANY;
        grant {self.limited_keyname} name nothing-else.{self.zone} A;
    }};
}};
"""

    def gen_zone(self) -> str:
        return f"""$TTL 60
@    IN SOA ns1.{self.zone}. hostmaster.{self.zone}. ( 1 3600 600 86400 60 )
     IN NS  ns1.{self.zone}.
ns1  IN A   127.0.0.1
"""

    def _free_port(self) -> int:
        from adba.lab import free_port

        return free_port(udp=True)

    def start(self) -> TestNamed:
        import time

        for _attempt in range(5):
            self.port = self._free_port()
            (self.dir / "named.conf").write_text(self.gen_config())
            (self.dir / "zone.db").write_text(self.gen_zone())
            subprocess.run([self.checkconf, str(self.dir / "named.conf")], check=True)
            log = open(self.dir / "named.log", "ab")  # noqa: SIM115 - owned by the process
            self.proc = subprocess.Popen(
                [self.named, "-g", "-4", "-c", str(self.dir / "named.conf")],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            log.close()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if self._answers(tcp=False) and self._answers(tcp=True):
                    return self
                time.sleep(0.01)
            self.stop()
        raise RuntimeError(f"named did not start: {self.log_tail()}")

    def _answers(self, *, tcp: bool) -> bool:
        import dns.exception
        import dns.message
        import dns.query

        q = dns.message.make_query(self.zone, "SOA")
        try:
            send = dns.query.tcp if tcp else dns.query.udp
            return bool(send(q, "127.0.0.1", port=self.port, timeout=0.05).answer)
        except (dns.exception.DNSException, OSError):
            return False

    def log_tail(self) -> str:
        try:
            return " | ".join((self.dir / "named.log").read_text().splitlines()[-10:])
        except OSError:
            return "(no log)"

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def update(self, name: str, rdtype: str, records: list[str], ttl: int = 60) -> None:
        """Replace the RRset ``name``/``rdtype`` (relative to the zone) with ``records``; an
        empty list deletes it. Signed with the lab's TSIG key (RFC 2136)."""
        import dns.query
        import dns.rcode
        import dns.tsig
        import dns.tsigkeyring
        import dns.update

        ring = dns.tsigkeyring.from_text({self.keyname: (dns.tsig.HMAC_SHA256, self.secret)})
        upd = dns.update.UpdateMessage(self.zone, keyring=ring, keyalgorithm=dns.tsig.HMAC_SHA256)
        if records:
            upd.replace(name, ttl, rdtype, *records)
        else:
            upd.delete(name, rdtype)
        response = dns.query.tcp(upd, "127.0.0.1", port=self.port, timeout=3)
        assert response.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(response.rcode())

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def destroy(self) -> None:
        import shutil

        self.stop()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


class TestKmsHost(_ServerProcess):
    """A real KMS host process (``adba kms serve``) on 127.0.0.1 and a free port, its key
    installed and activated with ``adba kms install-key`` against a local authority."""

    __test__ = False

    def __init__(
        self,
        authority: object,
        *,
        product: str = "Nimbus Server 2026 CSVLK",
        host_id: str | None = None,
        deadline: float = 1.0,
        now: int | None = None,
    ) -> None:
        import tempfile
        import time
        from pathlib import Path

        from adba.authority import LocalAuthority
        from adba.catalog import load_catalog
        from adba.keys import KeyType

        self.dir = Path(tempfile.mkdtemp(prefix="adba-kms-", dir="/tmp"))
        self.deadline = deadline
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.keep = False
        auth = LocalAuthority.open(str(authority))
        when = int(time.time()) if now is None else now
        self.key = auth.mint(KeyType.CSVLK, product, load_catalog(), now=when).text
        self.install(authority, host_id or self.dir.name)

    def adba(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        import sys

        return subprocess.run(
            [sys.executable, "-m", "adba", *argv], capture_output=True, text=True, check=check
        )

    def install(self, authority: object, host_id: str) -> subprocess.CompletedProcess[str]:
        return self.adba(
            "kms",
            "install-key",
            "--state-dir",
            str(self.dir),
            "--key",
            self.key,
            "--authority",
            str(authority),
            "--host-id",
            host_id,
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, *extra: str, nofile: int | None = None) -> TestKmsHost:
        """Serve; ``nofile``: the process's limit of open files (RLIMIT_NOFILE), to run it
        out of descriptors."""
        import resource
        import sys

        from adba.lab import free_port

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.port = self.port or free_port()
        log = open(self.dir / "kms.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "adba",
                "kms",
                "serve",
                "--state-dir",
                str(self.dir),
                "--listen",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--deadline",
                str(self.deadline),
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=limit if nofile is not None else None,
        )
        log.close()
        wait_for_port(self.port, self.proc, "kms host", self.log_tail)
        return self

    @property
    def log_path(self):  # type: ignore[no-untyped-def]
        return self.dir / "kms.log"

    def status(self) -> dict[str, object]:
        import json

        out = self.adba("kms", "status", "--state-dir", str(self.dir), "--json")
        data: dict[str, object] = json.loads(out.stdout)
        return data

    def clients(self) -> list[dict[str, object]]:
        import json

        data: list[dict[str, object]] = json.loads(
            self.adba("kms", "clients", "--state-dir", str(self.dir), "--json").stdout
        )
        return data

    def destroy(self) -> None:
        import shutil

        self.stop()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


class TestAuthority(_ServerProcess):
    """A real activation authority process (``adba authority serve``) on 127.0.0.1."""

    __test__ = False

    def __init__(
        self, path: object, *, tls: tuple[str, str] | None = None, name: str = "serve"
    ) -> None:
        from pathlib import Path

        self.path = Path(str(path))
        self.tls = tls
        self.name = name  # replicas on one directory: one log each
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> TestAuthority:
        import sys

        from adba.lab import free_port

        self.port = self.port or free_port()
        argv = [
            sys.executable,
            "-m",
            "adba",
            "authority",
            "serve",
            "--path",
            str(self.path),
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        if self.tls:
            argv += ["--tls-cert", self.tls[0], "--tls-key", self.tls[1]]
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        wait_for_port(self.port, self.proc, "authority", self.log_tail)
        return self

    @property
    def log_path(self):  # type: ignore[no-untyped-def]
        return self.path / f"{self.name}.log"


class TestSambaDC:
    """A real Samba AD domain controller on 127.0.0.N (root only: its LDAP ports are fixed).

    Lifecycle: ``samba-tool domain provision`` (2012 R2 schema, no DNS) -> our smb.conf (LDAP
    service only, loopback address only, every directory under the run dir) -> optional offline
    fixes (forest prep, which creates the activation-objects container; the repair of Samba's
    unparseable msSPP default security descriptor) -> accounts -> ``samba -M single`` -> ready
    when an LDAPS bind with certificate validation succeeds -> SIGTERM to its pidfile's PID.
    """

    __test__ = False
    realm = "LAB.EXAMPLE.TEST"
    domain = "LAB"
    suffix = "DC=lab,DC=example,DC=test"
    host_name = "labdc"
    admin_password = "Passw0rd!Lab123"
    fixed_sd = "O:BAG:BAD:(A;;RPWPCRCCDCLCLORCWOWDSDDTSW;;;DA)(A;;RPLCLORC;;;AU)"

    def __init__(
        self,
        ip: str = "127.0.0.2",
        *,
        forest_prep: bool = True,
        fix_sd: bool = True,
        services: str = "ldap kdc",
        replication: bool = False,
    ) -> None:
        import os
        import shutil
        import tempfile
        from pathlib import Path

        from adba.lab import Identity

        if os.geteuid() != 0:
            raise RuntimeError("a Samba AD DC needs root (fixed LDAP ports 389/636)")
        if not shutil.which("samba-tool") or not os.access("/usr/sbin/samba", os.X_OK):
            raise RuntimeError(
                "Samba AD DC missing: apt-get install --no-install-recommends samba samba-ad-dc "
                "samba-ad-provision samba-dsdb-modules python3-markdown ldb-tools"
            )
        self.ip = ip
        #: DRS replication with other DCs (see `TestSambaReplica`): the services a join and
        #: the replication daemon need, one process per task (in ``-M single`` a DC that asks
        #: its own KDC for a ticket waits on itself), and a private /etc/hosts (the DCs find
        #: each other by ``<NTDS GUID>._msdcs.<forest>``) in a mount namespace of its own
        self.replication = replication
        self.services = f"{services} cldap rpc drepl kcc" if replication else services
        self.forest_prep, self.fix_sd = forest_prep, fix_sd
        self.dir = Path(tempfile.mkdtemp(prefix="adba-samba-", dir="/tmp"))
        self.dc = self.dir / "dc"
        self.conf = self.dc / "etc" / "smb.conf"
        self.sam = self.dc / "private" / "sam.ldb"
        self.hosts = self.dir / "hosts"
        self.krb5 = self.dir / "krb5.conf"
        self.keep = False
        self.tls_name = f"{self.host_name}.{self.realm.lower()}"
        self.computers = f"CN=Computers,{self.suffix}"
        self.admin_group = f"CN=ADBA Admins,CN=Users,{self.suffix}"

        def ident(name: str, dn: str, password: str) -> Identity:
            path = self.dir / f"{name}.password"
            path.write_text(password + "\n")
            path.chmod(0o600)
            return Identity(dn, password, str(path))

        self.root = ident("root", f"CN=Administrator,CN=Users,{self.suffix}", self.admin_password)
        self.computer = ident("computer", f"CN=KMSCLIENT1,{self.computers}", "Cl1ent!Passw0rd")
        self.user = ident("user", f"CN=plainuser,CN=Users,{self.suffix}", "Us3r!Passw0rd")
        self.admin = ident("admin", f"CN=adbaadmin,CN=Users,{self.suffix}", "Adm1n!Passw0rd")

    @property
    def uri(self) -> str:
        return f"ldaps://{self.ip}"

    @property
    def ca_file(self) -> str:
        return str(self.dc / "private" / "tls" / "ca.pem")

    @property
    def container(self) -> str:
        from adba.directory.schema import container_dn

        return container_dn(self.suffix)

    def _tool(self, *argv: str, stdin: str | None = None) -> None:
        res = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])} failed: {res.stderr.strip()[-800:]}")

    def gen_config(self) -> str:
        d = self.dc
        return f"""[global]
	netbios name = {self.host_name.upper()}
	realm = {self.realm}
	workgroup = {self.domain}
	server role = active directory domain controller
	interfaces = {self.ip}/8
	bind interfaces only = yes
	server services = {self.services}
	disable netbios = yes
	# as Windows: a SASL (Kerberos) bind inside TLS needs no SASL sign/seal of its own
	ldap server require strong auth = allow_sasl_over_tls
	private dir = {d}/private
	state directory = {d}/state
	cache directory = {d}/cache
	lock directory = {d}
	binddns dir = {d}/bind-dns
	pid directory = {d}/run
	ncalrpc dir = {d}/run/ncalrpc
	winbindd socket directory = {d}/run/winbindd
	ntp signd socket directory = {d}/run/ntp_signd
	log file = {d}/log/samba.log
	logging = file
	log level = 1
"""

    def provision(self) -> None:
        self._tool(
            "samba-tool",
            "domain",
            "provision",
            f"--targetdir={self.dc}",
            f"--realm={self.realm}",
            f"--domain={self.domain}",
            "--server-role=dc",
            "--dns-backend=NONE",
            "--base-schema=2012_R2",
            f"--host-name={self.host_name}",
            f"--host-ip={self.ip}",
            f"--adminpass={self.admin_password}",
            f"--option=interfaces = {self.ip}/8",
            "--option=bind interfaces only = yes",
        )
        for sub in ("etc", "run", "log", "cache"):
            (self.dc / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self.gen_config())
        if self.fix_sd:
            schema = f"CN=Schema,CN=Configuration,{self.suffix}"
            ldif = "".join(
                f"dn: CN={cls},{schema}\nchangetype: modify\nreplace: defaultSecurityDescriptor\n"
                f"defaultSecurityDescriptor: {self.fixed_sd}\n-\n\n"
                for cls in ("ms-SPP-Activation-Object", "ms-SPP-Activation-Objects-Container")
            )
            self._tool(
                "ldbmodify",
                "-H",
                str(self.sam),
                "--option=dsdb:schema update allowed=true",
                stdin=ldif,
            )
        if self.forest_prep:
            self._tool(
                "samba-tool",
                "domain",
                "functionalprep",
                "-s",
                str(self.conf),
                "-H",
                str(self.sam),
                "--function-level=2012_R2",
                "--forest-prep",
            )
        tool = ["-s", str(self.conf), "-H", str(self.sam)]
        self._tool("samba-tool", "computer", "create", "KMSCLIENT1", *tool)
        self._tool(
            "samba-tool",
            "user",
            "setpassword",
            "KMSCLIENT1$",
            f"--newpassword={self.computer.password}",
            *tool,
        )
        for name, ident in (("plainuser", self.user), ("adbaadmin", self.admin)):
            self._tool("samba-tool", "user", "create", name, ident.password, *tool)
        # the DC's LDAP service principal, which Kerberos binds ask a ticket for
        self._tool(
            "samba-tool", "spn", "add", f"ldap/{self.tls_name}", f"{self.host_name.upper()}$", *tool
        )
        self._tool("samba-tool", "group", "add", "ADBA Admins", *tool)
        self._tool("samba-tool", "group", "addmembers", "ADBA Admins", "adbaadmin", *tool)
        if self.replication:
            # the DRS service principal other DCs ask a ticket for (Samba's dnsupdate
            # service would add it; it does not run here)
            spn = f"E3514235-4B06-11D1-AB04-00C04FC2DCD2/{self.ntds_guid()}/{self.realm.lower()}"
            self._tool("samba-tool", "spn", "add", spn, f"{self.host_name.upper()}$", *tool)

    def ntds_guid(self) -> str:
        """The objectGUID of this DC's NTDS Settings object (read offline from sam.ldb)."""
        res = subprocess.run(
            [
                "ldbsearch",
                "-H",
                str(self.sam),
                "-s",
                "base",
                "-b",
                f"CN=NTDS Settings,CN={self.host_name.upper()},CN=Servers,"
                f"CN=Default-First-Site-Name,CN=Sites,CN=Configuration,{self.suffix}",
                "objectGUID",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        guids = [
            ln.split(": ", 1)[1] for ln in res.stdout.splitlines() if ln.startswith("objectGUID: ")
        ]
        if not guids:
            raise RuntimeError(f"no NTDS Settings in {self.sam}: {res.stderr.strip()[-300:]}")
        return guids[0]

    def _launch(self) -> None:
        if not self.replication:
            self._tool("samba", "-s", str(self.conf), "-M", "single")
            return
        import os
        from pathlib import Path

        realm = self.realm
        self.krb5.write_text(
            f"[libdefaults]\n default_realm = {realm}\n dns_lookup_kdc = false\n"
            f" dns_lookup_realm = false\n[realms]\n"
            # service principals name the realm in lower case (<service>/<host>/<domain>)
            f" {realm} = {{\n  kdc = {self.ip}\n }}\n {realm.lower()} = {{\n  kdc = {self.ip}\n }}\n"
        )
        if not self.hosts.exists():
            self.hosts.write_text(Path("/etc/hosts").read_text())
        self.add_host(self.ip, self.tls_name, f"{self.ntds_guid()}._msdcs.{realm.lower()}")
        script = 'mount --bind "$1" /etc/hosts && exec samba -s "$2" -M standard'
        argv = ["unshare", "-m", "sh", "-c", script, "sh", str(self.hosts), str(self.conf)]
        env = {**os.environ, "KRB5_CONFIG": str(self.krb5)}
        res = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
        if res.returncode != 0:
            raise RuntimeError(f"samba in a mount namespace failed: {res.stderr.strip()[-500:]}")

    def add_host(self, ip: str, *names: str) -> None:
        """Append names to the hosts file the DC sees (in place: its bind mount follows)."""
        have = self.hosts.read_text() if self.hosts.exists() else ""
        line = f"{ip} {' '.join(names)}"
        if line not in have.splitlines():
            with self.hosts.open("a") as f:
                f.write(line + "\n")

    def start(self) -> TestSambaDC:
        import socket
        import time

        for port in (389, 636):
            with socket.socket() as probe:
                probe.settimeout(0.2)
                if probe.connect_ex((self.ip, port)) == 0:
                    raise RuntimeError(f"something already answers on {self.ip}:{port}")
        if not self.sam.exists():
            self.provision()
        self._launch()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._ready():
                return self
            time.sleep(0.2)
        raise RuntimeError(f"samba not ready: {self.log_tail()}")

    options = TestSlapd.options
    cli_args = TestSlapd.cli_args

    def _ready(self) -> bool:
        from pathlib import Path

        from adba.directory.connection import connect
        from adba.errors import AdbaError

        if not Path(self.ca_file).is_file():
            return False
        try:
            connect(self.options(self.root, connect_timeout=1.0)).unbind()
            return True
        except AdbaError:
            return False

    def log_tail(self) -> str:
        try:
            return "\n".join((self.dc / "log" / "samba.log").read_text().splitlines()[-15:])
        except OSError:
            return "(no log)"

    def pid(self) -> int | None:
        try:
            return int((self.dc / "run" / "samba.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        import os
        import signal
        import time

        pid = self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)

    publish_csvlk = TestSlapd.publish_csvlk

    def export_keytab(self, principal: str, path: object) -> str:
        self._tool(
            "samba-tool",
            "domain",
            "exportkeytab",
            str(path),
            f"--principal={principal}",
            "-s",
            str(self.conf),
        )
        return str(path)

    def krb5_conf(self, path: object) -> str:
        from pathlib import Path

        Path(str(path)).write_text(
            f"[libdefaults]\n default_realm = {self.realm}\n dns_lookup_kdc = false\n"
            f" dns_lookup_realm = false\n rdns = false\n dns_canonicalize_hostname = false\n"
            f"[realms]\n {self.realm} = {{\n  kdc = {self.ip}\n }}\n"
            f"[domain_realm]\n .{self.realm.lower()} = {self.realm}\n"
        )
        return str(path)

    def destroy(self) -> None:
        import shutil

        self.stop()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


class TestSambaReplica(TestSambaDC):
    """A second Samba AD DC joined to ``primary``'s domain (``samba-tool domain join ... DC``
    over DRS from the primary's address), on its own loopback address, run dir and smb.conf.

    ``primary`` must run with ``replication=True``. Both DCs share one hosts file, which maps
    each DC's DNS name and ``<NTDS GUID>._msdcs.<forest>`` to its address (no DNS here); after
    the join the two replicate by themselves (change notification), both directions.
    """

    __test__ = False
    host_name = "labdc2"

    def __init__(self, primary: TestSambaDC, ip: str = "127.0.0.5") -> None:
        super().__init__(ip, replication=True)
        self.primary = primary
        self.hosts = primary.hosts
        self.join_seconds: float | None = None

    def provision(self) -> None:
        import time

        t0 = time.monotonic()
        self._tool(
            "samba-tool",
            "domain",
            "join",
            self.realm,
            "DC",
            f"-U{self.domain}\\Administrator%{self.admin_password}",
            f"--server={self.primary.ip}",
            f"--targetdir={self.dc}",
            "--dns-backend=NONE",
            f"--option=netbios name = {self.host_name.upper()}",
            f"--option=workgroup = {self.domain}",
            f"--option=interfaces = {self.ip}/8",
            "--option=bind interfaces only = yes",
        )
        self.join_seconds = time.monotonic() - t0
        for sub in ("etc", "run", "log", "cache"):
            (self.dc / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self.gen_config())

    def start(self) -> TestSambaReplica:
        import sys
        import time

        super().start()
        # the primary learns to pull from its new partner when its KCC runs (every 5 min):
        # run it now, so that changes made here replicate back at once. On a busy machine
        # DsExecuteKCC can time out (NT_STATUS_IO_TIMEOUT, seen in CI): retry, and if it
        # still fails go on -- the KCC's own run, or an explicit `drs replicate`, will do
        for dc in (self.primary, self):
            for attempt in range(3):
                try:
                    self._tool(
                        "samba-tool",
                        "drs",
                        "kcc",
                        dc.ip,
                        "-s",
                        str(dc.conf),
                        f"-U{self.domain}\\Administrator%{self.admin_password}",
                    )
                    break
                except RuntimeError as exc:
                    print(f"kcc on {dc.ip}, try {attempt + 1}: {exc}", file=sys.stderr)
                    time.sleep(3)
        return self


class DockerSlapd:
    """The containerised slapd (image ``adba/openldap``, built from compose/), started and
    removed through the docker SDK, with the same interface as :class:`TestSlapd` for the
    tests. The container prepares itself with ``adba directory init`` at first start."""

    __test__ = False
    image = "adba/openldap:latest"
    tls_name = None
    suffix = TestSlapd.suffix
    domain = TestSlapd.domain
    options = TestSlapd.options
    cli_args = TestSlapd.cli_args
    publish_csvlk = TestSlapd.publish_csvlk
    container = TestSlapd.container

    def __init__(self) -> None:
        import os
        import tempfile
        from pathlib import Path

        try:
            import docker

            self.client = docker.from_env()
            self.client.ping()
        except Exception as exc:
            raise RuntimeError(f"no Docker engine reachable ({exc})") from exc
        self.image = os.environ.get("ADBA_TEST_LDAP_IMAGE", self.image)
        self.dir = Path(tempfile.mkdtemp(prefix="adba-docker-ldap-", dir="/tmp"))
        self.keep = False
        self.box: object = None
        self.people = f"ou=People,{self.suffix}"
        self.groups = f"ou=Groups,{self.suffix}"
        self.computers = f"ou=Computers,{self.suffix}"
        self.admin_group = f"cn=ADBA Admins,{self.groups}"
        self.port = self.tls_port = 0

    @property
    def uri(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_uri(self) -> str:
        return f"ldaps://127.0.0.1:{self.tls_port}"

    @property
    def ca_file(self) -> str:
        return str(self.dir / "tls" / "cert.pem")

    def _cat(self, path: str) -> bytes:
        code, out = self.box.exec_run(["cat", path])  # type: ignore[attr-defined]
        if code != 0:
            raise FileNotFoundError(path)
        return bytes(out)

    def start(self) -> DockerSlapd:
        import time

        from adba.lab import Identity, free_port

        self.port, self.tls_port = free_port(), free_port()
        self.box = self.client.containers.run(
            self.image,
            detach=True,
            ports={"1389/tcp": ("127.0.0.1", self.port), "1636/tcp": ("127.0.0.1", self.tls_port)},
        )
        deadline = time.monotonic() + 60
        while True:
            self.box.reload()  # type: ignore[attr-defined]
            if self.box.status == "exited":  # type: ignore[attr-defined]
                raise RuntimeError(f"the slapd container exited: {self.logs()}")
            try:
                self._cat("/data/.adba-initialised")
                break
            except FileNotFoundError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the slapd container is not ready: {self.logs()}") from None
                time.sleep(0.2)
        (self.dir / "tls").mkdir()
        for name in ("cert.pem", "key.pem"):
            (self.dir / "tls" / name).write_bytes(self._cat(f"/data/tls/{name}"))

        def ident(name: str, dn: str) -> Identity:
            password = self._cat(f"/data/{name}.password").decode().strip()
            path = self.dir / f"{name}.password"
            path.write_text(password + "\n")
            path.chmod(0o600)
            return Identity(dn, password, str(path))

        self.root = ident("root", f"cn=admin,{self.suffix}")
        self.admin = ident("adbaadmin", f"uid=adbaadmin,{self.people}")
        self.user = ident("plainuser", f"uid=plainuser,{self.people}")
        self.computer = ident("computer", f"cn=KMSCLIENT1,{self.computers}")
        from adba.directory.connection import connect
        from adba.errors import AdbaError

        while True:  # ready means an LDAP round trip through the published port
            try:
                connect(self.options(self.root, connect_timeout=1.0)).unbind()
                return self
            except AdbaError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"slapd in the container does not answer: {self.logs()}"
                    ) from None
                time.sleep(0.2)

    def adba_init(self) -> None:
        """Done by the container at its first start."""

    def logs(self) -> str:
        try:
            return bytes(self.box.logs()).decode(errors="replace")[-2000:]  # type: ignore[attr-defined]
        except Exception:
            return "(no logs)"

    def destroy(self) -> None:
        import shutil

        if self.box is not None:
            self.box.remove(force=True)  # type: ignore[attr-defined]
            self.box = None
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


class ClusterSlapd(TestSlapd):
    """One server of a :class:`TestSlapdCluster`: the first holds the lab tree, the others
    start with an empty database and receive it by replication."""

    __test__ = False

    #: slapd's "stats" log: one line per operation, and startup errors
    debug_level = 256

    def __init__(self, *, empty: bool, ca: TestCA) -> None:
        self.ca = ca
        super().__init__(empty=empty)

    @property
    def ca_file(self) -> str:
        return str(self.ca.cert_file)

    def _make_tls(self) -> None:
        """A server certificate issued by the cluster's CA (as a site's servers have)."""
        tls = self.dir / "tls"
        tls.mkdir(mode=0o700)
        self.ca.issue(tls / "cert.pem", tls / "key.pem", self.host)

    def kill(self) -> None:
        """``kill -9``: no clean shutdown."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)

    def launch(self) -> None:
        """Start again on the same ports after :meth:`kill` (data kept). A few tries: once
        (of many runs) a relaunch right after kill -9 exited 1 at once, its reason unlogged."""
        import time

        from adba.lab import LabError

        for attempt in range(3):
            self._terminate()
            try:
                self._launch()
                return
            except LabError:
                if attempt == 2:
                    raise
                time.sleep(0.5)


class TestCA:
    """A test certificate authority issuing server certificates for 127.0.0.1."""

    __test__ = False

    def __init__(self, directory: object) -> None:
        import datetime
        from pathlib import Path

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ADBA test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_file = Path(str(directory)) / "ca.pem"
        self.cert_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cert_path: object, key_path: object, ip: str) -> None:
        import datetime
        import ipaddress
        import os
        from pathlib import Path

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.IPAddress(ipaddress.ip_address(ip)),
                        x509.DNSName("localhost"),
                        x509.DNSName(f"*.{TestNamed.zone}"),  # SRV targets of the test DNS
                    ]
                ),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        Path(str(key_path)).write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        os.chmod(str(key_path), 0o600)
        Path(str(cert_path)).write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class TestSlapdCluster:
    """Providers in one multi-provider group and read-only consumers, all local slapd
    processes over TLS, set up with the real ``adba directory replicate`` and ``init``.

    Order, as the README says: the first provider (which holds the tree) is prepared with
    ``init`` and ``replicate``; then every other server, empty, with ``replicate`` -- it
    receives the tree, the container included -- and ``init`` for its cn=config part.
    """

    __test__ = False
    replicator_rdn = "cn=adba-replicator"

    def __init__(self, providers: int = 3, consumers: int = 1, retry: str = "1 +") -> None:
        import secrets
        import tempfile
        from pathlib import Path

        self.dir = Path(tempfile.mkdtemp(prefix="adba-cluster-", dir="/tmp"))
        self.retry = retry
        self.keep = False
        self.ca = TestCA(self.dir)
        self.providers = [ClusterSlapd(empty=i > 0, ca=self.ca) for i in range(providers)]
        self.consumers = [ClusterSlapd(empty=True, ca=self.ca) for _ in range(consumers)]
        first = self.providers[0]
        for node in self.servers[1:]:  # the tree's identities, replicated from the first
            node.admin, node.user, node.computer = first.admin, first.user, first.computer
        self.replicator_dn = f"{self.replicator_rdn},{first.suffix}"
        self.replicator_password = secrets.token_urlsafe(12)
        self.replicator_password_file = self.dir / "replicator.password"
        self.replicator_password_file.write_text(self.replicator_password + "\n")
        self.ca_file = str(self.ca.cert_file)

    @property
    def servers(self) -> list[ClusterSlapd]:
        return self.providers + self.consumers

    @property
    def suffix(self) -> str:
        return self.providers[0].suffix

    def start(self) -> TestSlapdCluster:

        for node in self.servers:
            node.start()
        first = self.providers[0]
        first.adba_init()
        for node in self.servers:
            self.replicate(node)
        self.wait_converged(timeout=30)
        for node in self.servers[1:]:
            node.adba_init()
        return self

    def replication(self, node: ClusterSlapd, **kw: object):  # type: ignore[no-untyped-def]
        from adba.directory.replication import CONSUMER, PROVIDER, Replication

        if node in self.providers:
            peers = tuple(p.ldaps_uri for p in self.providers if p is not node)
            args: dict[str, object] = {"role": PROVIDER, "server_id": self.server_id(node)}
        else:
            peers = tuple(p.ldaps_uri for p in self.providers)
            args = {"role": CONSUMER}
        args.update(
            peers=peers,
            replicator_dn=self.replicator_dn,
            replicator_password=self.replicator_password,
            peer_ca_file=self.ca_file,
            retry=self.retry,
            timeout=2,
        )
        args.update(kw)
        return Replication(**args)  # type: ignore[arg-type]

    def replicate(self, node: ClusterSlapd, **kw: object):  # type: ignore[no-untyped-def]
        from adba.directory import replication
        from adba.directory.connection import ConnectionOptions

        return replication.replicate(
            ConnectionOptions(uri=node.ldapi_uri),
            node.options(node.root),
            root=node.suffix,
            want=self.replication(node, **kw),
        )

    def server_id(self, node: ClusterSlapd) -> int:
        return self.providers.index(node) + 1

    def cli_args(self, node: ClusterSlapd) -> list[str]:
        """`adba directory replicate` flags for ``node`` (with its root connection)."""
        want = self.replication(node)
        argv = ["--role", want.role, "--config-uri", node.ldapi_uri]
        if want.server_id:
            argv += ["--server-id", str(want.server_id)]
        for peer in want.peers:
            argv += ["--peer", peer]
        return [
            *argv,
            "--replicator-password-file",
            str(self.replicator_password_file),
            "--peer-ca-file",
            self.ca_file,
            "--retry",
            self.retry,
            "--timeout",
            str(want.timeout),
            *node.cli_args("root"),
        ]

    def snapshot(self, node: ClusterSlapd) -> set[tuple[str, str, str]]:
        """(DN, entryUUID, entryCSN) of every entry, read as the node's root DN."""
        from adba.directory.connection import session

        with session(node.options(node.root)) as conn:
            conn.search(
                node.suffix, "(objectClass=*)", "SUBTREE", attributes=["entryUUID", "entryCSN"]
            )
            return {
                (
                    str(e["dn"]).lower(),
                    str(e["attributes"].get("entryUUID", "")),
                    str(e["attributes"].get("entryCSN", "")),
                )
                for e in conn.response or []
                if e.get("type") == "searchResEntry"
            }

    def wait_converged(
        self, timeout: float = 10.0, nodes: list[ClusterSlapd] | None = None
    ) -> set[tuple[str, str, str]]:
        """Until every server holds the same entries (same entryUUID and entryCSN)."""
        import time

        from adba.errors import AdbaError

        deadline = time.monotonic() + timeout
        while True:
            try:
                snaps = [self.snapshot(n) for n in nodes or self.servers]
                if snaps[0] and all(s == snaps[0] for s in snaps[1:]):
                    return snaps[0]
            except AdbaError:
                snaps = []
            if time.monotonic() > deadline:
                diff = [len(s) for s in snaps]
                raise AssertionError(f"servers did not converge in {timeout} s: entries {diff}")
            time.sleep(0.05)

    def destroy(self) -> None:
        import shutil

        for node in self.servers:
            node.keep = self.keep
            node.destroy()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


_held_ports: list[socket.socket] = []


def dead_port(host: str = "127.0.0.1") -> int:
    """A TCP port that refuses connections for the rest of the session: bound, never listening.
    A port only picked (bind to 0, close) can come back as a client's own ephemeral port, and a
    connect to it then meets itself (TCP simultaneous open) instead of being refused."""
    sock = socket.socket()
    sock.bind((host, 0))
    _held_ports.append(sock)
    port: int = sock.getsockname()[1]
    return port


class SilentServer:
    """A TCP listener that accepts every connection and never sends a byte (a hung DC or KMS
    host); with ``trickle`` it sends one byte every ``trickle`` seconds instead."""

    __test__ = False

    def __init__(self, trickle: float | None = None) -> None:
        import threading

        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self.trickle = trickle
        self.held: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import threading

        while not self.stopping.is_set():
            try:
                sock = self.listener.accept()[0]
            except OSError:
                continue
            self.held.append(sock)
            if self.trickle:
                threading.Thread(target=self._drip, args=(sock,), daemon=True).start()

    def _drip(self, sock: socket.socket) -> None:
        while not self.stopping.wait(self.trickle):
            try:
                sock.sendall(b"\0")
            except OSError:
                return

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        for sock in self.held:
            sock.close()
        self.listener.close()

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StallingProxy:
    """A TCP proxy to a real server that relays its answers to the first ``answered`` client
    requests (reads) of each connection and swallows every later one: a DC that binds, then
    goes silent in the middle of the search."""

    __test__ = False

    def __init__(self, port: int, answered: int = 1) -> None:
        import threading

        self.target = port
        self.answered = answered
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.socks: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import threading

        while not self.stopping.is_set():
            try:
                client = self.listener.accept()[0]
            except OSError:
                continue
            server = socket.create_connection(("127.0.0.1", self.target))
            self.socks += [client, server]
            state = {"requests": 0}
            threading.Thread(
                target=self._pipe, args=(client, server, state, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pipe, args=(server, client, state, False), daemon=True
            ).start()

    def _pipe(
        self, src: socket.socket, dst: socket.socket, state: dict[str, int], up: bool
    ) -> None:
        while not self.stopping.is_set():
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return
            if up:
                state["requests"] += 1
            elif state["requests"] > self.answered:
                continue  # swallowed: the client waits for an answer that never comes
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        for sock in self.socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.listener.close()


def _message_id(request: bytes) -> bytes:
    """The messageID TLV of an LDAP request (ldap3 numbers messages across connections)."""
    at = 2 + (request[1] & 0x7F if request[1] & 0x80 else 0)
    return request[at : at + 2 + request[at + 1]]


def ldap_reply(op: bytes) -> Callable[[bytes], bytes]:
    """An answer carrying the request's messageID, then ``op`` (short-form lengths)."""

    def reply(request: bytes) -> bytes:
        body = _message_id(request) + op
        return bytes([0x30, len(body)]) + body

    return reply


def raw_reply(data: bytes) -> Callable[[bytes], bytes]:
    return lambda _request: data


#: a bindResponse, success: what an LDAP server answers an anonymous bind
LDAP_BIND_OK = ldap_reply(bytes.fromhex("61070a010004000400"))
#: replies that are not LDAP, each making ldap3's decoder raise something else: an unknown
#: protocolOp (KeyError), a message with no protocolOp (IndexError), bytes 0..255
NOT_LDAP = {
    "unknown-op": ldap_reply(bytes.fromhex("1400")),
    "cut-short": ldap_reply(b""),
    "noise": raw_reply(bytes(range(256))),
}


class GarbageServer:
    """A TCP server on 127.0.0.1 that is not LDAP: each connection gets ``replies`` in turn,
    one per request read, then is closed. ``with GarbageServer([...]) as port:``."""

    def __init__(self, replies: list[Callable[[bytes], bytes]]) -> None:
        import threading

        self.replies = replies
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port: int = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn:
                try:
                    for reply in self.replies:
                        request = conn.recv(65536)
                        if not request:
                            break
                        conn.sendall(reply(request))
                except OSError:
                    pass

    def __enter__(self) -> int:
        self.thread.start()
        return self.port

    def __exit__(self, *_exc: object) -> None:
        self.sock.close()


class TestSshd(_ServerProcess):
    """A real OpenSSH server (Debian's openssh-server, ``/usr/sbin/sshd -D``) on 127.0.0.1 and
    a free port, with its own host key; it lets ``user_key`` (a public key file) in as the
    user running the tests, and runs ``command`` whatever the client asks (ForceCommand): a
    machine's state made by pointing it at a status script or a real ``adba agent status``."""

    __test__ = False

    SSHD = "/usr/sbin/sshd"

    def __init__(self, user_key: object, command: str, *, max_startups: int = 500) -> None:
        import tempfile
        from pathlib import Path

        from adba.lab import free_port

        self.dir = Path(tempfile.mkdtemp(prefix="adba-sshd-", dir="/tmp"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.keep = False
        self.host_key = self.dir / "host_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)],
            check=True,
            capture_output=True,
        )
        (self.dir / "authorized_keys").write_text(Path(str(user_key)).read_text())
        (self.dir / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\n"
            f"PidFile none\nAuthorizedKeysFile {self.dir}/authorized_keys\nStrictModes no\n"
            "UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\nPrintMotd no\nLogLevel ERROR\n"
            f"MaxStartups {max_startups}\nPerSourceMaxStartups none\n"
            f"ForceCommand {command}\n"
        )

    @property
    def known_hosts_line(self) -> str:
        """This server's line for a known_hosts file."""
        kind, key = (self.dir / "host_key.pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {key}\n"

    @property
    def log_path(self):  # type: ignore[no-untyped-def]
        return self.dir / "sshd.log"

    def start(self) -> TestSshd:
        import os

        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        check = subprocess.run(
            [self.SSHD, "-t", "-f", str(self.dir / "sshd_config")], capture_output=True, text=True
        )
        if check.returncode:
            raise RuntimeError(f"sshd -t: {check.stderr}")
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [self.SSHD, "-D", "-e", "-f", str(self.dir / "sshd_config")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        wait_for_port(self.port, self.proc, "sshd", self.log_tail)
        return self

    def destroy(self) -> None:
        import shutil

        self.stop()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


class TestConsole(_ServerProcess):
    """A real web console (``adba console serve``) on 127.0.0.1 and a free port, over HTTPS
    with the lab slapd's certificate, signing users in against ``slapd`` (StartTLS, lab CA)."""

    __test__ = False

    def __init__(self, slapd: Slapd, db: object, run_dir: object, *extra: str) -> None:
        from pathlib import Path

        self.slapd = slapd
        self.db = str(db)
        self.dir = Path(str(run_dir))
        self.extra = extra
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> str:
        return self.slapd.ca_file

    def start(self) -> TestConsole:
        import sys

        from adba.lab import free_port

        self.port = self.port or free_port()
        tls = self.slapd.dir / "tls"
        argv = [
            sys.executable,
            "-m",
            "adba",
            "console",
            "serve",
            "-H",
            self.slapd.uri,
            "--ca-file",
            self.slapd.ca_file,
            "-b",
            self.slapd.suffix,
            "--db",
            self.db,
            "--port",
            str(self.port),
            "--tls-cert",
            str(tls / "cert.pem"),
            "--tls-key",
            str(tls / "key.pem"),
            "--user-template",
            f"uid={{}},{self.slapd.people}",
            *self.extra,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        wait_for_port(self.port, self.proc, "console", self.log_tail)
        return self

    @property
    def log_path(self):  # type: ignore[no-untyped-def]
        return self.dir / "console.log"


def postgres_unavailable() -> str | None:
    """Why a real PostgreSQL cannot run here (None: it can)."""
    from adba.lab import postgres_missing

    return postgres_missing()


class TestPostgres(Postgres):
    """A real PostgreSQL server for the tests (see :class:`adba.lab.Postgres`): initdb into
    a temp dir as a non-root user, a free port and a unix socket in that dir, ready on a real
    connection round trip, fast shutdown at stop, the dir and its log kept on failure
    (``keep``)."""

    __test__ = False

    def __init__(self, *, durable: bool = False, max_connections: int = 300) -> None:
        super().__init__(durable=durable, max_connections=max_connections, prefix="adba-test-pg-")
