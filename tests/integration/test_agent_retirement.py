"""A retired signing key, met by real agents against a real slapd: the agent learns the
retirement from any newer object (or the pinned retired.pem), before it verifies anything,
remembers it, and refuses what the retired key signed -- cached, old or forged later."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from adba.authority import LocalAuthority
from adba.catalog import load_catalog
from adba.cli import main
from adba.directory import store
from adba.directory.connection import session
from adba.directory.objects import list_views
from adba.license import ForestIdentity, decode_certificate, make_pid, sign_license
from tests.conftest import NOW
from tests.integration.test_agent import SERVER_CSVLK, Agent
from tests.servers import TestSlapd

pytestmark = pytest.mark.integration

DAY = 86400


class Keys:
    """An authority of its own (the session's is shared), its first signing key A kept as a
    thief would keep it, then rotated out with --retire in favour of B."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "authority"
        LocalAuthority.init(self.dir, now=NOW - DAY)
        self.a_key = (self.dir / "signing.key").read_bytes()
        self.a_cert = (self.dir / "signing.cert").read_bytes()
        self.a_id = decode_certificate(self.a_cert).key_id.hex()

    def retire_a(self, now: int) -> str:
        cert = LocalAuthority.open(self.dir).rotate(now=now, retire=True)
        assert not list(self.dir.glob("signing-*.key"))
        assert (self.dir / "retired.pem").is_file()
        return cert.key_id.hex()

    def forge(self, lab: TestSlapd, name: str, issued_at: int) -> str:
        """An object signed with the stolen key A after its retirement, for this forest."""
        key = serialization.load_pem_private_key(self.a_key, password=None)
        assert isinstance(key, Ed25519PrivateKey)
        product = load_catalog().csvlk(SERVER_CSVLK)
        with session(lab.options(lab.admin)) as conn:
            forest = ForestIdentity.of(lab.suffix, store.read_forest_guid(conn, lab.suffix))
            pid = make_pid(product.code, 4242, issued_at)
            der = sign_license(
                signing_private_key=key,
                certificate=decode_certificate(self.a_cert),
                csvlk_sku=product.sku,
                csvlk_pid=pid,
                partial_key="QMJWW",
                kms_ids=product.kms_ids,
                forest=forest,
                issued_at=issued_at,
            )
            ao = store.ActivationObject.build(
                cn=name,
                kms_ids=list(product.kms_ids),
                csvlk_sku=product.sku,
                partial_key="QMJWW",
                pid=pid,
                issuance_license=der,
            )
            return store.publish(conn, lab.container, ao)


def _pinned_elsewhere(tmp: Path, keys: Keys, *, with_retired: bool) -> Path:
    """root.pub (and retired.pem) copied where an agent pins them."""
    pins = tmp / "pins"
    pins.mkdir(exist_ok=True)
    shutil.copy(keys.dir / "root.pub", pins / "root.pub")
    if with_retired:
        shutil.copy(keys.dir / "retired.pem", pins / "retired.pem")
    return pins / "root.pub"


def _delete(lab: TestSlapd, dn: str, janitor: list[str]) -> None:
    with session(lab.options(lab.admin)) as conn:
        store.delete(conn, lab.container, dn)
    janitor.remove(dn)


def test_a_warm_agent_learns_the_retirement_from_a_newer_object_and_refuses_the_old_key(
    slapd: TestSlapd,
    tmp_path: Path,
    ao_name: str,
    janitor: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys = Keys(tmp_path)
    old = slapd.publish_csvlk(keys.dir, SERVER_CSVLK, f"a-{ao_name}", NOW)
    janitor.append(old)
    pins = _pinned_elsewhere(tmp_path, keys, with_retired=False)
    agent = Agent(tmp_path, slapd, keys.dir, root_key=str(pins))
    [outcome] = agent.run(now=NOW).outcomes
    assert outcome.activated and agent.status(now=NOW)["object_dn"] == old
    state = json.loads(agent.state.read_text())
    [entry] = state["verified"].values()
    assert entry["signer"] == keys.a_id and state.get("retired", []) == []

    b_id = keys.retire_a(NOW + DAY)
    new = slapd.publish_csvlk(keys.dir, SERVER_CSVLK, f"b-{ao_name}", NOW + DAY)
    janitor.append(new)
    # the warm agent meets its cached object A first (it sorts first), and B's object,
    # which states that A is retired: the cached verification is forgotten, A refused
    with caplog.at_level("WARNING", logger="adba"):
        [outcome] = agent.run(now=NOW + 2 * DAY).outcomes
    assert outcome.activated, outcome
    assert agent.status(now=NOW + 2 * DAY)["object_dn"] == new
    assert any(
        old in r.getMessage()
        and f"key {keys.a_id}, which the authority has retired" in r.getMessage()
        for r in caplog.records
    )
    state = json.loads(agent.state.read_text())
    assert state["retired"] == [keys.a_id]
    assert {e["signer"] for e in state["verified"].values()} == {b_id}

    # B's object goes: the agent remembers (the state never forgets a retirement)
    _delete(slapd, new, janitor)
    [outcome] = agent.run(now=NOW + 10 * DAY).outcomes  # renewal due
    assert (outcome.activated, outcome.code) == (False, "objects-rejected"), outcome
    assert "has retired" in outcome.message and keys.a_id in outcome.message
    assert agent.status(now=NOW + 10 * DAY)["last_error_code"] == "objects-rejected"
    # a forgery with the stolen key A, published later under another name: refused too
    forged = keys.forge(slapd, f"c-{ao_name}", NOW + 10 * DAY)
    janitor.append(forged)
    [outcome] = agent.run(now=NOW + 11 * DAY).outcomes
    assert (outcome.activated, outcome.code) == (False, "objects-rejected"), outcome
    assert json.loads(agent.state.read_text())["retired"] == [keys.a_id]


def test_a_fresh_agent_reads_every_retirement_before_it_verifies_any_object(
    slapd: TestSlapd, tmp_path: Path, ao_name: str, janitor: list[str]
) -> None:
    keys = Keys(tmp_path)
    keys.retire_a(NOW + DAY)
    new = slapd.publish_csvlk(keys.dir, SERVER_CSVLK, f"z-{ao_name}", NOW + DAY)
    janitor.append(new)
    forged = keys.forge(slapd, f"a-{ao_name}", NOW + DAY)  # sorts first: met first
    janitor.append(forged)
    pins = _pinned_elsewhere(tmp_path, keys, with_retired=False)
    agent = Agent(tmp_path, slapd, keys.dir, root_key=str(pins))
    [outcome] = agent.run(now=NOW + 2 * DAY).outcomes
    assert outcome.activated, outcome
    assert agent.status(now=NOW + 2 * DAY)["object_dn"] == new  # not the forgery
    assert json.loads(agent.state.read_text())["retired"] == [keys.a_id]
    # `ao list` learns from the objects it lists the same way
    views = {
        v.dn: v
        for v in list_views(
            slapd.options(slapd.admin),
            root=slapd.suffix,
            catalog=load_catalog(),
            root_public_key=LocalAuthority.open(keys.dir).root_public_key,
            now=NOW + 2 * DAY,
        )
    }
    assert views[new].license == "verified"
    assert views[forged].license == "invalid" and "has retired" in views[forged].license_detail

    # without B's object and without the pin, a fresh agent cannot know: the forgery
    # verifies (what the pinned retired.pem is for)
    _delete(slapd, new, janitor)
    (tmp_path / "blind").mkdir()
    blind = Agent(tmp_path / "blind", slapd, keys.dir, root_key=str(pins))
    [outcome] = blind.run(now=NOW + 2 * DAY).outcomes
    assert outcome.activated and blind.status(now=NOW + 2 * DAY)["object_dn"] == forged


@pytest.mark.parametrize("pin", ["beside-root-key", "retired_keys"])
def test_the_pinned_retired_pem_alone_makes_a_fresh_agent_refuse_the_old_key(
    pin: str, slapd: TestSlapd, tmp_path: Path, ao_name: str, janitor: list[str]
) -> None:
    keys = Keys(tmp_path)
    old = slapd.publish_csvlk(keys.dir, SERVER_CSVLK, f"a-{ao_name}", NOW)
    janitor.append(old)
    keys.retire_a(NOW + DAY)  # no object from B anywhere
    if pin == "beside-root-key":
        root = _pinned_elsewhere(tmp_path, keys, with_retired=True)
        agent = Agent(tmp_path, slapd, keys.dir, root_key=str(root))
    else:
        root = _pinned_elsewhere(tmp_path, keys, with_retired=False)
        shutil.copy(keys.dir / "retired.pem", tmp_path / "void.pem")
        agent = Agent(
            tmp_path, slapd, keys.dir, root_key=str(root), retired_keys=str(tmp_path / "void.pem")
        )
    [outcome] = agent.run(now=NOW + 2 * DAY).outcomes
    assert (outcome.activated, outcome.code) == (False, "objects-rejected"), outcome
    assert f"key {keys.a_id}, which the authority has retired" in outcome.message
    assert json.loads(agent.state.read_text())["retired"] == [keys.a_id]


def test_a_warm_agent_refuses_its_cached_object_once_the_pin_arrives(
    slapd: TestSlapd, tmp_path: Path, ao_name: str, janitor: list[str]
) -> None:
    keys = Keys(tmp_path)
    old = slapd.publish_csvlk(keys.dir, SERVER_CSVLK, f"a-{ao_name}", NOW)
    janitor.append(old)
    root = _pinned_elsewhere(tmp_path, keys, with_retired=False)
    agent = Agent(tmp_path, slapd, keys.dir, root_key=str(root))
    assert agent.run(now=NOW).outcomes[0].activated
    keys.retire_a(NOW + DAY)
    shutil.copy(keys.dir / "retired.pem", root.parent / "retired.pem")  # shipped to the client
    [outcome] = agent.run(now=NOW + 8 * DAY).outcomes
    assert (outcome.activated, outcome.code) == (False, "objects-rejected"), outcome
    # the pin is removed again: the state remembers
    (root.parent / "retired.pem").unlink()
    [outcome] = agent.run(now=NOW + 9 * DAY).outcomes
    assert (outcome.activated, outcome.code) == (False, "objects-rejected"), outcome


@pytest.mark.parametrize("damage", ["byte-flipped", "other-root", "missing"])
def test_a_bad_retirement_file_is_a_config_error_naming_it(
    damage: str,
    slapd: TestSlapd,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys = Keys(tmp_path)
    keys.retire_a(NOW + DAY)
    pem = tmp_path / "retired.pem"
    if damage == "byte-flipped":
        lines = (keys.dir / "retired.pem").read_text().splitlines()
        body = lines[1]
        lines[1] = body[:20] + ("A" if body[20] != "A" else "B") + body[21:]
        pem.write_text("\n".join(lines) + "\n")
    elif damage == "other-root":
        rogue = LocalAuthority.init(tmp_path / "rogue", now=NOW)
        rogue.rotate(now=NOW + 1, retire=True)
        shutil.copy(rogue.path / "retired.pem", pem)
    root = _pinned_elsewhere(tmp_path, keys, with_retired=False)
    agent = Agent(tmp_path, slapd, keys.dir, root_key=str(root), retired_keys=str(pem))
    assert main(["agent", "run", "--config", str(agent.path)]) == 15
    err = capsys.readouterr().err
    assert f"retired_keys: {'no retirement file ' if damage == 'missing' else ''}{pem}" in err
    assert err.count("\n") == 1


def test_a_warm_boot_after_a_retirement_decodes_nothing(
    slapd: TestSlapd, tmp_path: Path, ao_name: str, janitor: list[str]
) -> None:
    import subprocess
    import sys

    keys = Keys(tmp_path)
    janitor.append(slapd.publish_csvlk(keys.dir, SERVER_CSVLK, f"a-{ao_name}", NOW))
    keys.retire_a(NOW + DAY)
    janitor.append(slapd.publish_csvlk(keys.dir, SERVER_CSVLK, f"b-{ao_name}", NOW + DAY))
    agent = Agent(tmp_path, slapd, keys.dir)  # retired.pem beside root.pub: pinned too
    code = (
        "import sys; from adba.cli import main; "
        f"rc = main(['agent', 'run', '--once', '--config', {str(agent.path)!r}]); "
        "print(rc, *(m in sys.modules for m in ('pydantic', 'cryptography', 'adba.license')))"
    )
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        for _ in range(2)
    ]
    assert runs[0].stdout.split()[-4:] == ["0", "True", "True", "True"], runs[0].stdout
    assert runs[1].stdout.split()[-4:] == ["0", "False", "False", "False"], runs[1].stdout
    state = json.loads(agent.state.read_text())
    assert state["retired"] == [keys.a_id] and len(state["scanned"]) == 2
