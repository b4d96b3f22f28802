from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import TestNamed, TestSlapd

NOW = 1_790_000_000  # a fixed clock: 2026-09-21


def docker_backend() -> bool:
    import os

    return os.environ.get("ADBA_TEST_LDAP") == "docker"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With ADBA_TEST_LDAP=docker only the tests that use the session's ``slapd`` run: the
    others (their own servers, sshd, Samba, KMS host, authority) ran in the local stage and
    would test nothing new against the container."""
    if not docker_backend():
        return
    keep = [i for i in items if "slapd" in getattr(i, "fixturenames", ())]
    dropped = [i for i in items if "slapd" not in getattr(i, "fixturenames", ())]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(scope="session")
def slapd(request: pytest.FixtureRequest) -> Iterator[TestSlapd]:
    """One real slapd for the session, prepared with `adba directory init`: a local process,
    or (ADBA_TEST_LDAP=docker) the containerised one, started through the docker SDK."""
    import os

    if docker_backend():
        from tests.servers import DockerSlapd

        try:
            lab: Any = DockerSlapd()
        except RuntimeError as exc:
            if os.environ.get("ADBA_CI"):
                pytest.fail(str(exc))
            pytest.skip(str(exc))
    else:
        lab = TestSlapd()
    try:
        lab.start()
        lab.adba_init()
        yield lab
    finally:
        lab.keep = request.session.testsfailed > 0
        if lab.keep:
            print(f"\nslapd run directory kept for inspection: {lab.dir}")
        lab.destroy()


_names = itertools.count(1)


@pytest.fixture
def ao_name() -> str:
    """A unique object name per test (the janitor deletes whatever the test left)."""
    return f"test-{int(time.time() * 1000) % 10**9}-{next(_names)}"


@pytest.fixture
def janitor(slapd: TestSlapd) -> Iterator[list[str]]:
    """Tests append DNs they create; they are deleted as root afterwards."""
    created: list[str] = []
    yield created
    import ldap3

    conn = ldap3.Connection(
        ldap3.Server(slapd.uri, get_info=ldap3.NONE),
        slapd.root.dn,
        slapd.root.password,
        auto_bind=True,
    )
    for dn in created:
        conn.delete(dn)
    conn.unbind()


@pytest.fixture(scope="session")
def authority_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from adba.authority import LocalAuthority

    path = tmp_path_factory.mktemp("authority") / "auth"
    LocalAuthority.init(path, now=NOW - 86400)
    return path


@pytest.fixture(scope="session")
def named(request: pytest.FixtureRequest) -> Iterator[TestNamed]:
    """One real named for the session, authoritative for the lab zone."""
    server = TestNamed()
    try:
        server.start()
        yield server
    finally:
        server.keep = request.session.testsfailed > 0
        server.destroy()


def _samba_unavailable() -> str | None:
    import os
    import shutil

    if os.geteuid() != 0:
        return "a Samba AD DC needs root (its LDAP ports are fixed)"
    if not shutil.which("samba-tool"):
        return (
            "Samba AD DC not installed (apt-get install samba samba-ad-dc samba-ad-provision ...)"
        )
    return None


@pytest.fixture(scope="session")
def samba(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """One real Samba AD DC for the session (forest prepared, msSPP default SD repaired), with
    the ADBA Admins group delegated through `adba acl grant`. Skipped with the reason where it
    cannot run -- except in CI (ADBA_CI=1), where that is a failure."""
    import os

    from tests.servers import TestSambaDC

    reason = _samba_unavailable()
    if reason:
        if os.environ.get("ADBA_CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    dc = TestSambaDC("127.0.0.2")
    try:
        dc.start()
        from adba.directory import ad

        ad.grant(dc.options(dc.root), root=dc.suffix, who="ADBA Admins")
        yield dc
    finally:
        dc.keep = request.session.testsfailed > 0
        dc.destroy()


@pytest.fixture(scope="session")
def postgres(request: pytest.FixtureRequest) -> Iterator[Any]:
    """One real PostgreSQL for the session (tests take a fresh database each with
    ``new_database``). Skipped with the reason where it cannot run -- except in CI
    (ADBA_CI=1), where that is a failure."""
    import os

    from tests.servers import TestPostgres, postgres_unavailable

    reason = postgres_unavailable()
    if reason:
        if os.environ.get("ADBA_CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    server = TestPostgres()
    try:
        yield server.start()
    finally:
        server.keep = request.session.testsfailed > 0
        server.destroy()


@pytest.fixture(params=["sqlite", "postgresql"])
def records_database(request: pytest.FixtureRequest) -> str | None:
    """The same authority tests on both engines: None (records.sqlite) or the URL of a fresh
    PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("postgres").new_database())


@pytest.fixture(params=["openldap", "samba"])
def directory(request: pytest.FixtureRequest) -> Any:
    """The same test bodies against OpenLDAP and Samba AD."""
    return request.getfixturevalue("slapd" if request.param == "openldap" else request.param)
