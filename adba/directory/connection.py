"""Connections to a directory server (ldap3), with every ldap3 error wrapped at the border.

Rules: ``get_info=NONE`` (schema reads cost 2 extra round trips and ~16 ms per bind);
certificates are validated (``--ca-file`` or the system store); a password never crosses the
wire in clear: on ``ldap://`` StartTLS is used unless the caller says ``insecure``; ``ldapi://``
binds with SASL EXTERNAL (the peer credentials of this process). ldap3's receive buffer is
raised to 1 MiB, else reading a 5 MiB license is quadratic (seconds instead of ~0.1 s).

Time: ``connect_timeout`` bounds every step of opening -- the TCP connect, the TLS handshake
(LDAPS or StartTLS), the StartTLS answer and the bind -- so a server that accepts and never
answers costs about that, not ldap3's receive timeout; afterwards each read of an answer waits
at most ``receive_timeout`` (default: ``connect_timeout`` too). A server that accepted the
connection and then went silent is :class:`ServerNotAnswering` ("not answering"), one that
could not be reached at all :class:`ServerUnavailable`. TLS failures say which check failed: the
certificate's name, its CA, its dates, or no TLS at all.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import ldap3
from ldap3.core import exceptions as lexc
from ldap3.utils.config import set_config_parameter

from ..errors import (
    AccessDenied,
    AdbaError,
    AlreadyExists,
    AuthenticationFailed,
    ConfigError,
    DirectoryError,
    InvalidDN,
    InvalidInput,
    NotLdap,
    ObjectNotFound,
    ReadOnlyReplica,
    SchemaMissing,
    ServerNotAnswering,
    ServerUnavailable,
    TlsError,
)

TYPE_CHECKING = False  # typing costs ~2 ms at every boot; annotations need it only for mypy
if TYPE_CHECKING:
    from typing import Any


__all__ = [
    "Connection",
    "ConnectionOptions",
    "connect",
    "operation_error",
    "raise_for_result",
    "read_password_file",
]

log = logging.getLogger(__name__)

set_config_parameter("SOCKET_SIZE", 1 << 20)


class Connection(ldap3.Connection):  # type: ignore[misc]
    """ldap3's connection whose every operation raises our errors, never a stray one: a
    server that is not LDAP (or replies garbage) makes ldap3's decoder raise ``KeyError``,
    ``IndexError``..., here :class:`NotLdap` naming the server."""

    def __init__(self, server: Any, *, adba_opts: ConnectionOptions, **kwargs: Any) -> None:
        super().__init__(server, **kwargs)
        self.adba_opts = adba_opts
        strategy_open: Any = self.__dict__["open"]  # ldap3 sets open() on the instance

        def open_(*args: Any, **kw: Any) -> Any:
            return self._guard(strategy_open, args, kw)

        self.open = open_

    def _guard(self, operation: Any, args: Any, kwargs: Any) -> Any:
        try:
            return operation(*args, **kwargs)
        except AdbaError:
            raise
        except Exception as exc:
            if type(exc).__module__.startswith("gssapi"):
                raise  # connect() names a Kerberos failure
            timeout = self.adba_opts.receive_timeout if self.bound else None
            raise _wrap(exc, self.adba_opts, self, timeout=timeout) from exc

    def start_tls(self, *args: Any, **kwargs: Any) -> Any:
        return self._guard(super().start_tls, args, kwargs)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        return self._guard(super().bind, args, kwargs)

    def rebind(self, *args: Any, **kwargs: Any) -> Any:
        return self._guard(super().rebind, args, kwargs)

    def unbind(self, *args: Any, **kwargs: Any) -> Any:
        return self._guard(super().unbind, args, kwargs)

    def search(self, *args: Any, **kwargs: Any) -> Any:
        return self._guard(super().search, args, kwargs)

    def compare(self, *args: Any, **kwargs: Any) -> Any:
        return self._guard(super().compare, args, kwargs)

    def add(self, *args: Any, **kwargs: Any) -> Any:
        return self._guard(super().add, args, kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        return self._guard(super().delete, args, kwargs)

    def modify(self, *args: Any, **kwargs: Any) -> Any:
        return self._guard(super().modify, args, kwargs)

    def modify_dn(self, *args: Any, **kwargs: Any) -> Any:
        return self._guard(super().modify_dn, args, kwargs)

    def abandon(self, *args: Any, **kwargs: Any) -> Any:
        return self._guard(super().abandon, args, kwargs)

    def extended(self, *args: Any, **kwargs: Any) -> Any:
        return self._guard(super().extended, args, kwargs)


# eq/repr/frozen off: each generated method costs ~0.1 ms of import at every boot
@dataclass(eq=False, repr=False)
class ConnectionOptions:
    """How to reach and bind to a directory server.

    ``password`` is the secret itself; front ends read it from a file (``--password-file``)
    so it never appears on a command line.
    """

    uri: str
    bind_dn: str | None = None
    password: str | None = None
    ca_file: str | None = None
    #: allow a simple bind without TLS on ldap:// (never the default)
    insecure: bool = False
    #: use StartTLS on ldap:// even without a password
    start_tls: bool = False
    connect_timeout: float = 5.0
    #: the longest wait for each read of an answer after the bind (None: connect_timeout)
    receive_timeout: float | None = None
    #: the name the server certificate must carry, when the URI holds an address (SRV targets
    #: are resolved by ADBA's own resolver, then verified by name)
    tls_name: str | None = None
    #: Kerberos (GSSAPI) bind from a keytab instead of a password: the machine's keytab and
    #: principal (``HOST$@REALM``); the DC's name (``tls_name`` or the URI's host) names the
    #: service ``ldap/<name>``. Always inside TLS.
    keytab: str | None = None
    principal: str | None = None

    @property
    def scheme(self) -> str:
        return self.uri.split("://", 1)[0].lower() if "://" in self.uri else ""

    @property
    def answer_timeout(self) -> float:
        return self.connect_timeout if self.receive_timeout is None else self.receive_timeout

    def __repr__(self) -> str:  # never the password
        return f"ConnectionOptions({self.describe()!r})"

    def describe(self) -> str:
        who = self.bind_dn or ("SASL EXTERNAL" if self.scheme == "ldapi" else "anonymous")
        return f"{self.uri} as {who}"


def read_password_file(path: str) -> str:
    """First line of a password file, without its newline."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InvalidInput(f"cannot read password file {path}: {exc.strerror}") from exc
    password = text.splitlines()[0] if text else ""
    if not password:
        raise InvalidInput(f"password file {path} is empty")
    return password


