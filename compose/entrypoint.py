#!/opt/adba/bin/python
"""Entrypoints of the compose stack's containers: ldap, dns, postgres, authority, kms, admin,
client.

Every secret is made at first start (never baked into an image) and shared with the other
containers through the ``shared`` volume: passwords, the LDAP CA, the TSIG key, the
authority's root key and the keys it minted for this lab. Each server keeps its data on its
own volume, so a restart keeps published objects, counts and records, and a second
``up`` changes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(os.environ.get("ADBA_SHARED", "/shared"))
DATA = Path(os.environ.get("ADBA_DATA", "/data"))
SUFFIX = "dc=lab,dc=example,dc=test"
ZONE = "lab.example.test"
LDAP_PORT, LDAPS_PORT = 1389, 1636
DNS_PORT = 5353
AUTHORITY = os.environ.get("ADBA_AUTHORITY_URL", "http://authority:8443")


def say(msg: str) -> None:
    print(f"[{sys.argv[1] if len(sys.argv) > 1 else '?'}] {msg}", flush=True)


def wait_for(path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {path}")
        time.sleep(0.5)


def adba(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["adba", *argv], capture_output=True, text=True, check=False)
    if check and res.returncode != 0:
        sys.exit(f"adba {' '.join(argv[:2])} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def share(src: Path, name: str) -> None:
    target = SHARED / name
    tmp = target.with_suffix(".tmp")
    shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o600)
    os.replace(tmp, target)


def supervise(proc: subprocess.Popen[bytes]) -> int:
    """Forward SIGTERM/SIGINT to the server and exit with it."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, _f: proc.send_signal(s))
    return proc.wait()


# -- the directory: three providers replicating with each other -------------------------------
#: this server's ID in the replication group (the one with ID 1 holds the tree; the others
#: join empty and receive it); unset: one server alone, with a self-signed certificate
SERVER_ID = int(os.environ.get("ADBA_LDAP_SERVER_ID", "0") or 0)
#: the name the other containers reach this server by (its certificate carries it)
LDAP_NAME = os.environ.get("ADBA_LDAP_NAME", "ldap")
#: the other providers, by service name
LDAP_PEERS = [p for p in os.environ.get("ADBA_LDAP_PEERS", "").split(",") if p]
#: what only the directory's servers share: the CA's key, the replication password
PKI = Path(os.environ.get("ADBA_LDAP_PKI", "/pki"))
REPLICATOR = f"cn=adba-replicator,{SUFFIX}"


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def make_pki() -> None:
    """At the group's first start (server 1): the CA that issues every server's certificate
    and the replication identity's password. The others wait for them."""
    import datetime
    import secrets

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    PKI.mkdir(parents=True, exist_ok=True)
    if not (PKI / "replicator.password").exists():
        _write_private(PKI / "replicator.password", (secrets.token_urlsafe(18) + "\n").encode())
    if (PKI / "ca.pem").exists():
        return
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ADBA lab directory CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    pem = serialization.PrivateFormat.PKCS8
    _write_private(
        PKI / "ca.key",
        key.private_bytes(serialization.Encoding.PEM, pem, serialization.NoEncryption()),
    )
    _write_private(PKI / "ca.pem", cert.public_bytes(serialization.Encoding.PEM))  # last


