"""The PKCS#11 key store backend: keys are objects in a token, work happens inside it.

:class:`Pkcs11KeyStore` implements :class:`pipeline.keys.store.KeyStore` over a
PKCS#11 v2.40 token through PyKCS11 (SoftHSM2 2.6 in tests, a real HSM in
production).  What runs *inside* the token (PKCS#11 v2.40 section numbers):

* key generation (CKM_DES2_KEY_GEN, CKM_DES3_KEY_GEN, CKM_AES_KEY_GEN,
  CKM_RSA_PKCS_KEY_PAIR_GEN, 5.?/2.1.4);
* EMV Book 2 A1.4.1 Option A / A1.4.2 Option B card master key derivation
  with CKM_DES3_ECB_ENCRYPT_DATA (Current Mechanisms 2.36): because ECB
  encrypts blocks independently, *one* derivation over the 16 bytes
  ``Y || (Y xor FF..FF)`` gives ``ZL || ZR`` directly, and the token sets odd
  parity on a CKK_DES2 object, so no combination step and no clear half
  ever exists outside the token; Option C with CKM_AES_ECB_ENCRYPT_DATA
  (the token keeps the leftmost CKA_VALUE_LEN bytes, as A1.4.3 asks);
* wrapping the derived card key under the TK (C_WrapKey), its KCV (C_Encrypt
  of zeros), raw RSA signatures (CKM_RSA_X_509).

What the token cannot do is found by a probe at start (mechanism flags are
not trusted: SoftHSM2 2.6.1 advertises CKF_WRAP on CKM_DES3_CBC and then
answers CKR_MECHANISM_INVALID) and reported by :meth:`Pkcs11KeyStore.capabilities`
and :meth:`Pkcs11KeyStore.capability_report`; an operation that needs a
missing capability raises :class:`~pipeline.errors.CapabilityError` naming the
operation and the missing mechanism.  There is never a software fallback.

Object layout: each key version is a token object with CKA_LABEL = label and
CKA_ID = the version (4 bytes big-endian); an RSA pair shares label and id.
Usage becomes attributes (CKA_DERIVE for IMKs/KMCs only, CKA_ENCRYPT/DECRYPT,
CKA_WRAP/UNWRAP, CKA_SIGN/VERIFY from :mod:`pipeline.keys.usage`),
CKA_SENSITIVE is always true, CKA_EXTRACTABLE follows exportability, and
CKA_MODIFIABLE is false so nobody can widen a key's usage afterwards.  The
record (state, owner, KCV, timestamps ... never key bytes) is a private
CKO_DATA object with CKA_APPLICATION ``cardprep-keystore`` and CKA_LABEL
``label@vN``; it is replaced (create new, destroy old) on every change.

Sessions: one session per process (threads sharing a SoftHSM2 session
crashed the process), every call under one lock, and a pid check that
re-initialises the library and logs in again in a forked child.  The PIN
comes from the caller and is never logged or shown.

Example (needs a token; see tests/integration/conftest.py):
    >>> store = Pkcs11KeyStore("/usr/lib/softhsm/libsofthsm2.so", "cardprep-test",
    ...                        pin, audit=trail.append)                 # doctest: +SKIP
    >>> imk = store.generate("imk-ac", KeyAlgorithm.TDES2, KeyUsage.E0,
    ...                      KeyRole.IMK_AC, "bin:476173", actor="km1").ref  # doctest: +SKIP
    >>> store.derive_and_wrap(imk, "4761739001010119", "01",
    ...                       DerivationMethod.OPTION_A, tk)             # doctest: +SKIP
"""

from __future__ import annotations

import builtins
import hmac
import json
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

import PyKCS11

from pipeline.audit.trail import AuditTrail
from pipeline.crypto.ciphers import fix_parity, xor
from pipeline.crypto.emv import option_b_y, validate_pan, validate_psn
from pipeline.errors import (
    AuditError,
    CapabilityError,
    CeremonyError,
    ConfigError,
    InvalidInputError,
    KeyNotFoundError,
    KeyStateError,
    KeyStoreError,
    KeyUsageError,
)
from pipeline.keys.components import xor_combine
from pipeline.keys.model import (
    DerivationMethod,
    Exportability,
    IccKeyPair,
    IssuerCertificateRecord,
    KeyAlgorithm,
    KeyRecord,
    KeyRef,
    KeyRole,
    KeyState,
    KeyUsage,
    TranslateCheck,
    WrappedKey,
    check_label,
)
from pipeline.keys.settings import Settings
from pipeline.keys.store import CAPABILITIES, StoreAuditSealer
from pipeline.keys.usage import (
    MODE_DIRECTIONS,
    Direction,
    Operation,
    check,
    check_strength,
    permitted_operations,
)

__all__ = [
    "APPLICATION",
    "AuditSink",
    "CapabilityReport",
    "Pkcs11KeyStore",
    "derivation_data",
    "gp_diversification_data",
    "option_a_y",
    "token_attributes",
]

#: CKA_APPLICATION of the record (metadata) data objects.
APPLICATION = "cardprep-keystore"

#: ``append(actor, action, subject, result, **details)``, as AuditTrail.append.
AuditSink = Callable[..., object]

_P = PyKCS11
_FF8 = b"\xff" * 8
_FF16 = b"\xff" * 16


# --- usage -> PKCS#11 attributes --------------------------------------------------------

_DIRECTION_ATTRIBUTES: dict[Direction, tuple[int, ...]] = {
    Direction.ENCRYPT: (_P.CKA_ENCRYPT, _P.CKA_WRAP),
    Direction.DECRYPT: (_P.CKA_DECRYPT, _P.CKA_UNWRAP),
    Direction.SIGN: (_P.CKA_SIGN,),
    Direction.MAC_GENERATE: (_P.CKA_SIGN,),
    Direction.MAC_VERIFY: (_P.CKA_VERIFY,),
    Direction.DERIVE: (_P.CKA_DERIVE,),
    Direction.NONE: (),
}

_USAGE_FLAGS = (
    _P.CKA_ENCRYPT, _P.CKA_DECRYPT, _P.CKA_WRAP, _P.CKA_UNWRAP,
    _P.CKA_SIGN, _P.CKA_VERIFY, _P.CKA_DERIVE,
)  # fmt: skip


def token_attributes(usage: KeyUsage, mode_of_use: str) -> dict[int, bool]:
    """PKCS#11 usage attributes of a key, from the one usage table (:mod:`pipeline.keys.usage`).

    The directions of the operations the usage permits, narrowed by the TR-31
    mode of use (X9.143 Table 4), become CKA_ENCRYPT/CKA_WRAP (encrypt),
    CKA_DECRYPT/CKA_UNWRAP (decrypt), CKA_SIGN (sign, MAC), CKA_VERIFY and
    CKA_DERIVE; every other usage flag is false.  So only E0/E1/E2/E5 master
    keys get CKA_DERIVE, and they get nothing else.

    Example:
        >>> a = token_attributes(KeyUsage.E0, "N")
        >>> a[PyKCS11.CKA_DERIVE], a[PyKCS11.CKA_ENCRYPT]
        (True, False)
        >>> token_attributes(KeyUsage.K0, "E")[PyKCS11.CKA_DECRYPT]
        False
    """
    allowed = MODE_DIRECTIONS.get(mode_of_use)
    if allowed is None:
        raise InvalidInputError("mode_of_use", f"unknown TR-31 mode of use {mode_of_use!r}")
    on = {
        attr
        for op in permitted_operations(usage)
        if op.direction in allowed
        for attr in _DIRECTION_ATTRIBUTES[op.direction]
    }
    return {attr: attr in on for attr in _USAGE_FLAGS}


# --- capabilities ------------------------------------------------------------------------


class _Family(Enum):
    TDES = "tdes"
    AES = "aes"


def _family(algorithm: KeyAlgorithm) -> _Family | None:
    if algorithm in (KeyAlgorithm.TDES2, KeyAlgorithm.TDES3):
        return _Family.TDES
    if algorithm in (KeyAlgorithm.AES128, KeyAlgorithm.AES192, KeyAlgorithm.AES256):
        return _Family.AES
    return None


_BLOCK = {_Family.TDES: 8, _Family.AES: 16}
_ECB = {_Family.TDES: _P.CKM_DES3_ECB, _Family.AES: _P.CKM_AES_ECB}
_CBC = {_Family.TDES: _P.CKM_DES3_CBC, _Family.AES: _P.CKM_AES_CBC}
_ECB_DATA = {_Family.TDES: _P.CKM_DES3_ECB_ENCRYPT_DATA, _Family.AES: _P.CKM_AES_ECB_ENCRYPT_DATA}


