"""Collect each machine's license status over SSH, the way VAMT pulls it with the admin's
credentials: connect (host key verified against a known_hosts file; an unknown or changed
key is refused), run ``adba agent status --json`` (or the configured command), parse it.

Bounded: at most ``concurrency`` machines at once, each within ``timeout`` seconds from
connecting to the last byte of output (at most :data:`MAX_OUTPUT` bytes). A machine that
refuses, hangs or answers nonsense is recorded with a stable error code and never stops
the scan:

``unreachable``, ``timeout``, ``host-key-unknown``, ``host-key-changed``, ``auth-failed``,
``command-failed``, ``bad-output``, ``ssh-error``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput
from .db import STATUS_ORDER, Collection

__all__ = ["DEFAULT_COMMAND", "MAX_OUTPUT", "SshOptions", "collect", "summarize"]

log = logging.getLogger(__name__)

DEFAULT_COMMAND = "adba agent status --json"
MAX_OUTPUT = 1024 * 1024


@dataclass(frozen=True)
class SshOptions:
    known_hosts: str
    user: str | None = None
    identities: tuple[str, ...] = ()
    command: str = DEFAULT_COMMAND
    port: int = 22
    timeout: float = 30.0
    concurrency: int = 16
    ssh_config: str | None = None


def summarize(machine: str, at: int, document: Any) -> Collection:
    """A collection from ``adba agent status --json`` output (schema 1); raises ValueError."""
    if not isinstance(document, dict) or document.get("schema") != 1:
        raise ValueError("not `adba agent status --json` output (schema 1)")
    products = document.get("products")
    if not isinstance(products, list) or not all(isinstance(p, dict) for p in products):
        raise ValueError("no product list")
    statuses = [str(p.get("status")) for p in products]
    worst = min(
        statuses or ["unlicensed"],
        key=lambda s: STATUS_ORDER.index(s) if s in STATUS_ORDER else 0,
    )
    channels = sorted({str(p["channel"]) for p in products if p.get("channel")})
    expiring = [
        int(p["expires_at"])
        for p in products
        if p.get("status") == "licensed" and isinstance(p.get("expires_at"), int)
    ]
    errors = [p for p in products if p.get("last_error_code")]
    return Collection(
        machine=machine,
        at=at,
        ok=True,
        status=worst if products else "unlicensed",
        channel=",".join(channels) or None,
        expires_at=min(expiring) if expiring else None,
        error_code=str(errors[0]["last_error_code"]) if errors else None,
        error_message=str(errors[0].get("last_error_message") or "") or None if errors else None,
        products=products,
    )


def _failed(machine: str, at: int, code: str, message: str) -> Collection:
    return Collection(
        machine, at, False, status="unreachable", error_code=code, error_message=message
    )


class _Collector:
    def __init__(self, opts: SshOptions) -> None:
        import asyncssh

        if opts.concurrency < 1 or opts.timeout <= 0:
            raise InvalidInput("--concurrency must be 1 or more and --timeout more than 0")
        try:
            self.known = asyncssh.read_known_hosts(opts.known_hosts)
        except (OSError, ValueError) as exc:
            raise InvalidInput(
                f"cannot read the known_hosts file {opts.known_hosts}: {exc}; host keys are "
                "always verified (ssh-keyscan a machine and check its key first)"
            ) from exc
        try:
            keys = asyncssh.load_keypairs(list(opts.identities)) if opts.identities else None
        except (OSError, ValueError, asyncssh.KeyImportError) as exc:
            raise InvalidInput(f"cannot load the SSH key: {exc}") from exc
        self.opts = opts
        settings: dict[str, Any] = {
            "known_hosts": self.known,
            "config": [opts.ssh_config] if opts.ssh_config else None,
            "connect_timeout": opts.timeout,
            "login_timeout": opts.timeout,
        }
        if opts.user:
            settings["username"] = opts.user
        if keys:  # the given keys only (no ssh-agent); else the agent and ~/.ssh/id_*
            settings.update(client_keys=keys, agent_path=None)
        self.opts = opts
        self.options = asyncssh.SSHClientConnectionOptions(**settings)

    def target(self, machine: dict[str, Any]) -> tuple[str, int]:
        from ..addresses import host_port

        address = machine.get("address") or machine["name"]
        try:
            return host_port(str(address), default_port=self.opts.port)
        except ValueError as exc:
            raise _Refused("bad-address", f"{address!r}: {exc}") from exc

    async def one(self, machine: dict[str, Any]) -> Collection:
        import asyncssh

        name = str(machine["name"])
        at = int(time.time())
        started = time.monotonic()
        try:
            host, port = self.target(machine)
            where = f"{host}:{port}"
            try:
                out = await asyncio.wait_for(self._run(host, port), self.opts.timeout)
            except TimeoutError:
                raise _Refused(
                    "timeout", f"{where}: no complete answer within {self.opts.timeout:g} s"
                ) from None
            except asyncssh.HostKeyNotVerifiable as exc:
                known = self.known.match(host, "", port)[0]
                if known:
                    raise _Refused(
                        "host-key-changed",
                        f"{where}: the host key is not the one in {self.opts.known_hosts}: "
                        "refused (if the machine was reinstalled, check and replace its entry)",
                    ) from exc
                raise _Refused(
                    "host-key-unknown",
                    f"{where}: no host key for it in {self.opts.known_hosts}: refused (check "
                    "its key and add it first)",
                ) from exc
            except asyncssh.PermissionDenied as exc:
                raise _Refused("auth-failed", f"{where}: SSH login refused: {exc.reason}") from exc
            except asyncssh.Error as exc:
                raise _Refused("ssh-error", f"{where}: {exc.reason}") from exc
            except OSError as exc:
                raise _Refused("unreachable", f"{where}: {exc.strerror or exc}") from exc
            status, data, err = out
            if status != 0:
                first = err.decode(errors="replace").strip().splitlines()[:1]
                raise _Refused(
                    "command-failed",
                    f"{where}: `{self.opts.command}` exited {status}"
                    + (f": {first[0][:200]}" if first else ""),
                )
            try:
                result = summarize(name, at, json.loads(data))
            except ValueError as exc:
                raise _Refused("bad-output", f"{where}: {exc}") from exc
        except _Refused as refused:
            result = _failed(name, at, refused.code, refused.message)
        result.seconds = time.monotonic() - started
        return result

    async def _run(self, host: str, port: int) -> tuple[int | None, bytes, bytes]:
        import asyncssh

        conn = await asyncssh.connect(host, port, options=self.options)
        try:
            proc = await conn.create_process(self.opts.command, encoding=None)
            proc.stdin.write_eof()
            chunks, size = [], 0
            while True:
                chunk = await proc.stdout.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_OUTPUT:
                    raise _Refused("bad-output", f"more than {MAX_OUTPUT} bytes of output")
                chunks.append(chunk)
            err = await proc.stderr.read(4096)
            await proc.wait_closed()
            return proc.exit_status, b"".join(chunks), err
        finally:
            conn.abort()


class _Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def collect(
    machines: Sequence[dict[str, Any]],
    opts: SshOptions,
    *,
    progress: Callable[[Collection, int, int], None] | None = None,
) -> list[Collection]:
    """One collection per machine, in the order given; ``progress(result, done, total)``."""
    collector = _Collector(opts)
    total = len(machines)

    async def run_all() -> list[Collection]:
        gate = asyncio.Semaphore(opts.concurrency)
        done = 0

        async def bounded(machine: dict[str, Any]) -> Collection:
            nonlocal done
            async with gate:
                result = await collector.one(machine)
            done += 1
            if progress is not None:
                progress(result, done, total)
            return result

        return list(await asyncio.gather(*(bounded(m) for m in machines)))

    return asyncio.run(run_all())
