"""The web console as a user meets it: a real `adba console serve` (HTTPS) signing users in
against the session's real slapd (StartTLS, lab CA), driven by a real headless browser
(Debian's chromium and chromium-driver through selenium) and, for the refusals that a browser
would never send, by httpx. A failed browser test leaves a screenshot and the page source."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ldap3
import pytest

from adba.inventory.db import Collection, InventoryDB
from tests.conftest import NOW
from tests.servers import TestConsole, TestSlapd

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
MACHINES = 130  # more than two pages of 50
STATUSES = ("licensed", "grace", "notification", "unlicensed")
CHANNELS = ("ADBA", "KMS", "MAK")


def _status(i: int) -> str:
    return STATUSES[i % 4]


def _channel(i: int) -> str:
    return CHANNELS[i % 3]


AVMA_GUESTS = {"vm-web": True, "vm-db": True, "vm-lapsed": False}


def _avma_host_state(d: Path, now: int) -> dict[str, Any]:
    """An AVMA host's state directory as `adba avma serve` leaves it, read by the importer."""
    import json

    from adba.avma.host import HOST_JSON
    from adba.avma.store import GUESTS_DB, GuestStore
    from adba.catalog import load_catalog
    from adba.inventory.importers import read_avma_guests

    (d / HOST_JSON).write_text(json.dumps({"host_id": "hv1.lab.example.test"}))
    store, sku = (
        GuestStore(d / GUESTS_DB),
        str(load_catalog().edition("Nimbus Server Standard").sku),
    )
    for i, (name, licensed) in enumerate(AVMA_GUESTS.items()):
        answer = "activated" if licensed else "avma-host-unlicensed"
        until = now + 7 * 86400 if licensed else now - 86400
        store.record(f"{i:032x}", name, sku, answer, now - 8 * 86400, until)
        store.record(f"{i:032x}", name, sku, answer, now - 60, until if licensed else None)
    return read_avma_guests(str(d))


@pytest.fixture(scope="module")
def inventory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An inventory: MACHINES machines collected twice (the chart has two runs), one more
    never collected, a KMS host's clients, an AVMA host's guests and a MAK's status."""
    path = tmp_path_factory.mktemp("console") / "inventory.sqlite"
    now = int(time.time())
    avma = _avma_host_state(tmp_path_factory.mktemp("hv1-avma"), now)
    with InventoryDB(path) as db:
        names = [f"pc{i:04d}.lab.example.test" for i in range(MACHINES)]
        db.add_machines([(n, None, None) for n in names], source="directory")
        db.add_machines([("never-collected", None, None)], source="manual")
        for run, at in enumerate((now - 86400, now)):
            scan = db.start_scan("collect", now=at)
            db.record(
                scan,
                [
                    Collection(
                        n,
                        at,
                        True,
                        status="licensed" if run == 0 else _status(i),
                        channel=_channel(i),
                        expires_at=at + 86400 * (5 + i % 90),
                    )
                    for i, n in enumerate(names)
                ],
            )
            db.finish_scan(scan, total=len(names), failed=0, now=at)
        db.replace_kms_clients(
            "kms1",
            [
                {"cmid": f"cmid-{i}", "machine": f"pc{i:04d}", "kind": "client", "state": "ok"}
                for i in range(30)
            ],
        )
        db.replace_avma_guests(avma["host"], avma["guests"])
        db.put_key(
            {
                "key_sha256": "ab" * 32,
                "partial_key": "XYZ12",
                "type": "MAK",
                "product": "Nimbus",
                "mak_allowed": 100,
                "mak_used": 42,
                "mak_left": 58,
            }
        )
    return path


