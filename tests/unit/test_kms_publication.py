"""The KMS host's publication: the SRV priority and weight options (defaults 0 and 0, as
Windows), and the publishing loop in the library (publish at start, then every interval;
a failure is logged and the loop goes on). The DNS side is a fake here; the real named is in
tests/integration/test_kms_publish.py and test_kms_multi.py."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from adba.cli import main
from adba.discovery import PublishEntry, PublishResult, TsigKey, parse_publish_entry
from adba.errors import DiscoveryError, InvalidInput
from adba.kms import publication
from adba.kms.publication import Publication, keep_published, published_json

KEY = TsigKey("adba-update.", "hmac-sha256", "c2VjcmV0")


def test_entry_defaults_are_windows_defaults_and_the_options_fill_in() -> None:
    assert PublishEntry("example.test") == PublishEntry("example.test", 0, 0)
    assert parse_publish_entry("example.test") == PublishEntry("example.test", 0, 0)
    assert parse_publish_entry("example.test", priority=5, weight=60) == PublishEntry(
        "example.test", 5, 60
    )
    # an entry's own values win over the options, one by one
    assert parse_publish_entry("example.test,1", priority=5, weight=60) == PublishEntry(
        "example.test", 1, 60
    )
    assert parse_publish_entry("example.test,1,2", priority=5, weight=60) == PublishEntry(
        "example.test", 1, 2
    )
    for bad in ({"priority": -1}, {"weight": 65536}):
        with pytest.raises(InvalidInput, match=r"expected 0\.\.65535"):
            parse_publish_entry("example.test", **bad)


@pytest.mark.parametrize("option", ["--priority", "--weight"])
@pytest.mark.parametrize("value", ["-1", "65536", "x", "1.5", ""])
def test_bad_priority_or_weight_is_a_usage_error(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["kms", "publish", "--publish", "example.test", f"{option}={value}"]) == 2
    assert "invalid SRV value" in capsys.readouterr().err


def test_publish_verb_passes_priority_and_weight(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[Publication] = []

    def publish(self: Publication) -> list[PublishResult]:
        seen.append(self)
        return [
            PublishResult(e.domain, self.server, [f"SRV {e.priority} {e.weight}"])
            for e in self.entries
        ]

    monkeypatch.setattr(Publication, "publish", publish)
    key = tmp_path / "k.key"
    key.write_text('key "adba-update." { algorithm hmac-sha256; secret "c2VjcmV0"; };\n')
    code = main(
        [
            "kms", "publish", "--state-dir", str(tmp_path / "none"), "--port", "1700",
            "--publish", "a.test", "--publish", "b.test,10", "--publish", "c.test,10,5",
            "--priority", "3", "--weight", "60", "--dns-server", "192.0.2.53",
            "--tsig-key-file", str(key), "--host-name", "kms1.a.test", "--address", "192.0.2.10",
        ]
    )  # fmt: skip
    assert code == 0
    [pub] = seen
    assert pub.entries == (
        PublishEntry("a.test", 3, 60),
        PublishEntry("b.test", 10, 60),
        PublishEntry("c.test", 10, 5),
    )
    assert (pub.host, pub.port, pub.addresses, pub.server) == (
        "kms1.a.test",
        1700,
        ("192.0.2.10",),
        "192.0.2.53",
    )
    assert capsys.readouterr().out.count("published in") == 3


def _publication() -> Publication:
    return Publication(
        (PublishEntry("example.test", 0, 60),), "kms1.example.test", 1688, (), "192.0.2.53", KEY
    )


def test_keep_published_publishes_at_start_then_every_interval_and_survives_failures(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    outcomes: list[Any] = [
        [PublishResult("example.test", "192.0.2.53", ["r1"])],
        DiscoveryError("the DNS server 192.0.2.53 refused"),
        RuntimeError("disk full"),
        [PublishResult("example.test", "192.0.2.53", ["r2"])],
    ]
    calls: list[int] = []

    def publish(self: Publication) -> list[PublishResult]:
        calls.append(1)
        out = outcomes[min(len(calls), len(outcomes)) - 1]
        if isinstance(out, BaseException):
            raise out
        return list(out)

    monkeypatch.setattr(Publication, "publish", publish)
    recorded: list[tuple[str, list[dict[str, Any]]]] = []

    async def record(name: str, value: str) -> None:
        recorded.append((name, json.loads(value)))

    async def run() -> None:
        task = asyncio.create_task(keep_published(_publication(), record, interval=0.01))
        while len(calls) < 4:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    caplog.set_level(logging.INFO, logger=publication.__name__)
    asyncio.run(asyncio.wait_for(run(), 10))
    assert [r[0]["records"] for _n, r in recorded[:2]] == [["r1"], ["r2"]]
    assert all(name == "published" for name, _r in recorded)
    text = caplog.text
    assert "event=publish-failed reason=the DNS server 192.0.2.53 refused" in text
    assert "event=publish-failed reason=disk full" in text
    assert "event=published domain=example.test" in text


def test_published_json_is_what_status_reads() -> None:
    rows = json.loads(published_json([PublishResult("a.test", "192.0.2.53", ["x"])], now=7))
    assert rows == [{"domain": "a.test", "server": "192.0.2.53", "records": ["x"], "at": 7}]