def issue(tls: Path, names: list[str]) -> None:
    """This server's key and a certificate from the group's CA for ``names``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_cert = x509.load_pem_x509_certificate((PKI / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((PKI / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    *(x509.DNSName(n) for n in names),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    tls.mkdir(mode=0o700, exist_ok=True)
    _write_private(
        tls / "key.pem",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    (tls / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    shutil.copyfile(PKI / "ca.pem", tls / "ca.pem")


def _wait_tree(data: object, timeout: float = 120) -> None:
    """Until replication has brought the tree (the admin group last of the lab's entries)."""
    import ldap3

    from adba.directory.connection import session
    from adba.errors import AdbaError

    deadline = time.monotonic() + timeout
    while True:
        try:
            with session(data) as conn:  # type: ignore[arg-type]
                conn.search(f"cn=ADBA Admins,ou=Groups,{SUFFIX}", "(objectClass=*)", ldap3.BASE)
                if conn.result["result"] == 0 and conn.response:
                    return
        except AdbaError as exc:
            say(f"waiting for the tree: {exc.message}")
        if time.monotonic() > deadline:
            sys.exit(f"the tree did not arrive from {', '.join(LDAP_PEERS)} in {timeout:g} s")
        time.sleep(0.5)


def ldap() -> int:
    from adba.directory import openldap, replication
    from adba.directory.connection import ConnectionOptions
    from adba.lab import Slapd

    group = SERVER_ID > 0
    holds_tree = SERVER_ID <= 1
    if group and holds_tree:
        make_pki()
    elif group:
        wait_for(PKI / "ca.pem")
        wait_for(PKI / "replicator.password")

    class Server(Slapd):
        def _make_tls(self) -> None:
            if not group:  # alone: a self-signed certificate, as before
                super()._make_tls()
                return
            issue(self.dir / "tls", [LDAP_NAME, f"{LDAP_NAME}.{ZONE}"])

    lab = Server(
        directory=DATA,
        empty=not holds_tree,  # a joiner starts empty and receives the tree
        ports=(LDAP_PORT, LDAPS_PORT),
        listen="0.0.0.0",
        tls_names=(LDAP_NAME, f"{LDAP_NAME}.{ZONE}"),
    )
    ca_file = str(DATA / "tls" / "ca.pem") if group else lab.ca_file
    first = not (DATA / ".adba-initialised").exists()
    lab.start()
    if first:
        data = ConnectionOptions(
            uri=lab.uri, bind_dn=lab.root.dn, password=lab.root.password, ca_file=ca_file
        )
        config = ConnectionOptions(uri=lab.ldapi_uri)

        def init() -> None:
            openldap.init(
                config, data, root=lab.suffix, admin_group=lab.admin_group, computers=lab.computers
            )

        if holds_tree:
            init()
        if group:
            replication.replicate(
                config,
                data,
                root=lab.suffix,
                want=replication.Replication(
                    role=replication.PROVIDER,
                    peers=tuple(f"ldaps://{p}:{LDAPS_PORT}" for p in LDAP_PEERS),
                    replicator_dn=REPLICATOR,
                    replicator_password=(PKI / "replicator.password").read_text().strip(),
                    peer_ca_file=ca_file,
                    server_id=SERVER_ID,
                    retry="2 60 10 +",
                    timeout=2,
                ),
            )
            say(f"provider {SERVER_ID}, replicating with {', '.join(LDAP_PEERS)}")
        if not holds_tree:
            _wait_tree(data)
            init()  # its cn=config part: the tree came from the peers
        (DATA / ".adba-initialised").touch()
        say("schema, index, limits, ACLs and container in place")
    if holds_tree:
        for name in ("root", "adbaadmin", "computer"):
            share(DATA / f"{name}.password", f"ldap-{name}.password")
        share(Path(ca_file), "ldap-ca.pem")
    say(f"serving ldap://0.0.0.0:{LDAP_PORT} and ldaps://0.0.0.0:{LDAPS_PORT}")
    assert lab.proc is not None
    return supervise(lab.proc)


def check() -> int:
    """`adba directory check` on this server as its root, replication included: every peer
    reachable, contextCSNs in agreement, the replication identity's rights (exit 8 naming the
    peer that is down or behind). Run it with ``docker exec``."""
    from urllib.parse import quote

    tls = DATA / "tls"
    ca = tls / "ca.pem" if (tls / "ca.pem").exists() else tls / "cert.pem"
    argv = ["directory", "check", "--config-uri", "ldapi://" + quote(str(DATA / "ldapi"), safe="")]
    argv += ["-H", f"ldap://127.0.0.1:{LDAP_PORT}", "--ca-file", str(ca), "-b", SUFFIX]
    argv += ["-D", f"cn=admin,{SUFFIX}", "--password-file", str(DATA / "root.password")]
    res = adba(*argv, "--timeout", "2", check=False)
    print(res.stdout + res.stderr, end="")
    return res.returncode


def dns() -> int:
    import base64
    import secrets

    DATA.mkdir(parents=True, exist_ok=True)
    key = DATA / "tsig.key"
    if not key.exists():
        secret = base64.b64encode(secrets.token_bytes(32)).decode()
        key.write_text(f'key "kms-update." {{ algorithm hmac-sha256; secret "{secret}"; }};\n')
        (DATA / f"{ZONE}.zone").write_text(
            f"$TTL 60\n@ IN SOA ns1.{ZONE}. hostmaster.{ZONE}. ( 1 3600 600 86400 60 )\n"
            f"  IN NS ns1.{ZONE}.\nns1 IN A 127.0.0.1\n"
        )
    (DATA / "named.conf").write_text(f"""include "{key}";
options {{
    directory "{DATA}"; pid-file "{DATA}/named.pid"; session-keyfile "{DATA}/session.key";
    managed-keys-directory "{DATA}"; listen-on port {DNS_PORT} {{ any; }}; listen-on-v6 {{ none; }};
    recursion no; allow-query {{ any; }}; allow-transfer {{ none; }};
    dnssec-validation no; notify no;
}};
controls {{ }};
zone "{ZONE}" {{ type primary; file "{DATA}/{ZONE}.zone"; journal "{DATA}/{ZONE}.zone.jnl";
    update-policy {{ grant kms-update. name _vlmcs._tcp.{ZONE}. SRV; grant kms-update. subdomain {ZONE}. A AAAA; }}; }};
""")
    share(key, "tsig.key")
    say(f"serving {ZONE} on port {DNS_PORT}")
    return supervise(subprocess.Popen(["named", "-g", "-4", "-c", str(DATA / "named.conf")]))


# -- the vendor: PostgreSQL and the authority's replicas -----------------------------------------
PG_PORT = 5432
#: this replica makes the authority (keys on the shared volume, records in PostgreSQL); the
#: others wait for it and serve the same keys and records
AUTHORITY_INIT = os.environ.get("ADBA_AUTHORITY_INIT", "") == "1"


def postgres() -> int:
    import secrets

    pgdata = DATA / "pg"
    secret = SHARED / "postgres-adba.password"
    if not (pgdata / "PG_VERSION").exists():
        if not secret.exists():
            _write_private(secret, secrets.token_urlsafe(24).encode())
        pwfile = DATA / "pw.tmp"
        _write_private(pwfile, secret.read_bytes())
        subprocess.run(
            [
                "initdb",
                "-D",
                str(pgdata),
                "-U",
                "adba",
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
        )
        pwfile.unlink()
        with open(pgdata / "pg_hba.conf", "a") as hba:
            hba.write("host all all 0.0.0.0/0 scram-sha-256\n")
        # the database itself, made with the server on its socket only (its output to a file:
        # a server holding our pipes would keep pg_ctl's caller waiting)
        run = ["pg_ctl", "-D", str(pgdata), "-w", "-l", str(DATA / "init.log"),
               "-o", f"-c listen_addresses='' -k {DATA}"]  # fmt: skip
        subprocess.run([*run, "start"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["createdb", "-h", str(DATA), "-U", "adba", "adba"], check=True)
        subprocess.run([*run, "stop"], check=True, stdout=subprocess.DEVNULL)
        say("database cluster created")
    say(f"serving PostgreSQL on port {PG_PORT}")
    return supervise(
        subprocess.Popen(
            [
                "postgres",
                "-D",
                str(pgdata),
                "-c",
                "listen_addresses=*",
                "-p",
                str(PG_PORT),
                "-k",
                str(DATA),
            ]
        )
    )


def authority() -> int:
    path = DATA / "authority"
    ready = path / ".ready"
    if AUTHORITY_INIT and not ready.exists():
        wait_for(SHARED / "postgres-adba.password")
        password = (SHARED / "postgres-adba.password").read_text().strip()
        url = f"postgresql://adba:{password}@postgres:{PG_PORT}/adba"
        if not (path / "root.key").exists():
            for _ in range(60):  # PostgreSQL may still be starting
                res = adba("authority", "init", "--path", str(path), "--database", url, check=False)
                if res.returncode == 0:
                    break
                time.sleep(1)
            else:
                sys.exit(f"authority init failed: {res.stderr.strip()}")
        for name, product in (
            ("csvlk", "Nimbus Server 2026 CSVLK"),
            ("kms-csvlk", "Nimbus Server 2026 CSVLK"),
        ):
            if not (DATA / f"{name}.txt").exists():
                key = adba(
                    "authority",
                    "mint",
                    "--path",
                    str(path),
                    "--type",
                    "csvlk",
                    "--product",
                    product,
                ).stdout.strip()
                (DATA / f"{name}.txt").write_text(key + "\n")
                os.chmod(DATA / f"{name}.txt", 0o600)
        ready.touch()
        say("authority created on PostgreSQL; lab keys minted")
    wait_for(ready)
    share(path / "root.pub", "root.pub")
    for name in ("csvlk", "kms-csvlk"):
        share(DATA / f"{name}.txt", f"{name}.txt")
    return supervise(
        subprocess.Popen(
            [
                "adba",
                "authority",
                "serve",
                "--path",
                str(path),
                "--listen",
                "0.0.0.0",
                "--port",
                "8443",
            ]
        )
    )


# -- the KMS hosts: each with its own SRV record, priority, weight and count ---------------------
def kms() -> int:
    state = DATA / "kms"
    host_id = os.environ.get("ADBA_KMS_HOST_ID", "kms1")
    host_name = os.environ.get("ADBA_KMS_HOST_NAME", "kms")
    wait_for(SHARED / "kms-csvlk.txt")
    wait_for(SHARED / "tsig.key")
    if not (state / "host.json").exists():
        for _ in range(60):  # the authority may still be starting
            res = adba(
                "kms",
                "install-key",
                "--state-dir",
                str(state),
                "--key-file",
                str(SHARED / "kms-csvlk.txt"),
                "--online",
                AUTHORITY,
                "--host-id",
                host_id,
                check=False,
            )
            if res.returncode == 0:
                break
            time.sleep(1)
        else:
            sys.exit(f"cannot activate the KMS host key: {res.stderr.strip()}")
        say(res.stdout.strip())
    address = os.environ.get("ADBA_KMS_ADDRESS", "172.28.0.40")
    dns_server = os.environ.get("ADBA_DNS_SERVER", f"172.28.0.53:{DNS_PORT}")
    return supervise(
        subprocess.Popen(
            [
                "adba",
                "kms",
                "serve",
                "--state-dir",
                str(state),
                "--listen",
                "0.0.0.0",
                "--port",
                "1688",
                "--publish",
                ZONE,
                "--dns-server",
                dns_server,
                "--tsig-key-file",
                str(SHARED / "tsig.key"),
                "--host-name",
                f"{host_name}.{ZONE}",
                "--address",
                address,
                "--priority",
                os.environ.get("ADBA_KMS_PRIORITY", "0"),
                "--weight",
                os.environ.get("ADBA_KMS_WEIGHT", "0"),
            ]
        )
    )


def kms_status() -> int:
    """This host's `adba kms status --json` (its own count)."""
    res = adba("kms", "status", "--json", "--state-dir", str(DATA / "kms"), check=False)
    print(res.stdout + res.stderr, end="")
    return res.returncode


def authority_report() -> int:
    """The authority's `report --json`, read through this replica's records."""
    res = adba("authority", "report", "--json", "--path", str(DATA / "authority"), check=False)
    print(res.stdout + res.stderr, end="")
    return res.returncode


# -- the directory admin: publish the lab's activation object once ------------------------------
def conn_args(who: str) -> list[str]:
    host = os.environ.get("ADBA_LDAP_HOST", "ldap")  # any provider: they replicate
    return [
        "-H",
        f"ldap://{host}:{LDAP_PORT}",
        "--ca-file",
        str(SHARED / "ldap-ca.pem"),
        "--tls-name",
        host,
        "-b",
        SUFFIX,
        "-D",
        {
            "adbaadmin": f"uid=adbaadmin,ou=People,{SUFFIX}",
            "computer": f"cn=KMSCLIENT1,ou=Computers,{SUFFIX}",
        }[who],
        "--password-file",
        str(SHARED / f"ldap-{who}.password"),
    ]


def admin() -> int:
    for name in ("ldap-ca.pem", "ldap-adbaadmin.password", "csvlk.txt", "root.pub"):
        wait_for(SHARED / name)
    listed = json.loads(adba("ao", "list", "--json", *conn_args("adbaadmin")).stdout)
    if listed:
        say(f"{len(listed)} activation object(s) already published")
        (SHARED / "published").touch()
        return 0
    for _ in range(60):
        res = adba(
            "ao",
            "publish",
            "--key-file",
            str(SHARED / "csvlk.txt"),
            "--online",
            AUTHORITY,
            "--name",
            "Lab server CSVLK",
            *conn_args("adbaadmin"),
            check=False,
        )
        if res.returncode == 0:
            say(res.stdout.strip())
            (SHARED / "published").touch()  # clients started by `up` wait for this
            return 0
        time.sleep(1)
    sys.exit(f"publish failed: {res.stderr.strip()}")


def objects() -> int:
    """Print the published activation objects (JSON), as the directory admin sees them."""
    print(adba("ao", "list", "--json", *conn_args("adbaadmin")).stdout, end="")
    return 0


def unpublish() -> int:
    """Delete the lab's activation objects (to watch clients fall back to KMS)."""
    for view in json.loads(adba("ao", "list", "--json", *conn_args("adbaadmin")).stdout):
        adba("ao", "delete", "--yes", view["dn"], *conn_args("adbaadmin"))
        say(f"deleted {view['dn']}")
    return 0


# -- a client machine ----------------------------------------------------------------------------------
def client() -> int:
    for name in ("ldap-ca.pem", "ldap-computer.password", "root.pub"):
        wait_for(SHARED / name)
    if os.environ.get("ADBA_WAIT_PUBLISHED"):  # at `up`: boot once the admin has published
        wait_for(SHARED / "published")
    home = Path(os.environ.get("HOME", "/var/lib/adba"))
    password = home / "machine.password"
    shutil.copyfile(SHARED / "ldap-computer.password", password)
    os.chmod(password, 0o600)
    state = os.environ.get("ADBA_STATE", str(home / "state.json"))
    config = home / "agent.toml"
    # every provider, in order: the agent fails over to the next when one is gone
    hosts = [h for h in os.environ.get("ADBA_DC_HOSTS", "ldap").split(",") if h]
    dcs = ", ".join(f'"ldap://{h}:{LDAP_PORT}"' for h in hosts)
    config.write_text(
        f'domain = "{ZONE}"\n'
        f'dns_servers = ["{os.environ.get("ADBA_DNS_SERVER", f"172.28.0.53:{DNS_PORT}")}"]\n'
        f'dc_uris = [{dcs}]\nbase = "{SUFFIX}"\n'
        f'ca_file = "{SHARED / "ldap-ca.pem"}"\nroot_key = "{SHARED / "root.pub"}"\n'
        f'state_path = "{state}"\nmachine_name = "{os.environ.get("ADBA_MACHINE", "client")}"\n'
        f'[machine]\ndn = "cn=KMSCLIENT1,ou=Computers,{SUFFIX}"\npassword_file = "{password}"\n'
        '[[products]]\nedition = "Nimbus Server Standard"\n'
    )
    run = subprocess.run(["adba", "agent", "run", "--once", "--config", str(config)], check=False)
    status = subprocess.run(
        ["adba", "agent", "status", "--json", "--config", str(config)], check=False
    )
    return run.returncode or status.returncode


ROLES = {
    "ldap": ldap,
    "check": check,
    "dns": dns,
    "authority": authority,
    "kms": kms,
    "kms-status": kms_status,
    "postgres": postgres,
    "authority-report": authority_report,
    "admin": admin,
    "objects": objects,
    "unpublish": unpublish,
    "client": client,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ROLES:
        sys.exit(f"usage: entrypoint.py {{{','.join(ROLES)}}}")
    SHARED.mkdir(parents=True, exist_ok=True)
    sys.exit(ROLES[sys.argv[1]]())