@dataclass(frozen=True, slots=True)
class CapabilityReport:
    """What the token can and cannot do, as found at start.

    ``operations``: capability names (from :data:`pipeline.keys.store.CAPABILITIES`)
    this backend can perform with this token.  ``gaps``: ``(name, reason)``
    for every name it cannot, the reason naming the missing mechanism.
    ``mechanisms``: the token's C_GetMechanismList.  ``probes``: ``(what,
    result)`` of each operation tried on throwaway session keys.

    Example:
        >>> r = CapabilityReport("t", "SoftHSM", "SoftHSM v2", frozenset({"kcv"}),
        ...     (("translate", "no ECB unwrap"),), frozenset(), ())
        >>> r.reason("translate")
        'no ECB unwrap'
    """

    token_label: str
    manufacturer: str
    model: str
    operations: frozenset[str]
    gaps: tuple[tuple[str, str], ...]
    mechanisms: frozenset[str]
    probes: tuple[tuple[str, str], ...]

    def reason(self, name: str) -> str | None:
        """Why ``name`` is unavailable, or ``None`` if it is available."""
        for gap, why in self.gaps:
            if gap == name:
                return why
        return None

    def wrap_mechanism(self, family: str) -> str | None:
        """The probed C_WrapKey route under a ``family`` TK: "ecb", "cbc-1" or None."""
        for what, result in self.probes:
            if what == f"wrap-under:{family}":
                return None if result.startswith("no") else result
        return None

    def summary(self) -> str:
        """Multi-line human-readable report (for ``cardprep keys capabilities`` and logs).

        Example:
            >>> print(CapabilityReport("t", "m", "x", frozenset({"kcv"}), (("translate", "r"),),
            ...       frozenset(), ()).summary())
            token 't' (m x)
              can:    kcv
              cannot: translate: r
        """
        lines = [f"token {self.token_label!r} ({self.manufacturer} {self.model})"]
        lines.append("  can:    " + ", ".join(sorted(self.operations)))
        lines.extend(f"  cannot: {name}: {why}" for name, why in self.gaps)
        lines.extend(f"  probe:  {what}: {result}" for what, result in self.probes)
        return "\n".join(lines)


# --- small pure helpers ---------------------------------------------------------------------


