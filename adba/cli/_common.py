"""What every command shares: connection options, config resolution, output, confirmation."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import InvalidInput

TYPE_CHECKING = False  # typing costs ~2 ms at every boot; annotations need it only for mypy
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn

    from ..catalog import Catalog
    from ..config import AdminConfig
    from ..directory.connection import ConnectionOptions


def _columns() -> int:
    import os

    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 80


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written. Finds the width without argparse's ``import shutil`` (which
    drags in bz2 and lzma: ~2 ms on every boot for a help text nobody reads there)."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        super().__init__(prog, indent_increment, max_help_position, width or _columns() - 2)


class UsageError(SystemExit):
    """argparse refused the command line (exit 2); the message is kept for ``--json``."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message


class Parser(argparse.ArgumentParser):
    """Every parser and sub-parser formats with :class:`Formatter`; a usage error is printed
    as argparse does (usage, then ``adba ...: error: ...``) on one line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        from ..errors import _one_line

        message = _one_line(message)
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise UsageError(message)


# -- argument types: every number and address is checked where it is parsed -----------------
def _typed(name: str, check: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name  # argparse names the type in "invalid <name> value"
    return convert


def _number(text: str, kind: type[int] | type[float]) -> float:
    import math

    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    return value


def _port(text: str) -> int:
    from ..addresses import port_number

    return port_number(text)


def _positive_int(text: str) -> int:
    value = int(_number(text, int))
    if value < 1:
        raise ValueError(f"must be 1 or more, not {value}")
    if value > 2**31 - 1:
        raise ValueError(f"must be at most {2**31 - 1}, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(_number(text, int))
    if value < 0:
        raise ValueError(f"must be 0 or more, not {value}")
    if value > 2**31 - 1:
        raise ValueError(f"must be at most {2**31 - 1}, not {value}")
    return value


def _timeout(text: str) -> float:
    value = _number(text, float)
    if not 0 < value <= 3600:
        raise ValueError(f"seconds must be more than 0 and at most 3600, not {text}")
    return value


def _ldap_uri(text: str) -> str:
    from ..addresses import ldap_uri

    return ldap_uri(text)


def _ldapi_uri(text: str) -> str:
    from ..addresses import ldap_uri

    return ldap_uri(text, schemes=("ldapi",))


def _host_port(text: str) -> str:
    from ..addresses import host_port

    host_port(text, default_port=1688)
    return text


def _dns_servers(text: str) -> list[str]:
    from ..addresses import dns_server

    servers = [s.strip() for s in text.split(",") if s.strip()]
    if not servers:
        raise ValueError("no DNS server given")
    for server in servers:
        dns_server(server)
    return servers


port = _typed("port", _port)
positive_int = _typed("positive integer", _positive_int)
non_negative_int = _typed("non-negative integer", _non_negative_int)
timeout = _typed("timeout", _timeout)
ldap_uri = _typed("LDAP URI", _ldap_uri)
ldapi_uri = _typed("ldapi URI", _ldapi_uri)
host_port = _typed("host[:port]", _host_port)
dns_servers = _typed("DNS server list", _dns_servers)


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "connection (also from adba.toml [directory] and ADBA_* variables)"
    )
    g.add_argument(
        "-H",
        "--uri",
        type=ldap_uri,
        help="ldap://, ldaps:// or ldapi:// URI of the directory (ADBA_URI)",
    )
    g.add_argument(
        "-b", "--base", help="forest root DN, e.g. dc=example,dc=test (default: from the root DSE)"
    )
    g.add_argument(
        "-D",
        "--bind-dn",
        help="DN to bind as (AD: also HOST$@REALM); default: anonymous, or SASL EXTERNAL on ldapi",
    )
    g.add_argument(
        "--password-file", metavar="FILE", help="file whose first line is the bind password"
    )
    g.add_argument("--ca-file", metavar="PEM", help="CA certificate(s) to validate the server with")
    g.add_argument(
        "--tls-name",
        metavar="NAME",
        help="name the server certificate must carry, when -H gives an address (e.g. the DC's FQDN)",
    )
    g.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow a password bind without TLS on ldap:// (never do this on a network)",
    )
    g.add_argument(
        "--timeout",
        type=timeout,
        default=5.0,
        metavar="S",
        help="longest wait for each connect step and each answer (default 5 s)",
    )


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output (sorted keys)")


def admin_config(args: argparse.Namespace) -> AdminConfig:
    cached: AdminConfig | None = getattr(args, "_config", None)
    if cached is None:
        from ..config import load_admin_config

        cached = load_admin_config()
        args._config = cached
    return cached


def pick(args: argparse.Namespace, name: str, section: str = "directory") -> Any:
    value = getattr(args, name, None)
    if value is not None:
        return value
    # a flag with no key in that section of adba.toml (e.g. ao publish --authority) is None
    return getattr(getattr(admin_config(args), section), name, None)


def _checked_dn(args: argparse.Namespace, name: str, flag: str) -> str | None:
    """A DN from the flag or the configuration; a bad one from the configuration is a
    :class:`ConfigError` naming the file and key, or the variable."""
    from ..directory.store import validate_dn
    from ..errors import ConfigError, InvalidDN

    value = pick(args, name)
    if not value:
        return None
    if name == "bind_dn" and _ad_account_name(value):
        return str(value)
    try:
        validate_dn(value)
    except InvalidDN as exc:
        if getattr(args, name, None) is not None:
            raise InvalidDN(f"{flag}: {exc.message}") from exc
        source = admin_config(args).origin("directory", name) or "the configuration"
        where = source if source.startswith("ADBA_") else f"{source}: key directory.{name}"
        raise ConfigError(f"{where}: {exc.message}") from exc
    return str(value)


def connection_options(args: argparse.Namespace) -> ConnectionOptions:
    from ..directory.connection import ConnectionOptions, read_password_file

    uri = pick(args, "uri")
    if not uri:
        raise InvalidInput("no directory URI: give --uri (or ADBA_URI, or uri in adba.toml)")
    pw_file = pick(args, "password_file")
    bind_dn = _checked_dn(args, "bind_dn", "--bind-dn")
    return ConnectionOptions(
        uri=uri,
        bind_dn=bind_dn,
        password=read_password_file(pw_file) if pw_file else None,
        ca_file=pick(args, "ca_file"),
        insecure=bool(pick(args, "insecure")),
        connect_timeout=args.timeout,
        tls_name=getattr(args, "tls_name", None),
    )


def _ad_account_name(name: str) -> bool:
    """AD also takes ``HOST$@REALM`` (UPN) or ``DOMAIN\\HOST$`` as a simple-bind name."""
    return "=" not in name and ("@" in name or "\\" in name)


def root_dn(args: argparse.Namespace, opts: ConnectionOptions) -> str:
    base = _checked_dn(args, "base", "--base")
    if base:
        return base
    from ..directory.openldap import discover_root

    return discover_root(opts)


def catalog(args: argparse.Namespace) -> Catalog:
    from ..catalog import load_catalog

    return load_catalog(pick(args, "catalog"))


def root_public_key(args: argparse.Namespace) -> bytes | None:
    path = getattr(args, "root_key", None) or admin_config(args).authority.root_key
    if not path:
        return None
    from ..license import load_root_public_key

    return load_root_public_key(path)


#: JSON documents written to stdout by this process (main() then knows whether a verb that
#: failed already gave its JSON answer, e.g. `directory check --json`'s report)
json_written = 0


def emit_json(data: Any) -> None:
    global json_written
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
    json_written += 1


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise InvalidInput("refusing without confirmation: pass --yes")
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise InvalidInput("not confirmed; nothing changed")


def say(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)
