"""One exception root for the whole library, a family per domain noun, stable exit codes.

Each class's docstring is its default message; context goes into keyword attributes
(``dn``, ``host``, ``code`` ...). Scripts and the agent rely on :data:`EXIT_CODES`: a code
never changes meaning once released. ``adba --help`` prints the table.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~2 ms at every boot; annotations need it only for mypy
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "EXIT_CODES",
    "AccessDenied",
    "ActivationLimitReached",
    "AdbaError",
    "AlreadyExists",
    "AuthenticationFailed",
    "AuthorityError",
    "AuthorityNotInitialised",
    "AuthorityUnavailable",
    "AvmaError",
    "AvmaHostNotReady",
    "AvmaNotEntitled",
    "CatalogError",
    "CertificateExpired",
    "CheckFailed",
    "ConfigError",
    "DirectoryError",
    "DiscoveryError",
    "FileAccessError",
    "ForestGuidMissing",
    "InvalidDN",
    "InvalidInput",
    "InvalidKey",
    "KmsError",
    "KmsHostNotReady",
    "LicenseError",
    "MalformedLicense",
    "NotActivated",
    "NotAnActivationObject",
    "NotLdap",
    "ObjectIncomplete",
    "ObjectNotFound",
    "ProtocolError",
    "ReadOnlyReplica",
    "RecordsUnavailable",
    "SchemaMissing",
    "ServerNotAnswering",
    "ServerUnavailable",
    "SignatureInvalid",
    "SignerRetired",
    "StateNotSaved",
    "TlsError",
    "UnknownProduct",
    "UntrustedSigner",
    "WrongForest",
    "exit_code_for",
    "from_exception",
]


class AdbaError(Exception):
    """ADBA failed."""

    exit_code = 1
    #: a stable, machine-readable identifier (shown by ``--json`` and kept in the agent state)
    code = "adba-error"

    def __init__(self, message: str | None = None, /, **context: Any) -> None:
        self.message = message or (self.__doc__ or self.code).strip().splitlines()[0]
        self.context = context
        for name, value in context.items():
            setattr(self, name, value)
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, "exit_code": self.exit_code}


# -- bad input ---------------------------------------------------------------------------------
class InvalidInput(AdbaError):
    """Invalid input."""

    exit_code = 2
    code = "invalid-input"


class InvalidDN(InvalidInput):
    """Malformed distinguished name."""

    code = "invalid-dn"


class FileAccessError(InvalidInput):
    """A file or directory could not be used."""

    code = "file-access"


class ConfigError(InvalidInput):
    """Invalid configuration."""

    exit_code = 15
    code = "config-invalid"


class StateNotSaved(ConfigError):
    """The agent's state file cannot be written (check state_path and its directory)."""

    code = "state-not-saved"


# -- catalogue and keys ------------------------------------------------------------------------
class CatalogError(AdbaError):
    """The product catalogue is invalid."""

    exit_code = 12
    code = "catalog-invalid"


class UnknownProduct(CatalogError):
    """No such edition or CSVLK in the catalogue."""

    code = "unknown-product"


class InvalidKey(AdbaError):
    """Invalid product key."""

    exit_code = 11
    code = "invalid-key"


# -- licenses ----------------------------------------------------------------------------------
class LicenseError(AdbaError):
    """The license does not verify."""

    exit_code = 9
    code = "license-invalid"


class MalformedLicense(LicenseError):
    """The license is not a well-formed ADBA license."""

    code = "license-malformed"


class SignatureInvalid(LicenseError):
    """The license signature does not verify."""

    code = "license-signature-invalid"


class UntrustedSigner(LicenseError):
    """The license was not signed under the pinned authority root key."""

    code = "license-untrusted-signer"


class CertificateExpired(LicenseError):
    """The signing-key certificate is not valid at this time."""

    code = "license-certificate-expired"


class WrongForest(LicenseError):
    """The license was issued for another directory forest."""

    code = "license-wrong-forest"


class ObjectIncomplete(LicenseError):
    """The activation object is incomplete on this DC (half-replicated): another DC may hold it whole."""

    code = "object-incomplete"


