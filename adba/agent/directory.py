"""The agent's first channel, ADBA: a GVLK product in a domain asks a domain controller.

1. where (explicit URIs, else the cached DC, else DNS SRV ``_ldap._tcp.dc._msdcs.<domain>``
   then ``_ldap._tcp.<domain>``) for activation objects whose ``msSPP-KMSIds`` hold its
   edition's activation group -- one bind, one search for all products, one unbind;
2. each object is verified (license chain to the pinned root, forest binding, the CSVLK covers
   the edition, partial key / PID / SKU / KMS IDs agree with the license); the first valid one
   wins and the product is activated for the validity interval (180 days); every rejected
   object is logged with its reason;
3. otherwise the product goes to the next channel of the chain (KMS, then MAK).

A verified object is remembered by a digest of exactly what was verified (the object's
values, the forest and the root key), so a warm boot that finds the same object needs no
cryptography import; the signing certificate's expiry is still checked every time.

Retired signing keys: the agent keeps (in the state, never shrinking) every signing key the
root has stated retired -- in the pinned ``retired_keys`` file, or in the certificate of any
license it has read. Before it verifies any object of a pass it reads that statement from
every candidate it has not read before (a digest of each license read is kept, so a warm
boot decodes nothing), forgets cached verifications of objects a retired key signed, and
refuses their licenses (:class:`~adba.errors.SignerRetired`, reported as
``objects-rejected``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import time
import uuid
from collections.abc import Iterator

from ..errors import (
    AdbaError,
    AuthenticationFailed,
    ConfigError,
    DiscoveryError,
    InvalidInput,
    LicenseError,
    ObjectIncomplete,
    ObjectNotFound,
    ServerNotAnswering,
    ServerUnavailable,
    TlsError,
    WrongForest,
)
from .config import ProductSettings, Settings
from .outcome import Outcome, TryNext, stable_code

TYPE_CHECKING = False  # typing costs ~2 ms at every boot; annotations need it only for mypy
if TYPE_CHECKING:
    from typing import Any

    import ldap3

    from ..directory.connection import ConnectionOptions
    from ..directory.store import ActivationObject
    from .chain import Pass

__all__ = ["NAME", "attempt", "learn_retired", "takes"]

NAME = "ADBA"

log = logging.getLogger("adba.agent")

_MAX_VERIFIED = 256
#: digests of licenses whose retirement statement was read (warm boots decode none again)
_MAX_SCANNED = 1024


def takes(product: ProductSettings, settings: Settings) -> bool | TryNext:
    """A GVLK product of a domain member with machine credentials; else why not."""
    if product.key_type == "MAK":
        return TryNext("not-gvlk", "configured with a MAK: ADBA and KMS not tried")
    if product.key_type == "AVMA":
        return False
    if product.key_type != "GVLK":
        return TryNext(
            "not-gvlk",
            f"configured with a {product.key_type}, not a GVLK: ADBA and KMS not tried",
        )
    if not settings.domain and not settings.dc_uris:
        return TryNext("not-domain-member", "not a domain member")
    if not settings.machine_dn and not settings.keytab:
        return TryNext("no-credentials", "no machine credentials for ADBA")
    return True


def attempt(p: Pass, batch: list[tuple[ProductSettings, TryNext]]) -> list[Outcome | TryNext]:
    """One bind, one search for all of ``batch``: an outcome per product, in order."""
    products = [product for product, _reason in batch]
    try:
        found, source, dc = _lookup(p.settings, p.state, products, p.now)
        p.dc = dc
    except TryNext as failure:
        found, source = {product.sku: failure for product in products}, {}
    out: list[Outcome | TryNext] = []
    for product in products:
        rec = p.state["products"][product.sku]
        hit = found[product.sku]
        if isinstance(hit, TryNext):
            out.append(hit)
            continue
        expires = p.now + p.settings.validity
        via = source.get(product.sku, p.dc)
        rec.update(
            channel=NAME,
            object_dn=hit.dn,
            csvlk_pid=hit.pid,
            dc=via,
            activated_at=p.now,
            expires_at=expires,
            last_attempt=p.now,
            next_attempt=p.now + p.settings.renewal,
            last_error=None,
        )
        until = time.strftime("%Y-%m-%d", time.gmtime(expires))
        message = f"activated by {hit.dn} (PID {hit.pid}) via {via}, valid until {until}"
        log.info("%s: %s", product.edition, message)
        out.append(Outcome(product.edition, True, "activated", message, True))
    return out


def _password(settings: Settings) -> str | None:
    if not settings.password_file:
        return None
    from ..directory.connection import read_password_file

    where = settings.where("machine.password_file")
    try:
        info = os.stat(settings.password_file)
    except OSError as exc:
        raise ConfigError(f"{where}: {settings.password_file}: {exc.strerror}") from exc
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{where}: {settings.password_file} is readable by others: "
            f"chmod 600 {settings.password_file}"
        )
    try:
        return read_password_file(settings.password_file)
    except InvalidInput as exc:  # unreadable or empty: a configuration error, named
        raise ConfigError(f"{where}: {exc.message}") from exc


def _candidates(settings: Settings, directory: dict[str, Any]) -> Iterator[tuple[str, str | None]]:
    """(uri, name to verify in the certificate), in the order to try them."""
    if settings.dc_uris:
        for uri in settings.dc_uris:
            yield uri, settings.tls_name
        return
    if not settings.domain:
        return
    cached = directory.get("dc")
    if cached:
        yield cached, directory.get("tls_name")
    from ..discovery import dc_srv_names, locate, make_resolver

    resolver = make_resolver(settings.dns_servers, timeout=settings.connect_timeout)
    for target in locate(dc_srv_names(settings.domain), resolver):
        for address in target.addresses:
            host = f"[{address}]" if ":" in address else address
            uri = f"ldap://{host}:{target.port}"
            if uri != cached:
                yield uri, target.host


#: the directory step tries domain controllers for at most this many timeouts in all, then
#: leaves the products to KMS: many silent DCs cannot hold the boot past its unit's limit
_DC_BUDGET = 8


def _dcs(
    settings: Settings, directory: dict[str, Any], tried: list[str]
) -> Iterator[tuple[ldap3.Connection, ConnectionOptions, str | None]]:
    """Bound connections to the domain controllers, one after the other in the order to try
    them, for as long as the caller asks for the next; each DC that failed is logged and
    appended to ``tried`` with its reason (not answering, unreachable, TLS)."""
    from ..directory.connection import ConnectionOptions, connect

    password = _password(settings)
    if settings.krb5_config:
        os.environ["KRB5_CONFIG"] = settings.krb5_config  # read by the Kerberos library
    budget = _DC_BUDGET * settings.connect_timeout
    started = time.monotonic()
    try:
        for uri, name in _candidates(settings, directory):
            if tried and time.monotonic() - started > budget:
                log.warning("domain controllers tried for %.1f s: the rest are skipped", budget)
                tried.append(f"the others skipped after {budget:g} s")
                return
            opts = ConnectionOptions(
                uri=uri,
                bind_dn=None if settings.keytab else settings.machine_dn,
                password=password,
                keytab=settings.keytab,
                principal=settings.principal,
                ca_file=settings.ca_file,
                insecure=settings.insecure,
                connect_timeout=settings.connect_timeout,
                tls_name=name,
            )
            try:
                conn = connect(opts)
            except (ServerUnavailable, TlsError) as exc:
                _tried(tried, uri, exc)
                continue
            except AuthenticationFailed as exc:
                raise TryNext("auth-failed", f"{uri} rejected the machine credentials") from exc
            yield conn, opts, name
    except DiscoveryError as exc:
        raise TryNext("no-dc", f"cannot locate a domain controller: {exc.message}") from exc


def _tried(tried: list[str], uri: str, exc: AdbaError) -> None:
    """Log a DC that failed, and keep why: a silent DC is *not answering*, not unreachable."""
    why = "not answering" if isinstance(exc, ServerNotAnswering) else exc.code
    log.warning("domain controller %s failed: %s; trying the next", uri, exc.message)
    tried.append(f"{uri}: {why}")


#: a verified object is verified again after this long, whatever its license says
_CACHE_MAX_AGE = 7 * 86400
#: bounds of one lookup: bytes of attribute values read, objects kept
_MAX_SEARCH_BYTES = 64 * 1024 * 1024
_MAX_OBJECTS = 20_000
#: rejected objects logged one by one per product; the rest are counted in one line
_LOGGED_REJECTIONS = 5


def _digest(ao: ActivationObject, forest: Any, root_key: str) -> str:
    """What a verification covered: every attribute checked, both licenses, forest, root."""
    h = hashlib.sha256()
    for part in (
        (ao.dn or "").lower().encode(),
        b"".join(sorted(ao.kms_ids)),
        ao.csvlk_sku,
        ao.partial_key.encode(),
        ao.pid.encode(),
        *(
            b"\0absent" if blob is None else b"\1" + blob
            for blob in (ao.issuance_license, ao.licenses.get("msSPP-PhoneLicense"))
        ),
        f"{forest[0]}|{forest[1]}".encode(),
        root_key.encode(),
    ):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def _fresh(entry: Any, now: int) -> bool:
    """A cached verification still holds: inside the license's own window and younger than
    :data:`_CACHE_MAX_AGE` (a phone license's window never closes: the age bounds it)."""
    if not isinstance(entry, dict):
        return False
    checked = entry.get("checked")
    return (
        isinstance(checked, int)
        and checked <= now < checked + _CACHE_MAX_AGE
        and entry.get("not_before", now + 1) <= now <= entry.get("not_after", -1)
    )


def _is_key_id(value: object) -> bool:
    return (
        isinstance(value, str) and len(value) == 16 and all(c in "0123456789abcdef" for c in value)
    )


def learn_retired(state: dict[str, Any], ids: Any) -> set[str]:
    """Add ``ids`` (hex signing-key ids) to the retired keys the state remembers (a set that
    only grows); returns the whole set."""
    old = state.get("retired")
    known = {k for k in old if _is_key_id(k)} if isinstance(old, list) else set()
    known.update(k for k in ids if _is_key_id(k))
    state["retired"] = sorted(known)
    return known


def _scan_digest(der: bytes, root_key: str) -> str:
    return hashlib.sha256(root_key.encode() + b"\0" + der).hexdigest()[:32]


def _read_retirements(
    found: list[ActivationObject], settings: Settings, state: dict[str, Any]
) -> set[str]:
    """The retirements stated by the certificates of all candidates (each license decoded
    once: a digest of it is kept), counted only from certificates the pinned root signed."""
    old = state.get("scanned")
    seen = [d for d in old if isinstance(d, str)] if isinstance(old, list) else []
    known = set(seen)
    stated: set[str] = set()
    this_pass: list[str] = []
    for ao in found:
        der = ao.issuance_license
        if der is None or der[:1] != b"\x30":  # no license of ours (a phone or Windows one)
            continue
        digest = _scan_digest(der, settings.root_key)
        this_pass.append(digest)
        if digest in known:
            continue
        from ..license import stated_retirements

        stated.update(
            k.hex()
            for k in stated_retirements(der, root_public_key=bytes.fromhex(settings.root_key))
        )
        known.add(digest)
    current = set(this_pass)
    keep = dict.fromkeys(d for d in seen if d not in current)
    keep.update(dict.fromkeys(this_pass))  # this pass's last: they survive the bound
    state["scanned"] = list(keep)[-_MAX_SCANNED:]
    return learn_retired(state, stated)


def _forget_retired(verified: dict[str, Any], retired: set[str]) -> None:
    """Drop cached verifications of objects a retired key signed (and, once any key is
    retired, those of an older layout that did not record the signer)."""
    if not retired:
        return
    for digest, entry in list(verified.items()):
        signer = entry.get("signer", "unknown") if isinstance(entry, dict) else "unknown"
        if signer == "unknown" or signer in retired:
            del verified[digest]


def _eligible(ao: ActivationObject, product: ProductSettings) -> None:
    """Raise :class:`LicenseError` when ``ao`` cannot be for ``product`` at all (no crypto)."""
    group = uuid.UUID(product.group).bytes_le
    if group not in ao.kms_ids:
        raise LicenseError(f"does not hold the activation group {product.group_name}")
    if len(ao.csvlk_sku) != 16 or str(ao.sku_uuid) not in product.csvlk_skus:
        raise LicenseError(f"its CSVLK does not cover {product.edition}")


def _cached(
    ao: ActivationObject,
    product: ProductSettings,
    settings: Settings,
    directory: dict[str, Any],
    verified: dict[str, Any],
    now: int,
) -> str | None:
    """The digest of ``ao`` when a fresh verification of exactly these values is cached."""
    try:
        _eligible(ao, product)
    except LicenseError:
        return None
    digest = _digest(ao, (directory["root"], directory.get("forest_guid")), settings.root_key)
    return digest if _fresh(verified.get(digest), now) else None


def _check(
    ao: ActivationObject,
    product: ProductSettings,
    settings: Settings,
    directory: dict[str, Any],
    verified: dict[str, Any],
    used: set[str],
    now: int,
    retired: set[str],
) -> None:
    """Raise :class:`LicenseError` with the reason when ``ao`` may not activate ``product``."""
    _eligible(ao, product)
    if ao.issuance_license is None and "msSPP-PhoneLicense" not in ao.licenses:
        raise ObjectIncomplete(
            "incomplete: it carries no license attribute (half-replicated to this DC, or the "
            "replication identity cannot read licenses)"
        )
    forest = (directory["root"], directory.get("forest_guid"))
    digest = _digest(ao, forest, settings.root_key)
    if _fresh(verified.get(digest), now):
        used.add(digest)
        return
    if not forest[1]:  # never a wildcard: no GUID from the DC, no forest binding to check
        raise WrongForest("the directory gave no forest GUID, so no license can be bound to it")
    from ..directory.objects import verify_object
    from ..license import ForestIdentity

    codes = {code: uuid.UUID(sku) for code, sku in product.csvlk_codes}
    ok = verify_object(
        ao,
        root_public_key=bytes.fromhex(settings.root_key),
        forest=ForestIdentity.of(forest[0], uuid.UUID(forest[1])),
        now=now,
        sku_for_code=codes.get,
        retired=[bytes.fromhex(k) for k in sorted(retired)],
    )
    retired.update(k.hex() for k in ok.retired)
    verified.pop(digest, None)  # re-inserted last: the newest entries survive the bound
    verified[digest] = {
        "not_before": ok.not_before,
        "not_after": ok.not_after,
        "checked": now,
        "signer": ok.signer.hex() if ok.signer else None,
    }
    used.add(digest)


def _fetch(
    conn: ldap3.Connection, container: str, groups: list[uuid.UUID]
) -> tuple[list[ActivationObject], str | None]:
    """Every object holding one of ``groups``, paged, reading only the verified attributes;
    an object with a value over the schema's 5 MiB is skipped, and the lookup stops at
    :data:`_MAX_SEARCH_BYTES` / :data:`_MAX_OBJECTS`. Returns (objects, why it stopped early)."""
    from ..directory import store

    found: list[ActivationObject] = []
    total = 0
    stopped = None
    flt = store.object_filter(groups)
    for entries, limited in store.pages(conn, container, flt, store.AGENT_ATTRIBUTES):
        for entry in entries:
            raw = entry["raw_attributes"]
            total += sum(len(v) for values in raw.values() for v in values)
            too_big = store.value_too_big(raw)
            if too_big:
                log.warning("skipped %s: %s", entry["dn"], too_big)
                continue
            found.append(store.ActivationObject.from_entry(entry["dn"], raw))
        entries.clear()
        if limited:
            stopped = (
                f"the DC's size limit stopped the search after {len(found)} objects (run "
                "`adba directory init`: it sets olcLimits for the computers)"
            )
        elif total > _MAX_SEARCH_BYTES or len(found) > _MAX_OBJECTS:
            stopped = (
                f"stopped reading after {len(found)} objects and {total} bytes (bounds: "
                f"{_MAX_OBJECTS} objects, {_MAX_SEARCH_BYTES} bytes)"
            )
        if stopped:
            log.warning("%s: %s", container, stopped)
            break
    return found, stopped


def _choose(
    found: list[ActivationObject],
    stopped: str | None,
    products: list[ProductSettings],
    settings: Settings,
    state: dict[str, Any],
    directory: dict[str, Any],
    verified: dict[str, Any],
    used: set[str],
    now: int,
) -> tuple[dict[str, ActivationObject | TryNext], set[str]]:
    """The first valid object for each product among ``found``, else the reason; and the
    products for which another DC may hold better: an object was incomplete here."""
    found.sort(key=lambda o: (o.dn or "").lower())
    # every candidate's retirement statement first, then verification
    retired = _read_retirements(found, settings, state)
    _forget_retired(verified, retired)
    result: dict[str, ActivationObject | TryNext] = {}
    elsewhere: set[str] = set()
    for product in products:
        # a warm boot first takes an object verified before (no cryptography at all)
        hit = None
        for ao in found:
            digest = _cached(ao, product, settings, directory, verified, now)
            if digest:
                used.add(digest)
                hit = ao
                break
        reasons: list[str] = []
        if hit is None:
            for ao in found:
                try:
                    _check(ao, product, settings, directory, verified, used, now, retired)
                except LicenseError as exc:
                    if uuid.UUID(product.group).bytes_le in ao.kms_ids:
                        if len(reasons) < _LOGGED_REJECTIONS:
                            log.warning("%s: rejected %s: %s", product.edition, ao.dn, exc.message)
                        reasons.append(f"{ao.dn}: {exc.message}")
                        if isinstance(exc, ObjectIncomplete):
                            elsewhere.add(product.sku)
                    continue
                hit = ao
                break
        if len(reasons) > _LOGGED_REJECTIONS:
            log.warning(
                "%s: %d more objects rejected", product.edition, len(reasons) - _LOGGED_REJECTIONS
            )
        if hit is not None:
            result[product.sku] = hit
        elif stopped:
            result[product.sku] = TryNext(
                "size-limit", f"no valid activation object among those read: {stopped}"
            )
        elif reasons:
            result[product.sku] = TryNext(
                "objects-rejected",
                f"{len(reasons)} activation object(s) rejected ({reasons[0]})",
            )
        else:
            result[product.sku] = TryNext(
                "no-object", f"no activation object for {product.group_name}"
            )
    return result, elsewhere


def _lookup(
    settings: Settings, state: dict[str, Any], products: list[ProductSettings], now: int
) -> tuple[dict[str, ActivationObject | TryNext], dict[str, str], str | None]:
    """Results per product, the DC each one came from, and the DC to remember.

    One bind, one search, one unbind at the first DC that answers. The next DC is asked only
    for the products that found no valid object where an object was incomplete (a replica
    that received it half: no license attribute yet, or without its container), and when a
    DC stops answering mid-search."""
    from ldap3.core.exceptions import LDAPException

    from ..directory import schema, store
    from ..directory.connection import operation_error

    directory = state["directory"]
    verified: dict[str, Any] = state["verified"]
    used: set[str] = set()
    tried: list[str] = []
    result: dict[str, ActivationObject | TryNext] = {}
    source: dict[str, str] = {}
    answered: dict[str, Any] | None = None
    todo = list(products)
    for conn, opts, name in _dcs(settings, directory, tried):
        uri = opts.uri
        info = directory if directory.get("dc") == uri and "root" in directory else None
        try:
            try:
                if info is None:
                    # cold: learn the forest once, keep it for warm boots (bind, search, unbind)
                    root = settings.base or store.read_forest_root(conn)
                    guid = store.read_forest_guid(conn, root)
                    info = {
                        "root": root,
                        "container": schema.container_dn(root),
                        "forest_guid": str(guid) if guid else None,
                    }
                groups = sorted({uuid.UUID(p.group) for p in todo})
                found, stopped = _fetch(conn, info["container"], groups)
            except LDAPException as exc:
                raise operation_error(exc, opts, conn) from exc
        except ServerUnavailable as exc:  # silent or gone in the middle: the next DC
            _tried(tried, uri, exc)
            continue
        except ObjectNotFound as exc:  # the container has not replicated here (yet)
            log.warning("%s: %s; trying the next domain controller", uri, exc.message)
            for p in todo:
                result[p.sku] = TryNext(stable_code(exc), f"{uri}: {exc.message}")
            answered = {**info, "dc": uri, "tls_name": name} if info else answered
            continue
        except AdbaError as exc:
            failure = TryNext(stable_code(exc), f"{uri}: {exc.message}")
            for p in todo:
                result[p.sku] = failure
            break
        finally:
            with contextlib.suppress(Exception):
                conn.unbind()
        here, elsewhere = _choose(found, stopped, todo, settings, state, info, verified, used, now)
        result.update(here)
        for sku, hit in here.items():
            if not isinstance(hit, TryNext):
                source[sku] = uri
        answered = {**info, "dc": uri, "tls_name": name}
        todo = [p for p in todo if p.sku in elsewhere]
        if not todo:
            break
        log.warning(
            "%s holds incomplete objects only (half-replicated?) for %s: trying the next "
            "domain controller",
            uri,
            ", ".join(p.edition for p in todo),
        )
    if answered is not None:
        directory.clear()
        directory.update(answered)
    if not result:
        if not tried:
            raise TryNext("no-dc", f"no domain controller found in DNS for {settings.domain}")
        raise TryNext("no-dc", f"no domain controller answered (tried {'; '.join(tried)})")
    for p in products:  # every DC failed for some: their reason
        result.setdefault(
            p.sku, TryNext("no-dc", f"no domain controller answered (tried {'; '.join(tried)})")
        )
    # keep what this pass used, then the newest others, within a bound
    keep = {d: verified[d] for d in used}
    for d in list(verified)[-_MAX_VERIFIED:]:
        keep.setdefault(d, verified[d])
    state["verified"] = keep
    return result, source, directory.get("dc")
