"""Which KMS host a client asks: RFC 2782 order (priority, weights, weight 0), then failover
to the next host, the cached host first. DNS and the hosts are fakes here; the real named
and real hosts are in tests/integration/test_kms_multi.py."""

from __future__ import annotations

import itertools
import random
import uuid
from collections import Counter
from typing import Any

import pytest

from adba import discovery
from adba.discovery import ServiceTarget, order_targets
from adba.errors import KmsError
from adba.kms import client
from adba.kms.client import (
    Candidate,
    KmsClockSkew,
    KmsHosts,
    KmsUnreachable,
    RogueHost,
    ask_first,
)


def _t(host: str, priority: int, weight: int, port: int = 1688) -> ServiceTarget:
    return ServiceTarget(host, port, priority, weight, (f"192.0.2.{len(host)}",))


def _chi_square(observed: Counter[str], expected: dict[str, float]) -> float:
    n = sum(observed.values())
    return sum((observed[k] - n * p) ** 2 / (n * p) for k, p in expected.items())


#: chi-square critical values at p = 0.001 by degrees of freedom
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27}


def test_first_choice_share_is_the_weight_share() -> None:
    targets = [_t("a", 0, 60), _t("b", 0, 30), _t("c", 0, 10)]
    rng = random.Random(2782)
    firsts = Counter(order_targets(targets, rng)[0].host for _ in range(6000))
    assert _chi_square(firsts, {"a": 0.6, "b": 0.3, "c": 0.1}) < CHI2_999[2], firsts


def test_the_weights_hold_for_small_weights_too() -> None:
    """Weights 3 and 1 share 75/25 exactly (the RFC's draw from 0 would give 70/30)."""
    rng = random.Random(5)
    firsts = Counter(
        order_targets([_t("w3", 0, 3), _t("w1", 0, 1)], rng)[0].host for _ in range(8000)
    )
    assert _chi_square(firsts, {"w3": 0.75, "w1": 0.25}) < CHI2_999[1], firsts


def test_second_choice_follows_the_remaining_weights() -> None:
    """Without replacement: when a is drawn first, b comes second with 30/40."""
    targets = [_t("a", 0, 60), _t("b", 0, 30), _t("c", 0, 10)]
    rng = random.Random(11)
    seconds = Counter(
        order[1].host
        for order in (order_targets(targets, rng) for _ in range(8000))
        if order[0].host == "a"
    )
    assert _chi_square(seconds, {"b": 0.75, "c": 0.25}) < CHI2_999[1], seconds


def test_lower_priority_always_first_whatever_the_weights() -> None:
    targets = [
        _t("p10-heavy", 10, 65535),
        _t("p0-light", 0, 1),
        _t("p0-zero", 0, 0),
        _t("p5", 5, 0),
    ]
    rng = random.Random(3)
    for _ in range(500):
        order = [t.host for t in order_targets(targets, rng)]
        assert sorted(order[:2]) == ["p0-light", "p0-zero"]
        assert order[2:] == ["p5", "p10-heavy"]


def test_weight_zero_per_rfc_2782() -> None:
    rng = random.Random(17)
    # all weight 0: uniformly random, every permutation seen about equally
    three = [_t("x", 0, 0), _t("y", 0, 0), _t("z", 0, 0)]
    orders = Counter(tuple(t.host for t in order_targets(three, rng)) for _ in range(6000))
    assert set(orders) == set(itertools.permutations("xyz"))
    assert _chi_square(orders, {o: 1 / 6 for o in orders}) < 20.52  # df 5, p 0.001
    # weight 0 among weighted ones: first with chance 1/(W+1), shared by the weight-0 ones
    mixed = [_t("z1", 0, 0), _t("z2", 0, 0), _t("h", 0, 9)]
    firsts = Counter(order_targets(mixed, rng)[0].host for _ in range(10000))
    assert _chi_square(firsts, {"z1": 0.05, "z2": 0.05, "h": 0.9}) < CHI2_999[2], firsts
    # and the weight-0 ones still follow, never dropped
    assert sorted(t.host for t in order_targets(mixed, rng)) == ["h", "z1", "z2"]


