"""Test servers: controller classes over :mod:`adba.lab` (render -> validate -> launch ->
probe -> stop), kept on failure so the run directory and server log can be read."""

from __future__ import annotations

from adba.lab import Slapd


class TestSlapd(Slapd):
    """A lab slapd prepared for ADBA with the real ``adba directory init``."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        super().__init__(prefix="adba-test-")

    def adba_init(self) -> None:
        from adba.directory import openldap
        from adba.directory.connection import ConnectionOptions

        openldap.init(
            ConnectionOptions(uri=self.ldapi_uri),
            self.options(self.root),
            root=self.suffix,
            admin_group=self.admin_group,
            computers=self.computers,
        )

    def options(self, ident: object | None = None, **kw: object):  # type: ignore[no-untyped-def]
        from adba.directory.connection import ConnectionOptions

        if ident is None:
            return ConnectionOptions(uri=self.uri, ca_file=self.ca_file, **kw)  # type: ignore[arg-type]
        return ConnectionOptions(
            uri=self.uri,
            bind_dn=ident.dn,  # type: ignore[attr-defined]
            password=ident.password,  # type: ignore[attr-defined]
            ca_file=self.ca_file,
            **kw,  # type: ignore[arg-type]
        )

    def cli_args(self, who: str) -> list[str]:
        """Connection flags for `adba` as one of the lab identities (StartTLS, lab CA)."""
        ident = getattr(self, who)
        return [
            "-H",
            self.uri,
            "--ca-file",
            self.ca_file,
            "-b",
            self.suffix,
            "-D",
            ident.dn,
            "--password-file",
            ident.password_file,
        ]

    @property
    def container(self) -> str:
        from adba.directory.schema import container_dn

        return container_dn(self.suffix)