class _Tls(ldap3.Tls):  # type: ignore[misc]
    """TLS with the standard library's own checks: chain *and* host name (IP SANs too).

    ldap3 turns ``check_hostname`` off and matches names itself with ``ssl.match_hostname``,
    which is deprecated (a warning on 3.11, gone in 3.12). Here the context does both.
    """

    def __init__(self, ca_file: str | None, name: str | None) -> None:
        import ssl

        super().__init__(validate=ssl.CERT_REQUIRED, ca_certs_file=ca_file)
        self.adba_name = name

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        import ssl

        context = ssl.create_default_context(cafile=self.ca_certs_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # ldap3 re-raises a copy that has lost verify_code: keep the original for _tls_error
        connection.adba_handshake = True
        try:
            connection.socket = context.wrap_socket(
                connection.socket,
                server_side=False,
                do_handshake_on_connect=do_handshake,
                server_hostname=self.adba_name or connection.server.host,
            )
        except OSError as exc:  # SSLError, or the server hanging up on a ClientHello
            if not isinstance(exc, TimeoutError):
                connection.adba_tls_error = exc
            raise


def _tls(opts: ConnectionOptions) -> Any:
    if opts.ca_file is not None and not Path(opts.ca_file).is_file():
        raise InvalidInput(f"CA file {opts.ca_file} does not exist")
    return _Tls(opts.ca_file, opts.tls_name)


#: OpenSSL's X509_V_ERR_* codes, by what they mean to the person reading the message
_NAME_MISMATCH = {62, 64}  # HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH
_EXPIRED, _NOT_YET_VALID = 10, 9
#: UNABLE_TO_GET_ISSUER_CERT(_LOCALLY), DEPTH_ZERO_SELF_SIGNED, SELF_SIGNED_IN_CHAIN,
#: UNABLE_TO_VERIFY_LEAF_SIGNATURE, INVALID_CA, CERT_UNTRUSTED, CERT_REJECTED
_UNTRUSTED = {2, 18, 19, 20, 21, 24, 27, 28}


def _tls_error(exc: BaseException | None, opts: ConnectionOptions) -> TlsError:
    """Say which TLS check failed: name, CA, dates -- or that the server speaks no TLS."""
    ssl = sys.modules.get("ssl")
    uri, name = opts.uri, opts.tls_name or _host(opts.uri)
    code = getattr(exc, "verify_code", None) if ssl and exc is not None else None
    if code in _NAME_MISMATCH:
        hint = "" if opts.tls_name else " (give the name it carries with --tls-name)"
        text = f"name mismatch: the certificate of {uri} is not valid for {name!r}{hint}"
    elif code == _EXPIRED:
        text = f"the certificate of {uri} has expired (renew it on the server)"
    elif code == _NOT_YET_VALID:
        text = f"the certificate of {uri} is not valid yet (check this machine's clock)"
    elif code in _UNTRUSTED:
        where = f"by the CA in {opts.ca_file}" if opts.ca_file else "by a CA in the system store"
        hint = "" if opts.ca_file else " (give the server's CA with --ca-file)"
        text = f"untrusted certificate: {uri} presented one not signed {where}{hint}"
    elif code is not None:
        text = f"the certificate of {uri} was rejected: {getattr(exc, 'verify_message', code)}"
    elif exc is not None:
        if opts.scheme == "ldaps":
            text = (
                f"{uri} does not speak TLS on that port (is it the plain LDAP port? LDAPS is "
                "usually 636; for StartTLS use ldap://)"
            )
        else:
            text = f"the TLS handshake with {uri} failed ({getattr(exc, 'reason', None) or exc})"
    else:
        text = f"{uri} does not offer StartTLS (configure TLS on the server, or use ldaps://)"
    return TlsError(f"TLS with {uri} failed: {text}", uri=uri)


def _host(uri: str) -> str:
    rest = uri.split("://", 1)[-1].split("/", 1)[0]
    if rest.startswith("["):
        return rest[1 : rest.find("]")]
    return rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest


def _wrap(
    exc: Exception, opts: ConnectionOptions, conn: Any = None, timeout: float | None = None
) -> AdbaError:
    """Turn an ldap3 exception (or any other one, raised while talking to ``opts.uri``) into
    our family; branch on classes, never on text. One of ours is already wrapped."""
    if isinstance(exc, AdbaError):
        return exc
    ssl = sys.modules.get("ssl")  # imported only when TLS was set up
    if isinstance(exc, TimeoutError):  # ldap3 raises classes mixing its own with the cause
        waited = f"{timeout if timeout is not None else opts.connect_timeout:g} s"
        bound = bool(getattr(conn, "adba_bound", False))  # ldap3 unbinds on a socket error
        if isinstance(exc, lexc.LDAPSocketOpenError) and not getattr(conn, "adba_handshake", False):
            text = f"{opts.uri} did not accept a connection within {waited}"
            return ServerUnavailable(text, uri=opts.uri)
        if bound:
            text = "no answer to a request"
        elif getattr(conn, "adba_handshake", False) and not getattr(conn, "tls_started", False):
            text = "it accepted the connection but did not finish TLS"
        else:
            text = "it accepted the connection but did not answer"
        text = f"{opts.uri} is not answering: {text} within {waited}"
        return ServerNotAnswering(text, uri=opts.uri)
    tls_failure = getattr(conn, "adba_tls_error", None)
    if (
        tls_failure is not None
        or isinstance(exc, lexc.LDAPStartTLSError)
        or (ssl and isinstance(exc, ssl.SSLError))
    ):
        return _tls_error(
            tls_failure or (exc if ssl and isinstance(exc, ssl.SSLError) else None), opts
        )
    if isinstance(
        exc, lexc.LDAPSocketOpenError | lexc.LDAPSocketReceiveError | lexc.LDAPSocketSendError
    ):
        return ServerUnavailable(
            f"cannot reach {opts.uri}: is the server running and the address right?", uri=opts.uri
        )
    if isinstance(exc, lexc.LDAPInvalidDnError | lexc.LDAPInvalidDNSyntaxResult):
        return InvalidDN(f"malformed DN: {exc}")
    if isinstance(exc, lexc.LDAPResponseTimeoutError):
        return ServerNotAnswering(
            f"{opts.uri} is not answering: it stopped answering", uri=opts.uri
        )
    if isinstance(exc, lexc.LDAPSessionTerminatedByServerError):
        return ServerUnavailable(
            f"{opts.uri} closed the connection without an LDAP answer (is it an LDAP server?)",
            uri=opts.uri,
        )
    if isinstance(exc, lexc.LDAPException):
        return DirectoryError(
            f"directory error from {opts.uri}: {type(exc).__name__}", uri=opts.uri
        )
    if isinstance(exc, OSError):
        return ServerUnavailable(
            f"{opts.uri} broke the connection: {exc.strerror or type(exc).__name__}", uri=opts.uri
        )
    # ldap3's decoder meeting bytes that are not LDAP: KeyError, IndexError, PyAsn1Error...
    return NotLdap(
        f"{opts.uri} did not answer in LDAP (is that port another service?): the reply could "
        f"not be decoded ({type(exc).__name__})",
        uri=opts.uri,
    )


def _close(conn: ldap3.Connection) -> None:
    """Close the socket ldap3 leaves open when opening or TLS fails."""
    sock = getattr(conn, "socket", None)
    if sock is not None:
        with suppress(OSError):
            sock.close()
    with suppress(lexc.LDAPException, AdbaError):
        conn.unbind()


def _keytab_credentials(opts: ConnectionOptions) -> Any:
    """Kerberos initiator credentials from the machine keytab (in memory, no ticket files)."""
    try:
        import gssapi
    except ImportError as exc:
        raise ConfigError(
            "a Kerberos bind needs the gssapi package (pip install 'adba[kerberos]'; it builds "
            "against Debian's libkrb5-dev)"
        ) from exc
    if not opts.principal:
        raise ConfigError("a Kerberos bind needs the machine's principal (HOST$@REALM)")
    try:
        return gssapi.Credentials(
            name=gssapi.Name(opts.principal, gssapi.NameType.kerberos_principal),
            usage="initiate",
            # a fresh in-memory cache: tickets come from this keytab, never from an earlier bind
            store={
                "client_keytab": str(opts.keytab),
                "ccache": f"MEMORY:adba-{os.urandom(8).hex()}",
            },
        )
    except gssapi.raw.misc.GSSError as exc:
        raise AuthenticationFailed(
            f"no Kerberos ticket for {opts.principal} from {opts.keytab}: check the keytab, "
            "the realm's KDC in krb5.conf and the clock"
        ) from exc


def connect(opts: ConnectionOptions) -> ldap3.Connection:
    """Open, secure and bind a connection. Raises our errors, never ldap3's."""
    scheme = opts.scheme
    if scheme not in ("ldap", "ldaps", "ldapi"):
        raise InvalidInput(f"unsupported URI {opts.uri!r}: use ldap://, ldaps:// or ldapi://")
    if opts.bind_dn and opts.password is None:
        raise InvalidInput(f"a password is needed to bind as {opts.bind_dn} (use --password-file)")
    kerberos = bool(opts.keytab)
    use_starttls = scheme == "ldap" and (
        opts.start_tls or kerberos or (opts.password and not opts.insecure)
    )
    tls = _tls(opts) if scheme == "ldaps" or use_starttls else None
    server = ldap3.Server(
        opts.uri, get_info=ldap3.NONE, tls=tls, connect_timeout=opts.connect_timeout
    )
    # opening, TLS and the bind wait at most connect_timeout per step (ldap3 packs
    # receive_timeout into SO_RCVTIMEO as an integer); operations later wait receive_timeout
    kwargs: dict[str, Any] = {"receive_timeout": max(1, math.ceil(opts.connect_timeout))}
    if kerberos:
        kwargs.update(
            authentication=ldap3.SASL,
            sasl_mechanism=ldap3.KERBEROS,
            sasl_credentials=(opts.tls_name or server.host, None, _keytab_credentials(opts)),
        )
    elif opts.bind_dn:
        kwargs.update(user=opts.bind_dn, password=opts.password, authentication=ldap3.SIMPLE)
    elif scheme == "ldapi":
        kwargs.update(authentication=ldap3.SASL, sasl_mechanism=ldap3.EXTERNAL, sasl_credentials="")
    else:
        kwargs.update(authentication=ldap3.ANONYMOUS)
    # never re-send credentials: no referral is followed
    conn = Connection(server, adba_opts=opts, auto_referrals=False, **kwargs)
    try:
        conn.open(read_server_info=False)
        if use_starttls and not conn.start_tls(read_server_info=False):
            raise _tls_error(None, opts)
        ok = conn.bind(read_server_info=False)
    except AdbaError:
        _close(conn)
        raise
    except Exception as exc:
        _close(conn)
        if type(exc).__module__.startswith("gssapi"):  # a Kerberos failure while binding
            raise AuthenticationFailed(
                f"Kerberos bind to {opts.uri} as {opts.principal} failed: does the DC have the "
                f"service principal ldap/{opts.tls_name or server.host}?",
                uri=opts.uri,
            ) from exc
        raise _wrap(exc, opts, conn) from exc
    if not ok:
        code = conn.result.get("result")
        conn.unbind()
        if code == 49:
            raise AuthenticationFailed(
                f"{opts.uri} rejected the credentials for {opts.bind_dn or 'this identity'}",
                uri=opts.uri,
            )
        if code in (8, 13):  # strongerAuthRequired / confidentialityRequired
            raise TlsError(f"{opts.uri} requires TLS for this bind", uri=opts.uri)
        if code == 34:
            raise InvalidDN(f"malformed bind DN: {opts.bind_dn}")
        raise_for_result(conn.result, what=f"bind to {opts.uri}")
    with suppress(OSError, AttributeError):
        conn.socket.settimeout(opts.answer_timeout)
    conn.adba_bound = True
    log.debug("bound to %s", opts.describe())
    return conn


def raise_for_result(result: dict[str, Any], *, what: str, dn: str | None = None) -> None:
    """Raise the error family for a non-zero LDAP result code."""
    code = result.get("result", 0)
    if code == 0:
        return
    text = f"{what}: {result.get('description', '')} ({code})"
    if result.get("message"):
        text += f": {result['message']}"
    if code == 32:
        raise ObjectNotFound(text, dn=dn, code=code)
    if code in (50, 8):
        raise AccessDenied(text, dn=dn, code=code)
    if code == 49:
        raise AuthenticationFailed(text, dn=dn, code=code)
    if code == 68:
        raise AlreadyExists(text, dn=dn, code=code)
    if code == 34:
        raise InvalidDN(text, dn=dn, code=code)
    if code == 10:  # a read-only replica refers writes: never followed, named instead
        refs = ", ".join(str(r) for r in result.get("referrals") or []) or "its provider"
        raise ReadOnlyReplica(
            f"{what}: this server is a read-only replica; write to {refs} instead "
            "(referrals are never followed: credentials are not re-sent elsewhere)",
            dn=dn,
            code=code,
            referrals=list(result.get("referrals") or []),
        )
    if code == 17:  # undefinedAttributeType: the msSPP schema is not loaded
        raise SchemaMissing(text + " (run `adba directory init`)", dn=dn, code=code)
    raise DirectoryError(text, dn=dn, code=code)


def operation_error(exc: Exception, opts: ConnectionOptions, conn: Any) -> AdbaError:
    """An ldap3 exception raised by an operation on a bound ``conn`` as one of our errors
    (a read that waited ``opts.answer_timeout`` for nothing is :class:`ServerNotAnswering`)."""
    return _wrap(exc, opts, conn, timeout=opts.answer_timeout)


@contextmanager
def session(opts: ConnectionOptions) -> Iterator[ldap3.Connection]:
    """``with session(opts) as conn:`` -- bound connection, always unbound afterwards."""
    conn = connect(opts)
    try:
        yield conn
    except lexc.LDAPException as exc:
        raise _wrap(exc, opts, conn, timeout=opts.answer_timeout) from exc
    finally:
        with suppress(lexc.LDAPException, AdbaError):
            conn.unbind()
