"""The msSPP schema, the container path and the ACL template, as data.

This module is the single source: ``schema/openldap/`` holds the same definitions rendered
for people and other tools (``python -m adba.directory.schema --write schema/``), and a
unit test keeps the two in step. OIDs, names, single/multi-valued flags and ranges are the
ones of the Windows Server 2012 AD schema (Sch48), so objects are the same on AD and OpenLDAP.
OpenLDAP ignores the ``{len}`` bounds: :mod:`adba.directory.store` validates lengths itself.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ACCESSLOG_SUFFIX",
    "ACTIVATION_OBJECT",
    "ATTRIBUTES",
    "CLASSES",
    "CONTAINER_RDNS",
    "CONTENT_RULE",
    "LICENSE_ATTRIBUTES",
    "MAX_LICENSE_BYTES",
    "SCHEMA_CN",
    "AttributeDef",
    "ClassDef",
    "acl_rules",
    "config_dn",
    "container_dn",
    "limit_rules",
    "render_acl_ldif",
    "render_cn_config_ldif",
    "render_slapd_conf",
]

OCTET = "1.3.6.1.4.1.1466.115.121.1.40"
DSTRING = "1.3.6.1.4.1.1466.115.121.1.15"
MAX_LICENSE_BYTES = 5 * 1024 * 1024
SCHEMA_CN = "adba"

#: the suffix of the audit trail's database on OpenLDAP (:mod:`adba.directory.audit`); the root
#: DSE announces it beside the forest root, which :func:`store.read_forest_root` skips
ACCESSLOG_SUFFIX = "cn=adba-accesslog"

#: the container chain below the forest root, outermost first
CONTAINER_RDNS = ("cn=Configuration", "cn=Services", "cn=Microsoft SPP", "cn=Activation Objects")


@dataclass(eq=False, repr=False)
class AttributeDef:
    oid: str
    name: str
    desc: str
    syntax: str
    #: exact length for fixed-size values, else None
    length: int | None = None
    max_length: int | None = None
    single: bool = True

    def definition(self) -> str:
        if self.syntax == OCTET:
            matching = "EQUALITY octetStringMatch"
        elif self.name.endswith("PartialProductKey"):
            matching = "EQUALITY caseIgnoreMatch"
        else:
            matching = "EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch"
        bound = self.length or self.max_length
        syntax = f"{self.syntax}{{{bound}}}" if bound else self.syntax
        single = " SINGLE-VALUE" if self.single else ""
        return f"( {self.oid} NAME '{self.name}' DESC '{self.desc}' {matching} SYNTAX {syntax}{single} )"


@dataclass(eq=False, repr=False)
class ClassDef:
    oid: str
    name: str
    desc: str
    must: tuple[str, ...]
    may: tuple[str, ...] = ()

    def definition(self) -> str:
        def oids(names: tuple[str, ...]) -> str:
            return names[0] if len(names) == 1 else "( " + " $ ".join(names) + " )"

        may = f" MAY {oids(self.may)}" if self.may else ""
        return (
            f"( {self.oid} NAME '{self.name}' DESC '{self.desc}' SUP top STRUCTURAL "
            f"MUST {oids(self.must)}{may} )"
        )


_AD = "1.2.840.113556.1.4."
ATTRIBUTES: tuple[AttributeDef, ...] = (
    AttributeDef(_AD + "2081", "msSPP-CSVLKSkuId", "SKU ID of the CSVLK", OCTET, length=16),
    AttributeDef(
        _AD + "2082",
        "msSPP-KMSIds",
        "KMS IDs the object activates",
        OCTET,
        length=16,
        single=False,
    ),
    AttributeDef(_AD + "2083", "msSPP-InstallationId", "installation ID", DSTRING, max_length=512),
    AttributeDef(_AD + "2084", "msSPP-ConfirmationId", "confirmation ID", DSTRING, max_length=512),
    AttributeDef(
        _AD + "2085", "msSPP-OnlineLicense", "online license", OCTET, max_length=MAX_LICENSE_BYTES
    ),
    AttributeDef(
        _AD + "2086", "msSPP-PhoneLicense", "phone license", OCTET, max_length=MAX_LICENSE_BYTES
    ),
    AttributeDef(
        _AD + "2087", "msSPP-ConfigLicense", "config license", OCTET, max_length=MAX_LICENSE_BYTES
    ),
    AttributeDef(
        _AD + "2088",
        "msSPP-IssuanceLicense",
        "issuance license",
        OCTET,
        max_length=MAX_LICENSE_BYTES,
    ),
    AttributeDef(_AD + "2105", "msSPP-CSVLKPid", "PID of the CSVLK", DSTRING, max_length=512),
    AttributeDef(
        _AD + "2106",
        "msSPP-CSVLKPartialProductKey",
        "last 5 characters of the CSVLK",
        DSTRING,
        length=5,
    ),
)
LICENSE_ATTRIBUTES = (
    "msSPP-OnlineLicense",
    "msSPP-PhoneLicense",
    "msSPP-ConfigLicense",
    "msSPP-IssuanceLicense",
)

CLASSES: tuple[ClassDef, ...] = (
    ClassDef("1.2.840.113556.1.3.23", "container", "AD container", ("cn",), ("description",)),
    ClassDef(
        "1.2.840.113556.1.5.266",
        "msSPP-ActivationObjectsContainer",
        "AD ms-SPP-Activation-Objects-Container",
        ("cn",),
        ("description",),
    ),
    ClassDef(
        "1.2.840.113556.1.5.267",
        "msSPP-ActivationObject",
        "AD ms-SPP-Activation-Object",
        (
            "cn",
            "msSPP-KMSIds",
            "msSPP-CSVLKSkuId",
            "msSPP-CSVLKPartialProductKey",
            "msSPP-CSVLKPid",
        ),
        (
            "msSPP-InstallationId",
            "msSPP-ConfirmationId",
            *LICENSE_ATTRIBUTES,
            "displayName",
            "description",
        ),
    ),
)

ACTIVATION_OBJECT = CLASSES[2]

#: no auxiliary classes on activation objects: without it an admin could add an object that is
#: also a simpleSecurityObject (a bindable identity) or an extensibleObject (any attribute)
CONTENT_RULE = (
    "( 1.2.840.113556.1.5.267 NAME 'msSPP-ActivationObjectContentRule' "
    "DESC 'no auxiliary classes on activation objects' )"
)


def config_dn(root: str) -> str:
    return f"cn=Configuration,{root}"


def container_dn(root: str) -> str:
    return ",".join(reversed(CONTAINER_RDNS)) + "," + root


#: An OpenLDAP set that is not empty when the entry being checked is already stored: a base
#: search (as the database root, inside the operation's own transaction) for the entry's DN.
#: back-mdb asks for ``entry`` access with three different levels (slapd.access(5), OPERATION
#: REQUIREMENTS; servers/slapd/back-mdb/{add,delete,modrdn}.c): add needs ``a`` on the entry
#: being added (not yet stored), delete needs ``z`` on the stored entry, modrdn needs ``w``
#: (``a`` and ``z``) on the stored entry. The values a rename adds are never checked
#: (acl_check_modlist lets SLAP_MOD_SOFTADD through), so this is the only place a rename can be
#: told apart: the admin group gets ``z`` on stored entries and ``a`` on new ones, never both,
#: and every modrdn is refused with insufficientAccessRights (50). If the lookup ever fails
#: (a name an LDAP URL cannot carry: ``?`` or ``%``) the admin gets ``a`` only: a rename is
#: still refused, only that delete is (the safe side).
STORED = '"([ldap:///]+this+[??base?(objectClass=*)])/entryDN"'


def acl_rules(root: str, admin_group: str, computers: str) -> list[str]:
    """The olcAccess values ADBA installs in front of the database's own rules.

    Admin group: add and delete activation objects directly under the container, nothing else
    (no modify, no rename: see STORED); computers and the admin group: read; everyone else:
    nothing under cn=Configuration (so not even existence is disclosed: searches get 32).
    """
    container = container_dn(root)
    admins = f'group.exact="{admin_group}"'
    hosts = f'dn.children="{computers}"'
    return [
        f'to dn.base="{container}" attrs=children by {admins} =az by * none',
        f'to dn.one="{container}" filter=(objectClass=msSPP-ActivationObject) attrs=entry '
        f"by {admins} set={STORED} =zrscd by {admins} =arscd by {hosts} read by * none",
        f'to dn.one="{container}" by {admins} read by {hosts} read by * none',
        f'to dn.subtree="{config_dn(root)}" by {admins} read by {hosts} read by * none',
    ]


def limit_rules(admin_group: str, computers: str) -> list[str]:
    """The olcLimits values ADBA installs: the computers and the admin group may page through
    every activation object (slapd's default size limit, 500, would otherwise end a search of
    a container holding more, paged or not). Per page the usual limits still apply."""
    return [
        f'dn.children="{computers}" size.prtotal=unlimited',
        f'group/groupOfNames/member="{admin_group}" size.prtotal=unlimited',
    ]


def _fold(line: str) -> str:
    """LDIF line folding at 76 columns (RFC 2849)."""
    out, rest = [line[:76]], line[76:]
    while rest:
        out.append(" " + rest[:75])
        rest = rest[75:]
    return "\n".join(out)


def render_cn_config_ldif() -> str:
    lines = [
        "# ADBA schema for OpenLDAP (cn=config form). Generated by adba.directory.schema.",
        "# Load: ldapadd -Y EXTERNAL -H ldapi://... -f adba.ldif  (or `adba directory init`)",
        f"dn: cn={SCHEMA_CN},cn=schema,cn=config",
        "objectClass: olcSchemaConfig",
        f"cn: {SCHEMA_CN}",
    ]
    lines += [_fold(f"olcAttributeTypes: {a.definition()}") for a in ATTRIBUTES]
    lines += [_fold(f"olcObjectClasses: {c.definition()}") for c in CLASSES]
    lines.append(_fold(f"olcDitContentRules: {CONTENT_RULE}"))
    return "\n".join(lines) + "\n"


def render_slapd_conf() -> str:
    lines = ["# ADBA schema for OpenLDAP (slapd.conf form). Generated by adba.directory.schema."]
    lines += [f"attributetype {a.definition()}" for a in ATTRIBUTES]
    lines += [f"objectclass {c.definition()}" for c in CLASSES]
    lines.append(f"ditcontentrule {CONTENT_RULE}")
    return "\n".join(lines) + "\n"


def render_acl_ldif(
    root: str = "@ROOT@", admin_group: str = "@ADMIN_GROUP@", computers: str = "@COMPUTERS@"
) -> str:
    """ACL template: ldapmodify LDIF that puts ADBA's rules first (placeholders by default)."""
    lines = [
        "# ADBA olcAccess rules, to insert in front of the database's own rules.",
        "# Replace @DB@, @ROOT@, @ADMIN_GROUP@, @COMPUTERS@ (or let `adba directory init` do it).",
        f"# Container: {container_dn(root)}",
        "dn: olcDatabase=@DB@,cn=config",
        "changetype: modify",
        "add: olcAccess",
    ]
    lines += [
        _fold(f"olcAccess: {{{i}}}{rule}")
        for i, rule in enumerate(acl_rules(root, admin_group, computers))
    ]
    lines += ["-", "add: olcLimits"]
    lines += [_fold(f"olcLimits: {rule}") for rule in limit_rules(admin_group, computers)]
    return "\n".join(lines) + "\n-\n"


def _write(target: str) -> None:
    from pathlib import Path

    base = Path(target) / "openldap"
    base.mkdir(parents=True, exist_ok=True)
    (base / "adba.ldif").write_text(render_cn_config_ldif())
    (base / "adba.schema").write_text(render_slapd_conf())
    (base / "acl.ldif.in").write_text(render_acl_ldif())
    (base / "container.txt").write_text(container_dn("@ROOT@") + "\n")


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    import sys

    if sys.argv[1:2] != ["--write"] or len(sys.argv) != 3:
        sys.exit("usage: python -m adba.directory.schema --write DIR")
    _write(sys.argv[2])
