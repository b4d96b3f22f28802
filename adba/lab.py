"""Throwaway OpenLDAP servers (and a BIND9 named, :class:`Named`) on 127.0.0.1 for ``adba demo``,
the tests and the benchmarks.

A :class:`Slapd` is a *plain* slapd, the way a site runs one before ADBA arrives: core schemas,
one mdb database with a root DN, a config database that the running uid manages over ldapi
(SASL EXTERNAL), a self-signed TLS certificate, and a small DIT with an admin group, users and
a computer account. ``adba directory init`` then does the ADBA part for real.

Lifecycle (after python-ldap's slapdtest): render config -> ``slapadd -n0`` -> launch
``slapd -d`` in the foreground -> ready when a bind round trip succeeds within a deadline
(checking that the process is alive on each loop) -> SIGTERM on stop. Everything lives in one
short temp directory (the ldapi socket path must stay under 108 bytes); nothing outside it is
read or written but the system schema files.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self
from urllib.parse import quote

from .errors import AdbaError

__all__ = [
    "Identity",
    "LabError",
    "Named",
    "Postgres",
    "Slapd",
    "free_port",
    "postgres_missing",
    "ssha",
]

log = logging.getLogger(__name__)

SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
SYSTEM_SCHEMA = Path("/etc/ldap/schema")
MODULE_PATH = "/usr/lib/ldap"


class LabError(AdbaError):
    """The throwaway lab server could not be started."""

    exit_code = 16
    code = "lab-failed"


def ssha(password: str) -> str:
    """``{SSHA}`` hash as slappasswd makes it."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1", *, udp: bool = False) -> int:
    """A port nothing uses or answers on (a candidate, not a claim), below the kernel's
    ephemeral range: a port handed out by bind-to-0 can come back as some client's source
    port, and a server restarted on it then finds its address in use. ``udp``: free for UDP
    too (named listens on both)."""
    import random

    top = max(1025, _ephemeral_start() - 1)
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randint(min(10000, top - 1), top)
        try:
            with socket.socket() as s:
                s.bind((host, port))
            if udp:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind((host, port))
        except OSError:
            continue
        with socket.socket() as probe:
            probe.settimeout(0.05)
            if probe.connect_ex((host, port)) != 0:
                return port
    raise LabError("no free TCP port found on " + host)


@dataclass(frozen=True)
class Identity:
    dn: str
    password: str
    password_file: str


