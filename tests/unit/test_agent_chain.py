"""The agent's channels as one chain: a pinned activation type (act_type) filters it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from adba.agent import run_agent
from adba.authority import LocalAuthority
from adba.errors import ConfigError

NOW = 1_790_000_000


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp: Path, extra: str, product_extra: str = "") -> str:
    auth = LocalAuthority.init(tmp / "auth", now=NOW)
    pw = tmp / "pw"
    pw.write_text("secret")
    pw.chmod(0o600)
    path = tmp / "agent.toml"
    path.write_text(
        f'root_key = "{auth.path / "root.pub"}"\nstate_path = "{tmp / "state.json"}"\n'
        f'dc_uris = ["ldap://127.0.0.1:{_closed_port()}"]\n'
        f'kms_host = "127.0.0.1:{_closed_port()}"\n{extra}'
        f'[machine]\ndn = "cn=H1,dc=x"\npassword_file = "{pw}"\n'
        f'[[products]]\nedition = "Nimbus Server Standard"\n{product_extra}'
    )
    return str(path)


def test_pinned_to_kms_skips_the_directory(tmp_path: Path) -> None:
    report = run_agent(_config(tmp_path, 'act_type = "KMS"\n'), env={}, now=NOW)
    [outcome] = report.outcomes
    assert outcome.code == "kms-unreachable"
    assert outcome.message.startswith("ADBA not tried (act_type = KMS); ")
    assert report.dc is None


def test_a_product_pin_wins_over_the_agents(tmp_path: Path) -> None:
    cfg = _config(tmp_path, 'act_type = "KMS"\n', 'act_type = "ADBA"\n')
    [outcome] = run_agent(cfg, env={}, now=NOW).outcomes
    assert outcome.code == "no-dc"  # the directory tried, and KMS was not (no KMS message)
    assert "KMS" not in outcome.message


def test_pinned_to_mak_without_a_mak_leaves_no_channel(tmp_path: Path) -> None:
    [outcome] = run_agent(_config(tmp_path, 'act_type = "MAK"\n'), env={}, now=NOW).outcomes
    assert (outcome.code, outcome.message) == ("act-type-pinned", "ADBA not tried (act_type = MAK)")


def test_an_unknown_act_type_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="act_type"):
        run_agent(_config(tmp_path, 'act_type = "Token"\n'), env={}, now=NOW)


def test_every_channel_has_the_one_interface_and_act_type_names_them_all() -> None:
    import inspect
    import typing

    from adba.agent._schema import ActType
    from adba.agent.chain import ACT_TYPES, channels

    chain = channels()
    assert tuple(c.NAME for c in chain) == ACT_TYPES == typing.get_args(ActType)
    for channel in chain:
        assert list(inspect.signature(channel.takes).parameters) == ["product", "settings"]
        assert list(inspect.signature(channel.attempt).parameters) == ["p", "batch"]
        # no channel imports back from run.py (the circle the chain removed)
        assert "from .run import" not in inspect.getsource(channel)