class SignerRetired(LicenseError):
    """The license was signed by a signing key the authority has retired."""

    code = "license-signer-retired"


# -- authority ---------------------------------------------------------------------------------
class AuthorityError(AdbaError):
    """The activation authority refused the request."""

    exit_code = 13
    code = "authority-refused"


class AuthorityNotInitialised(AuthorityError):
    """No activation authority here: run `adba authority init` first."""

    code = "authority-not-initialised"


class ForestGuidMissing(InvalidInput):
    """A forest activation needs the forest's GUID: a license is never for any forest."""

    code = "forest-guid-missing"


# -- directory ---------------------------------------------------------------------------------
class DirectoryError(AdbaError):
    """The directory operation failed."""

    exit_code = 20
    code = "directory-error"


class ObjectNotFound(DirectoryError):
    """No such object in the directory."""

    exit_code = 3
    code = "not-found"


class AuthenticationFailed(DirectoryError):
    """The directory rejected the credentials (wrong DN or password)."""

    exit_code = 4
    code = "auth-failed"


class AccessDenied(DirectoryError):
    """The directory refused the operation for this identity."""

    exit_code = 5
    code = "access-denied"


class ServerUnavailable(DirectoryError):
    """The server could not be reached."""

    exit_code = 6
    code = "unavailable"


class ServerNotAnswering(ServerUnavailable):
    """The server accepted the connection but did not answer in time (not answering)."""

    code = "not-answering"


class NotLdap(ServerUnavailable):
    """The server did not answer in LDAP (another service on that port, or a broken reply)."""

    code = "not-ldap"


class TlsError(DirectoryError):
    """The TLS connection failed (untrusted or invalid certificate, or TLS not offered)."""

    exit_code = 7
    code = "tls-failed"


class SchemaMissing(DirectoryError):
    """The directory lacks the msSPP schema or the activation-objects container."""

    exit_code = 8
    code = "schema-missing"


class CheckFailed(DirectoryError):
    """The directory is not ready for ADBA."""

    exit_code = 8
    code = "check-failed"


class ReadOnlyReplica(DirectoryError):
    """The server is a read-only replica: write to its provider (the message names it)."""

    exit_code = 21
    code = "read-only-replica"


class AlreadyExists(DirectoryError):
    """An object with that name already exists."""

    exit_code = 10
    code = "already-exists"


class NotAnActivationObject(DirectoryError):
    """That entry is not an activation object; refusing to touch it."""

    exit_code = 14
    code = "not-an-activation-object"


class AuthorityUnavailable(AuthorityError):
    """The activation authority is not answering."""

    code = "authority-unavailable"


class RecordsUnavailable(AuthorityUnavailable):
    """The authority cannot reach its records (its database): try again shortly. HTTP 503
    with ``Retry-After`` (the ``retry_after`` seconds given); nothing was recorded."""

    code = "records-unavailable"


class ActivationLimitReached(AuthorityError):
    """The key has no activations left."""

    code = "activation-limit"


class AvmaNotEntitled(AuthorityError):
    """The key given proves no entitlement to an AVMA host (not a Datacenter-class edition)."""

    code = "avma-not-entitled"


class KmsError(AdbaError):
    """The KMS operation failed."""

    exit_code = 19
    code = "kms-error"


class ProtocolError(KmsError):
    """Malformed KMS message."""

    code = "kms-protocol"


class KmsHostNotReady(KmsError):
    """This KMS host has no activated host key: run `adba kms install-key` first."""

    code = "kms-host-not-activated"


class AvmaError(KmsError):
    """The AVMA operation failed (a host that activates its virtual machines' guests)."""

    code = "avma-error"


class AvmaHostNotReady(AvmaError):
    """This AVMA host has no certified host key: run `adba avma init` first."""

    code = "avma-host-not-certified"


class DiscoveryError(AdbaError):
    """DNS lookup failed."""

    exit_code = 18
    code = "discovery-failed"


