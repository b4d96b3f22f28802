"""The activation authority (the vendor's side).

``local`` holds the keys and the records (:class:`LocalAuthority`); ``service`` serves it over
HTTP (``adba authority serve``); ``client`` is what the CLI and the agent use to talk to a
remote one. Both the local authority and the client implement :class:`Activator`, the seam
every activating command goes through.
"""

from .local import (
    KMS_HOST_LIMIT,
    KMS_REACTIVATIONS,
    Activator,
    CsvlkActivation,
    KmsHostActivation,
    LocalAuthority,
    key_sha256,
    make_kms_epid,
)

__all__ = [
    "KMS_HOST_LIMIT",
    "KMS_REACTIVATIONS",
    "Activator",
    "CsvlkActivation",
    "KmsHostActivation",
    "LocalAuthority",
    "key_sha256",
    "make_kms_epid",
]