class _Throwaway:
    """A throwaway server as a context manager: started on entry (destroyed again when the
    start fails), destroyed on exit. ``_quiet_exit``: an error while destroying on exit is
    swallowed, so that it cannot hide the block's own."""

    _quiet_exit = True

    def start(self) -> object:
        raise NotImplementedError

    def destroy(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._quiet_exit:
            self.destroy()
            return
        with contextlib.suppress(Exception):
            self.destroy()


class Slapd(_Throwaway):
    """A throwaway slapd. Use as a context manager, or call :meth:`start` / :meth:`stop`."""

    suffix = "dc=lab,dc=example,dc=test"
    domain = "lab.example.test"
    organization = "ADBA lab"
    host = "127.0.0.1"
    start_timeout = 10.0
    #: slapd -d level: 0 quiet, 256 'stats' lines (one per operation) in slapd.log
    debug_level = 0

    def __init__(
        self,
        *,
        debug_level: int | None = None,
        keep: bool = False,
        prefix: str = "adba-lab-",
        directory: str | os.PathLike[str] | None = None,
        ports: tuple[int, int] | None = None,
        listen: str | None = None,
        tls_names: tuple[str, ...] = (),
        empty: bool = False,
    ) -> None:
        """A throwaway server in a new temp dir by default; with ``directory``, a lasting one
        (a container's volume): configured once, its passwords kept in ``<dir>/*.password``.
        ``empty``: the database starts without the lab tree (a server that joins a
        replicating group receives it from its peers; its identities are then theirs)."""
        for binary in (SLAPD, SLAPADD):
            if not os.access(binary, os.X_OK):
                raise LabError(
                    f"{binary} not found: install OpenLDAP with "
                    "`apt-get install --no-install-recommends slapd ldap-utils`"
                )
        if debug_level is not None:
            self.debug_level = debug_level
        self.keep = keep or directory is not None
        if directory is None:
            self.dir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        else:
            self.dir = Path(directory)
            self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.fixed_ports = ports
        self.listen = listen or self.host
        self.tls_names = tls_names
        self.empty = empty
        self.port = 0
        self.tls_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.rootdn = f"cn=admin,{self.suffix}"
        self.people = f"ou=People,{self.suffix}"
        self.groups = f"ou=Groups,{self.suffix}"
        self.computers = f"ou=Computers,{self.suffix}"
        self.admin_group = f"cn=ADBA Admins,{self.groups}"
        self.root = self._identity("root", self.rootdn)
        self.admin = self._identity("adbaadmin", f"uid=adbaadmin,{self.people}")
        self.user = self._identity("plainuser", f"uid=plainuser,{self.people}")
        self.computer = self._identity("computer", f"cn=KMSCLIENT1,{self.computers}")
        self._configured = (self.dir / "slapd.d").is_dir()

    # -- paths and URLs ------------------------------------------------------------------------
    @property
    def uri(self) -> str:
        return f"ldap://{self.host}:{self.port}"

    @property
    def ldaps_uri(self) -> str:
        return f"ldaps://{self.host}:{self.tls_port}"

    @property
    def ldapi_uri(self) -> str:
        return "ldapi://" + quote(str(self.dir / "ldapi"), safe="")

    @property
    def ca_file(self) -> str:
        return str(self.dir / "tls" / "cert.pem")

    @property
    def log_file(self) -> Path:
        return self.dir / "slapd.log"

    def _identity(self, name: str, dn: str) -> Identity:
        path = self.dir / f"{name}.password"
        if path.is_file():  # a lasting server keeps its passwords
            return Identity(dn, path.read_text().strip(), str(path))
        password = secrets.token_urlsafe(12)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
        return Identity(dn, password, str(path))

    # -- configuration -------------------------------------------------------------------------
    def gen_config(self) -> str:
        uid, gid = os.getuid(), os.getgid()
        schemas = "\n".join(
            (SYSTEM_SCHEMA / f"{name}.ldif").read_text()
            for name in ("core", "cosine", "inetorgperson")
        )
        tls = self.dir / "tls"
        return f"""dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {self.dir}/slapd.pid
olcArgsFile: {self.dir}/slapd.args
olcLogLevel: none
olcTLSCertificateFile: {tls}/cert.pem
olcTLSCertificateKeyFile: {tls}/key.pem

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: {MODULE_PATH}
olcModuleLoad: back_mdb

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

{schemas}

dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend
olcAccess: {{0}}to dn.base="" by * read
olcAccess: {{1}}to dn.base="cn=Subschema" by * read

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by dn.exact=gidNumber={gid}+uidNumber={uid},cn=peercred,cn=external,cn=auth manage by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {self.suffix}
olcDbDirectory: {self.dir}/db
olcRootDN: {self.rootdn}
olcRootPW: {ssha(self.root.password)}
olcDbIndex: objectClass eq
olcDbIndex: cn eq
olcDbIndex: member eq
olcAccess: {{0}}to attrs=userPassword by anonymous auth by * none
olcAccess: {{1}}to * by self read by * none
"""

    def gen_dit(self) -> str:
        dc = self.suffix.split(",")[0].split("=")[1]
        return f"""dn: {self.suffix}
objectClass: dcObject
objectClass: organization
dc: {dc}
o: {self.organization}

dn: {self.people}
objectClass: organizationalUnit
ou: People

dn: {self.groups}
objectClass: organizationalUnit
ou: Groups

dn: {self.computers}
objectClass: organizationalUnit
ou: Computers

dn: {self.admin.dn}
objectClass: inetOrgPerson
uid: adbaadmin
cn: ADBA Admin
sn: Admin
userPassword: {ssha(self.admin.password)}

dn: {self.user.dn}
objectClass: inetOrgPerson
uid: plainuser
cn: Plain User
sn: User
userPassword: {ssha(self.user.password)}

dn: {self.admin_group}
objectClass: groupOfNames
cn: ADBA Admins
member: {self.admin.dn}

dn: {self.computer.dn}
objectClass: device
objectClass: simpleSecurityObject
cn: KMSCLIENT1
description: computer account KMSCLIENT1$
userPassword: {ssha(self.computer.password)}
"""

    def _make_tls(self) -> None:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        tls = self.dir / "tls"
        tls.mkdir(mode=0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        # each lab server is its own CA: a name of its own, so that a bundle of several
        # servers' certificates (replication peers) finds each one's issuer by name
        name = x509.Name(
            [
                x509.NameAttribute(
                    NameOID.ORGANIZATION_NAME, f"{self.organization} {self.dir.name}"
                ),
                x509.NameAttribute(NameOID.COMMON_NAME, self.host),
            ]
        )
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=825))
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.IPAddress(ipaddress.ip_address(self.host)),
                        x509.DNSName("localhost"),
                        # DCs found through the lab's DNS zone (dc1.<domain>, ...)
                        x509.DNSName("*." + self.domain),
                        *(x509.DNSName(n) for n in self.tls_names),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        (tls / "key.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        os.chmod(tls / "key.pem", 0o600)
        (tls / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def _run(self, *argv: str) -> None:
        res = subprocess.run(argv, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise LabError(f"{' '.join(argv[:3])} failed ({res.returncode}): {res.stderr.strip()}")

    def configure(self) -> None:
        if self._configured:
            return
        (self.dir / "db").mkdir()
        (self.dir / "slapd.d").mkdir()
        self._make_tls()
        (self.dir / "config.ldif").write_text(self.gen_config())
        self._run(
            SLAPADD,
            "-F",
            str(self.dir / "slapd.d"),
            "-n",
            "0",
            "-q",
            "-l",
            str(self.dir / "config.ldif"),
        )
        if not self.empty:
            (self.dir / "dit.ldif").write_text(self.gen_dit())
            self.slapadd(self.dir / "dit.ldif")
        self._configured = True

    def slapadd(self, ldif: Path | str) -> None:
        """Bulk-load entries into the data database (only while the server is stopped)."""
        if self.proc is not None:
            raise LabError("slapadd needs the server stopped")
        self._run(SLAPADD, "-F", str(self.dir / "slapd.d"), "-n", "1", "-q", "-l", str(ldif))

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Slapd:
        self.configure()
        last = ""
        if self.fixed_ports:
            self.port, self.tls_port = self.fixed_ports
            self._launch()
            return self
        for _attempt in range(5):
            self.port, self.tls_port = free_port(self.host), free_port(self.host)
            if self.port == self.tls_port:
                continue
            try:
                self._launch()
                return self
            except LabError as exc:  # lost a port race: try new ports
                last = exc.message
                self._terminate()
        raise LabError(f"slapd did not start: {last}")

    def _launch(self) -> None:
        urls = (
            f"ldap://{self.listen}:{self.port}/ ldaps://{self.listen}:{self.tls_port}/ "
            f"{self.ldapi_uri}"
        )
        self._log = open(self.log_file, "ab")  # noqa: SIM115 - closed in _terminate
        self.proc = subprocess.Popen(
            [SLAPD, "-F", str(self.dir / "slapd.d"), "-h", urls, "-d", str(self.debug_level)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LabError(f"slapd exited with {self.proc.returncode}: {self.log_tail()}")
            if self._ready():
                log.debug("slapd ready on %s (pid %d)", self.uri, self.proc.pid)
                return
            time.sleep(0.01)
        raise LabError(f"slapd not ready after {self.start_timeout} s: {self.log_tail()}")

    def _ready(self) -> bool:
        import ldap3

        with socket.socket() as probe:  # TCP first: ldap3 leaks the socket of a refused connect
            probe.settimeout(0.5)
            if probe.connect_ex((self.host, self.port)) != 0:
                return False

        conn = ldap3.Connection(
            ldap3.Server(self.uri, get_info=ldap3.NONE, connect_timeout=0.5),
            self.rootdn,
            self.root.password,
            receive_timeout=1,
            auto_referrals=False,
        )
        try:
            return bool(conn.bind())
        except ldap3.core.exceptions.LDAPException:
            return False
        finally:
            conn.unbind()

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    def _terminate(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        self._terminate()

    def restart(self) -> None:
        """Stop and start again on the same ports (data kept)."""
        self._terminate()
        self._launch()

    def destroy(self) -> None:
        self._terminate()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


NAMED = "/usr/sbin/named"


class Named(_Throwaway):
    """A throwaway BIND9 named on 127.0.0.1, primary for ``zone`` and updatable (RFC 2136)
    with the TSIG key in :attr:`key_file` (``zonesub ANY``): the DNS server ``adba demo``'s KMS
    hosts publish their SRV records into. Lifecycle as for :class:`Slapd`: render named.conf
    and the zone -> launch ``named -g`` -> ready when an SOA query over TCP and UDP is
    answered -> SIGTERM on stop."""

    zone = "lab.example.test"
    keyname = "adba-update."
    host = "127.0.0.1"
    start_timeout = 10.0

    def __init__(self, *, keep: bool = False, prefix: str = "adba-lab-") -> None:
        if not os.access(NAMED, os.X_OK):
            raise LabError(
                f"{NAMED} not found: install BIND9 with "
                "`apt-get install --no-install-recommends bind9`"
            )
        self.keep = keep
        self.dir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        os.chmod(self.dir, 0o700)
        self.secret = base64.b64encode(secrets.token_bytes(32)).decode()
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def nameserver(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def key_file(self) -> str:
        return str(self.dir / "update.key")

    def gen_config(self) -> str:
        d = self.dir
        return f"""key "{self.keyname}" {{ algorithm hmac-sha256; secret "{self.secret}"; }};
options {{
    directory "{d}"; pid-file "{d}/named.pid"; session-keyfile "{d}/session.key";
    managed-keys-directory "{d}"; dump-file "{d}/cache.db"; statistics-file "{d}/stats";
    memstatistics-file "{d}/mem.stats";
    listen-on port {self.port} {{ {self.host}; }}; listen-on-v6 {{ none; }};
    recursion no; allow-query {{ {self.host}; }}; allow-transfer {{ none; }};
    dnssec-validation no; notify no;
}};
controls {{ }};
zone "{self.zone}" {{
    type primary; file "{d}/zone.db"; journal "{d}/zone.db.jnl";
    update-policy {{ grant {self.keyname} zonesub ANY; }};
}};
"""

    def gen_zone(self) -> str:
        return f"""$TTL 60
@    IN SOA ns1.{self.zone}. hostmaster.{self.zone}. ( 1 3600 600 86400 60 )
     IN NS  ns1.{self.zone}.
ns1  IN A   {self.host}
"""

    def start(self) -> Named:
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(
                f'key "{self.keyname}" {{ algorithm hmac-sha256; secret "{self.secret}"; }};\n'
            )
        last = ""
        for _attempt in range(5):
            self.port = free_port(self.host, udp=True)
            (self.dir / "named.conf").write_text(self.gen_config())
            (self.dir / "zone.db").write_text(self.gen_zone())
            self._log = open(self.dir / "named.log", "ab")  # noqa: SIM115 - closed in stop
            self.proc = subprocess.Popen(
                [NAMED, "-g", "-4", "-c", str(self.dir / "named.conf")],
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + self.start_timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self._answers(tcp=False) and self._answers(tcp=True):
                    log.debug("named ready on %s (pid %d)", self.nameserver, self.proc.pid)
                    return self
                time.sleep(0.02)
            last = self.log_tail()
            self.stop()  # lost a port race, or it failed: try again on another port
        raise LabError(f"named did not start: {last}")

    def _answers(self, *, tcp: bool) -> bool:
        import dns.exception
        import dns.message
        import dns.query

        query = dns.message.make_query(self.zone, "SOA")
        try:
            send = dns.query.tcp if tcp else dns.query.udp
            return bool(send(query, self.host, port=self.port, timeout=0.1).answer)
        except (dns.exception.DNSException, OSError):
            return False

    def log_tail(self, lines: int = 10) -> str:
        try:
            text = (self.dir / "named.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def destroy(self) -> None:
        self.stop()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


POSTGRES_BIN = "/usr/lib/postgresql/15/bin"
POSTGRES_USER = "adba-test"


def postgres_missing() -> str | None:
    """Why a throwaway PostgreSQL cannot run here, with the fix (None: it can)."""
    if not os.path.exists(f"{POSTGRES_BIN}/initdb"):
        return f"PostgreSQL is not installed ({POSTGRES_BIN}/initdb): apt-get install postgresql"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg 3 is not installed: pip install 'adba[postgres]'"
    return None


def _postgres_account() -> tuple[int, int]:
    """(uid, gid) PostgreSQL runs as: ours, or as root the system user ``adba-test`` (made
    on first use: PostgreSQL refuses to run as root)."""
    import pwd

    if os.geteuid() != 0:
        return os.geteuid(), os.getegid()
    try:
        entry = pwd.getpwnam(POSTGRES_USER)
    except KeyError:
        made = subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                POSTGRES_USER,
            ],
            capture_output=True,
            text=True,
        )
        if made.returncode != 0 and "already exists" not in made.stderr:
            raise LabError(
                f"cannot create the user {POSTGRES_USER}: {made.stderr.strip()}"
            ) from None
        entry = pwd.getpwnam(POSTGRES_USER)
    return entry.pw_uid, entry.pw_gid


class Postgres(_Throwaway):
    """A throwaway PostgreSQL (Debian's ``postgresql`` 15): ``initdb`` into a temp dir as a
    non-root user, on a free port of 127.0.0.1 and a unix socket in that dir, trust
    authentication for the user ``adba``; ready when a real query round trip succeeds.
    :meth:`stop` is a fast shutdown (SIGINT: sessions are ended, the data kept) and
    :meth:`start` again reuses the data; :meth:`destroy` deletes the dir unless ``keep``.
    ``durable=False`` (tests) turns fsync off."""

    _quiet_exit = False  # an error while destroying it is raised

    def __init__(
        self,
        *,
        durable: bool = False,
        max_connections: int = 300,
        keep: bool = False,
        prefix: str = "adba-lab-pg-",
    ) -> None:
        reason = postgres_missing()
        if reason:
            raise LabError(reason)
        self.durable = durable
        self.max_connections = max_connections
        self.keep = keep
        self.uid, self.gid = _postgres_account()
        self.dir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        os.chown(self.dir, self.uid, self.gid)
        os.chmod(self.dir, 0o700)
        self.data = self.dir / "data"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._initdb()

    @property
    def log_path(self) -> Path:
        return self.dir / "postgres.log"

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(no log)"

    def _env(self) -> dict[str, str]:
        return {
            "PATH": f"{POSTGRES_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": str(self.dir),
        }

    def _initdb(self) -> None:
        argv = [f"{POSTGRES_BIN}/initdb", "-D", str(self.data), "-U", "adba", "--auth=trust"]
        done = subprocess.run(
            [*argv, "-E", "UTF8", "--no-instructions"],
            user=self.uid,
            group=self.gid,
            extra_groups=[],
            cwd=self.dir,
            env=self._env(),
            capture_output=True,
            timeout=120,
        )
        if done.returncode != 0:
            self.keep = True
            raise LabError(f"initdb failed ({done.returncode}): {done.stderr.decode()[-2000:]}")

    def start(self) -> Postgres:
        self.port = self.port or free_port()
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.dir),
            "max_connections": str(self.max_connections),
            "shared_buffers": "32MB",
            "fsync": "on" if self.durable else "off",
            "synchronous_commit": "on" if self.durable else "off",
            "full_page_writes": "on" if self.durable else "off",
            "deadlock_timeout": "200ms",
        }
        argv = [f"{POSTGRES_BIN}/postgres", "-D", str(self.data)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                argv,
                user=self.uid,
                group=self.gid,
                extra_groups=[],
                cwd=self.dir,
                env=self._env(),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 30
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.keep = True
                raise LabError(f"postgres exited {self.proc.returncode}: {self.log_tail()}")
            try:
                self.query("SELECT 1")
                return self
            except Exception as exc:  # not up yet
                last = exc
                time.sleep(0.05)
        self.keep = True
        raise LabError(f"postgres not ready ({last}): {self.log_tail()}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://adba@127.0.0.1:{self.port}/{database}"

    def socket_url(self, database: str = "postgres") -> str:
        return f"postgresql://adba@/{database}?host={self.dir}&port={self.port}"

    def query(self, sql: str, database: str = "postgres") -> list[tuple[object, ...]]:
        """One statement in its own autocommit connection (over the unix socket)."""
        import psycopg

        with psycopg.connect(self.socket_url(database), autocommit=True, connect_timeout=3) as c:
            cur = c.execute(sql.encode())
            return list(cur.fetchall()) if cur.description else []

    def new_database(self) -> str:
        """A fresh empty database; its URL."""
        name = f"t_{secrets.token_hex(6)}"
        self.query(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): sessions are ended, the data kept."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def destroy(self) -> None:
        self.stop()
        if self.keep:
            log.warning("PostgreSQL kept: %s (log %s)", self.dir, self.log_path)
            return
        shutil.rmtree(self.dir, ignore_errors=True)
