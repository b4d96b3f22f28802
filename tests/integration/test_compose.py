"""The compose stack end to end: up, healthy, a client activated by ADBA, the object kept across
an LDAP container restart, a second `up` idempotent, the object replicated to the other two
providers, the first provider stopped and a client still activated by ADBA through the next,
the object deleted on another provider while the first is down and the first converging once
started again, clients activated by KMS, health checks that turn unhealthy when slapd or the KMS host stops answering, down with
nothing left. Needs a Docker engine and the images (compose/docker-engine.sh start)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adba.lab import free_port

pytestmark = pytest.mark.integration

COMPOSE = str(Path(__file__).resolve().parents[2] / "compose" / "docker-compose.yml")
IMAGES = (
    "adba/adba:latest",
    "adba/openldap:latest",
    "adba/bind9:latest",
    "adba/postgres:latest",
)


def _unavailable() -> str | None:
    if not shutil.which("docker-compose") or not shutil.which("docker"):
        return "docker-compose is not installed (compose/docker-engine.sh start)"
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        return "no Docker engine answers (compose/docker-engine.sh start)"
    for image in IMAGES:
        if (
            subprocess.run(
                ["docker", "image", "inspect", image], capture_output=True, check=False
            ).returncode
            != 0
        ):
            return f"image {image} is not built (compose/docker-engine.sh start)"
    return None


#: the long-running services and their health checks
SERVERS = ("ldap", "ldap2", "ldap3", "dns", "postgres", "authority", "authority2", "kms", "kms2")


class Stack:
    def __init__(self) -> None:
        self.project = f"adbae2e{random.randrange(10**6)}"
        self.env = dict(
            os.environ,
            ADBA_NET=f"172.29.{random.randrange(1, 250)}",
            ADBA_LDAP_PORT=str(free_port()),
        )

    def compose(self, *argv: str, check: bool = True, timeout: float = 180) -> str:
        res = subprocess.run(
            ["docker-compose", "-p", self.project, "-f", COMPOSE, *argv],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and res.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(argv)}: {res.stdout}{res.stderr}")
        return res.stdout

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def health(self, service: str) -> str:
        return subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Health.Status}}", self.container(service)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()

    def wait(self, service: str, status: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while self.health(service) != status:
            if time.monotonic() > deadline:
                logs = self.compose("logs", "--tail=20", service, check=False)
                raise AssertionError(f"{service} not {status}: {self.health(service)}\n{logs}")
            time.sleep(0.5)

    def signal(self, service: str, process: str, sig: str) -> None:
        code = (
            "import os, signal\n"
            "for p in filter(str.isdigit, os.listdir('/proc')):\n"
            "    if int(p) == os.getpid(): continue\n"
            f"    if {process!r} in open(f'/proc/{{p}}/cmdline').read().replace(chr(0), ' '):\n"
            f"        os.kill(int(p), signal.{sig})\n"
        )
        subprocess.run(
            ["docker", "exec", self.container(service), "python3", "-c", code],
            check=True,
            capture_output=True,
        )

    def settle(self) -> None:
        """Wait for the client that `up` started to finish its boot (it must not ask the KMS
        host later, in the middle of the test's own count)."""
        subprocess.run(
            ["docker", "wait", self.container("client")],
            capture_output=True,
            timeout=120,
            check=False,
        )

    def client(self, name: str) -> dict[str, object]:
        out = self.compose(
            "run",
            "--rm",
            "--no-deps",  # a provider the test stopped stays stopped
            "-e",
            f"ADBA_MACHINE={name}",
            "-e",
            "ADBA_WAIT_PUBLISHED=",
            "client",
        )
        status: dict[str, object] = json.loads(out[out.index("{") :])
        [product] = status["products"]  # type: ignore[misc]
        return dict(product)

    def objects(self, server: str = "ldap") -> list[dict[str, object]]:
        """The activation objects as the directory admin reads them on one provider."""
        res = subprocess.run(
            [
                *("docker", "exec", "-e", f"ADBA_LDAP_HOST={server}", self.container(server)),
                *("adba-entrypoint", "objects"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if res.returncode != 0:
            raise AssertionError(f"objects on {server}: {res.stdout}{res.stderr}")
        data: list[dict[str, object]] = json.loads(res.stdout[res.stdout.index("[") :])
        return data

    def admin(self, role: str, server: str = "ldap") -> None:
        self.compose(
            "run",
            "--rm",
            "--no-deps",
            "-e",
            f"ADBA_LDAP_HOST={server}",
            "--entrypoint",
            "adba-entrypoint",
            "admin",
            role,
        )

    def role(self, service: str, role: str) -> dict[str, object]:
        """An entrypoint role run inside ``service``'s container, its JSON output parsed."""
        res = subprocess.run(
            ["docker", "exec", self.container(service), "adba-entrypoint", role],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if res.returncode != 0:
            raise AssertionError(f"{role} on {service}: {res.stdout}{res.stderr}")
        data: dict[str, object] = json.loads(res.stdout[res.stdout.index("{") :])
        return data

    def check(self, server: str) -> tuple[int, str]:
        """`adba directory check` on ``server``, replication included: (exit code, output)."""
        res = subprocess.run(
            ["docker", "exec", self.container(server), "adba-entrypoint", "check"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return res.returncode, res.stdout + res.stderr

    def converged(self, want: int, servers: tuple[str, ...], timeout: float = 30) -> None:
        """Until every server in ``servers`` holds ``want`` objects, the same ones."""
        deadline = time.monotonic() + timeout
        while True:
            seen = {s: sorted(str(o["dn"]) for o in self.objects(s)) for s in servers}
            first = seen[servers[0]]
            if len(first) == want and all(v == first for v in seen.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"providers did not converge in {timeout} s: {seen}")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    reason = _unavailable()
    if reason:
        if os.environ.get("ADBA_CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    s = Stack()
    try:
        s.compose("up", "-d")
        for service in SERVERS:
            s.wait(service, "healthy")
        deadline = time.monotonic() + 90
        while not s.objects():  # the admin's one-shot publish
            assert time.monotonic() < deadline, s.compose("logs", "admin", check=False)
            time.sleep(1)
        s.settle()
        yield s
    finally:
        s.compose("down", "-v", "--remove-orphans", check=False)


def test_the_stack_activates_by_adba_then_by_kms(stack: Stack) -> None:
    # the client `up` started booted once the object was published, and used it
    assert "activated by cn=Lab server CSVLK" in stack.compose("logs", "client")
    product = stack.client("pc0")
    assert (product["status"], product["channel"]) == ("licensed", "ADBA")

    # the directory keeps its objects across a restart of its container (volume)
    stack.compose("restart", "ldap")
    stack.wait("ldap", "healthy")
    assert len(stack.objects()) == 1
    # a second `up` is idempotent: nothing recreated, nothing published twice
    out = stack.compose("up", "-d")
    assert "Recreating" not in out
    stack.settle()
    # published once on ldap, the object is on the other two providers as well
    stack.converged(1, ("ldap", "ldap2", "ldap3"))
    code, out = stack.check("ldap2")
    assert code == 0, out
    assert "ldaps://ldap:1636 answers as cn=adba-replicator" in out
    assert "3 servers agree on every contextCSN" in out

    # the first provider the clients try is stopped: they activate through the next
    stack.compose("stop", "ldap")
    started = time.monotonic()
    product = stack.client("pc-failover")
    took = time.monotonic() - started
    assert (product["status"], product["channel"]) == ("licensed", "ADBA")
    assert took < 60, f"a client with its first DC stopped took {took:.1f} s"
    code, out = stack.check("ldap2")  # the replication check names the provider that is down
    assert code == 8, out
    assert "[FAIL] replication-peer: ldaps://ldap:1636 not reachable" in out
    # deleted on ldap3 while ldap is down; ldap, started again, converges on the deletion
    stack.admin("unpublish", server="ldap3")
    stack.compose("start", "ldap")
    stack.wait("ldap", "healthy")
    stack.converged(0, ("ldap", "ldap2", "ldap3"))

    results = [stack.client(f"pc{i}") for i in range(1, 6)]
    assert [r["status"] for r in results[:4]] == ["grace"] * 4
    assert [r["kms_count"] for r in results] == [1, 2, 3, 4, 5]
    assert (results[4]["status"], results[4]["channel"]) == ("licensed", "KMS")
    net = stack.env["ADBA_NET"]
    assert all(f"{net}.40:" in str(r["kms_host"]) for r in results), results

    # two KMS hosts, two SRV records: with the first (priority 0) stopped, a client moves to the
    # backup (priority 10), which keeps its own count
    stack.compose("stop", "kms")
    try:
        product = stack.client("pc-kms2")
        assert product["status"] == "grace" and f"{net}.41:" in str(product["kms_host"]), product
        assert product["kms_count"] == 1
        deadline = time.monotonic() + 10  # the host saves what it counted once a second
        while stack.role("kms2", "kms-status")["count"] != 1:
            assert time.monotonic() < deadline, stack.role("kms2", "kms-status")
            time.sleep(0.5)
    finally:
        stack.compose("start", "kms")
    stack.wait("kms", "healthy")


def test_the_authority_replicas_share_one_postgresql(stack: Stack) -> None:
    # one replica stopped: `authority` resolves to the other, which holds the same records
    stack.compose("stop", "authority")
    try:
        stack.admin("unpublish")
        stack.compose(
            "run", "--rm", "--no-deps", "--entrypoint", "adba-entrypoint", "admin", "admin"
        )
        product = stack.client("pc-replica")
        assert (product["status"], product["channel"]) == ("licensed", "ADBA")
        report = stack.role("authority2", "authority-report")
    finally:
        stack.compose("start", "authority")
    stack.wait("authority", "healthy")
    # the same forest activated through both replicas counts once; both KMS hosts are recorded
    assert report == stack.role("authority", "authority-report")
    keys = report["keys"]
    assert isinstance(keys, list)
    # serial 1 the CSVLK the admin publishes, serial 2 the KMS host key both hosts installed
    seen = {k["serial"]: (k["forest_activations"], len(k["kms_hosts"])) for k in keys}
    assert seen == {1: (1, 0), 2: (0, 2)}, report


def test_health_checks_follow_slapd_and_the_kms_host(stack: Stack) -> None:
    for service, process in (("ldap", "slapd"), ("kms", "kms serve"), ("postgres", "postgres -D")):
        stack.signal(service, process, "SIGSTOP")
        try:
            stack.wait(service, "unhealthy", timeout=30)
        finally:
            stack.signal(service, process, "SIGCONT")
        stack.wait(service, "healthy", timeout=30)


def test_down_leaves_nothing(stack: Stack) -> None:
    stack.compose("down", "-v", "--remove-orphans")
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={stack.project}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    volumes = subprocess.run(
        [
            "docker",
            "volume",
            "ls",
            "-q",
            "--filter",
            f"label=com.docker.compose.project={stack.project}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert left == [] and volumes == []
