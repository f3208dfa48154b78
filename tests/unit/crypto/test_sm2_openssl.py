"""Cross-verification with OpenSSL's own SM2 (``openssl pkeyutl -digest sm3 -rawin``).

OpenSSL 3 computes Z itself from ``distid`` and the key, so these tests check
our Z, e, r and s against an independent implementation both ways: we sign,
OpenSSL verifies; OpenSSL signs (its own nonce), we verify.  Keys are handed
to OpenSSL as PKCS#8 / SubjectPublicKeyInfo DER built by hand below
(``cryptography`` has no SM2 curve).  Few cases: each one is a subprocess.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.crypto import sm2
from pipeline.errors import SignatureError

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl binary not installed")

_OID_EC_PUBLIC_KEY = bytes.fromhex("06072A8648CE3D0201")  # 1.2.840.10045.2.1
_OID_SM2 = bytes.fromhex("06082A811CCF5501822D")  # 1.2.156.10197.1.301


def _der(tag: int, body: bytes) -> bytes:
    length = len(body)
    if length < 0x80:
        return bytes([tag, length]) + body
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(encoded)]) + encoded + body


def _spki(public_key: bytes) -> bytes:
    """SubjectPublicKeyInfo (RFC 5480) for an SM2 key."""
    algorithm = _der(0x30, _OID_EC_PUBLIC_KEY + _OID_SM2)
    return _der(0x30, algorithm + _der(0x03, b"\x00\x04" + public_key))


def _pkcs8(d: bytes, public_key: bytes) -> bytes:
    """PKCS#8 PrivateKeyInfo wrapping an RFC 5915 ECPrivateKey."""
    ec_private = _der(
        0x30,
        bytes.fromhex("020101") + _der(0x04, d) + _der(0xA1, _der(0x03, b"\x00\x04" + public_key)),
    )
    algorithm = _der(0x30, _OID_EC_PUBLIC_KEY + _OID_SM2)
    return _der(0x30, bytes.fromhex("020100") + algorithm + _der(0x04, ec_private))


def _openssl(*args: str) -> subprocess.CompletedProcess[bytes]:
    assert OPENSSL is not None
    return subprocess.run([OPENSSL, *args], capture_output=True, check=False, timeout=30)


def _files(tmp_path: Path, d: bytes, public_key: bytes, message: bytes) -> tuple[str, str, str]:
    key = tmp_path / "key.der"
    pub = tmp_path / "pub.der"
    msg = tmp_path / "msg.bin"
    key.write_bytes(_pkcs8(d, public_key))
    pub.write_bytes(_spki(public_key))
    msg.write_bytes(message)
    return str(key), str(pub), str(msg)


def _openssl_verify(pub: str, msg: str, sig_path: Path, uid: bytes) -> bool:
    result = _openssl(
        "pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-inkey", pub,
        "-in", msg, "-sigfile", str(sig_path), "-rawin", "-digest", "sm3",
        "-pkeyopt", f"distid:{uid.decode('ascii')}",
    )  # fmt: skip
    return result.returncode == 0 and b"Signature Verified Successfully" in result.stdout


CASES = [
    (b"message digest", sm2.DEFAULT_UID),
    (bytes(range(256)) * 3, sm2.DEFAULT_UID),
    (b"static data to be authenticated", b"ALICE123@YAHOO.COM"),
]


@pytest.mark.parametrize(("message", "uid"), CASES)
def test_our_signature_verifies_in_openssl(tmp_path: Path, message: bytes, uid: bytes) -> None:
    d, public_key = sm2.generate_keypair()
    _key, pub, msg = _files(tmp_path, d, public_key, message)
    sig_path = tmp_path / "sig.der"
    sig_path.write_bytes(sm2.signature_to_der(sm2.sign(d, message, uid=uid)))
    assert _openssl_verify(pub, msg, sig_path, uid)
    # and OpenSSL is not just saying yes: a signature over another message fails
    sig_path.write_bytes(sm2.signature_to_der(sm2.sign(d, message + b"x", uid=uid)))
    assert not _openssl_verify(pub, msg, sig_path, uid)


@pytest.mark.parametrize(("message", "uid"), CASES)
def test_openssl_signature_verifies_with_ours(tmp_path: Path, message: bytes, uid: bytes) -> None:
    d, public_key = sm2.generate_keypair()
    key, _pub, msg = _files(tmp_path, d, public_key, message)
    sig_path = tmp_path / "sig.der"
    result = _openssl(
        "pkeyutl", "-sign", "-keyform", "DER", "-inkey", key, "-in", msg,
        "-out", str(sig_path), "-rawin", "-digest", "sm3",
        "-pkeyopt", f"distid:{uid.decode('ascii')}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    signature = sm2.signature_from_der(sig_path.read_bytes())
    sm2.verify(public_key, message, signature, uid=uid)
    with pytest.raises(SignatureError):
        sm2.verify(public_key, message + b"x", signature, uid=uid)
