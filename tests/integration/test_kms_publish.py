"""KMS host DNS publication (RFC 2136 + TSIG) against a real BIND9 named."""

from __future__ import annotations

import base64
import functools
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import dns.resolver
import pytest

from adba.discovery import (
    PublishEntry,
    TsigKey,
    kms_srv_names,
    load_tsig_key,
    locate,
    make_resolver,
    order_targets,
    publish_kms,
    unpublish_kms,
)
from adba.errors import DiscoveryError
from tests.servers import TestNamed

pytestmark = pytest.mark.integration

KMS_PORT = 1688


@pytest.fixture
def key(named: TestNamed, tmp_path: Path) -> TsigKey:
    """The lab's key, read back from a key file in BIND's format (as tsig-keygen writes it)."""
    path = tmp_path / "adba-update.key"
    path.write_text(
        f'key "{named.keyname}" {{\n\talgorithm hmac-sha256;\n\tsecret "{named.secret}";\n}};\n'
    )
    return load_tsig_key(str(path))


@pytest.fixture
def srv_janitor(named: TestNamed) -> Iterator[list[str]]:
    """Tests append relative names they wrote to; their SRV/A/AAAA RRsets go afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        for rdtype in ("SRV", "A", "AAAA"):
            named.update(name, rdtype, [])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _kms_targets(named: TestNamed) -> dict[str, tuple[int, int, int, tuple[str, ...]]]:
    targets = locate(kms_srv_names(named.zone), make_resolver([named.nameserver]))
    return {t.host: (t.priority, t.weight, t.port, t.addresses) for t in targets}


def test_publish_two_hosts_republish_and_unpublish(
    named: TestNamed, key: TsigKey, srv_janitor: list[str]
) -> None:
    zone = named.zone
    srv_janitor += ["_vlmcs._tcp", "kms-a", "kms-b"]
    host_a, host_b = f"kms-a.{zone}", f"kms-b.{zone}"
    pub = functools.partial(publish_kms, server=named.nameserver, key=key, timeout=3.0)
    unpub = functools.partial(unpublish_kms, server=named.nameserver, key=key, timeout=3.0)

    result = pub([PublishEntry(zone, 0, 100)], host=host_a, addresses=["192.0.2.10"], port=KMS_PORT)
    assert result[0].domain == zone and result[0].server == named.nameserver
    assert result[0].records == [
        f"_vlmcs._tcp.{zone}. 300 SRV 0 100 1688 {host_a}.",
        f"{host_a}. 300 A 192.0.2.10",
    ]
    pub(
        [PublishEntry(zone, 10, 50)],
        host=host_b,
        addresses=["192.0.2.11", "2001:db8::11"],
        port=KMS_PORT,
    )
    assert _kms_targets(named) == {
        host_a: (0, 100, KMS_PORT, ("192.0.2.10",)),
        host_b: (10, 50, KMS_PORT, ("192.0.2.11", "2001:db8::11")),
    }

    # republishing host a with another priority replaces its record, and its address
    pub([PublishEntry(zone, 20, 5)], host=host_a, addresses=["192.0.2.20"], port=KMS_PORT)
    assert _kms_targets(named) == {
        host_a: (20, 5, KMS_PORT, ("192.0.2.20",)),
        host_b: (10, 50, KMS_PORT, ("192.0.2.11", "2001:db8::11")),
    }
    # the same values again: still one record, and the update still succeeds
    pub([PublishEntry(zone, 20, 5)], host=host_a, addresses=["192.0.2.20"], port=KMS_PORT)
    assert len(_kms_targets(named)) == 2

    # unpublishing host a leaves host b alone
    gone = unpub([PublishEntry(zone)], host=host_a, addresses=["192.0.2.20"], port=KMS_PORT)
    assert gone[0].records == [
        f"_vlmcs._tcp.{zone}. SRV 20 5 1688 {host_a}.",
        f"{host_a}. A 192.0.2.20",
    ]
    assert _kms_targets(named) == {host_b: (10, 50, KMS_PORT, ("192.0.2.11", "2001:db8::11"))}
    with pytest.raises(dns.resolver.NXDOMAIN):
        make_resolver([named.nameserver]).resolve(host_a, "A")
    again = unpub([PublishEntry(zone)], host=host_a, addresses=["192.0.2.20"], port=KMS_PORT)
    assert again[0].records == []

    unpub(
        [PublishEntry(zone)], host=host_b, addresses=["192.0.2.11", "2001:db8::11"], port=KMS_PORT
    )
    assert _kms_targets(named) == {}


def test_same_host_other_port_is_another_record(
    named: TestNamed, key: TsigKey, srv_janitor: list[str]
) -> None:
    zone = named.zone
    srv_janitor += ["_vlmcs._tcp", "kms-p"]
    host = f"kms-p.{zone}"
    pub = functools.partial(publish_kms, server=named.nameserver, key=key, timeout=3.0)
    unpub = functools.partial(unpublish_kms, server=named.nameserver, key=key, timeout=3.0)
    addresses = ["192.0.2.30"]
    pub([PublishEntry(zone)], host=host, port=1688, addresses=addresses)
    pub([PublishEntry(zone)], host=host, port=1689, addresses=addresses)
    targets = locate(kms_srv_names(zone), make_resolver([named.nameserver]))
    assert sorted(t.port for t in targets) == [1688, 1689]
    unpub([PublishEntry(zone)], host=host, port=1688, addresses=addresses)
    targets = locate(kms_srv_names(zone), make_resolver([named.nameserver]))
    assert [t.port for t in targets] == [1689]


def test_host_outside_the_domain_publishes_srv_only(
    named: TestNamed, key: TsigKey, srv_janitor: list[str]
) -> None:
    zone = named.zone
    srv_janitor += ["_vlmcs._tcp"]
    result = publish_kms(
        [PublishEntry(zone)],
        host="kms.elsewhere.test",
        port=KMS_PORT,
        addresses=["192.0.2.40"],
        server=named.nameserver,
        key=key,
    )
    assert result[0].records == [f"_vlmcs._tcp.{zone}. 300 SRV 0 0 1688 kms.elsewhere.test."]


def test_wrong_secret(named: TestNamed, key: TsigKey) -> None:
    bad = key._replace(secret=base64.b64encode(secrets.token_bytes(32)).decode())
    with pytest.raises(DiscoveryError, match=r"rejected the TSIG key adba-update\. .*key file"):
        publish_kms(
            [PublishEntry(named.zone)],
            host=f"kms-x.{named.zone}",
            port=KMS_PORT,
            addresses=[],
            server=named.nameserver,
            key=bad,
        )


def test_unknown_key_name(named: TestNamed, key: TsigKey) -> None:
    stranger = key._replace(name="nobody-knows-me.")
    with pytest.raises(DiscoveryError, match=r"rejected the TSIG key nobody-knows-me\."):
        publish_kms(
            [PublishEntry(named.zone)],
            host=f"kms-x.{named.zone}",
            port=KMS_PORT,
            addresses=[],
            server=named.nameserver,
            key=stranger,
        )


def test_unreachable_server(named: TestNamed, key: TsigKey) -> None:
    server = f"127.0.0.1:{_free_port()}"
    with pytest.raises(DiscoveryError, match=rf"cannot reach the DNS server {server}") as info:
        publish_kms(
            [PublishEntry(named.zone)],
            host=f"kms-x.{named.zone}",
            port=KMS_PORT,
            addresses=[],
            server=server,
            key=key,
            timeout=1.0,
        )
    assert info.value.server == server  # type: ignore[attr-defined]


def test_server_that_never_answers(named: TestNamed, key: TsigKey) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # the connection completes in the backlog; nothing ever answers
        server = f"127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(DiscoveryError, match=r"cannot reach .* \(timed out\)"):
            publish_kms(
                [PublishEntry(named.zone)],
                host=f"kms-x.{named.zone}",
                port=KMS_PORT,
                addresses=[],
                server=server,
                key=key,
                timeout=0.3,
            )


def test_zone_the_server_does_not_serve(named: TestNamed, key: TsigKey) -> None:
    with pytest.raises(DiscoveryError, match="does not serve a zone holding") as info:
        publish_kms(
            [PublishEntry("other.test")],
            host=f"kms-x.{named.zone}",
            port=KMS_PORT,
            addresses=[],
            server=named.nameserver,
            key=key,
        )
    assert "_vlmcs._tcp.other.test" in str(info.value) and "no rights" not in str(info.value)


def test_key_without_rights(named: TestNamed, tmp_path: Path) -> None:
    path = tmp_path / "limited.key"
    path.write_text(
        f'key "{named.limited_keyname}" {{ algorithm hmac-sha256; secret "{named.secret}"; }};\n'
    )
    with pytest.raises(DiscoveryError, match="no rights for this key") as info:
        publish_kms(
            [PublishEntry(named.zone)],
            host=f"kms-x.{named.zone}",
            port=KMS_PORT,
            addresses=[],
            server=named.nameserver,
            key=load_tsig_key(str(path)),
        )
    assert f"serves the zone {named.zone}" in str(info.value)


def test_subdomain_publishes_into_the_enclosing_zone(
    named: TestNamed, key: TsigKey, srv_janitor: list[str]
) -> None:
    """``--publish branch.example.test`` where only example.test is a zone: the SRV record
    goes into example.test's zone (found by an SOA query), as RFC 2136 clients do."""
    srv_janitor.append("_vlmcs._tcp.sub")
    publish_kms(
        [PublishEntry(f"sub.{named.zone}", 10, 50)],
        host=f"kms-x.{named.zone}",
        port=KMS_PORT,
        addresses=[],
        server=named.nameserver,
        key=key,
    )
    targets = locate(kms_srv_names(f"sub.{named.zone}"), make_resolver([named.nameserver]))
    assert [(t.host, t.priority, t.weight) for t in targets] == [(f"kms-x.{named.zone}", 10, 50)]


