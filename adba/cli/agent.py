"""``adba agent run|status|install-units`` -- the client side."""

from __future__ import annotations

import argparse
import sys
import time

from ._common import Formatter, add_json, emit_json

TYPE_CHECKING = False  # typing costs ~2 ms at every boot; annotations need it only for mypy
if TYPE_CHECKING:
    from typing import Any


RUN = """\
One activation pass for every product in the agent configuration: a GVLK product in a domain
asks a domain controller for an activation object (ADBA); what is not activated is retried
later (2 h) and its next step is named. Boot mode (--once, the default) acts on every
product; --if-due (the hourly timer) only on products whose next attempt is due. Exits 0
even when a product is not activated, unless --strict (then 17).

example:
  adba agent run --once                       # what adba-agent.service runs at boot
  adba agent run --config ./agent.toml --strict -v
"""
STATUS = """\
Shows whether each installed product is licensed: status (licensed, grace, notification,
unlicensed), channel, activation object, CSVLK PID, expiry, next attempt, last error.
Reads the state file only: no root, no network. --json is versioned (schema 1).

example:
  adba agent status
  adba agent status --json | jq '.products[] | {edition, status, expires_at}'
"""
GET_IID = """\
Prints this machine's installation ID for each product with a MAK, to activate without a
network path to the authority: by telephone (`adba authority confirm`), or by proxy (save the
--json output of each machine for `adba mak proxy`).

example:
  adba agent get-iid
  adba agent get-iid --json > /media/usb/$(hostname).iid.json
"""
APPLY_CID = """\
Applies a confirmation ID (checked under the pinned root key) and records the MAK activation.

example:
  adba agent apply-cid 0000013-0172245-...
  adba agent apply-cid --file /media/usb/host1.cids.json
"""
UNITS = """\
Writes the systemd units (adba-agent.service at boot, adba-agent.timer + adba-agent-check.service
hourly) with the path of this adba, then tells you what to enable.

example:
  sudo adba agent install-units && sudo systemctl daemon-reload && \\
      sudo systemctl enable adba-agent.service adba-agent.timer
"""


def register(nouns: Any) -> None:
    p = nouns.add_parser("agent", help="the client agent: activate, report status")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    run = verbs.add_parser(
        "run", help="one activation pass", description=RUN, formatter_class=Formatter
    )
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="boot mode: every product (default)")
    mode.add_argument("--if-due", action="store_true", help="only products whose attempt is due")
    run.add_argument("--strict", action="store_true", help="exit 17 if a product is not activated")
    run.add_argument(
        "--config", metavar="TOML", help="agent configuration (default /etc/adba/agent.toml)"
    )
    add_json(run)
    run.set_defaults(func=cmd_run)

    st = verbs.add_parser(
        "status", help="is this machine licensed?", description=STATUS, formatter_class=Formatter
    )
    st.add_argument(
        "--state", metavar="FILE", help="state file (default: from the config, ADBA_STATE)"
    )
    st.add_argument("--config", metavar="TOML", help="agent configuration (to find the state file)")
    add_json(st)
    st.set_defaults(func=cmd_status)

    iid = verbs.add_parser(
        "get-iid",
        help="installation IDs for MAK activation offline",
        description=GET_IID,
        formatter_class=Formatter,
    )
    iid.add_argument(
        "--config", metavar="TOML", help="agent configuration (default /etc/adba/agent.toml)"
    )
    add_json(iid)
    iid.set_defaults(func=cmd_get_iid)

    cid = verbs.add_parser(
        "apply-cid",
        help="apply confirmation IDs (MAK offline or by proxy)",
        description=APPLY_CID,
        formatter_class=Formatter,
    )
    cid.add_argument("confirmation_id", nargs="?", metavar="CID", help="the digits")
    cid.add_argument("--edition", help="which MAK product (when there is more than one)")
    cid.add_argument(
        "--file", metavar="JSON", help="a confirmation file written by `adba mak proxy`"
    )
    cid.add_argument(
        "--config", metavar="TOML", help="agent configuration (default /etc/adba/agent.toml)"
    )
    cid.set_defaults(func=cmd_apply_cid)

    units = verbs.add_parser(
        "install-units",
        help="install the systemd units",
        description=UNITS,
        formatter_class=Formatter,
    )
    units.add_argument("--dir", default="/etc/systemd/system", help="where to write them")
    units.add_argument(
        "--adba", metavar="PATH", help="path of the adba command (default: this one)"
    )
    units.set_defaults(func=cmd_install_units)