class NotActivated(AdbaError):
    """A product is not activated (reported by `adba agent run --strict`)."""

    exit_code = 17
    code = "not-activated"


#: exit code -> (family, meaning); printed by ``adba --help`` and tested one by one
EXIT_CODES: dict[int, tuple[str, str]] = {
    0: ("", "success"),
    1: ("AdbaError", "unexpected failure"),
    2: ("InvalidInput", "bad input or usage (includes a malformed DN, a path that cannot be used)"),
    3: ("ObjectNotFound", "no such object"),
    4: ("AuthenticationFailed", "wrong bind DN or password"),
    5: ("AccessDenied", "the directory refused this identity"),
    6: ("ServerUnavailable", "server unreachable, timed out or not answering in LDAP"),
    7: ("TlsError", "TLS failed: untrusted certificate or no TLS"),
    8: ("SchemaMissing/CheckFailed", "directory not prepared for ADBA (`directory check`)"),
    9: ("LicenseError", "license does not verify"),
    10: ("AlreadyExists", "object already exists"),
    11: ("InvalidKey", "product key invalid (typo, wrong type)"),
    12: ("CatalogError", "unknown edition or bad catalogue"),
    13: ("AuthorityError", "the activation authority refused"),
    14: ("NotAnActivationObject", "entry is not an activation object"),
    15: ("ConfigError", "invalid configuration file or variable"),
    16: ("LabError", "the throwaway lab server failed to start (`demo`)"),
    17: ("NotActivated", "a product is not activated (`agent run --strict`)"),
    18: ("DiscoveryError", "DNS lookup or update failed"),
    19: ("KmsError", "KMS host error (not activated, protocol, unreachable)"),
    20: ("DirectoryError", "other directory error"),
    21: (
        "ReadOnlyReplica",
        "a read-only replica refused the write: use the provider its referral names",
    ),
    130: ("", "interrupted (SIGINT, Ctrl-C)"),
    141: ("", "standard output closed early (`adba ... | head`): quiet, like SIGPIPE"),
}


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, AdbaError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 1


def _one_line(text: str) -> str:
    """Newlines folded, control characters escaped: an error is one printable line."""
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _path_errnos() -> frozenset[int]:
    import errno

    names = ("ENOENT", "EISDIR", "ENOTDIR", "EACCES", "EPERM", "ENAMETOOLONG", "ELOOP", "EROFS")
    return frozenset(getattr(errno, n) for n in names)


_PATH_ERRNOS = _path_errnos()


def from_exception(exc: BaseException) -> AdbaError:
    """Any exception as an :class:`AdbaError` of the right family, for the one error printer.

    Errors the library did not wrap get a code from what they are: a file or directory that
    cannot be used is bad input (2) naming the path; a refused or timed-out connection is
    :class:`ServerUnavailable` (6); a ``ValueError`` / ``OverflowError`` from a library is a
    bad value (2); anything else is an unexpected failure (1) named by its type.
    """
    if isinstance(exc, AdbaError):
        exc.message = _one_line(exc.message)
        return exc
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return ServerUnavailable(_one_line(f"connection failed: {exc.strerror or exc}"))
    import socket

    if isinstance(exc, socket.gaierror):
        return ServerUnavailable(_one_line(f"name lookup failed: {exc.strerror or exc}"))
    if isinstance(exc, OSError) and exc.filename is not None:
        import errno

        path = str(exc.filename) + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
        reason = exc.strerror or type(exc).__name__
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            reason += " (run it as a user allowed to, e.g. root, or choose another path)"
        return FileAccessError(_one_line(f"{path}: {reason}"), path=str(exc.filename))
    if isinstance(exc, OSError) and exc.errno in _PATH_ERRNOS:  # a library lost the path
        return FileAccessError(
            _one_line(
                f"{exc.strerror}: a file or directory given on the command line or in the configuration"
            )
        )
    if isinstance(exc, (ValueError, OverflowError)):
        return InvalidInput(_one_line(f"invalid value: {exc}"))
    return AdbaError(_one_line(f"unexpected failure: {type(exc).__name__}: {exc}"))
