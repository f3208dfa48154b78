"""The ``KeyStore`` protocol: operations shaped like a data-preparation HSM.

Every backend (``pipeline.keys.soft.SoftKeyStore``, SQLite; and
``pipeline.keys.pkcs11.Pkcs11KeyStore``, a PKCS#11 token) implements this
protocol.  Callers hold :class:`~pipeline.keys.model.KeyRef` values only; a
clear secret never leaves the backend.

Rules every backend enforces on every call (DOMAIN.md section 2, PCI PIN
Security Requirement 18 / X9.143 key binding):

* **usage**: the ``(usage, operation)`` table of :mod:`pipeline.keys.usage`
  (a KEK never encrypts data, an IMK only derives ...).  Refusals raise
  :class:`~pipeline.errors.KeyUsageError` naming label, usage and operation.
* **state**: only ACTIVE keys do new work; a DEACTIVATED (rotated-out)
  version only decrypts / unwraps / verifies; everything else is refused with
  :class:`~pipeline.errors.KeyStateError`.
* **exportability and strength**: a non-exportable (N) or sensitive (S) key
  never leaves; nothing is exported or wrapped under a weaker key.
* **audit**: every key-management call takes ``actor`` (custodian or service
  id) and appends one audit event; if the event cannot be written the call
  is refused (fail closed, :class:`~pipeline.errors.AuditError`).  Hot-path
  calls (derive, translate, sign, mac ...) are not audited per card; the
  batch audits once.

Example (soft backend):
    >>> from pipeline.keys.demo import init_demo_store          # doctest: +SKIP
    >>> store = init_demo_store(tmp / "keys.db", passphrase_file=pw)  # doctest: +SKIP
    >>> tk = store.active("demo-tk")                             # doctest: +SKIP
    >>> wrapped = store.derive_and_wrap(store.active("demo-imk-ac"),
    ...     "4761739001010119", "01", DerivationMethod.OPTION_A, tk)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from pipeline.errors import AuditError, CardprepError, KeyStoreError
from pipeline.keys.model import (
    DerivationMethod,
    Exportability,
    IccKeyPair,
    IssuerCertificateRecord,
    KeyAlgorithm,
    KeyRecord,
    KeyRef,
    KeyRole,
    KeyUsage,
    TranslateCheck,
    WrappedKey,
)

__all__ = ["CAPABILITIES", "KeyStore", "StoreAuditSealer"]

#: Capability names a backend may report from :meth:`KeyStore.capabilities`.
CAPABILITIES: frozenset[str] = frozenset(
    {
        "generate:tdes2", "generate:tdes3", "generate:aes128", "generate:aes192",
        "generate:aes256", "generate:sm4", "generate:rsa", "generate:sm2",
        "import_components", "import_key_block", "export_key_block", "export_components",
        "derive:A", "derive:B", "derive:C", "derive:sm4",
        "diversify:emv", "diversify:visa2", "diversify:kdf3",
        "translate", "check_encrypted", "kcv_of_wrapped", "icc_keypair:rsa", "icc_keypair:sm2",
        "sign:rsa", "sign:sm2", "kcv", "mac", "pan_token", "encrypt_data",
        "encrypt_under_tk", "lifecycle",
    }
)  # fmt: skip


@runtime_checkable
class KeyStore(Protocol):
    """A key store backend (see the module docstring for the rules)."""

    # --- key management (audited; ``actor`` required) -------------------------

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
        """Generate a new key (version 1, or the next version if ``label`` exists).

        ``bits`` is required for RSA (modulus size; the soft backend also takes
        ``exponent=``, default 3); symmetric keys take their length from
        ``algorithm``.  A new ACTIVE version makes the previous
        active one DEACTIVATED.  ``mode_of_use`` is the TR-31 character
        (X9.143 Table 4; ``N`` = no special restriction, ``S`` = sign only ...).
        Returns the new record; it is ACTIVE unless ``activate=False``
        (PRE_ACTIVE).
        """
        ...

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
        """Enter a symmetric key as the XOR of 2..3 full-length components.

        The combined key's KCV must equal ``expected_kcv`` (compared over its
        length, 2..5 bytes), otherwise :class:`~pipeline.errors.CeremonyError`
        ("KCV mismatch") is raised and nothing is stored.  The ceremony module
        enforces custodian rules (distinct custodians, no one holding two
        components) before calling this; the store records ``custodians``.

        ``custodians`` are distinct ids: one per component, in order, or, for
        a key held as m-of-n Shamir shares (which the ceremony turns into two
        XOR components for entry), every share holder, so the record names
        all of them.  Fewer custodians than components is refused.
        """
        ...

    def export_components(
        self,
        ref: KeyRef,
        count: int,
        *,
        custodians: Sequence[str],
        actor: str,
        threshold: int | None = None,
    ) -> tuple[bytes, ...]:
        """Output an existing symmetric key as ``count`` full-length components.

        Split knowledge (DOMAIN.md section 2; PCI PIN Requirement 8 / X9.24-1
        key components): without ``threshold``, ``count`` (2..3) XOR
        components from :mod:`secrets`; with ``threshold`` m, ``count`` (n)
        Shamir share values, share ``i`` (x = i) at position ``i - 1``.
        ``custodians`` are ``count`` distinct ids, one per component, in order.

        Refused like :meth:`export_key_block`: the key's usage and state must
        permit ``export`` (ACTIVE only), a non-exportable (N) or sensitive (S)
        key never leaves (:class:`~pipeline.errors.KeyUsageError`), and key
        pairs are not output as components.  One audit event names
        ``label@vN``, the key's KCV, the custodian ids and each component's
        KCV, never a component.

        Example (soft backend):
            >>> parts = store.export_components(store.active("demo-tk"), 3,
            ...     custodians=["alice", "bob", "carol"], actor="km1+aud1")  # doctest: +SKIP
            >>> kcv(xor_combine(parts)) == store.get("demo-tk").kcv       # doctest: +SKIP
            True
        """
        ...

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
        """Import a TR-31 key block protected by ``kbpk`` (usage K0 or K1).

        Usage, algorithm, mode of use and exportability come from the block's
        header.  The block's MAC, the KBPK's strength (at least the key's) and,
        when given, ``expected_kcv`` are checked before anything is stored.
        """
        ...

    def export_key_block(self, key: KeyRef, kbpk: KeyRef, *, actor: str) -> str:
        """Export ``key`` as a TR-31 key block under ``kbpk``.

        Version D for an AES KBPK, B for a 3DES KBPK.  Refused
        (:class:`~pipeline.errors.KeyUsageError`) for non-exportable or
        sensitive keys, for the HMK, and when ``kbpk`` is weaker than ``key``.
        """
        ...

    def set_issuer_certificate(
        self, key: KeyRef, certificate: IssuerCertificateRecord, *, actor: str
    ) -> KeyRecord:
        """Attach the scheme CA's certificate to an issuer signing key (usage S0)."""
        ...

    # --- lifecycle (audited) ----------------------------------------------------

    def activate(self, ref: KeyRef, *, actor: str) -> KeyRecord:
        """PRE_ACTIVE -> ACTIVE."""
        ...

    def suspend(self, ref: KeyRef, *, actor: str, reason: str = "") -> KeyRecord:
        """ACTIVE or DEACTIVATED -> SUSPENDED (refused for all work until resumed)."""
        ...

    def resume(self, ref: KeyRef, *, actor: str) -> KeyRecord:
        """SUSPENDED -> the state it was suspended from."""
        ...

    def rotate(self, label: str, *, actor: str) -> KeyRecord:
        """Generate the next version with the same attributes; the active one becomes DEACTIVATED.

        Works from a suspended key too (rotation after an incident).
        A deactivated version only decrypts / unwraps / verifies until retired.
        Keys entered from components or key blocks cannot be rotated by
        generation: enter the new version the same way.
        """
        ...

    def retire(self, ref: KeyRef, *, actor: str) -> KeyRecord:
        """Any live state -> RETIRED (no more use; metadata and KCV kept)."""
        ...

    def schedule_destruction(self, ref: KeyRef, *, actor: str, wait_days: int = 7) -> KeyRecord:
        """Move a non-ACTIVE key to DESTROY_PENDING; ``destroy`` works after ``wait_days`` days.

        An ACTIVE key is refused (rotate or retire it first).
        """
        ...

    def restore(self, ref: KeyRef, *, actor: str) -> KeyRecord:
        """DESTROY_PENDING -> the state before scheduling (cancel the destruction)."""
        ...

    def destroy(self, ref: KeyRef, *, actor: str) -> KeyRecord:
        """Erase the key block after the waiting period; the record and evidence stay."""
        ...

    # --- hot path (not audited per call) -----------------------------------------

    def derive_and_wrap(
        self,
        imk: KeyRef,
        pan: str,
        psn: str | None,
        method: DerivationMethod,
        tk: KeyRef,
    ) -> WrappedKey:
        """Derive the card master key (EMV Book 2 A1.4 / PBOC SM4) and return it under ``tk``.

        ``imk`` has usage E0/E1/E2; ``tk`` usage K0.  The clear card key never
        leaves the backend; the result carries its KCV.
        """
        ...

    def diversify_and_wrap(
        self, kmc: KeyRef, kdd: bytes, method: DerivationMethod, tk: KeyRef
    ) -> tuple[WrappedKey, WrappedKey, WrappedKey]:
        """Diversify KENC, KMAC, KDEK from the KMC (GP / EMV CPS) and wrap each under ``tk``."""
        ...

    def translate(
        self,
        ciphertext: bytes,
        from_key: KeyRef,
        to_key: KeyRef,
        *,
        check: TranslateCheck = TranslateCheck.NONE,
        pan: str | None = None,
    ) -> bytes:
        """Re-encrypt ECB ``ciphertext`` from ``from_key`` (K0) to ``to_key`` (K0).

        Block-aligned data only; no clear copy leaves the backend.  With
        ``check`` the backend verifies the clear value's format inside itself
        (padding method 2, or a format 0 PIN block against ``pan``) and raises
        :class:`~pipeline.errors.PaddingError` / ``InvalidInputError`` naming
        the check, never the value.
        """
        ...

    def check_encrypted(
        self,
        ciphertext: bytes,
        key: KeyRef,
        *,
        check: TranslateCheck,
        pan: str | None = None,
    ) -> None:
        """Check, inside the backend, that ``ciphertext`` under ``key`` (K0) decrypts well.

        For input fields the product does not ship (so are not translated):
        a field under the wrong KEK or corrupted is still found (reject R071).
        Nothing but the verdict leaves the backend.
        """
        ...

    def kcv_of_wrapped(self, tk: KeyRef, ciphertext: bytes, method: str) -> bytes:
        """KCV (``method`` of :func:`pipeline.crypto.kcv.kcv`) of a key held under ``tk``.

        The data-preparation self-check: the key a DGI carries under the TK
        must have the KCV the derivation reported.  Only the KCV leaves the
        backend (compare Thales "BU": KCV of a key under a ZMK).
        """
        ...

    def encrypt_under_tk(self, tk: KeyRef, plaintext: bytes) -> bytes:
        """Encrypt a secret DGI value under the TK (EMV CPS 1.1 section 4.3).

        ECB in the TK's algorithm, ISO/IEC 9797-1 padding method 2 only where
        ``plaintext`` is not block aligned.
        """
        ...

    def generate_icc_key_pair(
        self, algorithm: str, bits: int | None, exponent: int | None, tk: KeyRef
    ) -> IccKeyPair:
        """Generate an ICC key pair ("rsa" with ``bits``/``exponent``, or "sm2").

        The private part is returned only under ``tk`` (see ``IccKeyPair``).
        """
        ...

    def sign(self, key: KeyRef, data: bytes) -> bytes:
        """Sign with an S0 key.

        RSA: the raw private operation on ``data``, a full block of the
        modulus length (the caller frames it, EMV Book 2 5.3).  SM2: the
        GB/T 32918.2 signature ``r || s`` over ``data`` with the default user
        id ``1234567812345678``.
        """
        ...

    def kcv(self, key: KeyRef) -> bytes:
        """The key's check value (recomputed from the key; must match the record)."""
        ...

    def mac(self, key: KeyRef, data: bytes, purpose: str) -> bytes:
        """A 16-byte MAC over ``data`` under a key derived from ``key`` for ``purpose``.

        Derivation separates purposes ("manifest", "audit" ...) so the same key
        never MACs two kinds of data.  Usage M6, M7 or K0 (a TK-derived
        manifest MAC key, DESIGN.md step 5).
        """
        ...

    def verify_mac(self, key: KeyRef, data: bytes, mac: bytes, purpose: str) -> bool:
        """Check a MAC made by :meth:`mac` (allowed for rotated-out versions too)."""
        ...

    def pan_token(self, key: KeyRef, pan: str) -> str:
        """A keyed one-way token for a PAN (HMAC-SHA256, hex, 32 chars). Usage M7."""
        ...

    def encrypt_data(self, key: KeyRef, plaintext: bytes, purpose: str) -> bytes:
        """Authenticated encryption (AES-256-GCM under a key derived for ``purpose``). Usage D0."""
        ...

    def decrypt_data(self, key: KeyRef, ciphertext: bytes, purpose: str) -> bytes:
        """Inverse of :meth:`encrypt_data`; fails on tampering or a wrong purpose."""
        ...

    # --- metadata ---------------------------------------------------------------

    def get(self, ref_or_label: KeyRef | str, version: int | None = None) -> KeyRecord:
        """The record for a ref, or for ``label`` at ``version`` (default: the newest)."""
        ...

    def list(self, owner: str | None = None) -> list[KeyRecord]:
        """Every key version (optionally of one owner), by label then version."""
        ...

    def active(self, label: str) -> KeyRef:
        """The ACTIVE version of ``label`` (KeyStateError if there is none)."""
        ...

    def capabilities(self) -> frozenset[str]:
        """What this backend can do (names from :data:`CAPABILITIES`)."""
        ...

    def close(self) -> None:
        """Release the backend (connections, sessions, cached keys)."""
        ...


class StoreAuditSealer:
    """Audit-trail MACs under a store's audit key: ``store.mac(ref, data, "audit")``.

    The :class:`~pipeline.audit.trail.AuditTrail` sealer of every backend (the
    MAC is computed wherever the backend keeps the key: in process for the
    soft store, inside the token for PKCS#11).  A store that cannot MAC makes
    the trail fail closed with :class:`~pipeline.errors.AuditError`.
    """

    def __init__(self, store: KeyStore, label: str) -> None:
        self._store = store
        self._label = label

    def key_id(self) -> str:
        """``label@vN`` of the active audit key."""
        try:
            return str(self._store.active(self._label))
        except KeyStoreError as exc:
            raise AuditError("audit key", f"no usable audit key: {exc}") from None

    def seal(self, key_id: str, data: bytes) -> bytes:
        """MAC ``data`` under the audit key ``key_id``."""
        try:
            return self._store.mac(KeyRef.parse(key_id), data, "audit")
        except CardprepError as exc:
            raise AuditError("audit key", f"cannot MAC under {key_id}: {exc}") from None

    def check(self, key_id: str, data: bytes, mac: bytes) -> bool:
        """Whether ``mac`` is the audit MAC of ``data`` under ``key_id``."""
        return self._store.verify_mac(KeyRef.parse(key_id), data, mac, "audit")