def _when(ts: int | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def cmd_run(args: argparse.Namespace) -> int:
    from ..agent import DEFAULT_CONFIG, run_agent
    from ..errors import NotActivated, StateNotSaved

    try:
        report = run_agent(args.config or DEFAULT_CONFIG, due_only=args.if_due)
    except StateNotSaved as exc:
        if args.json:  # what the pass did, though the state file could not keep it
            done = exc.context["report"]
            outcomes = [o.to_dict() for o in done.outcomes]
            emit_json({"dc": done.dc, "outcomes": outcomes, "error": exc.to_dict()})
        raise
    if args.json:
        emit_json({"dc": report.dc, "outcomes": [o.to_dict() for o in report.outcomes]})
    else:
        if not report.outcomes:
            print("nothing due")
        for o in report.outcomes:
            verdict = (
                "activated" if o.activated else "not renewed" if o.licensed else "not activated"
            )
            print(f"{o.edition}: {verdict}: {o.message}")
    if args.strict:
        from ..agent import status

        missing = [p.edition for p in status(config_path=args.config) if not p.licensed]
        if missing:
            raise NotActivated(f"not activated: {', '.join(missing)}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ..agent import STATUS_SCHEMA, resolve_state_path
    from ..agent._status import read_status

    path = resolve_state_path(args.state, args.config)
    products = read_status(path)
    if args.json:
        emit_json(
            {"schema": STATUS_SCHEMA, "state": path, "products": [p.to_dict() for p in products]}
        )
        return 0
    if not products:
        print(f"no products recorded in {path}: has `adba agent run` run yet?")
    for p in products:
        channel = f" ({p.channel})" if p.channel else ""
        days = f" ({p.remaining_seconds // 86400} days left)" if p.remaining_seconds else ""
        error = f"{p.last_error_code}: {p.last_error_message}" if p.last_error_code else "-"
        print(f"{p.edition}")
        avma = [("AVMA host", p.avma_host)] if p.avma_host else []
        for name, value in (
            ("status", f"{p.status}{channel}{days}"),
            ("activation object", p.object_dn or "-"),
            ("KMS host", f"{p.kms_host} (count {p.kms_count})" if p.kms_host else "-"),
            *avma,
            ("CSVLK PID", p.csvlk_pid or "-"),
            ("product key", f"*****-*****-*****-*****-{p.partial_key}" if p.partial_key else "-"),
            ("activated", _when(p.activated_at)),
            ("expires", _when(p.expires_at)),
            ("next attempt", _when(p.next_attempt)),
            ("last error", error),
        ):
            print(f"  {name + ':':<19}{value}")
    return 0


#: what the units' sandbox hides from the service: ProtectHome=yes and PrivateTmp=yes
HIDDEN = {
    "/home": "ProtectHome=yes",
    "/root": "ProtectHome=yes",
    "/run/user": "ProtectHome=yes",
    "/tmp": "PrivateTmp=yes",
    "/var/tmp": "PrivateTmp=yes",
}


def hidden_by_units(path: str) -> tuple[str, str] | None:
    """(directory, setting) when ``path`` lies where the units' sandbox hides it."""
    for top, setting in HIDDEN.items():
        if path == top or path.startswith(top + "/"):
            return top, setting
    return None


def _programs(adba: str) -> list[str]:
    """The adba command, where it really is, and the interpreter its ``#!`` line names."""
    import os

    paths = [adba, os.path.realpath(adba)]
    try:
        with open(adba, "rb") as f:
            first = f.readline(512)
    except OSError:
        first = b""
    if first.startswith(b"#!"):
        interpreter = first[2:].split()
        if interpreter:
            paths.append(os.fsdecode(interpreter[0]))
    return list(dict.fromkeys(paths))


def cmd_install_units(args: argparse.Namespace) -> int:
    import os
    import shutil
    from pathlib import Path

    from ..errors import FileAccessError, InvalidInput

    adba = os.path.abspath(args.adba or shutil.which("adba") or sys.argv[0])
    source = Path(__file__).resolve().parents[1] / "data" / "systemd"
    target = Path(args.dir)
    if not target.is_dir():
        raise InvalidInput(f"{target} is not a directory")
    if not os.access(target, os.W_OK):
        raise FileAccessError(
            f"{target}: permission denied: run it as root "
            "(sudo adba agent install-units) or give --dir",
            path=str(target),
        )
    for program in _programs(adba):
        hidden = hidden_by_units(program)
        if hidden:
            print(
                f"adba: warning: {program} is under {hidden[0]}, which the units hide "
                f"({hidden[1]}): the service cannot start it; install adba outside "
                f"{hidden[0]} (e.g. /opt/adba or /usr/local) or give --adba",
                file=sys.stderr,
            )
    units = sorted(source.glob("adba-agent*"))  # the agent's (adba-avma.service: a host's)
    texts = {unit.name: unit.read_text().replace("@ADBA@", adba) for unit in units}
    for name, text in texts.items():
        try:
            (target / name).write_text(text)
        except PermissionError as exc:
            raise FileAccessError(
                f"{target / name}: permission denied: run it as root or give --dir",
                path=str(target / name),
            ) from exc
        print(f"wrote {target / name}")
    page = Path(__file__).resolve().parents[1] / "data" / "adba.1"
    print("now: systemctl daemon-reload && systemctl enable adba-agent.service adba-agent.timer")
    print(
        f"man page (Documentation=man:adba(1)): install -Dm644 {page} /usr/local/share/man/man1/adba.1"
    )
    return 0


def cmd_get_iid(args: argparse.Namespace) -> int:
    from ..agent import DEFAULT_CONFIG, installation_ids

    data = installation_ids(args.config or DEFAULT_CONFIG)
    if args.json:
        emit_json(data)
        return 0
    if not data["products"]:
        print("no product with a MAK in the configuration")
    for p in data["products"]:
        print(f"{p['edition']}: {p['installation_id']}")
    return 0


def cmd_apply_cid(args: argparse.Namespace) -> int:
    from ..agent import DEFAULT_CONFIG, apply_confirmations
    from ..errors import InvalidInput

    pairs: list[tuple[str | None, str]] = []
    if args.file:
        from ..agent.mak import read_confirmations

        pairs += [(e, c) for e, c in read_confirmations(args.file)]
    if args.confirmation_id:
        pairs.append((args.edition, args.confirmation_id))
    if not pairs:
        raise InvalidInput("give a confirmation ID or --file")
    for line in apply_confirmations(pairs, args.config or DEFAULT_CONFIG):
        print(line)
    return 0
