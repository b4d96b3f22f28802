"""What the agent remembers about retired signing keys, and the pinned retirement file in its
configuration (the real agent runs are in tests/integration/test_agent_retirement.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from adba.agent.config import load_settings
from adba.agent.run import _forget_retired, learn_retired
from adba.authority import LocalAuthority
from adba.errors import ConfigError

NOW = 1_790_000_000
A, B, C = "00112233445566aa", "00112233445566bb", "00112233445566cc"


def test_the_retired_set_only_grows_and_ignores_junk() -> None:
    state: dict[str, object] = {}
    assert learn_retired(state, []) == set() and state["retired"] == []
    assert learn_retired(state, [B, A]) == {A, B}
    assert learn_retired(state, []) == {A, B}  # nothing learnt: nothing forgotten
    assert learn_retired(state, [C, "not hex", "00" * 9, 7]) == {A, B, C}
    assert state["retired"] == [A, B, C]
    for junk in ({"x": 1}, 5, "abc", None):  # a damaged state reads as no retirement
        assert learn_retired({"retired": junk}, [A]) == {A}


def test_cached_verifications_of_a_retired_signer_are_forgotten() -> None:
    verified = {
        "a": {"signer": A},
        "b": {"signer": B},
        "phone": {"signer": None},
        "old-layout": {"checked": NOW},
        "junk": 3,
    }
    _forget_retired(verified, set())
    assert len(verified) == 5  # nothing retired: an older layout is still used
    _forget_retired(verified, {A})
    assert sorted(verified) == ["b", "phone"]


def _config(tmp: Path, root: Path, extra: str = "") -> Path:
    path = tmp / "agent.toml"
    path.write_text(
        f'root_key = "{root}"\nstate_path = "{tmp / "state.json"}"\n{extra}'
        '[[products]]\nedition = "Nimbus Server Standard"\n'
    )
    return path


@pytest.fixture
def retired_authority(tmp_path: Path) -> tuple[LocalAuthority, str]:
    auth = LocalAuthority.init(tmp_path / "auth", now=NOW)
    old = auth.certificate.key_id.hex()
    auth.rotate(now=NOW + 1, retire=True)
    return auth, old


def test_retired_pem_beside_the_root_key_is_pinned_and_a_change_revalidates(
    tmp_path: Path, retired_authority: tuple[LocalAuthority, str]
) -> None:
    auth, old = retired_authority
    pins = tmp_path / "pins"
    pins.mkdir()
    shutil.copy(auth.path / "root.pub", pins / "root.pub")
    path = str(_config(tmp_path, pins / "root.pub"))
    settings, cache = load_settings(path, env={})
    assert settings.retired_keys == ()  # none beside the root key: nothing pinned, no error
    shutil.copy(auth.path / "retired.pem", pins / "retired.pem")
    again, _ = load_settings(path, env={}, cache=cache, state_path=str(tmp_path / "state.json"))
    assert again.retired_keys == (old,)  # the file appeared: the cache did not hide it
    (pins / "retired.pem").write_text("garbage\n")
    with pytest.raises(ConfigError, match=rf"retired_keys: {pins / 'retired.pem'} is not"):
        load_settings(path, env={})


def test_a_named_retirement_file_must_exist_and_be_the_roots(
    tmp_path: Path, retired_authority: tuple[LocalAuthority, str]
) -> None:
    auth, old = retired_authority
    pem = tmp_path / "void.pem"
    path = str(_config(tmp_path, auth.path / "root.pub", f'retired_keys = "{pem}"\n'))
    with pytest.raises(ConfigError, match=rf"retired_keys: no retirement file {pem}"):
        load_settings(path, env={})
    rogue = LocalAuthority.init(tmp_path / "rogue", now=NOW)
    rogue.rotate(now=NOW + 1, retire=True)
    shutil.copy(rogue.path / "retired.pem", pem)
    with pytest.raises(ConfigError, match=rf"{pem} is not signed by the pinned root key"):
        load_settings(path, env={})
    shutil.copy(auth.path / "retired.pem", pem)
    assert load_settings(path, env={})[0].retired_keys == (old,)
    # and from the environment, naming the variable
    env = {"ADBA_RETIRED_KEYS": str(tmp_path / "nowhere.pem")}
    with pytest.raises(ConfigError, match=r"^ADBA_RETIRED_KEYS: no retirement file"):
        load_settings(path, env=env)