@pytest.fixture(scope="module")
def console(
    slapd: TestSlapd, inventory: Path, authority_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestConsole]:
    server = TestConsole(
        slapd,
        inventory,
        tmp_path_factory.mktemp("console-run"),
        "--root-key",
        str(authority_dir / "root.pub"),
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if os.environ.get("ADBA_TEST_VERBOSE"):
            print(server.log_text())


# -- helpers: a user over httpx ---------------------------------------------------------------
def _client(console: TestConsole, source: str = "127.0.0.1") -> httpx.Client:
    import ssl

    verify = ssl.create_default_context(cafile=console.ca_file)
    transport = httpx.HTTPTransport(verify=verify, local_address=source)
    return httpx.Client(base_url=console.url, transport=transport, timeout=20)


def _token(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html[:2000]
    return match.group(1)


def _sign_in(client: httpx.Client, user: str, password: str) -> httpx.Response:
    form = client.get("/signin")
    return client.post(
        "/signin", data={"csrf": _token(form.text), "user": user, "password": password}
    )


@contextlib.contextmanager
def _signed_in(console: TestConsole, user: str, password: str, **kw: Any) -> Iterator[httpx.Client]:
    with _client(console, **kw) as client:
        answer = _sign_in(client, user, password)
        assert answer.status_code == 303, answer.text
        yield client


def _root(slapd: TestSlapd) -> ldap3.Connection:
    return ldap3.Connection(
        ldap3.Server(slapd.uri, get_info=ldap3.NONE),
        slapd.root.dn,
        slapd.root.password,
        auto_bind=True,
    )


def _exists(slapd: TestSlapd, dn: str) -> bool:
    conn = _root(slapd)
    try:
        return bool(conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["cn"]))
    finally:
        conn.unbind()


@pytest.fixture
def published(slapd: TestSlapd, authority_dir: Path, ao_name: str, janitor: list[str]) -> str:
    dn = slapd.publish_csvlk(authority_dir, "Nimbus Server 2026 CSVLK", ao_name, NOW)
    janitor.append(dn)
    return dn


# -- the browser --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def driver(downloads: Path) -> Iterator[Any]:
    """Headless chromium; a missing browser or driver fails with the command that installs
    it (as every other binary the tests need)."""
    for binary, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(binary, os.X_OK):
            pytest.fail(
                f"{binary} not found: install it with "
                f"`apt-get install --no-install-recommends {package}` (or ./bootstrap test)"
            )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--no-first-run",
    ):
        options.add_argument(arg)
    # the console's certificate is the lab's own, not in chromium's trust store
    options.accept_insecure_certs = True
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    browser = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    browser.set_page_load_timeout(30)
    try:
        browser.execute_cdp_cmd(
            "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def browser(
    driver: Any, console: TestConsole, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Any]:
    """The module's browser, signed out, with a fresh window size; when the test fails, a
    screenshot and the page source are saved in its tmp dir (the path is printed)."""
    failed_before = request.session.testsfailed
    driver.set_window_size(1280, 900)
    driver.implicitly_wait(10)  # a page still loading: elements are waited for, not missed
    driver.get(console.url + "/signin")
    driver.delete_all_cookies()
    yield driver
    if request.session.testsfailed > failed_before:
        shot = tmp_path / "failure.png"
        source = tmp_path / "failure.html"
        try:
            driver.save_screenshot(str(shot))
            source.write_text(f"<!-- {driver.current_url} -->\n" + driver.page_source)
            print(f"\nbrowser screenshot: {shot}\npage source: {source}")
        except Exception as exc:  # the browser itself may be what failed
            print(f"\nno screenshot: {exc}")


def _by(what: str) -> Any:
    from selenium.webdriver.common.by import By

    return getattr(By, what)


def _browser_sign_in(browser: Any, console: TestConsole, user: str, password: str) -> None:
    browser.get(console.url + "/signin")
    browser.find_element(_by("ID"), "user").send_keys(user)
    browser.find_element(_by("ID"), "password").send_keys(password)
    _navigate(browser, browser.find_element(_by("ID"), "signin"))


