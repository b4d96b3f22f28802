"""The host's Ed25519 signer: libsodium's where PyNaCl is installed, cryptography's else --
the very same signature bytes either way (Ed25519 is deterministic)."""

from __future__ import annotations

import os
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from adba.kms.host import signer, signer_name


def test_the_fast_signer_gives_cryptographys_bytes() -> None:
    pytest.importorskip("nacl._sodium")
    for _ in range(20):
        key = Ed25519PrivateKey.generate()
        sign = signer(key)
        assert signer_name(sign) == "libsodium"
        for message in (b"", b"x", os.urandom(444), os.urandom(4096)):
            signature = sign(message)
            assert signature == key.sign(message) and len(signature) == 64
            key.public_key().verify(signature, message)  # raises if it does not verify


def test_without_pynacl_the_signer_is_cryptographys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nacl._sodium", None)  # import fails
    key = Ed25519PrivateKey.generate()
    sign = signer(key)
    assert signer_name(sign) == "openssl" and sign(b"m") == key.sign(b"m")


def test_a_signer_that_disagrees_with_cryptography_is_not_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nacl import _sodium

    class Lib:
        def crypto_sign(self, *args: object) -> int:
            return 0  # claims to have signed, writes nothing

    monkeypatch.setattr(_sodium, "lib", Lib())
    key = Ed25519PrivateKey.generate()
    sign = signer(key)
    assert signer_name(sign) == "openssl" and sign(b"m") == key.sign(b"m")