def test_a_seeded_rng_repeats_the_order() -> None:
    targets = [_t(f"h{i}", i % 2, 10 * i) for i in range(8)]
    first = [order_targets(targets, random.Random(99)) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    assert sorted(first[0]) == sorted(targets)


# -- KmsHosts + ask_first: the walk, with fake DNS and fake hosts ------------------------------


class FakeDns:
    """SRV answers by name (``zone``) and the names asked (``asked``); ``locate`` orders the
    answer with the rng it is given, as the real one does."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.zone: dict[str, list[ServiceTarget]] = {}
        self.asked: list[str] = []
        monkeypatch.setattr(discovery, "locate", self.locate)

    def locate(
        self, names: list[str], resolver: Any, *, rng: random.Random | None = None
    ) -> list[ServiceTarget]:
        self.asked.extend(names)
        for name in names:
            if name in self.zone:
                return order_targets(self.zone[name], rng)
        return []


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    return FakeDns(monkeypatch)


class FakeHosts:
    """``ask`` replaced: each address answers, refuses, times out or is a rogue."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, behaviour: dict[str, str]) -> None:
        self.behaviour = behaviour
        self.asked: list[str] = []
        monkeypatch.setattr(client, "ask", self.ask)

    def ask(self, address: str, port: int, **kw: Any) -> Any:
        self.asked.append(address)
        what = self.behaviour.get(address, "dead")
        if what == "dead":
            raise KmsUnreachable(f"{address} did not answer within {kw['timeout']:g} s")
        if what == "rogue":
            raise RogueHost(f"{address} is not certified")
        if what == "skew":
            raise KmsClockSkew(f"{address} refused our clock")
        if what == "uncovered":
            raise KmsError(f"{address} cannot activate this product")
        return f"answer from {address}"


REQUEST: dict[str, Any] = {"cmid": uuid.UUID(int=1), "timeout": 0.5}


def _three(dns: FakeDns) -> None:
    dns.zone["_vlmcs._tcp.example.test"] = [
        ServiceTarget("kms-a.example.test", 1688, 0, 60, ("192.0.2.1",)),
        ServiceTarget("kms-b.example.test", 1688, 0, 30, ("192.0.2.2",)),
        ServiceTarget("kms-c.example.test", 1688, 10, 0, ("192.0.2.3",)),
    ]


def test_failover_walks_the_rfc_order_and_marks_dead_hosts(
    dns: FakeDns, monkeypatch: pytest.MonkeyPatch
) -> None:
    _three(dns)
    fake = FakeHosts(monkeypatch, {"192.0.2.3": "ok"})
    hosts = KmsHosts(domains=["example.test"], rng=random.Random(1))
    attempt = ask_first(hosts, **REQUEST)
    # both priority-0 hosts first (in a weighted order), then the priority-10 one answers
    assert sorted(fake.asked[:2]) == ["192.0.2.1", "192.0.2.2"] and fake.asked[2] == "192.0.2.3"
    assert attempt.answer == "answer from 192.0.2.3"
    assert attempt.candidate == Candidate("192.0.2.3", 1688, "kms-c.example.test")
    assert attempt.code == "kms-unreachable"
    assert len(attempt.problems) == 2 and all("did not answer" in p for p in attempt.problems)
    assert hosts.dead == {("192.0.2.1", 1688), ("192.0.2.2", 1688)}
    # the next request of the pass skips the dead hosts and does not ask DNS again
    fake.asked.clear()
    assert ask_first(hosts, **REQUEST).answer == "answer from 192.0.2.3"
    assert fake.asked == ["192.0.2.3"]
    assert dns.asked == ["_vlmcs._tcp.example.test"]


def test_the_first_host_that_answers_wins_and_the_order_follows_the_weights(
    dns: FakeDns, monkeypatch: pytest.MonkeyPatch
) -> None:
    _three(dns)
    fake = FakeHosts(monkeypatch, {"192.0.2.1": "ok", "192.0.2.2": "ok", "192.0.2.3": "ok"})
    rng = random.Random(42)
    answered = Counter(
        ask_first(KmsHosts(domains=["example.test"], rng=rng), **REQUEST).candidate.label  # type: ignore[union-attr]
        for _ in range(3000)
    )
    assert "kms-c.example.test" not in answered  # priority 10 only when both 0s fail
    assert _chi_square(answered, {"kms-a.example.test": 2 / 3, "kms-b.example.test": 1 / 3}) < 10.83
    assert len(fake.asked) == 3000


def test_cached_host_first_then_dns_without_it_twice(
    dns: FakeDns, monkeypatch: pytest.MonkeyPatch
) -> None:
    _three(dns)
    fake = FakeHosts(monkeypatch, {"192.0.2.2": "dead", "192.0.2.1": "ok"})
    # the cached host answers: DNS is not even asked
    cached = Candidate("192.0.2.1", 1688, "kms-a.example.test")
    hosts = KmsHosts(cached=cached, domains=["example.test"], rng=random.Random(0))
    assert ask_first(hosts, **REQUEST).candidate == cached
    assert fake.asked == ["192.0.2.1"] and dns.asked == []
    # the cached host is dead: DNS is asked, the cached address is not asked a second time
    fake.behaviour = {"192.0.2.1": "dead", "192.0.2.3": "ok"}
    fake.asked.clear()
    hosts = KmsHosts(cached=cached, domains=["example.test"], rng=random.Random(0))
    attempt = ask_first(hosts, **REQUEST)
    assert fake.asked[0] == "192.0.2.1" and fake.asked.count("192.0.2.1") == 1
    assert attempt.candidate == Candidate("192.0.2.3", 1688, "kms-c.example.test")


def test_static_host_only(dns: FakeDns, monkeypatch: pytest.MonkeyPatch) -> None:
    _three(dns)
    fake = FakeHosts(monkeypatch, {"192.0.2.1": "ok"})
    hosts = KmsHosts(static=("192.0.2.9", 1700), domains=["example.test"])
    attempt = ask_first(hosts, **REQUEST)
    assert attempt.answer is None and attempt.code == "kms-unreachable"
    assert fake.asked == ["192.0.2.9"] and dns.asked == []
    assert hosts.any


def test_rogue_skew_and_uncovered_hosts(dns: FakeDns, monkeypatch: pytest.MonkeyPatch) -> None:
    dns.zone["_vlmcs._tcp.example.test"] = [
        ServiceTarget(f"kms-{i}.example.test", 1688, i, 0, (f"192.0.2.{i}",)) for i in range(1, 5)
    ]
    fake = FakeHosts(
        monkeypatch,
        {"192.0.2.1": "rogue", "192.0.2.2": "skew", "192.0.2.3": "uncovered", "192.0.2.4": "ok"},
    )
    hosts = KmsHosts(domains=["example.test"])
    attempt = ask_first(hosts, **REQUEST)
    assert fake.asked == ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"]
    assert attempt.answer == "answer from 192.0.2.4"
    assert attempt.rogues == ["192.0.2.1 is not certified"] and attempt.skewed
    assert attempt.code == KmsError.code  # the last host that did not do: the uncovered one
    # the rogue is dead for the pass; the skewed and uncovered hosts may answer another request
    assert hosts.dead == {("192.0.2.1", 1688)}


def test_no_host_anywhere(dns: FakeDns, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeHosts(monkeypatch, {})
    hosts = KmsHosts(domains=["example.test", "branch.example.test"])
    attempt = ask_first(hosts, **REQUEST)
    assert attempt.answer is None and attempt.problems == [] and not hosts.any
    assert hosts.searched == ["_vlmcs._tcp.example.test", "_vlmcs._tcp.branch.example.test"]