def _navigate(browser: Any, element: Any) -> None:
    """Click ``element`` and wait until the page it loads has replaced this one (a click
    returns once navigation starts: the old page's elements would still be found)."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    page = browser.find_element(_by("TAG_NAME"), "html")
    element.click()

    def replaced(_driver: Any) -> bool:
        try:
            page.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:  # chromium's word for a node of a page gone
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False

    WebDriverWait(browser, 20).until(replaced)


def _column(browser: Any, table: str, index: int) -> list[str]:
    cells = browser.find_elements(_by("CSS_SELECTOR"), f"#{table} tbody tr td:nth-child({index})")
    return [c.text for c in cells]


# -- the browser tests ---------------------------------------------------------------------------
def test_sign_in_see_the_machines_filter_and_page(
    browser: Any, console: TestConsole, slapd: TestSlapd
) -> None:
    _browser_sign_in(browser, console, "adbaadmin", slapd.admin.password)
    assert browser.find_element(_by("ID"), "machine-count").text == str(MACHINES + 1)
    assert browser.find_element(_by("ID"), "who").text == slapd.admin.dn
    counts = dict(
        zip(_column(browser, "by-status", 1), _column(browser, "by-status", 2), strict=True)
    )
    # status as a text label, never colour alone (the ✓/✗ marks are CSS content)
    assert counts["licensed"] == str(len([i for i in range(MACHINES) if _status(i) == "licensed"]))
    assert counts["unknown"] == "1"
    _navigate(browser, browser.find_element(_by("LINK_TEXT"), "Machines"))
    assert browser.find_element(_by("ID"), "total").text == str(MACHINES + 1)
    assert len(_column(browser, "machines", 1)) == 50  # a page, not the whole table
    _navigate(browser, browser.find_element(_by("ID"), "next"))
    assert "page 2 of 3" in browser.find_element(_by("TAG_NAME"), "main").text

    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(_by("ID"), "status")).select_by_value("grace")
    Select(browser.find_element(_by("ID"), "channel")).select_by_value("KMS")
    _navigate(browser, browser.find_element(_by("ID"), "apply"))
    wanted = [i for i in range(MACHINES) if _status(i) == "grace" and _channel(i) == "KMS"]
    assert browser.find_element(_by("ID"), "total").text == str(len(wanted))
    assert set(_column(browser, "machines", 2)) == {"grace"}
    assert set(_column(browser, "machines", 3)) == {"KMS"}
    # sorted by expiry, newest first: a click on the header, twice
    _navigate(browser, browser.find_element(_by("LINK_TEXT"), "Expires"))
    _navigate(browser, browser.find_element(_by("PARTIAL_LINK_TEXT"), "Expires"))
    expiries = _column(browser, "machines", 4)
    assert expiries == sorted(expiries, reverse=True) and len(expiries) == len(wanted)
    browser.find_element(_by("ID"), "q").send_keys("pc0001")
    _navigate(browser, browser.find_element(_by("ID"), "apply"))
    names = _column(browser, "machines", 1)
    assert names and all("pc0001" in n for n in names)


def test_export_csv_is_the_filtered_list(
    browser: Any, console: TestConsole, slapd: TestSlapd, downloads: Path
) -> None:
    _browser_sign_in(browser, console, "adbaadmin", slapd.admin.password)
    browser.get(console.url + "/machines?status=unlicensed")
    for old in downloads.glob("machines*"):
        old.unlink()
    browser.find_element(_by("ID"), "export-csv").click()
    target = downloads / "machines.csv"
    deadline = time.monotonic() + 20
    while not target.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert target.exists(), list(downloads.iterdir())
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    wanted = {f"pc{i:04d}.lab.example.test" for i in range(MACHINES) if _status(i) == "unlicensed"}
    assert {r["name"] for r in rows} == wanted
    assert {r["status"] for r in rows} == {"unlicensed"}


def test_delete_an_object_with_confirmation(
    browser: Any, console: TestConsole, slapd: TestSlapd, published: str, ao_name: str
) -> None:
    _browser_sign_in(browser, console, "adbaadmin", slapd.admin.password)
    _navigate(browser, browser.find_element(_by("LINK_TEXT"), "Activation objects"))
    row = browser.find_element(
        _by("XPATH"), f"//table[@id='objects']//tr[td[1][normalize-space()='{ao_name}']]"
    )
    assert "verified" in row.text  # checked against the pinned root key, in words
    _navigate(browser, row.find_element(_by("LINK_TEXT"), "Delete…"))
    assert browser.find_element(_by("ID"), "dn").text == published
    assert _exists(slapd, published)  # asking is not deleting
    _navigate(browser, browser.find_element(_by("ID"), "confirm-delete"))
    assert published in browser.find_element(_by("ID"), "deleted").text
    assert not _exists(slapd, published)
    assert ao_name not in browser.find_element(_by("TAG_NAME"), "main").text.replace(published, "")


def test_the_avma_page_lists_each_hosts_guests(
    browser: Any, console: TestConsole, slapd: TestSlapd
) -> None:
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    _browser_sign_in(browser, console, "adbaadmin", slapd.admin.password)
    wait = WebDriverWait(browser, 20)  # each click loads a page: wait for it, not a race
    wait.until(ec.element_to_be_clickable((_by("LINK_TEXT"), "AVMA hosts"))).click()
    wait.until(ec.title_contains("AVMA hosts"))
    [host] = browser.find_elements(_by("CSS_SELECTOR"), "section.avma-host")
    assert host.find_element(_by("TAG_NAME"), "h2").text == "hv1.lab.example.test"
    assert "Guests: 3, licensed now: 2" in host.text
    rows = {
        r.find_element(_by("CSS_SELECTOR"), "td:nth-child(1)").text: r.text
        for r in host.find_elements(_by("CSS_SELECTOR"), "tr.guest")
    }
    assert set(rows) == set(AVMA_GUESTS)
    for name, licensed in AVMA_GUESTS.items():
        assert "Nimbus Server Standard" in rows[name]
        # the state in words, never colour alone
        assert (" not licensed " in f" {rows[name]} ") is not licensed, rows[name]
    assert "avma-host-unlicensed" in rows["vm-lapsed"]
    assert browser.find_element(_by("CSS_SELECTOR"), "a[aria-current=page]").text == "AVMA hosts"
    # signed out, the page is not shown: the sign-in form is
    with _client(console, "127.0.0.31") as client:
        answer = client.get("/avma", follow_redirects=False)
        assert answer.status_code == 303 and "vm-web" not in answer.text
        assert answer.headers["location"].endswith("/signin")


def test_wrong_password_is_refused(browser: Any, console: TestConsole, slapd: TestSlapd) -> None:
    _browser_sign_in(browser, console, "adbaadmin", slapd.admin.password + "x")
    assert browser.find_element(_by("ID"), "error").text == "Wrong name or password."
    assert browser.current_url.endswith("/signin")
    assert not [c for c in browser.get_cookies() if c["name"] == "__Host-adba_session"]
    # and the code a script sees
    with _client(console, "127.0.0.20") as client:
        assert _sign_in(client, "adbaadmin", "wrong").status_code == 401
        assert _sign_in(client, "adbaadmin", "").status_code == 401  # never an anonymous bind
        assert client.get("/", follow_redirects=False).status_code == 303


def test_phone_sized_screen(browser: Any, console: TestConsole, slapd: TestSlapd) -> None:
    _browser_sign_in(browser, console, "adbaadmin", slapd.admin.password)
    browser.set_window_size(390, 844)
    for page in ("/", "/machines", "/objects", "/kms", "/avma"):
        browser.get(console.url + page)
        width = browser.execute_script("return document.documentElement.scrollWidth")
        inner = browser.execute_script("return window.innerWidth")
        assert width <= inner, f"{page} scrolls sideways on a phone ({width} > {inner})"
    assert browser.find_element(_by("CSS_SELECTOR"), "meta[name=viewport]")


def test_cookie_holds_only_a_random_id(console: TestConsole, slapd: TestSlapd) -> None:
    with _client(console) as client:
        answer = _sign_in(client, "adbaadmin", slapd.admin.password)
        cookie = next(
            c for c in answer.headers.get_list("set-cookie") if c.startswith("__Host-adba_session")
        )
        flags = {f.strip().lower() for f in cookie.split(";")[1:]}
        assert {"secure", "httponly", "samesite=strict", "path=/"} <= flags
        value = cookie.split(";")[0].split("=", 1)[1]
        assert len(value) >= 40 and slapd.admin.password not in value and "uid" not in value
        page = client.get("/")
        assert "script-src" not in page.headers["content-security-policy"]  # no script at all
        assert "default-src 'none'" in page.headers["content-security-policy"]


# -- refusals a browser never sends (httpx) ----------------------------------------------------
def test_computer_account_cannot_delete(
    console: TestConsole, slapd: TestSlapd, published: str
) -> None:
    with _signed_in(console, slapd.computer.dn, slapd.computer.password) as computer:
        confirm = computer.get("/objects/delete", params={"dn": published})
        assert confirm.status_code == 200  # the computer may read it
        answer = computer.post(
            "/objects/delete",
            data={"csrf": _token(confirm.text), "dn": published, "confirm": "yes"},
        )
    assert answer.status_code == 403
    assert f"The directory refused to let {slapd.computer.dn} delete {published}" in answer.text
    assert "(50)" in answer.text  # the LDAP result: insufficientAccessRights
    assert _exists(slapd, published)


def test_post_without_csrf_token_is_refused(
    console: TestConsole, slapd: TestSlapd, published: str
) -> None:
    with _signed_in(console, "adbaadmin", slapd.admin.password) as admin:
        for form in (
            {"dn": published, "confirm": "yes"},
            {"dn": published, "confirm": "yes", "csrf": "made-up"},
        ):
            answer = admin.post("/objects/delete", data=form)
            assert answer.status_code == 403, answer.text
            assert "CSRF" in answer.text
        assert admin.post("/signout", data={}).status_code == 403
        assert admin.get("/").status_code == 200  # still signed in: the refusal changed nothing
    assert _exists(slapd, published)
    with _client(console) as anonymous:  # the sign-in form too (login CSRF)
        answer = anonymous.post(
            "/signin", data={"user": "adbaadmin", "password": slapd.admin.password}
        )
        assert answer.status_code == 403


def test_another_users_session_is_unreachable(
    console: TestConsole, slapd: TestSlapd, published: str
) -> None:
    with (
        _signed_in(console, "adbaadmin", slapd.admin.password) as admin,
        _signed_in(console, "plainuser", slapd.user.password) as user,
    ):
        admin_page = admin.get("/session")
        assert slapd.admin.dn in admin_page.text
        user_page = user.get("/session")
        assert slapd.user.dn in user_page.text and slapd.admin.dn not in user_page.text
        # the admin's CSRF token with the user's session: refused, nothing deleted
        stolen = _token(admin.get("/objects/delete", params={"dn": published}).text)
        answer = user.post(
            "/objects/delete", data={"csrf": stolen, "dn": published, "confirm": "yes"}
        )
        assert answer.status_code == 403
        assert _exists(slapd, published)
        # a session id nobody was given reaches nothing
        with _client(console) as guess:
            guess.cookies.set("__Host-adba_session", "x" * 43, domain="127.0.0.1")
            assert guess.get("/", follow_redirects=False).status_code == 303
            assert (
                guess.get("/machines", follow_redirects=False)
                .headers["location"]
                .startswith("/signin")
            )
        # signed out, the admin's old cookie opens nothing any more
        cookie = admin.cookies["__Host-adba_session"]
        out = admin.post("/signout", data={"csrf": _token(admin_page.text)})
        assert out.status_code == 303
        with _client(console) as replay:
            replay.cookies.set("__Host-adba_session", cookie, domain="127.0.0.1")
            assert replay.get("/session", follow_redirects=False).status_code == 303
            assert (
                replay.post(
                    "/objects/delete",
                    data={"csrf": stolen, "dn": published, "confirm": "yes"},
                ).status_code
                == 403
            )
    assert _exists(slapd, published)


@pytest.fixture
def extra_user(slapd: TestSlapd) -> Iterator[tuple[str, str]]:
    """A user of its own for the per-user limit (the others' sign-ins stay free)."""
    from adba.lab import ssha

    name = f"limited{int(time.time() * 1000) % 10**8}"
    dn = f"uid={name},{slapd.people}"
    conn = _root(slapd)
    conn.add(
        dn,
        ["inetOrgPerson"],
        {"uid": name, "cn": name, "sn": name, "userPassword": ssha("right-password")},
    )
    assert conn.result["result"] == 0, conn.result
    try:
        yield name, dn
    finally:
        conn.delete(dn)
        conn.unbind()


def test_failed_sign_ins_are_rate_limited(
    console: TestConsole, slapd: TestSlapd, extra_user: tuple[str, str]
) -> None:
    # per source address: 5 failures (any names) from one address, then 429 even when right
    with _client(console, "127.0.0.30") as client:
        for i in range(5):
            assert _sign_in(client, f"nobody{i}", "wrong").status_code == 401
        answer = _sign_in(client, "adbaadmin", slapd.admin.password)
        assert answer.status_code == 429
        assert 1 <= int(answer.headers["retry-after"]) <= 60
    # per user: 5 failures for one user from 5 addresses, then 429 from a sixth
    name, dn = extra_user
    for i in range(5):
        with _client(console, f"127.0.0.{40 + i}") as client:
            # the name and its DN are one user to the limit
            assert _sign_in(client, name if i % 2 else dn, "wrong").status_code == 401
    with _client(console, "127.0.0.50") as client:
        answer = _sign_in(client, name, "right-password")
        assert answer.status_code == 429
        assert int(answer.headers["retry-after"]) >= 1
    # others are not locked out
    with _client(console, "127.0.0.51") as client:
        assert _sign_in(client, "adbaadmin", slapd.admin.password).status_code == 303


def test_directory_tls_is_verified(slapd: TestSlapd, inventory: Path, tmp_path: Path) -> None:
    """A console given the wrong CA refuses to sign anyone in (nothing sent in clear)."""
    from adba.lab import Slapd

    other = Slapd(prefix="adba-othercert-")
    other._make_tls()  # a certificate of another lab: the wrong CA for this slapd
    server = TestConsole(slapd, inventory, tmp_path, "--ca-file", other.ca_file)
    try:
        server.start()
        with _client(server) as client:
            answer = _sign_in(client, "adbaadmin", slapd.admin.password)
        assert answer.status_code == 502, answer.text
        assert "could not be used" in answer.text and "certificate" in answer.text.lower()
    finally:
        server.stop()
        import shutil

        shutil.rmtree(other.dir, ignore_errors=True)


def test_objects_page_names_foreign_and_rejected_objects(
    console: TestConsole, slapd: TestSlapd, ao_name: str, janitor: list[str]
) -> None:
    """What the agent would do with each object, in words: a Windows object is foreign, an
    altered ADBA license rejected with the reason."""
    import uuid

    from adba.directory import store
    from adba.directory.connection import session

    blobs = {
        f"{ao_name}-win": b'<?xml version="1.0"?><rg:licenseGroup xmlns:rg="urn:x"/>',
        f"{ao_name}-bad": b"\x30\x03\x02\x01\x00",  # DER, so ours, but not a license
    }
    with session(slapd.options(slapd.admin)) as conn:
        for cn, blob in blobs.items():
            ao = store.ActivationObject.build(
                cn=cn,
                kms_ids=[uuid.uuid4()],
                csvlk_sku=uuid.uuid4(),
                partial_key="3V66T",
                pid="P",
                issuance_license=blob,
            )
            janitor.append(store.publish(conn, slapd.container, ao))
    with _signed_in(console, "adbaadmin", slapd.admin.password) as admin:
        page = admin.get("/objects").text
    rows = {
        m.group(1): m.group(0)
        for m in re.finditer(r'<tr>\s*<td title="[^"]*">([^<]+)</td>.*?</tr>', page, re.DOTALL)
    }
    assert 'class="status l-foreign">foreign<' in rows[f"{ao_name}-win"]
    assert "Windows object" in rows[f"{ao_name}-win"]
    bad = rows[f"{ao_name}-bad"]
    assert 'class="status l-invalid">rejected<' in bad
    reason = re.search(r"rejected</span></td>\s*<td>([^<]+)</td>", bad)
    assert reason and reason.group(1).strip(), bad  # the reason, not just the verdict