def _now_iso(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _version_id(version: int) -> bytes:
    """CKA_ID of a key version: the version number, 4 bytes big-endian."""
    return version.to_bytes(4, "big")


def option_a_y(pan: str, psn: str | None) -> bytes:
    """EMV Book 2 A1.4.1 step 1: Y = rightmost 16 digits of PAN || PSN, packed BCD.

    Example:
        >>> option_a_y("4761739001010119", "01").hex()
        '6173900101011901'
    """
    pan, psn_ = validate_pan(pan), validate_psn(psn)
    return bytes.fromhex((pan + psn_)[-16:].rjust(16, "0"))


def derivation_data(method: DerivationMethod, pan: str, psn: str | None, key_length: int) -> bytes:
    """The data block a token encrypts (ECB) to derive the card master key.

    A/B (A1.4.1/A1.4.2): ``Y || (Y xor FF*8)``, so one ECB derivation gives
    ``ZL || ZR``.  C (A1.4.3): ``Y`` for a 16-byte IMK, ``Y || (Y xor FF*16)``
    otherwise (the token keeps the leftmost ``key_length`` bytes).

    Example:
        >>> derivation_data(DerivationMethod.OPTION_A, "4761739001010119", "01", 16).hex()
        '61739001010119019e8c6ffefefee6fe'
    """
    if method is DerivationMethod.OPTION_A or (
        method is DerivationMethod.OPTION_B and len(validate_pan(pan)) <= 16
    ):
        y = option_a_y(pan, psn)
        return y + xor(y, _FF8)
    if method is DerivationMethod.OPTION_B:
        y = option_b_y(validate_pan(pan), validate_psn(psn))
        return y + xor(y, _FF8)
    if method is DerivationMethod.AES:
        y = bytes.fromhex((validate_pan(pan) + validate_psn(psn)).rjust(32, "0"))
        return y if key_length == 16 else y + xor(y, _FF16)
    raise InvalidInputError("method", f"{method.value} is not a card key derivation for a token")


def gp_diversification_data(method: DerivationMethod, kdd: bytes, kk: int) -> bytes:
    """EMV CPS 1.1 3.2.3 (``emv``) / VISA2 data for key type ``kk`` (1 ENC, 2 MAC, 3 DEK).

    Example:
        >>> gp_diversification_data(DerivationMethod.EMV_CPS, bytes(range(10)), 1).hex()
        '040506070809f0010405060708090f01'
    """
    if len(kdd) != 10:
        raise InvalidInputError("kdd", f"must be 10 bytes, got {len(kdd)}")
    six = kdd[4:10] if method is DerivationMethod.EMV_CPS else kdd[0:2] + kdd[4:8]
    return six + bytes([0xF0, kk]) + six + bytes([0x0F, kk])


def _cmac_subkey(l_block: bytes) -> bytes:
    """NIST SP 800-38B 6.1: K1 = L << 1, xor Rb (0x87 for 128-bit blocks) if the MSB was set."""
    value = int.from_bytes(l_block, "big") << 1
    if value >> 128:
        value = (value ^ 0x87) & ((1 << 128) - 1)
    return value.to_bytes(16, "big")


def _record_to_json(record: KeyRecord, extra: dict[str, Any]) -> bytes:
    cert = record.certificate
    doc: dict[str, Any] = {
        "label": record.ref.label,
        "version": record.ref.version,
        "algorithm": record.algorithm.value,
        "bits": record.bits,
        "usage": record.usage.value,
        "role": record.role.value,
        "mode_of_use": record.mode_of_use,
        "exportability": record.exportability.value,
        "owner": record.owner,
        "state": record.state.value,
        "kcv": record.kcv.hex(),
        "kcv_method": record.kcv_method,
        "custodians": list(record.custodians),
        "created_at": record.created_at,
        "activated_at": record.activated_at,
        "updated_at": record.updated_at,
        "destroy_after": record.destroy_after,
        "destroyed_at": record.destroyed_at,
        "public_key": None if record.public_key is None else record.public_key.hex(),
        "public_exponent": None
        if record.public_exponent is None
        else record.public_exponent.hex(),
        "certificate": None
        if cert is None
        else {
            "certificate": cert.certificate.hex(),
            "remainder": cert.remainder.hex(),
            "exponent": cert.exponent.hex(),
            "ca_rid": cert.ca_rid,
            "ca_index": cert.ca_index,
            "expiry": cert.expiry,
            "serial": cert.serial,
            "format": cert.format,
        },
        "extra": extra,
    }
    return json.dumps(doc, sort_keys=True).encode()


def _record_from_json(raw: bytes) -> tuple[KeyRecord, dict[str, Any]]:
    doc = json.loads(raw)
    c = doc["certificate"]
    cert = (
        None
        if c is None
        else IssuerCertificateRecord(
            certificate=bytes.fromhex(c["certificate"]),
            remainder=bytes.fromhex(c["remainder"]),
            exponent=bytes.fromhex(c["exponent"]),
            ca_rid=c["ca_rid"],
            ca_index=c["ca_index"],
            expiry=c["expiry"],
            serial=c["serial"],
            format=c["format"],
        )
    )
    record = KeyRecord(
        ref=KeyRef(doc["label"], doc["version"]),
        algorithm=KeyAlgorithm(doc["algorithm"]),
        bits=doc["bits"],
        usage=KeyUsage(doc["usage"]),
        role=KeyRole(doc["role"]),
        mode_of_use=doc["mode_of_use"],
        exportability=Exportability(doc["exportability"]),
        owner=doc["owner"],
        state=KeyState(doc["state"]),
        kcv=bytes.fromhex(doc["kcv"]),
        kcv_method=doc["kcv_method"],
        custodians=tuple(doc["custodians"]),
        created_at=doc["created_at"],
        activated_at=doc["activated_at"],
        updated_at=doc["updated_at"],
        destroy_after=doc["destroy_after"],
        destroyed_at=doc["destroyed_at"],
        public_key=None if doc["public_key"] is None else bytes.fromhex(doc["public_key"]),
        public_exponent=None
        if doc["public_exponent"] is None
        else bytes.fromhex(doc["public_exponent"]),
        certificate=cert,
    )
    return record, dict(doc.get("extra") or {})


def _ckr(exc: Exception) -> str:
    """The CKR_* name of a PyKCS11 error (never more: no data, no key material)."""
    if isinstance(exc, PyKCS11.PyKCS11Error):
        return str(PyKCS11.CKR.get(exc.value, hex(exc.value)))
    return type(exc).__name__


_LIVE = (KeyState.PRE_ACTIVE, KeyState.ACTIVE, KeyState.DEACTIVATED, KeyState.SUSPENDED)


# --- the backend ------------------------------------------------------------------------------


class Pkcs11KeyStore:
    """A :class:`~pipeline.keys.store.KeyStore` over one PKCS#11 token.

    ``library``: path of the PKCS#11 module; ``token_label``: CKA token label;
    ``pin``: the user PIN from the caller's settings / Airflow Connection
    (kept in memory only to log in again after a fork, never shown);
    ``audit``: where key-management events go (``AuditTrail.append``);
    ``clock``: for tests of the destruction wait.
    """

    def __init__(
        self,
        library: str | Path,
        token_label: str,
        pin: str,
        *,
        audit: AuditSink,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._library = str(library)
        self._token_label = token_label
        self.__pin = pin
        self._audit = audit
        self._trail: AuditTrail | None = None
        self._clock = clock
        self._lock = threading.RLock()
        self._pid = -1
        self._lib: Any = None
        self._session: Any = None
        self._open()
        self._report = self._probe()

    @classmethod
    def from_settings(
        cls, settings: Settings, *, pin: str | None = None, audit_key_label: str = "audit-mac"
    ) -> Pkcs11KeyStore:
        """Open the token ``settings.key_store.pkcs11`` names, with its audit trail.

        Keys of the ``pkcs11:`` mapping: ``module`` (PKCS#11 library path),
        ``token_label``, ``pin_file`` (read here unless ``pin`` is given,
        e.g. from an Airflow Connection).  The trail at
        ``key_store.audit_path`` is MACed in the token under the active
        version of ``audit_key_label`` (an M6 AES key).
        """
        conf = settings.key_store.pkcs11
        missing = [k for k in ("module", "token_label") if not conf.get(k)]
        if missing:
            raise ConfigError("key_store.pkcs11", f"missing {', '.join(missing)}")
        if pin is None:
            pin_file = conf.get("pin_file")
            if not pin_file:
                raise ConfigError("key_store.pkcs11.pin_file", "no PIN given and no pin_file")
            try:
                pin = Path(pin_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    "key_store.pkcs11.pin_file", f"cannot read {pin_file}: {exc.strerror}"
                ) from None
        store = cls(conf["module"], conf["token_label"], pin, audit=_no_trail_yet)
        trail = AuditTrail(settings.key_store.audit_path, StoreAuditSealer(store, audit_key_label))
        store._audit = trail.append
        store._trail = trail
        return store

    def __repr__(self) -> str:  # never the PIN
        return f"Pkcs11KeyStore(token={self._token_label!r}, library={self._library!r})"

    @property
    def audit_trail(self) -> AuditTrail:
        """The trail this store audits to, as :attr:`SoftKeyStore.audit_trail` has it.

        Batch steps (publish, retention, ``cardprep audit``) append to and
        verify it.  Only a store opened by :meth:`from_settings` has one; a
        store built with an explicit ``audit`` sink (the audit-key bootstrap)
        raises :class:`~pipeline.errors.AuditError` (fail closed).

        Example:
            >>> Pkcs11KeyStore.from_settings(settings).audit_trail.verify().ok  # doctest: +SKIP
            True
        """
        if self._trail is None:
            raise AuditError(
                "audit trail",
                "this PKCS#11 store was built with an explicit audit sink; "
                "open it with from_settings to record batch events",
            )
        return self._trail

    # --- session: one per process ----------------------------------------------------------

    def _open(self) -> None:
        """Load the module, find the token by label, open an R/W session and log in."""
        forked = self._lib is not None and self._pid != os.getpid()
        if self._lib is None:
            lib = PyKCS11.PyKCS11Lib()
            try:
                lib.load(self._library)
            except PyKCS11.PyKCS11Error as exc:
                raise KeyStoreError(
                    "library", f"cannot load PKCS#11 module {self._library!r}: {_ckr(exc)}"
                ) from None
            self._lib = lib
        if forked:
            # PKCS#11 v2.40 section 6.6.1: a child must C_Initialize again.
            self._lib.lib.C_Finalize()
            self._lib.lib.C_Initialize()
        slot = None
        for candidate in self._lib.getSlotList(tokenPresent=True):
            if self._lib.getTokenInfo(candidate).label.strip() == self._token_label:
                slot = candidate
                break
        if slot is None:
            raise KeyStoreError("token_label", f"no token labelled {self._token_label!r}")
        session = self._lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
        try:
            session.login(self.__pin)
        except PyKCS11.PyKCS11Error as exc:
            if exc.value != PyKCS11.CKR_USER_ALREADY_LOGGED_IN:
                raise KeyStoreError(
                    "pin", f"login to token {self._token_label!r} refused: {_ckr(exc)}"
                ) from None
        info = self._lib.getTokenInfo(slot)
        self._slot = slot
        self._token_info = (info.manufacturerID.strip(), info.model.strip())
        self._session = session
        self._pid = os.getpid()
        self._records: dict[KeyRef, tuple[Any, KeyRecord, dict[str, Any]]] = {}
        self._handles: dict[tuple[KeyRef, int], Any] = {}

    @contextmanager
    def _s(self) -> Iterator[Any]:
        """The process's one session, under the lock; reopened in a forked child."""
        with self._lock:
            if self._session is None:
                raise KeyStoreError("session", "the key store is closed")
            if self._pid != os.getpid():
                self._open()
            yield self._session

    def close(self) -> None:
        """Close the session; the token logs the process out when its last session closes.

        No explicit C_Logout: login state is shared by all sessions of the
        process (PKCS#11 v2.40 5.6), so it would log out other stores too.
        """
        with self._lock:
            if self._session is not None and self._pid == os.getpid():
                with suppress(PyKCS11.PyKCS11Error):
                    self._session.closeSession()
            self._session = None

    # --- capabilities ---------------------------------------------------------------------

    def capabilities(self) -> frozenset[str]:
        """Names from :data:`~pipeline.keys.store.CAPABILITIES` this token can do."""
        return self._report.operations

    def capability_report(self) -> CapabilityReport:
        """The full report: what it can do, what not and why, mechanisms, probe results."""
        return self._report

    def _require(self, name: str, operation: str) -> None:
        why = self._report.reason(name)
        if why is not None:
            raise CapabilityError(operation, f"token {self._token_label!r} cannot {name}: {why}")

    def _probe(self) -> CapabilityReport:
        with self._s() as s:
            mechanisms = frozenset(
                str(m) for m in self._lib.getMechanismList(self._slot)
            )
            probes: list[tuple[str, str]] = []
            probes.append(("derive:tdes-ecb-data", self._probe_derive(s, _Family.TDES)))
            probes.append(("derive:aes-ecb-data", self._probe_derive(s, _Family.AES)))
            for family in _Family:
                probes.append((f"wrap-under:{family.value}", self._probe_wrap(s, family)))
                probes.append((f"unwrap-under:{family.value}", self._probe_unwrap(s, family)))
            probes.append(("rsa-x509-sign", self._probe_rsa(s)))
        return _build_report(
            self._token_label, self._token_info, mechanisms, tuple(probes)
        )

    def _probe_key(self, s: Any, family: _Family, **flags: bool) -> Any:
        template = [
            (PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY),
            (PyKCS11.CKA_TOKEN, False),
            (PyKCS11.CKA_SENSITIVE, False),
            (PyKCS11.CKA_EXTRACTABLE, True),
        ]
        template += [(getattr(PyKCS11, "CKA_" + k.upper()), v) for k, v in flags.items()]
        if family is _Family.TDES:
            template.append((PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_DES2))
            return s.generateKey(template, PyKCS11.Mechanism(PyKCS11.CKM_DES2_KEY_GEN))
        template += [(PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_AES), (PyKCS11.CKA_VALUE_LEN, 16)]
        return s.generateKey(template, PyKCS11.Mechanism(PyKCS11.CKM_AES_KEY_GEN))

    def _probe_derive(self, s: Any, family: _Family) -> str:
        """Derive from a throwaway key and compare with C_Encrypt of the same data (+ parity)."""
        handles: list[Any] = []
        try:
            base = self._probe_key(s, family, derive=True, encrypt=True)
            handles.append(base)
            data = bytes(range(1, 17))
            expected = bytes(s.encrypt(base, data, PyKCS11.Mechanism(_ECB[family])))
            key_type = PyKCS11.CKK_DES2 if family is _Family.TDES else PyKCS11.CKK_AES
            template = [
                (PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY),
                (PyKCS11.CKA_KEY_TYPE, key_type),
                (PyKCS11.CKA_TOKEN, False),
                (PyKCS11.CKA_SENSITIVE, False),
                (PyKCS11.CKA_EXTRACTABLE, True),
            ]
            if family is _Family.AES:
                template.append((PyKCS11.CKA_VALUE_LEN, 16))
            derived = s.deriveKey(base, template, _derive_mechanism(family, data))
            handles.append(derived)
            value = bytes(s.getAttributeValue(derived, [PyKCS11.CKA_VALUE])[0])
        except PyKCS11.PyKCS11Error as exc:
            return f"no ({_ckr(exc)})"
        finally:
            _destroy(s, handles)
        if family is _Family.TDES:
            if value == fix_parity(expected):
                return "yes, odd parity set by the token"
            if value == expected:
                return "no (the token does not set DES parity)"
            return "no (derived value differs from the ECB encryption)"
        return "yes" if value == expected else "no (derived value differs from the ECB encryption)"

    def _probe_wrap(self, s: Any, family: _Family) -> str:
        """Try C_WrapKey of a 16-byte key under a throwaway TK: ECB, else CBC with a zero IV."""
        handles: list[Any] = []
        try:
            tk = self._probe_key(s, family, wrap=True, encrypt=True)
            handles.append(tk)
            key = self._probe_key(s, _Family.TDES)
            handles.append(key)
            value = bytes(s.getAttributeValue(key, [PyKCS11.CKA_VALUE])[0])
            expected = bytes(s.encrypt(tk, value, PyKCS11.Mechanism(_ECB[family])))
            failures = []
            for route, mech in (("ecb", _wrap_mechanism(family, "ecb")),
                                ("cbc-1", _wrap_mechanism(family, "cbc-1"))):
                try:
                    wrapped = bytes(s.wrapKey(tk, key, mech))
                except PyKCS11.PyKCS11Error as exc:
                    failures.append(f"{_MECH_NAME[family][route]}: {_ckr(exc)}")
                    continue
                if route == "ecb" and wrapped == expected:
                    return "ecb"
                if route == "cbc-1" and wrapped[: _BLOCK[family]] == expected[: _BLOCK[family]]:
                    return "cbc-1"
                failures.append(f"{_MECH_NAME[family][route]}: unexpected output")
            return "no (C_WrapKey " + "; ".join(failures) + ")"
        except PyKCS11.PyKCS11Error as exc:
            return f"no ({_ckr(exc)})"
        finally:
            _destroy(s, handles)

    def _probe_unwrap(self, s: Any, family: _Family) -> str:
        """Try C_UnwrapKey of ECB ciphertext (what ``translate`` would need)."""
        handles: list[Any] = []
        try:
            kek = self._probe_key(s, family, unwrap=True, encrypt=True)
            handles.append(kek)
            ciphertext = bytes(s.encrypt(kek, bytes(16), PyKCS11.Mechanism(_ECB[family])))
            template = [
                (PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY),
                (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_GENERIC_SECRET),
                (PyKCS11.CKA_TOKEN, False),
            ]
            handles.append(
                s.unwrapKey(kek, ciphertext, template, PyKCS11.Mechanism(_ECB[family]))
            )
            return "ecb"
        except PyKCS11.PyKCS11Error as exc:
            return f"no (C_UnwrapKey {_MECH_NAME[family]['ecb']}: {_ckr(exc)})"
        finally:
            _destroy(s, handles)

    def _probe_rsa(self, s: Any) -> str:
        handles: list[Any] = []
        try:
            pub, priv = s.generateKeyPair(
                [
                    (PyKCS11.CKA_CLASS, PyKCS11.CKO_PUBLIC_KEY),
                    (PyKCS11.CKA_TOKEN, False),
                    (PyKCS11.CKA_MODULUS_BITS, 1024),
                    (PyKCS11.CKA_PUBLIC_EXPONENT, (0x03,)),
                    (PyKCS11.CKA_VERIFY, True),
                    (PyKCS11.CKA_ENCRYPT, True),
                ],
                [
                    (PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY),
                    (PyKCS11.CKA_TOKEN, False),
                    (PyKCS11.CKA_SIGN, True),
                ],
                PyKCS11.Mechanism(PyKCS11.CKM_RSA_PKCS_KEY_PAIR_GEN),
            )
            handles += [pub, priv]
            block = b"\x6a" + bytes(126) + b"\xbc"
            sig = bytes(s.sign(priv, block, PyKCS11.Mechanism(PyKCS11.CKM_RSA_X_509)))
            back = bytes(s.encrypt(pub, sig, PyKCS11.Mechanism(PyKCS11.CKM_RSA_X_509)))
            return "yes" if back == block else "no (public operation does not invert)"
        except PyKCS11.PyKCS11Error as exc:
            return f"no ({_ckr(exc)})"
        finally:
            _destroy(s, handles)

    # --- records --------------------------------------------------------------------------

    def _find(self, s: Any, template: list[tuple[int, Any]]) -> list[Any]:
        return list(s.findObjects(template))

    def _load(self, s: Any, ref: KeyRef) -> tuple[KeyRecord, dict[str, Any]]:
        cached = self._records.get(ref)
        if cached is not None:
            handle = cached[0]
            try:
                raw = bytes(s.getAttributeValue(handle, [PyKCS11.CKA_VALUE])[0])
                record, extra = _record_from_json(raw)
                if record.ref == ref:
                    self._records[ref] = (handle, record, extra)
                    return record, extra
            except PyKCS11.PyKCS11Error:
                pass
        best: tuple[int, Any, KeyRecord, dict[str, Any]] | None = None
        for handle in self._find(s, self._data_template(ref)):
            record, extra = _record_from_json(
                bytes(s.getAttributeValue(handle, [PyKCS11.CKA_VALUE])[0])
            )
            rev = int(extra.get("rev", 0))
            if best is None or rev > best[0]:
                best = (rev, handle, record, extra)
        if best is None:
            raise KeyNotFoundError("key", f"no key {ref} in token {self._token_label!r}")
        self._records[ref] = (best[1], best[2], best[3])
        return best[2], best[3]

    def _data_template(self, ref: KeyRef | None = None) -> list[tuple[int, Any]]:
        template: list[tuple[int, Any]] = [
            (PyKCS11.CKA_CLASS, PyKCS11.CKO_DATA),
            (PyKCS11.CKA_APPLICATION, APPLICATION),
        ]
        if ref is not None:
            template.append((PyKCS11.CKA_LABEL, str(ref)))
        return template

    def _save(self, s: Any, record: KeyRecord, extra: dict[str, Any]) -> None:
        """Write the record: create the new data object, then destroy the old ones."""
        old = self._find(s, self._data_template(record.ref))
        extra = {**extra, "rev": int(extra.get("rev", 0)) + 1}
        handle = s.createObject(
            [
                (PyKCS11.CKA_CLASS, PyKCS11.CKO_DATA),
                (PyKCS11.CKA_TOKEN, True),
                (PyKCS11.CKA_PRIVATE, True),
                (PyKCS11.CKA_APPLICATION, APPLICATION),
                (PyKCS11.CKA_LABEL, str(record.ref)),
                (PyKCS11.CKA_VALUE, _record_to_json(record, extra)),
            ]
        )
        _destroy(s, old)
        self._records[record.ref] = (handle, record, extra)

    def _key_handle(self, s: Any, ref: KeyRef, klass: int = PyKCS11.CKO_SECRET_KEY) -> Any:
        """The key object of ``ref`` (cached per session: C_FindObjects dominates the hot path)."""
        cached = self._handles.get((ref, klass))
        if cached is not None:
            return cached
        found = self._find(
            s,
            [
                (PyKCS11.CKA_CLASS, klass),
                (PyKCS11.CKA_LABEL, ref.label),
                (PyKCS11.CKA_ID, _version_id(ref.version)),
            ],
        )
        if len(found) != 1:
            raise KeyNotFoundError(
                "key", f"{ref}: {len(found)} key objects in token {self._token_label!r}"
            )
        self._handles[(ref, klass)] = found[0]
        return found[0]

    def _record_for(self, s: Any, ref: KeyRef, operation: Operation) -> KeyRecord:
        record, _ = self._load(s, ref)
        check(record, operation)
        return record

    def get(self, ref_or_label: KeyRef | str, version: int | None = None) -> KeyRecord:
        """The record for a ref, or for ``label`` at ``version`` (default: the newest)."""
        with self._s() as s:
            if isinstance(ref_or_label, KeyRef):
                return self._load(s, ref_or_label)[0]
            if version is not None:
                return self._load(s, KeyRef(ref_or_label, version))[0]
            versions = [r for r in self._all(s) if r.ref.label == ref_or_label]
            if not versions:
                raise KeyNotFoundError("key", f"no key labelled {ref_or_label!r}")
            return max(versions, key=lambda r: r.ref.version)

    def _all(self, s: Any) -> list[KeyRecord]:
        latest: dict[KeyRef, tuple[int, KeyRecord]] = {}
        for handle in self._find(s, self._data_template()):
            record, extra = _record_from_json(
                bytes(s.getAttributeValue(handle, [PyKCS11.CKA_VALUE])[0])
            )
            rev = int(extra.get("rev", 0))
            if record.ref not in latest or rev > latest[record.ref][0]:
                latest[record.ref] = (rev, record)
        return sorted((r for _, r in latest.values()), key=lambda r: (r.ref.label, r.ref.version))

    def list(self, owner: str | None = None) -> list[KeyRecord]:
        """Every key version (optionally of one owner), by label then version."""
        with self._s() as s:
            return [r for r in self._all(s) if owner is None or r.owner == owner]

    def active(self, label: str) -> KeyRef:
        """The ACTIVE version of ``label`` (KeyStateError if there is none)."""
        for record in reversed(self.list()):
            if record.ref.label == label and record.state is KeyState.ACTIVE:
                return record.ref
        raise KeyStateError(label, "no active version")

    # --- audit (fail closed) ----------------------------------------------------------------

    def _audited(
        self, actor: str, action: str, record: KeyRecord, undo: Callable[[], None], **details: Any
    ) -> None:
        """Append the event; if the trail refuses, undo the change and refuse the action."""
        if not actor:
            raise InvalidInputError("actor", "every key-management call names its actor")
        subject = f"{record.ref} kcv={record.kcv.hex().upper()}"
        try:
            self._audit(actor, action, subject, "ok", **details)
        except Exception as exc:
            undo()
            raise AuditError(
                "audit", f"{action} {record.ref} refused: the audit trail cannot be written "
                f"({type(exc).__name__})"
            ) from exc

    # --- key management ---------------------------------------------------------------------

    def _next_version(self, s: Any, label: str) -> int:
        versions = [r.ref.version for r in self._all(s) if r.ref.label == label]
        return max(versions, default=0) + 1

    def _secret_template(
        self, ref: KeyRef, algorithm: KeyAlgorithm, usage: KeyUsage, mode: str,
        exportability: Exportability,
    ) -> builtins.list[tuple[int, Any]]:
        family = _family(algorithm)
        if family is None:
            raise CapabilityError(
                "generate", f"token {self._token_label!r} has no {algorithm.value} key type"
            )
        if usage is KeyUsage.HM:
            raise KeyUsageError(
                ref.label, "usage HM: the token protects its own objects; no HMK is stored in it"
            )
        template: list[tuple[int, Any]] = [
            (PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY),
            (PyKCS11.CKA_TOKEN, True),
            (PyKCS11.CKA_PRIVATE, True),
            (PyKCS11.CKA_LABEL, ref.label),
            (PyKCS11.CKA_ID, _version_id(ref.version)),
            (PyKCS11.CKA_SENSITIVE, True),
            (PyKCS11.CKA_EXTRACTABLE, exportability is Exportability.E),
            (PyKCS11.CKA_MODIFIABLE, False),
        ]
        template += list(token_attributes(usage, mode).items())
        if family is _Family.TDES:
            key_type = PyKCS11.CKK_DES2 if algorithm is KeyAlgorithm.TDES2 else PyKCS11.CKK_DES3
            template.append((PyKCS11.CKA_KEY_TYPE, key_type))
        else:
            template.append((PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_AES))
        return template

    def generate(
        self,
        label: str,
        algorithm: KeyAlgorithm,
        usage: KeyUsage,
        role: KeyRole,
        owner: str,
        *,
        actor: str,
        bits: int | None = None,
        exportability: Exportability = Exportability.E,
        mode_of_use: str = "N",
        activate: bool = True,
    ) -> KeyRecord:
        """Generate a key inside the token (next version of ``label``); see the protocol."""
        check_label(label)
        self._require(f"generate:{algorithm.value}", "generate")
        with self._s() as s:
            ref = KeyRef(label, self._next_version(s, label))
            handles: list[Any]
            public_key = public_exponent = None
            if algorithm is KeyAlgorithm.RSA:
                if bits is None:
                    raise InvalidInputError("bits", "RSA generation needs the modulus size")
                handles, public_key, public_exponent = self._generate_rsa(
                    s, ref, bits=bits, usage=usage, mode=mode_of_use, exportability=exportability
                )
            else:
                template = self._secret_template(ref, algorithm, usage, mode_of_use, exportability)
                length = algorithm.key_length or 0
                if _family(algorithm) is _Family.AES:
                    template.append((PyKCS11.CKA_VALUE_LEN, length))
                    mech = PyKCS11.CKM_AES_KEY_GEN
                else:
                    mech = (
                        PyKCS11.CKM_DES2_KEY_GEN
                        if algorithm is KeyAlgorithm.TDES2
                        else PyKCS11.CKM_DES3_KEY_GEN
                    )
                handles = [s.generateKey(template, PyKCS11.Mechanism(mech))]
                bits = length * 8
            try:
                kcv, method = self._kcv_of(s, handles[0], algorithm)
            except Exception:
                _destroy(s, handles)
                raise
            record = self._new_record(
                ref, algorithm=algorithm, bits=bits, usage=usage, role=role, mode=mode_of_use,
                exportability=exportability, owner=owner, kcv=kcv, method=method,
                custodians=(), activate=activate, public_key=public_key,
                public_exponent=public_exponent,
            )
            self._save(s, record, {"origin": "generated"})
            self._audited(
                actor, "key.generate", record, lambda: self._erase(s, record.ref, handles),
                algorithm=algorithm.value, usage=usage.value, role=role.value, owner=owner,
            )
            return record

    def _generate_rsa(
        self, s: Any, ref: KeyRef, *, bits: int, usage: KeyUsage, mode: str,
        exportability: Exportability,
    ) -> tuple[builtins.list[Any], bytes, bytes]:
        if usage is not KeyUsage.S0:
            raise KeyUsageError(ref.label, f"usage {usage.value}: RSA keys here are S0 only")
        common = [
            (PyKCS11.CKA_TOKEN, True),
            (PyKCS11.CKA_LABEL, ref.label),
            (PyKCS11.CKA_ID, _version_id(ref.version)),
            (PyKCS11.CKA_MODIFIABLE, False),
        ]
        attrs = token_attributes(usage, mode)
        pub, priv = s.generateKeyPair(
            [
                (PyKCS11.CKA_CLASS, PyKCS11.CKO_PUBLIC_KEY),
                (PyKCS11.CKA_MODULUS_BITS, bits),
                (PyKCS11.CKA_PUBLIC_EXPONENT, (0x03,)),
                (PyKCS11.CKA_VERIFY, True),
                (PyKCS11.CKA_ENCRYPT, True),
                *common,
            ],
            [
                (PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY),
                (PyKCS11.CKA_PRIVATE, True),
                (PyKCS11.CKA_SENSITIVE, True),
                (PyKCS11.CKA_EXTRACTABLE, exportability is Exportability.E),
                (PyKCS11.CKA_SIGN, attrs[PyKCS11.CKA_SIGN]),
                (PyKCS11.CKA_DECRYPT, False),
                *common,
            ],
            PyKCS11.Mechanism(PyKCS11.CKM_RSA_PKCS_KEY_PAIR_GEN),
        )
        modulus, exponent = s.getAttributeValue(
            pub, [PyKCS11.CKA_MODULUS, PyKCS11.CKA_PUBLIC_EXPONENT]
        )
        return [priv, pub], bytes(modulus), bytes(exponent)

    def _new_record(
        self, ref: KeyRef, *, algorithm: KeyAlgorithm, bits: int, usage: KeyUsage, role: KeyRole,
        mode: str, exportability: Exportability, owner: str, kcv: bytes, method: str,
        custodians: tuple[str, ...], activate: bool, public_key: bytes | None = None,
        public_exponent: bytes | None = None,
    ) -> KeyRecord:
        now = _now_iso(self._clock())
        return KeyRecord(
            ref=ref, algorithm=algorithm, bits=bits, usage=usage, role=role,
            mode_of_use=mode, exportability=exportability, owner=owner,
            state=KeyState.ACTIVE if activate else KeyState.PRE_ACTIVE,
            kcv=kcv, kcv_method=method, custodians=custodians, created_at=now,
            activated_at=now if activate else None, updated_at=now,
            public_key=public_key, public_exponent=public_exponent,
        )  # fmt: skip

    def _erase(self, s: Any, ref: KeyRef, handles: Sequence[Any]) -> None:
        _destroy(s, list(handles) + self._find(s, self._data_template(ref)))
        self._records.pop(ref, None)
        self._forget_handles(ref)

    def _forget_handles(self, ref: KeyRef) -> None:
        for key in [k for k in self._handles if k[0] == ref]:
            del self._handles[key]

    def import_components(  # noqa: PLR0917 (contract signature)
        self,
        label: str,
        algorithm: KeyAlgorithm,
        usage: KeyUsage,
        role: KeyRole,
        owner: str,
        components: Sequence[bytes],
        expected_kcv: bytes,
        *,
        custodians: Sequence[str],
        actor: str,
        exportability: Exportability = Exportability.E,
        mode_of_use: str = "N",
    ) -> KeyRecord:
        """Enter a symmetric key from XOR components; the KCV is checked inside the token.

        The combined key exists in this process's memory only between the XOR
        and C_CreateObject (PKCS#11 has no in-token XOR of clear components
        that SoftHSM2 implements).  A KCV mismatch destroys the object:
        nothing is stored and :class:`~pipeline.errors.CeremonyError` is raised.
        """
        check_label(label)
        self._require("import_components", "import_components")
        length = algorithm.key_length
        if length is None:
            raise InvalidInputError("algorithm", f"{algorithm.value} is not entered as components")
        if any(len(c) != length for c in components):
            raise CeremonyError(
                "components", f"{algorithm.value} components must be {length} bytes each"
            )
        if not 2 <= len(expected_kcv) <= 5:
            raise InvalidInputError("expected_kcv", f"2..5 bytes, got {len(expected_kcv)}")
        with self._s() as s:
            ref = KeyRef(label, self._next_version(s, label))
            template = self._secret_template(ref, algorithm, usage, mode_of_use, exportability)
            key = bytearray(xor_combine(components))
            try:
                handle = s.createObject([*template, (PyKCS11.CKA_VALUE, bytes(key))])
            finally:
                key[:] = bytes(len(key))
            try:
                kcv, method = self._kcv_of(s, handle, algorithm, len(expected_kcv))
            except Exception:
                _destroy(s, [handle])
                raise
            if kcv != expected_kcv:
                _destroy(s, [handle])
                raise CeremonyError(
                    "expected_kcv",
                    f"KCV mismatch for {ref}: combined key {kcv.hex().upper()}, "
                    f"expected {expected_kcv.hex().upper()}; nothing stored",
                )
            record = self._new_record(
                ref, algorithm=algorithm, bits=length * 8, usage=usage, role=role,
                mode=mode_of_use, exportability=exportability, owner=owner, kcv=kcv[:3],
                method=method, custodians=tuple(custodians), activate=True,
            )
            self._save(s, record, {"origin": "components"})
            self._audited(
                actor, "key.import_components", record,
                lambda: self._erase(s, record.ref, [handle]),
                custodians=list(custodians), usage=usage.value, owner=owner,
            )
            return record

    def import_key_block(
        self,
        label: str,
        key_block: str,
        kbpk: KeyRef,
        role: KeyRole,
        owner: str,
        *,
        expected_kcv: bytes | None,
        actor: str,
    ) -> KeyRecord:
        """Refused: see the ``import_key_block`` gap of :meth:`capability_report`."""
        self._require("import_key_block", "import_key_block")
        raise CapabilityError("import_key_block", "not reached")  # pragma: no cover

    def export_key_block(self, key: KeyRef, kbpk: KeyRef, *, actor: str) -> str:
        """Refused: see the ``export_key_block`` gap of :meth:`capability_report`."""
        self._require("export_key_block", "export_key_block")
        raise CapabilityError("export_key_block", "not reached")  # pragma: no cover

    def export_components(
        self,
        ref: KeyRef,
        count: int,
        *,
        custodians: Sequence[str],
        actor: str,
        threshold: int | None = None,
    ) -> tuple[bytes, ...]:
        """Refused: see the ``export_components`` gap of :meth:`capability_report`."""
        self._require("export_components", "export_components")
        raise CapabilityError("export_components", "not implemented for PKCS#11 tokens")

    def set_issuer_certificate(
        self, key: KeyRef, certificate: IssuerCertificateRecord, *, actor: str
    ) -> KeyRecord:
        """Attach the scheme CA's certificate to an issuer signing key (usage S0)."""
        with self._s() as s:
            record, extra = self._load(s, key)
            if record.usage is not KeyUsage.S0:
                raise KeyUsageError(str(key), f"usage {record.usage.value} has no certificate")
            return self._change(
                s, record, extra, actor=actor, action="key.set_certificate",
                certificate=certificate,
            )

    # --- lifecycle ---------------------------------------------------------------------------

    def _change(
        self, s: Any, record: KeyRecord, extra: dict[str, Any], *, actor: str, action: str,
        extra_update: dict[str, Any] | None = None, **fields: Any,
    ) -> KeyRecord:
        new = replace(record, updated_at=_now_iso(self._clock()), **fields)
        new_extra = {**extra, **(extra_update or {})}
        self._save(s, new, new_extra)
        self._audited(
            actor, action, new, lambda: self._save(s, record, extra),
            state=new.state.value, previous=record.state.value,
        )
        return new

    def _transition(
        self, ref: KeyRef, actor: str, action: str, allowed: Sequence[KeyState],
        target: KeyState | None, **fields: Any,
    ) -> KeyRecord:
        with self._s() as s:
            record, extra = self._load(s, ref)
            if record.state not in allowed:
                raise KeyStateError(
                    str(ref), f"state {record.state.value} (usage {record.usage.value}) "
                    f"does not permit {action}"
                )
            update: dict[str, Any] = {}
            if target is KeyState.SUSPENDED:
                update["suspended_from"] = record.state.value
            if target is None:  # resume
                target = KeyState(extra.get("suspended_from", KeyState.ACTIVE.value))
            return self._change(
                s, record, extra, actor=actor, action=action, extra_update=update, state=target,
                **fields,
            )

    def activate(self, ref: KeyRef, *, actor: str) -> KeyRecord:
        """PRE_ACTIVE -> ACTIVE."""
        return self._transition(
            ref, actor, "key.activate", (KeyState.PRE_ACTIVE,), KeyState.ACTIVE,
            activated_at=_now_iso(self._clock()),
        )

    def suspend(self, ref: KeyRef, *, actor: str, reason: str = "") -> KeyRecord:
        """ACTIVE or DEACTIVATED -> SUSPENDED."""
        return self._transition(
            ref, actor, "key.suspend", (KeyState.ACTIVE, KeyState.DEACTIVATED), KeyState.SUSPENDED
        )

    def resume(self, ref: KeyRef, *, actor: str) -> KeyRecord:
        """SUSPENDED -> the state it was suspended from."""
        return self._transition(ref, actor, "key.resume", (KeyState.SUSPENDED,), None)

    def retire(self, ref: KeyRef, *, actor: str) -> KeyRecord:
        """Any live state -> RETIRED."""
        return self._transition(ref, actor, "key.retire", _LIVE, KeyState.RETIRED)

    def schedule_destruction(self, ref: KeyRef, *, actor: str, wait_days: int = 7) -> KeyRecord:
        """-> DESTROY_PENDING; :meth:`destroy` is possible after ``wait_days`` days."""
        if wait_days < 0:
            raise InvalidInputError("wait_days", f"must be >= 0, got {wait_days}")
        after = _now_iso(self._clock() + timedelta(days=wait_days))
        return self._transition(
            ref, actor, "key.schedule_destruction", (*_LIVE, KeyState.RETIRED),
            KeyState.DESTROY_PENDING, destroy_after=after,
        )

    def restore(self, ref: KeyRef, *, actor: str) -> KeyRecord:
        """DESTROY_PENDING -> RETIRED (cancel a scheduled destruction)."""
        return self._transition(
            ref, actor, "key.restore", (KeyState.DESTROY_PENDING,), KeyState.RETIRED,
            destroy_after=None,
        )

    def destroy(self, ref: KeyRef, *, actor: str) -> KeyRecord:
        """C_DestroyObject on the key objects after the wait; the record stays as evidence."""
        with self._s() as s:
            record, extra = self._load(s, ref)
            now = self._clock()
            if record.state is not KeyState.DESTROY_PENDING or record.destroy_after is None:
                raise KeyStateError(
                    str(ref), f"state {record.state.value} does not permit key.destroy"
                )
            if _now_iso(now) < record.destroy_after:
                raise KeyStateError(
                    str(ref), f"destruction waits until {record.destroy_after}"
                )
            self._audited(actor, "key.destroy", record, lambda: None)
            handles = self._find(
                s, [(PyKCS11.CKA_LABEL, ref.label), (PyKCS11.CKA_ID, _version_id(ref.version))]
            )
            _destroy(s, handles)
            self._forget_handles(ref)
            new = replace(
                record, state=KeyState.DESTROYED, destroyed_at=_now_iso(now),
                updated_at=_now_iso(now),
            )
            self._save(s, new, extra)
            return new

    def rotate(self, label: str, *, actor: str) -> KeyRecord:
        """Generate the next version like the active one; the old one becomes DEACTIVATED."""
        old_ref = self.active(label)
        with self._s() as s:
            old, extra = self._load(s, old_ref)
        if extra.get("origin") != "generated":
            raise CeremonyError(
                str(old_ref), "entered from components or a key block: enter the new version "
                "the same way"
            )
        new = self.generate(
            label, old.algorithm, old.usage, old.role, old.owner, actor=actor,
            bits=old.bits, exportability=old.exportability, mode_of_use=old.mode_of_use,
        )
        with self._s() as s:
            old, extra = self._load(s, old_ref)
            self._change(
                s, old, extra, actor=actor, action="key.deactivate", state=KeyState.DEACTIVATED
            )
        return new

    # --- KCV -----------------------------------------------------------------------------------

    def _encrypt_block(self, s: Any, handle: Any, family: _Family, block: bytes) -> bytes:
        """E_K(block) inside the token: C_Encrypt, or for derive-only keys an ECB_ENCRYPT_DATA
        derivation into a non-sensitive generic secret (the value is the public KCV block)."""
        can_encrypt = bool(s.getAttributeValue(handle, [PyKCS11.CKA_ENCRYPT])[0])
        if can_encrypt:
            return bytes(s.encrypt(handle, block, PyKCS11.Mechanism(_ECB[family])))
        derived = s.deriveKey(
            handle,
            [
                (PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY),
                (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_GENERIC_SECRET),
                (PyKCS11.CKA_VALUE_LEN, len(block)),
                (PyKCS11.CKA_TOKEN, False),
                (PyKCS11.CKA_SENSITIVE, False),
                (PyKCS11.CKA_EXTRACTABLE, True),
            ],
            _derive_mechanism(family, block),
        )
        try:
            return bytes(s.getAttributeValue(derived, [PyKCS11.CKA_VALUE])[0])
        finally:
            _destroy(s, [derived])

    def _kcv_of(
        self, s: Any, handle: Any, algorithm: KeyAlgorithm, length: int = 3
    ) -> tuple[bytes, str]:
        """KCV computed in the token, by the method of :mod:`pipeline.crypto.kcv`.

        ``tdes``: 3DES-ECB(K)[00*8].  ``aes-cmac`` (X9.24-1:2017 A.3): CMAC of
        one zero block = E_K(K1) with K1 = dbl(E_K(0*16)) (SP 800-38B 6.1).
        RSA: the first bytes of SHA-1 are not a KCV; the record keeps the
        leftmost bytes of the modulus instead ("rsa-modulus").
        """
        if algorithm is KeyAlgorithm.RSA:
            modulus = bytes(s.getAttributeValue(
                self._pair_public(s, handle), [PyKCS11.CKA_MODULUS])[0])
            return modulus[:length], "rsa-modulus"
        family = _family(algorithm)
        if family is _Family.TDES:
            return self._encrypt_block(s, handle, family, bytes(8))[:length], "tdes"
        if family is _Family.AES:
            if s.getAttributeValue(handle, [PyKCS11.CKA_SIGN])[0]:
                mac = s.sign(handle, bytes(16), PyKCS11.Mechanism(PyKCS11.CKM_AES_CMAC))
                return bytes(mac)[:length], "aes-cmac"
            l_block = self._encrypt_block(s, handle, family, bytes(16))
            return self._encrypt_block(s, handle, family, _cmac_subkey(l_block))[:length], (
                "aes-cmac"
            )
        raise CapabilityError("kcv", f"no {algorithm.value} mechanism in the token")

    def _pair_public(self, s: Any, private: Any) -> Any:
        label, id_ = s.getAttributeValue(private, [PyKCS11.CKA_LABEL, PyKCS11.CKA_ID])
        found = self._find(
            s,
            [
                (PyKCS11.CKA_CLASS, PyKCS11.CKO_PUBLIC_KEY),
                (PyKCS11.CKA_LABEL, label),
                (PyKCS11.CKA_ID, bytes(id_)),
            ],
        )
        if not found:
            raise KeyNotFoundError("key", f"{label}: public key object missing")
        return found[0]

    def kcv(self, key: KeyRef) -> bytes:
        """The key's check value recomputed inside the token (3 bytes, the record's method)."""
        self._require("kcv", "kcv")
        with self._s() as s:
            record = self._record_for(s, key, Operation.KCV)
            klass = (
                PyKCS11.CKO_PRIVATE_KEY
                if record.algorithm is KeyAlgorithm.RSA
                else PyKCS11.CKO_SECRET_KEY
            )
            value, _ = self._kcv_of(s, self._key_handle(s, key, klass), record.algorithm)
            return value

    # --- hot path --------------------------------------------------------------------------------

    def derive_and_wrap(
        self,
        imk: KeyRef,
        pan: str,
        psn: str | None,
        method: DerivationMethod,
        tk: KeyRef,
    ) -> WrappedKey:
        """Derive the card MK inside the token and return it wrapped under ``tk`` with its KCV.

        Option A/B: one CKM_DES3_ECB_ENCRYPT_DATA over ``Y || (Y xor FF*8)``
        into a session CKK_DES2 object (odd parity set by the token); Option C:
        CKM_AES_ECB_ENCRYPT_DATA into CKK_AES.  The session object is
        sensitive, wrapped by C_WrapKey under the TK, its KCV taken by
        C_Encrypt of zeros, then destroyed.
        """
        capability = f"derive:{method.value}"
        if capability not in CAPABILITIES:
            raise InvalidInputError("method", f"{method.value} is not a card key derivation")
        self._require(capability, "derive_and_wrap")
        with self._s() as s:
            imk_rec = self._record_for(s, imk, Operation.DERIVE_CARD_KEY)
            tk_rec = self._record_for(s, tk, Operation.WRAP_OUTPUT)
            check_strength(tk_rec, str(imk), imk_rec.strength_bits, Operation.WRAP_OUTPUT)
            family = _family(imk_rec.algorithm)
            want = _Family.AES if method is DerivationMethod.AES else _Family.TDES
            if family is not want or (
                want is _Family.TDES and imk_rec.algorithm is not KeyAlgorithm.TDES2
            ):
                raise KeyUsageError(
                    str(imk), f"usage {imk_rec.usage.value} algorithm "
                    f"{imk_rec.algorithm.value} cannot derive by method {method.value}"
                )
            data = derivation_data(method, pan, psn, imk_rec.algorithm.key_length or 16)
            return self._derive_and_wrap(
                s, imk, family=want, data=data, algorithm=imk_rec.algorithm, tk=tk,
                tk_rec=tk_rec, operation="derive_and_wrap",
            )

    def _derive(
        self, s: Any, base_ref: KeyRef, *, family: _Family, data: bytes, key_type: int, length: int
    ) -> Any:
        """A sensitive, extractable session key = ECB_ENCRYPT_DATA(base, data), inside the token."""
        template = [
            (PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY),
            (PyKCS11.CKA_KEY_TYPE, key_type),
            (PyKCS11.CKA_TOKEN, False),
            (PyKCS11.CKA_SENSITIVE, True),
            (PyKCS11.CKA_EXTRACTABLE, True),
            (PyKCS11.CKA_ENCRYPT, key_type != PyKCS11.CKK_GENERIC_SECRET),
        ]
        if key_type in (PyKCS11.CKK_AES, PyKCS11.CKK_GENERIC_SECRET):
            template.append((PyKCS11.CKA_VALUE_LEN, length))
        return s.deriveKey(self._key_handle(s, base_ref), template, _derive_mechanism(family, data))

    def _wrap(
        self, s: Any, tk: KeyRef, tk_rec: KeyRecord, key: Any, *, length: int, operation: str
    ) -> bytes:
        """C_WrapKey of a session key under the TK, ECB (or CBC, zero IV, on exactly one block)."""
        tk_family = _family(tk_rec.algorithm)
        assert tk_family is not None  # K0 keys are symmetric (generate refuses others)
        route = self._report.wrap_mechanism(tk_family.value)
        if route is None or (route == "cbc-1" and length != _BLOCK[tk_family]):
            why = _probe_result(self._report, f"wrap-under:{tk_family.value}")
            raise CapabilityError(
                operation,
                f"token {self._token_label!r} cannot wrap a {length}-byte key under the "
                f"{tk_rec.algorithm.value} TK {tk} in ECB: {why}",
            )
        return bytes(s.wrapKey(self._key_handle(s, tk), key, _wrap_mechanism(tk_family, route)))

    def _derive_and_wrap(
        self, s: Any, base_ref: KeyRef, *, family: _Family, data: bytes, algorithm: KeyAlgorithm,
        tk: KeyRef, tk_rec: KeyRecord, operation: str,
    ) -> WrappedKey:
        length = algorithm.key_length or 0
        key_type = PyKCS11.CKK_DES2 if family is _Family.TDES else PyKCS11.CKK_AES
        card_key = self._derive(
            s, base_ref, family=family, data=data, key_type=key_type, length=length
        )
        try:
            wrapped = self._wrap(s, tk, tk_rec, card_key, length=length, operation=operation)
            kcv, method = self._kcv_of(s, card_key, algorithm)
        finally:
            _destroy(s, [card_key])
        return WrappedKey(ciphertext=wrapped, kcv=kcv, kcv_method=method, wrapped_under=tk)

    def diversify_and_wrap(
        self, kmc: KeyRef, kdd: bytes, method: DerivationMethod, tk: KeyRef
    ) -> tuple[WrappedKey, WrappedKey, WrappedKey]:
        """KENC, KMAC, KDEK (EMV CPS / VISA2) derived from the KMC inside the token, under ``tk``.

        Each key is one CKM_DES3_ECB_ENCRYPT_DATA over its 16-byte data block.
        The wrapped value is the raw 3DES output, no parity (as
        :func:`pipeline.crypto.gp.diversify_card_keys`); the KCV comes from a
        second derivation into a CKK_DES2 object (parity does not change a
        3DES KCV).
        """
        capability = f"diversify:{method.value}"
        if capability not in CAPABILITIES:
            raise InvalidInputError("method", f"{method.value} is not a GP diversification")
        self._require(capability, "diversify_and_wrap")
        with self._s() as s:
            kmc_rec = self._record_for(s, kmc, Operation.DIVERSIFY)
            tk_rec = self._record_for(s, tk, Operation.WRAP_OUTPUT)
            check_strength(tk_rec, str(kmc), kmc_rec.strength_bits, Operation.WRAP_OUTPUT)
            if kmc_rec.algorithm is not KeyAlgorithm.TDES2:
                raise KeyUsageError(
                    str(kmc), f"usage {kmc_rec.usage.value} algorithm "
                    f"{kmc_rec.algorithm.value} cannot diversify by method {method.value}"
                )
            out = []
            for kk in (1, 2, 3):
                data = gp_diversification_data(method, bytes(kdd), kk)
                handles = [
                    self._derive(s, kmc, family=_Family.TDES, data=data, key_type=kt, length=16)
                    for kt in (PyKCS11.CKK_GENERIC_SECRET, PyKCS11.CKK_DES2)
                ]
                try:
                    wrapped = self._wrap(
                        s, tk, tk_rec, handles[0], length=16, operation="diversify_and_wrap"
                    )
                    kcv, kcv_method = self._kcv_of(s, handles[1], KeyAlgorithm.TDES2)
                finally:
                    _destroy(s, handles)
                out.append(WrappedKey(wrapped, kcv, kcv_method, tk))
            return out[0], out[1], out[2]

    def translate(
        self,
        ciphertext: bytes,
        from_key: KeyRef,
        to_key: KeyRef,
        *,
        check: TranslateCheck = TranslateCheck.NONE,
        pan: str | None = None,
    ) -> bytes:
        """Refused unless the token can unwrap ECB ciphertext (see the ``translate`` gap)."""
        self._require("translate", "translate")
        raise CapabilityError(  # pragma: no cover - no token we test on gets here
            "translate", "ECB unwrap is reported but not implemented by this backend"
        )

    def check_encrypted(
        self,
        ciphertext: bytes,
        key: KeyRef,
        *,
        check: TranslateCheck,
        pan: str | None = None,
    ) -> None:
        """Refused: checking a clear format needs the value outside the token."""
        self._require("check_encrypted", "check_encrypted")
        raise CapabilityError("check_encrypted", "not implemented for PKCS#11 tokens")

    def kcv_of_wrapped(self, tk: KeyRef, ciphertext: bytes, method: str) -> bytes:
        """Refused: checking a key under the TK needs an ECB unwrap the token lacks."""
        self._require("kcv_of_wrapped", "kcv_of_wrapped")
        raise CapabilityError("kcv_of_wrapped", "not implemented for PKCS#11 tokens")

    def encrypt_under_tk(self, tk: KeyRef, plaintext: bytes) -> bytes:
        """Encrypt a secret DGI value under the TK in the token (ECB, ISO 9797-1 method 2 pad)."""
        self._require("encrypt_under_tk", "encrypt_under_tk")
        with self._s() as s:
            rec = self._record_for(s, tk, Operation.WRAP_OUTPUT)
            family = _family(rec.algorithm)
            assert family is not None
            block = _BLOCK[family]
            data = bytes(plaintext)
            if len(data) % block:
                data += b"\x80" + bytes(-(len(data) + 1) % block)
            return bytes(s.encrypt(self._key_handle(s, tk), data, PyKCS11.Mechanism(_ECB[family])))

    def generate_icc_key_pair(
        self, algorithm: str, bits: int | None, exponent: int | None, tk: KeyRef
    ) -> IccKeyPair:
        """Refused: see the ``icc_keypair:*`` gaps of :meth:`capability_report`."""
        self._require(f"icc_keypair:{algorithm}", "generate_icc_key_pair")
        raise CapabilityError("generate_icc_key_pair", "not reached")  # pragma: no cover

    def sign(self, key: KeyRef, data: bytes) -> bytes:
        """Raw RSA private operation inside the token (CKM_RSA_X_509) on a full modulus block."""
        with self._s() as s:
            record = self._record_for(s, key, Operation.SIGN)
            if record.algorithm is not KeyAlgorithm.RSA:
                self._require(f"sign:{record.algorithm.value}", "sign")
            self._require("sign:rsa", "sign")
            size = (record.bits + 7) // 8
            if len(data) != size:
                raise InvalidInputError(
                    "data", f"raw RSA needs a full {size}-byte block, got {len(data)}"
                )
            handle = self._key_handle(s, key, PyKCS11.CKO_PRIVATE_KEY)
            try:
                return bytes(s.sign(handle, bytes(data), PyKCS11.Mechanism(PyKCS11.CKM_RSA_X_509)))
            except PyKCS11.PyKCS11Error as exc:
                raise KeyStoreError("sign", f"{key}: token refused: {_ckr(exc)}") from None

    def _cmac(self, key: KeyRef, data: bytes, purpose: str, operation: Operation) -> bytes:
        """In-token CMAC (SP 800-38B) under an M6 key over ``len(purpose) || purpose || data``.

        Purposes are separated by that prefix-free framing instead of a
        derived key: an M6 key does nothing but MAC, so it needs no CKA_DERIVE.
        A K0 key (TK) is refused: it also encrypts (ECB) in the token, and with
        an ECB oracle CMAC subkeys are computable; a TK-derived MAC key would
        need CKA_DERIVE on the TK, which this backend keeps for master keys.
        """
        self._require("mac", operation.value)
        tag = purpose.encode()
        if not 1 <= len(tag) <= 255:
            raise InvalidInputError("purpose", f"1..255 bytes, got {len(tag)}")
        with self._s() as s:
            record = self._record_for(s, key, operation)
            family = _family(record.algorithm)
            if record.usage is not KeyUsage.M6 or family is None:
                raise CapabilityError(
                    operation.value,
                    f"{key}: usage {record.usage.value} {record.algorithm.value}: this backend "
                    "MACs only with M6 AES/3DES keys (a TK-derived MAC key needs CKA_DERIVE "
                    "on the TK)",
                )
            mech = PyKCS11.CKM_AES_CMAC if family is _Family.AES else PyKCS11.CKM_DES3_CMAC
            message = bytes([len(tag)]) + tag + bytes(data)
            return bytes(s.sign(self._key_handle(s, key), message, PyKCS11.Mechanism(mech)))

    def mac(self, key: KeyRef, data: bytes, purpose: str) -> bytes:
        """CMAC inside the token under an M6 key, separated by ``purpose`` (see ``_cmac``)."""
        return self._cmac(key, data, purpose, Operation.MAC)

    def verify_mac(self, key: KeyRef, data: bytes, mac: bytes, purpose: str) -> bool:
        """Recompute the CMAC in the token and compare in constant time."""
        expected = self._cmac(key, data, purpose, Operation.VERIFY_MAC)
        return hmac.compare_digest(expected, bytes(mac))

    def pan_token(self, key: KeyRef, pan: str) -> str:
        """Refused in this version (see the ``pan_token`` gap)."""
        self._require("pan_token", "pan_token")
        raise CapabilityError("pan_token", "not reached")  # pragma: no cover

    def encrypt_data(self, key: KeyRef, plaintext: bytes, purpose: str) -> bytes:
        """Refused in this version (see the ``encrypt_data`` gap)."""
        self._require("encrypt_data", "encrypt_data")
        raise CapabilityError("encrypt_data", "not reached")  # pragma: no cover

    def decrypt_data(self, key: KeyRef, ciphertext: bytes, purpose: str) -> bytes:
        """Refused in this version (see the ``encrypt_data`` gap)."""
        self._require("encrypt_data", "decrypt_data")
        raise CapabilityError("decrypt_data", "not reached")  # pragma: no cover


# --- module helpers ----------------------------------------------------------------------------


def _no_trail_yet(*_: object, **__: object) -> None:
    raise AuditError("audit", "no audit trail attached")


_MECH_NAME = {
    _Family.TDES: {"ecb": "CKM_DES3_ECB", "cbc-1": "CKM_DES3_CBC"},
    _Family.AES: {"ecb": "CKM_AES_ECB", "cbc-1": "CKM_AES_CBC"},
}


def _derive_mechanism(family: _Family, data: bytes) -> Any:
    """CKM_DES3_ECB_ENCRYPT_DATA / CKM_AES_ECB_ENCRYPT_DATA with CK_KEY_DERIVATION_STRING_DATA."""
    return PyKCS11.KEY_DERIVATION_STRING_DATA_MechanismBase(bytes(data), _ECB_DATA[family])


def _wrap_mechanism(family: _Family, route: str) -> Any:
    """ECB, or CBC with a zero IV (equal to ECB for exactly one block)."""
    if route == "ecb":
        return PyKCS11.Mechanism(_ECB[family])
    return PyKCS11.Mechanism(_CBC[family], bytes(_BLOCK[family]))


def _probe_result(report: CapabilityReport, what: str) -> str:
    for name, result in report.probes:
        if name == what:
            return result
    return "not probed"


def _destroy(s: Any, handles: Sequence[Any]) -> None:
    for handle in handles:
        with suppress(PyKCS11.PyKCS11Error):
            s.destroyObject(handle)


_SM_GAP = (
    "no SM2/SM4 mechanism in the token's mechanism list (PKCS#11 v2.40/3.1 define none; "
    "vendor mechanisms are not known to this backend)"
)

_FIXED_GAPS: dict[str, str] = {
    "generate:sm4": _SM_GAP,
    "generate:sm2": _SM_GAP,
    "derive:sm4": _SM_GAP,
    "sign:sm2": _SM_GAP,
    "icc_keypair:sm2": _SM_GAP,
    "icc_keypair:rsa": (
        "the CRT components must leave the token each encrypted under the TK in ECB "
        "(DGI 8201..8205); C_WrapKey wraps a private key only as one PKCS#8 blob "
        "(CKM_AES_KEY_WRAP_PAD), and C_GetAttributeValue of CKA_PRIME_1 etc. would be a "
        "clear copy"
    ),
    "import_key_block": (
        "TR-31 needs the KBPK's CMAC-derived keys and an unwrap of the payload inside the "
        "token; PKCS#11 v2.40 has no TR-31 mechanism (vendor-specific on real HSMs)"
    ),
    "export_key_block": (
        "TR-31 needs the KBPK's CMAC-derived keys and a wrap of the payload inside the "
        "token; PKCS#11 v2.40 has no TR-31 mechanism (vendor-specific on real HSMs)"
    ),
    "diversify:kdf3": (
        "SP 800-108 counter KDF with AES-CMAC (CKM_SP800_108_COUNTER_KDF, PKCS#11 3.0) "
        "not used by this backend"
    ),
    "pan_token": "not implemented by the pkcs11 backend yet (HMAC under a derived key)",
    "encrypt_data": "not implemented by the pkcs11 backend yet (AES-GCM under a derived key)",
}


def _build_report(
    token_label: str,
    info: tuple[str, str],
    mechanisms: frozenset[str],
    probes: tuple[tuple[str, str], ...],
) -> CapabilityReport:
    """Decide every capability name from the mechanism list and the probe results."""
    probe = dict(probes)

    def has(*names: str) -> str | None:
        missing = [n for n in names if n not in mechanisms]
        return None if not missing else "mechanism " + ", ".join(missing) + " not in the token"

    def ok(name: str) -> str | None:
        result = probe.get(name, "no (not probed)")
        return None if not result.startswith("no") else f"probe {name}: {result}"

    wrap_any = (
        None
        if ok("wrap-under:tdes") is None or ok("wrap-under:aes") is None
        else f"{ok('wrap-under:tdes')}; {ok('wrap-under:aes')}"
    )
    unwrap_any = (
        None
        if ok("unwrap-under:tdes") is None or ok("unwrap-under:aes") is None
        else "re-encryption without a clear copy needs an ECB unwrap: "
        f"{ok('unwrap-under:tdes')}; {ok('unwrap-under:aes')}"
    )
    rules: dict[str, str | None] = {
        "generate:tdes2": has("CKM_DES2_KEY_GEN"),
        "generate:tdes3": has("CKM_DES3_KEY_GEN"),
        "generate:aes128": has("CKM_AES_KEY_GEN"),
        "generate:aes192": has("CKM_AES_KEY_GEN"),
        "generate:aes256": has("CKM_AES_KEY_GEN"),
        "generate:rsa": has("CKM_RSA_PKCS_KEY_PAIR_GEN"),
        "import_components": has("CKM_DES3_ECB", "CKM_AES_ECB"),
        "derive:A": ok("derive:tdes-ecb-data") or wrap_any,
        "derive:B": ok("derive:tdes-ecb-data") or wrap_any,
        "derive:C": ok("derive:aes-ecb-data") or ok("wrap-under:aes"),
        "diversify:emv": ok("derive:tdes-ecb-data") or wrap_any,
        "diversify:visa2": ok("derive:tdes-ecb-data") or wrap_any,
        "translate": unwrap_any or "ECB unwrap found but translate is not implemented",
        "check_encrypted": "not implemented: a format check of a decrypted field needs the "
        "clear value outside the token",
        "kcv_of_wrapped": "not implemented: needs an ECB unwrap of the card key into a session "
        "object, which SoftHSM2 lacks",
        "export_components": "not implemented: splitting a key into clear components needs its "
        "value outside the token (CKA_SENSITIVE false, CKA_EXTRACTABLE true), which this backend "
        "never allows; HSMs do it with vendor-specific dual-control commands",
        "sign:rsa": ok("rsa-x509-sign"),
        "kcv": has("CKM_DES3_ECB", "CKM_AES_ECB"),
        "mac": has("CKM_AES_CMAC"),
        "encrypt_under_tk": has("CKM_DES3_ECB", "CKM_AES_ECB"),
        "lifecycle": None,
    }
    gaps = dict(_FIXED_GAPS)
    for name, why in rules.items():
        if why is not None:
            gaps[name] = why
    unknown = sorted(set(gaps) - CAPABILITIES)
    assert not unknown, unknown
    return CapabilityReport(
        token_label=token_label,
        manufacturer=info[0],
        model=info[1],
        operations=frozenset(CAPABILITIES - set(gaps)),
        gaps=tuple(sorted(gaps.items())),
        mechanisms=mechanisms,
        probes=probes,
    )