def test_weighted_order_of_published_records(named: TestNamed, srv_janitor: list[str]) -> None:
    """RFC 2782 through a real answer: priority 0 (weights 1 and 3) always before priority
    10, and the weight-3 host first in 75% of draws."""
    import random

    zone = named.zone
    srv_janitor += ["_vlmcs._tcp"]
    named.update(
        "_vlmcs._tcp",
        "SRV",
        [f"0 1 1688 kms-w1.{zone}.", f"0 3 1688 kms-w3.{zone}.", f"10 100 1688 kms-w100.{zone}."],
    )
    targets = locate(kms_srv_names(zone), make_resolver([named.nameserver]))
    assert sorted(t.host for t in targets) == [
        f"kms-w1.{zone}",
        f"kms-w100.{zone}",
        f"kms-w3.{zone}",
    ]
    rng = random.Random(2782)
    draws = 2000
    first_w3 = 0
    for _ in range(draws):
        order = [t.host.split(".")[0] for t in order_targets(targets, rng)]
        assert order[2] == "kms-w100"
        first_w3 += order[0] == "kms-w3"
    assert abs(first_w3 / draws - 0.75) <= 0.04


def test_hosts_publishing_at_once_keep_each_others_records(
    named: TestNamed, key: TsigKey, srv_janitor: list[str]
) -> None:
    """Eight hosts publish into one zone at the same instant, then republish with new weights,
    then half of them unpublish at once: each update adds and deletes only its own rdata, so
    no host's record is lost or left behind whatever the interleaving."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    zone = named.zone
    names = [f"kms-c{i}" for i in range(8)]
    srv_janitor += ["_vlmcs._tcp", *names]
    barrier = threading.Barrier(len(names))

    def publish(i: int, weight: int, remove: bool = False) -> None:
        fn = unpublish_kms if remove else publish_kms
        barrier.wait(5)
        fn(
            [PublishEntry(zone, 0, weight)],
            host=f"{names[i]}.{zone}",
            port=KMS_PORT + i,
            addresses=[f"192.0.2.{100 + i}"],
            server=named.nameserver,
            key=key,
            timeout=5.0,
        )

    def run_all(jobs: list[tuple[int, int, bool]]) -> None:
        with ThreadPoolExecutor(len(jobs)) as pool:
            for future in [pool.submit(publish, *job) for job in jobs]:
                future.result()

    run_all([(i, 10 + i, False) for i in range(8)])
    assert _kms_targets(named) == {
        f"{n}.{zone}": (0, 10 + i, KMS_PORT + i, (f"192.0.2.{100 + i}",))
        for i, n in enumerate(names)
    }
    run_all([(i, 50 + i, False) for i in range(8)])
    assert _kms_targets(named) == {
        f"{n}.{zone}": (0, 50 + i, KMS_PORT + i, (f"192.0.2.{100 + i}",))
        for i, n in enumerate(names)
    }
    barrier = threading.Barrier(4)
    run_all([(i, 0, True) for i in range(0, 8, 2)])
    assert _kms_targets(named) == {
        f"{names[i]}.{zone}": (0, 50 + i, KMS_PORT + i, (f"192.0.2.{100 + i}",))
        for i in range(1, 8, 2)
    }
