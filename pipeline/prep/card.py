"""Per-card preparation: issuer record + product profile + key store -> PreparedCard | Reject.

One :class:`CardPreparer` is built per worker process: it resolves the
profile's key labels to :class:`~pipeline.keys.model.KeyRef` values once
(:class:`PreparerKeys`), loads the issuer public key and its CA certificate
from the key store once (:class:`IssuerPki`) and checks them against the
profile.  :meth:`CardPreparer.prepare` is then a function of the record and
the key store only.  For every card (issue 5, "Per card"; DOMAIN.md 1):

1. card master keys per key set: ``store.derive_and_wrap`` for MK-AC, MK-SMI,
   MK-SMC (EMV Book 2 A1.4 Option A/B/C or PBOC SM4) -> the key set's DGI
   (``8000``: the three ciphertexts under the TK) and KCV DGI (``9000``:
   three 3-byte KCVs, clear);
2. GlobalPlatform keys KENC/KMAC/KDEK from the KMC when the record carries
   the card's KDD (``store.diversify_and_wrap``) -> the profile's KMC DGI;
3. sensitive input fields translated KEK -> TK inside the store: the PIN
   block -> ``8010`` (+ ``9010`` try limit and counter), others -> the
   profile's ``secret_dgis``;
4. the ICC key pair (``store.generate_icc_key_pair``, or for
   ``icc_key.source: pool`` the preparer's ``icc_source``, e.g. a
   :class:`pipeline.keys.pool.PoolIccSource`), private part already under the
   TK -> ``8201``..``8205`` (RSA CRT) or the profile's SM2 DGI;
5. the records from the profile's templates (tag-70, EMV Book 3), the static
   data to be authenticated (Book 3 10.3), the ICC certificate signed by the
   issuer key inside the store, then the certificate records;
6. self-checks: the certificate recovers / verifies under the issuer public
   key and certifies this card's key (else ``R080 SELF_CHECK_CERT``); the
   MK-AC ciphertext the DGI carries, decrypted under the TK inside the store
   (``store.kcv_of_wrapped``), must have the KCV the store derived (else
   ``R081 SELF_CHECK_KCV``): a wrong wrap or a KCV of another key is caught.

Record-level problems become :class:`~pipeline.records.validate.Reject`
values; key store refusals (missing key, wrong usage or state) are batch
level and propagate as exceptions (DESIGN.md principle 5).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pipeline.audit.masking import mask_pan
from pipeline.crypto.tlv import check_tag, encode_length, encode_tlv
from pipeline.errors import (
    CardprepError,
    CertificateError,
    ConfigError,
    CryptoError,
    KeyStoreError,
    PreparationError,
    SignatureError,
)
from pipeline.keys.model import (
    IccKeyPair,
    KeyAlgorithm,
    KeyRecord,
    KeyRef,
    TranslateCheck,
    WrappedKey,
)
from pipeline.keys.store import KeyStore
from pipeline.prep import emv_data
from pipeline.prep.certs import (
    StoreRsaSigner,
    pboc_issuer_verifier,
    sign_emv_icc_certificate,
    sign_pboc_icc_certificate,
    verify_emv_icc_certificate,
    verify_pboc_icc_certificate,
)
from pipeline.prep.static_data import OdaPlan, oda_plan, static_data_to_authenticate
from pipeline.profiles.model import (
    IccKeyAlgorithm,
    IccKeySource,
    ProductProfile,
    RecordTemplate,
    Scheme,
)
from pipeline.records.dgi import Dgi
from pipeline.records.reasons import RejectReason
from pipeline.records.validate import CardRecord, Reject

__all__ = [
    "MAX_RECORD_LENGTH",
    "CardPreparer",
    "IccSource",
    "IssuerPki",
    "PreparedCard",
    "PreparerKeys",
    "record_template",
]

#: Where ICC key pairs come from: ``(algorithm, bits, exponent, tk) -> IccKeyPair`` with the
#: private part under ``tk`` -- the signature of ``KeyStore.generate_icc_key_pair``.
IccSource = Callable[[str, int | None, int | None, KeyRef], IccKeyPair]

MAX_RECORD_LENGTH = 254  # one-byte DGI length (CPS 4.2) and one READ RECORD response
KCV_LENGTH = 3
ICC_KEY_OVERHEAD = 42  # Book 2 Table 14: the ICC key field is N_I - 42 bytes
ISSUER_KEY_OVERHEAD = 36  # Book 2 Table 6: the issuer key field is N_CA - 36 bytes
PIN_BLOCK = "pin_block"
TEMPLATE_70 = b"\x70"
ICC_CERT_TAGS = frozenset({b"\x9f\x46", b"\x9f\x48"})
_KMC_ROLES = ("kmc.kenc", "kmc.kmac", "kmc.kdek")  # the kcvs keys of KENC, KMAC, KDEK


def _checked_tags(tags: frozenset[bytes]) -> frozenset[bytes]:
    """``tags`` once each is checked to be one well-formed BER tag (EMV Book 3 B1).

    Example:
        >>> sorted(_checked_tags(frozenset({b"\\x5a"})))
        [b'Z']
    """
    for tag in tags:
        check_tag(tag)
    return tags


#: Data objects whose value is made per card (``_card_values``, ``_icc_certificate``);
#: every other tag of a product's records is constant and encoded once per preparer.
#: Checked at import, so record_template encodes these without re-checking per card.
CARD_TAGS = _checked_tags(
    frozenset(
        {b"\x57", b"\x5a", b"\x5f\x20", b"\x5f\x24", b"\x5f\x25", b"\x5f\x30", b"\x5f\x34"}
        | {b"\x9f\x47"}
        | ICC_CERT_TAGS
    )
)

_FIELD_REASONS: dict[str, RejectReason] = {
    "pan": RejectReason.PAN_NOT_DIGITS,
    "psn": RejectReason.PSN_FORMAT,
    "expiry": RejectReason.EXPIRY_FORMAT,
    "effective": RejectReason.EFFECTIVE_DATE,
    "service_code": RejectReason.SERVICE_CODE,
    "name": RejectReason.NAME_CHARSET,
    "discretionary": RejectReason.FIELD_LENGTH,
}


@dataclass(frozen=True, slots=True)
class PreparedCard:
    """One prepared card (engine contract): DGIs ready for STORE DATA, no clear secret.

    ``kcvs`` maps a role (``contact.mk_ac``, ``kmc.kenc`` ...) to the hex KCV;
    ``icc_public_key_sha256`` lets a batch check that no ICC key repeats.
    """

    line_no: int
    product: str
    masked_pan: str
    pan_token: str
    dgis: tuple[Dgi, ...]
    kcvs: Mapping[str, str] = field(default_factory=dict)
    icc_public_key_sha256: str = ""

    def __repr__(self) -> str:  # the DGIs hold the PAN (57, 5A) and secrets: ids only
        ids = ",".join(d.name for d in self.dgis)
        return (
            f"PreparedCard(line_no={self.line_no}, product={self.product!r}, "
            f"masked_pan={self.masked_pan!r}, dgis=[{ids}])"
        )

    def dgi(self, dgi_id: int) -> Dgi | None:
        """The DGI with identifier ``dgi_id``, or None."""
        for item in self.dgis:
            if item.id == dgi_id:
                return item
        return None


@dataclass(frozen=True, slots=True)
class PreparerKeys:
    """Every key reference a preparer needs, resolved once per batch.

    ``key_sets`` holds ``(imk_ac, imk_smi, imk_smc)`` per profile key set, in
    profile order.
    """

    kek: KeyRef
    tk: KeyRef
    issuer: KeyRef
    pan_token: KeyRef
    key_sets: tuple[tuple[KeyRef, KeyRef, KeyRef], ...]
    kmc: KeyRef | None = None

    @classmethod
    def resolve(
        cls,
        store: KeyStore,
        profile: ProductProfile,
        *,
        kek: str,
        pan_token: str,
        tk: str | None = None,
    ) -> PreparerKeys:
        """Resolve the active version of every label (``tk`` overrides the profile's).

        Example:
            >>> keys = PreparerKeys.resolve(store, profile, kek="demo-kek",  # doctest: +SKIP
            ...                             pan_token="demo-pan-token")
        """
        return cls(
            kek=store.active(kek),
            tk=store.active(tk or profile.tk),
            issuer=store.active(profile.issuer_key),
            pan_token=store.active(pan_token),
            key_sets=tuple(
                (store.active(ks.imk_ac), store.active(ks.imk_smi), store.active(ks.imk_smc))
                for ks in profile.key_sets
            ),
            kmc=store.active(profile.kmc.key) if profile.kmc is not None else None,
        )

    def refs(self) -> dict[str, str]:
        """Role -> ``label@vN`` of every key (for manifests and reports)."""
        out = {"kek": str(self.kek), "tk": str(self.tk), "issuer": str(self.issuer)}
        out["pan_token"] = str(self.pan_token)
        for i, (ac, smi, smc) in enumerate(self.key_sets):
            out |= {f"set{i}.imk_ac": str(ac), f"set{i}.imk_smi": str(smi)}
            out[f"set{i}.imk_smc"] = str(smc)
        if self.kmc is not None:
            out["kmc"] = str(self.kmc)
        return out


@dataclass(frozen=True, slots=True)
class IssuerPki:
    """The issuer public key and its CA certificate data objects (8F, 90, 92, 9F32).

    RSA: ``public_key`` is the modulus, ``exponent`` the public exponent;
    SM2: ``public_key`` is ``x || y`` and ``exponent`` is empty.
    """

    key: KeyRef
    algorithm: KeyAlgorithm
    public_key: bytes
    exponent: bytes
    certificate: bytes
    remainder: bytes
    ca_rid: bytes
    ca_index: bytes

    @classmethod
    def from_record(cls, record: KeyRecord) -> IssuerPki:
        """Build from the issuer key's :class:`KeyRecord` (ConfigError when incomplete)."""
        where = f"issuer key {record.ref}"
        cert = record.certificate
        if record.public_key is None or cert is None:
            raise ConfigError(where, "has no public key or no CA certificate in the key store")
        try:
            rid, index = bytes.fromhex(cert.ca_rid), bytes.fromhex(cert.ca_index)
        except ValueError:
            raise ConfigError(where, "CA RID / index in the key store are not hex") from None
        return cls(
            key=record.ref,
            algorithm=record.algorithm,
            public_key=record.public_key,
            exponent=record.public_exponent or b"",
            certificate=cert.certificate,
            remainder=cert.remainder,
            ca_rid=rid,
            ca_index=index,
        )

    @classmethod
    def from_store(cls, store: KeyStore, key: KeyRef) -> IssuerPki:
        """Load the issuer key's public part and certificate from ``store``."""
        return cls.from_record(store.get(key))


#: A record template split at its per-card data objects (:func:`_record_plan`):
#: the TLVs before the first card tag, then per card tag the tag and the TLVs after it.
_RecordPlan = tuple[bytes, tuple[tuple[bytes, bytes], ...]]


def _record_plan(template: RecordTemplate, encoded: Mapping[bytes, bytes]) -> _RecordPlan:
    """``template`` with every run of already encoded data objects joined once.

    Tags in ``encoded`` (a product's constants) become fixed bytes; the other
    tags stay, in template order, to be encoded per card (:func:`_fill_record`).

    Example:
        >>> rec = RecordTemplate(2, 1, (b"\\x82", b"\\x5a", b"\\x92", b"\\x8c"))
        >>> done = {b"\\x82": b"\\x82\\x01\\x01", b"\\x92": b"", b"\\x8c": b"\\x8c\\x01\\x02"}
        >>> _record_plan(rec, done)
        (b'\\x82\\x01\\x01', ((b'Z', b'\\x8c\\x01\\x02'),))
    """
    runs: list[list[bytes]] = [[]]  # runs[i]: the encoded TLVs before card tag i (and after)
    card_tags: list[bytes] = []
    for tag in template.tags:
        tlv = encoded.get(tag)
        if tlv is None:
            card_tags.append(tag)
            runs.append([])
        else:
            runs[-1].append(tlv)
    after = (b"".join(run) for run in runs[1:])
    return b"".join(runs[0]), tuple(zip(card_tags, after, strict=True))


#: ``encode_length(n)`` for n = 0..255: every per-card data object and record body
#: (at most 254 bytes, MAX_RECORD_LENGTH) takes its length from here, not a call
_LENGTHS = tuple(encode_length(n) for n in range(256))


def _fill_record(
    template: RecordTemplate, plan: _RecordPlan, values: Mapping[bytes, bytes]
) -> bytes:
    """The record of ``plan`` with the card's ``values`` (see :func:`record_template`)."""
    head, card = plan
    parts = [head]
    lengths = _LENGTHS
    for tag, after in card:
        value = values.get(tag)
        if not value:
            tlv = b""
        elif tag in CARD_TAGS and type(value) is bytes:  # tag checked at import
            size = len(value)
            tlv = tag + (lengths[size] if size < 256 else encode_length(size)) + value
        else:
            tlv = encode_tlv(tag, value)
        parts.append(tlv)
        parts.append(after)
    body = b"".join(parts)
    size = len(body)
    # 70: one well-formed tag
    record = TEMPLATE_70 + (lengths[size] if size < 256 else encode_length(size)) + body
    if len(record) > MAX_RECORD_LENGTH:
        raise PreparationError(
            f"record {template.dgi:04X}", f"{len(record)} bytes exceeds {MAX_RECORD_LENGTH}"
        )
    return record


def record_template(
    template: RecordTemplate,
    values: Mapping[bytes, bytes],
    encoded: Mapping[bytes, bytes] | None = None,
) -> bytes:
    """A record: tag ``70`` around the template's data objects (EMV Book 3 5.3, CPS 4.2).

    Tags whose value is absent or empty (no PSN, no remainder) are left out.
    ``encoded`` maps tags to their TLV already encoded (a product's constant
    data objects, ``b""`` for an absent one); it is used instead of ``values``.
    A :class:`CardPreparer` keeps each template's :func:`_record_plan` and
    fills it per card.

    Example:
        >>> rec = RecordTemplate(2, 1, (b"\\x5a", b"\\x5f\\x34"))
        >>> record_template(rec, {b"\\x5a": bytes.fromhex("4761739001010119")}).hex().upper()
        '700A5A084761739001010119'
        >>> record_template(rec, {}, {b"\\x5a": bytes.fromhex("5A0112"), b"\\x5f\\x34": b""}).hex()
        '70035a0112'
    """
    return _fill_record(template, _record_plan(template, encoded or {}), values)


def _encode_constants(tags: set[bytes], values: Mapping[bytes, bytes]) -> dict[bytes, bytes]:
    """Tag -> its TLV (``b""`` when absent or empty) for ``tags``, encoded once.

    A tag that does not encode is left out, so the per-card path meets (and
    rejects) it exactly as before.

    Example:
        >>> _encode_constants({b"\\x82", b"\\x92"}, {b"\\x82": b"\\x39\\x00", b"\\x92": b""})
        {b'\\x82': b'\\x82\\x029\\x00', b'\\x92': b''}
    """
    out: dict[bytes, bytes] = {}
    for tag in sorted(tags):
        value = values.get(tag)
        try:
            out[tag] = encode_tlv(tag, value) if value else b""
        except CardprepError:
            continue
    return out


class _CardReject(Exception):  # noqa: N818 - internal control flow, never escapes prepare()
    def __init__(self, reason: RejectReason, field_name: str, detail: str) -> None:
        super().__init__(field_name)
        self.reason, self.field_name, self.detail = reason, field_name, detail


class CardPreparer:
    """Prepares the cards of one product (see the module docstring).

    Example:
        >>> preparer = CardPreparer(profile, store, keys)        # doctest: +SKIP
        >>> result = preparer.prepare(card_record)                # doctest: +SKIP
        >>> isinstance(result, PreparedCard)                      # doctest: +SKIP
        True
    """

    def __init__(
        self,
        profile: ProductProfile,
        store: KeyStore,
        keyrefs: PreparerKeys,
        issuer_pki: IssuerPki | None = None,
        secret_checks: Mapping[str, TranslateCheck] | None = None,
        *,
        icc_source: IccSource | None = None,
    ) -> None:
        self.profile = profile
        # What the store checks in the clear while translating each secret
        # field (from the issuer layout's ``padding``).  The issuer sends the
        # PIN as an ISO 9564-1 format 0 block; the card's offline reference
        # PIN (DGI 8010) is a format 2 block, re-encoded inside the store.
        self._secret_checks = {
            PIN_BLOCK: TranslateCheck.PIN_ISO0_TO_ISO2,
            **(secret_checks or {}),
        }
        self.store = store
        self.keys = keyrefs
        self.pki = (
            issuer_pki if issuer_pki is not None else IssuerPki.from_store(store, keyrefs.issuer)
        )
        if len(keyrefs.key_sets) != len(profile.key_sets):
            raise ConfigError("keyrefs.key_sets", "one IMK triple per profile key set is required")
        if profile.kmc is not None and keyrefs.kmc is None:
            raise ConfigError("keyrefs.kmc", f"profile {profile.id} needs a KMC")
        self._icc_source: IccSource = store.generate_icc_key_pair
        if profile.icc_key.source is IccKeySource.POOL:
            if icc_source is None:
                raise ConfigError(
                    f"{profile.source}: icc_key.source",
                    "pool: this preparer was given no ICC key source (icc_source)",
                )
            self._icc_source = icc_source
        self._check_pki()
        self._signer = (
            StoreRsaSigner(store, self.pki.key, self.pki.public_key)
            if self.pki.algorithm is KeyAlgorithm.RSA
            else None
        )
        # SM2: one precomputed verifier for every card's certificate self-check
        self._sm2_verifier = None if self._signer else pboc_issuer_verifier(self.pki.public_key)
        self._select = b"".join(encode_tlv(tag, value) for tag, value in profile.select_tags)
        self._template_tags = {tag for rec in profile.records for tag in rec.tags}
        # Per product, once: constant data objects encoded, constant records and
        # the FCI / GPO DGIs built; per card only the card's own tags are encoded.
        constants = self._constant_values()
        self._encoded = _encode_constants(self._template_tags - CARD_TAGS, constants)
        # a card tag's constant (5F25 without an effective date ...) or a constant
        # that did not encode: still a per-card value, exactly as before
        self._card_defaults = {
            t: v
            for t, v in constants.items()
            if t in self._template_tags and t not in self._encoded
        }
        self._constant_records = self._build_constant_records()
        self._fci_gpo = tuple(self._fci_gpo_dgis())
        # Per product, once (issue 7): what each card's Python would otherwise rebuild.
        #: per key set, the ``kcvs`` keys of MK-AC, MK-SMI, MK-SMC
        self._kcv_roles = tuple(
            (f"{ks.name}.mk_ac", f"{ks.name}.mk_smi", f"{ks.name}.mk_smc")
            for ks in profile.key_sets
        )
        #: secret fields shipped in a DGI (the PIN block when the product has one);
        #: any other secret field is only checked (``_check_encrypted``)
        self._shipped = frozenset(
            ({PIN_BLOCK} if profile.pin is not None else set())
            | {name for name, _ in profile.secret_dgis}
        )
        icc = profile.icc_key
        self._icc_request = (icc.algorithm.value, icc.bits, icc.exponent)
        #: per record template: (index, template, its (SFI, record), holds 9F46/9F48,
        #: its constants joined once: _record_plan)
        self._templates = tuple(
            (
                index,
                t,
                (t.sfi, t.record),
                not ICC_CERT_TAGS.isdisjoint(t.tags),
                _record_plan(t, self._encoded),
            )
            for index, t in enumerate(profile.records)
        )
        #: which built records make the static data, in AFL order (None: the per-card rule)
        self._oda = self._oda_plan()

    # --- construction checks ------------------------------------------------------

    def _check_pki(self) -> None:
        profile, pki = self.profile, self.pki
        where = f"{profile.source or profile.id}: ca"
        if (pki.ca_rid, pki.ca_index) != (profile.ca.rid, profile.ca.index):
            raise ConfigError(
                where,
                f"profile names CA {profile.ca.rid.hex().upper()}/{profile.ca.index.hex().upper()}"
                f" but issuer key {pki.key} is certified by "
                f"{pki.ca_rid.hex().upper()}/{pki.ca_index.hex().upper()}",
            )
        want = KeyAlgorithm.RSA if profile.scheme is Scheme.EMV else KeyAlgorithm.SM2
        if pki.algorithm is not want:
            raise ConfigError(
                f"issuer key {pki.key}", f"is {pki.algorithm.value}, product needs {want.value}"
            )
        if profile.icc_key.algorithm is not IccKeyAlgorithm.RSA:
            return
        issuer_len = len(pki.public_key)
        icc_len = (profile.icc_key.bits or 0) // 8
        if icc_len > issuer_len:
            raise ConfigError(
                f"{profile.source}: icc_key.bits",
                f"ICC key {icc_len} bytes exceeds the issuer key {issuer_len} (Book 2 6.1)",
            )
        if icc_len > issuer_len - ICC_KEY_OVERHEAD and b"\x9f\x48" not in self._tags():
            raise ConfigError(f"{profile.source}: records", "the ICC key needs tag 9F48")
        if pki.remainder and b"\x92" not in self._tags():
            raise ConfigError(f"{profile.source}: records", "the issuer key needs tag 92")

    def _oda_plan(self) -> OdaPlan | None:
        """The product's :class:`OdaPlan` over its records without 9F46/9F48, or None.

        None when the AFL, the SDA Tag List or the AIP is one the 10.3 rule
        refuses: each card then takes :func:`static_data_to_authenticate` and
        is rejected with that rule's reason, as before there was a plan.
        """
        profile = self.profile
        own = [key for _, _, key, has_cert, _ in self._templates if not has_cert]
        try:
            return oda_plan(profile.afl, own, profile.sda_tag_list, profile.aip)
        except CardprepError:
            return None

    def _tags(self) -> set[bytes]:
        return {tag for rec in self.profile.records for tag in rec.tags}

    # --- per card -----------------------------------------------------------------

    def prepare(self, record: CardRecord) -> PreparedCard | Reject:
        """Prepare one card; a record-level failure is returned as a Reject."""
        try:
            return self._prepare(record)
        except _CardReject as rej:
            return self._reject(record, rej.reason, rej.field_name, rej.detail)
        except PreparationError as exc:
            reason = _FIELD_REASONS.get(exc.field, RejectReason.FIELD_FORMAT)
            if exc.field == "name" and exc.detail.startswith("length"):
                reason = RejectReason.NAME_LENGTH
            return self._reject(record, reason, exc.field, exc.detail)
        except KeyStoreError:
            raise  # batch level: a missing, suspended or misused key stops the batch
        except CryptoError as exc:  # e.g. a PAN the derivation refuses
            reason = _FIELD_REASONS.get(exc.field, RejectReason.FIELD_FORMAT)
            return self._reject(record, reason, exc.field, exc.detail)

    def _reject(self, record: CardRecord, reason: RejectReason, fld: str, detail: str) -> Reject:
        return Reject(
            line_no=record.line_no,
            reason=reason,
            field=fld,
            detail=detail,
            product=self.profile.id,
            masked_pan=mask_pan(record.pan),
        )

    def _prepare(self, record: CardRecord) -> PreparedCard:
        profile, store, keys = self.profile, self.store, self.keys
        pan, psn, tk = record.pan, record.psn, keys.tk
        derive = store.derive_and_wrap
        kcvs: dict[str, str] = {}
        secret_dgis: list[Dgi] = []
        for spec, (ac, smi, smc), (ac_role, smi_role, smc_role) in zip(
            profile.key_sets, keys.key_sets, self._kcv_roles, strict=True
        ):
            method = spec.derivation
            mk_ac = derive(ac, pan, psn, method, tk)
            mk_smi = derive(smi, pan, psn, method, tk)
            mk_smc = derive(smc, pan, psn, method, tk)
            self._check_mk_ac(mk_ac, spec.name)
            kcv_ac, kcv_smi = mk_ac.kcv[:KCV_LENGTH], mk_smi.kcv[:KCV_LENGTH]
            kcv_smc = mk_smc.kcv[:KCV_LENGTH]
            secret_dgis.append(
                Dgi(
                    spec.dgi,
                    b"".join((mk_ac.ciphertext, mk_smi.ciphertext, mk_smc.ciphertext)),
                    True,
                )
            )
            secret_dgis.append(Dgi(spec.kcv_dgi, b"".join((kcv_ac, kcv_smi, kcv_smc))))
            kcvs[ac_role] = kcv_ac.hex().upper()
            kcvs[smi_role] = kcv_smi.hex().upper()
            kcvs[smc_role] = kcv_smc.hex().upper()
        secret_dgis += self._kmc_dgis(record, kcvs)
        secret_dgis += self._sensitive_dgis(record)
        algorithm, bits, exponent = self._icc_request
        pair = self._icc_source(algorithm, bits, exponent, tk)
        private_dgis = [
            Dgi(dgi_id, part, True)
            for dgi_id, part in zip(profile.icc_key.dgis, pair.private_under_tk, strict=True)
        ]
        record_dgis = self._records(record, pair.public_key, pair.public_exponent)
        return PreparedCard(
            line_no=record.line_no,
            product=profile.id,
            masked_pan=mask_pan(pan),
            pan_token=store.pan_token(keys.pan_token, pan),
            dgis=(*record_dgis, *self._fci_gpo, *secret_dgis, *private_dgis),
            kcvs=kcvs,
            icc_public_key_sha256=hashlib.sha256(pair.public_key).hexdigest(),
        )

    def _check_mk_ac(self, wrapped: WrappedKey, name: str) -> None:
        """KCV self-check (issue 5): the MK-AC the DGI carries under the TK has the KCV
        the key store derived.

        The store decrypts the ciphertext under the TK and computes its KCV
        (``kcv_of_wrapped``, nothing clear leaves it); a corrupted wrap, a wrap
        of another key or a KCV of another key all disagree.
        """
        under_tk = self.store.kcv_of_wrapped(self.keys.tk, wrapped.ciphertext, wrapped.kcv_method)
        if not wrapped.kcv or under_tk[: len(wrapped.kcv)] != wrapped.kcv:
            raise _CardReject(
                RejectReason.SELF_CHECK_KCV, f"{name}.mk_ac", "MK-AC KCV does not match the store's"
            )

    def _kmc_dgis(self, record: CardRecord, kcvs: dict[str, str]) -> list[Dgi]:
        spec, kmc = self.profile.kmc, self.keys.kmc
        if spec is None or kmc is None or not record.kdd:
            return []
        wrapped = self.store.diversify_and_wrap(kmc, record.kdd, spec.method, self.keys.tk)
        short = [w.kcv[:KCV_LENGTH] for w in wrapped]
        for role, value in zip(_KMC_ROLES, short, strict=True):
            kcvs[role] = value.hex().upper()
        out = [Dgi(spec.dgi, b"".join([w.ciphertext for w in wrapped]), True)]
        if spec.kcv_dgi is not None:
            out.append(Dgi(spec.kcv_dgi, b"".join(short)))
        return out

    def _translate(self, name: str, ciphertext: bytes, pan: str) -> bytes:
        check = self._secret_checks.get(name, TranslateCheck.NONE)
        try:
            return self.store.translate(
                ciphertext, self.keys.kek, self.keys.tk, check=check, pan=pan
            )
        except KeyStoreError:
            raise
        except CryptoError as exc:
            raise _CardReject(
                RejectReason.SENSITIVE_UNDECRYPTABLE,
                name,
                f"cannot translate to the TK: {exc.detail}",
            ) from None

    def _sensitive_dgis(self, record: CardRecord) -> list[Dgi]:
        out: list[Dgi] = []
        pin = self.profile.pin
        if pin is not None and record.secrets.get(PIN_BLOCK):
            pin_under_tk = self._translate(PIN_BLOCK, record.secrets[PIN_BLOCK], record.pan)
            out.append(Dgi(pin.dgi, pin_under_tk, True))
            out.append(Dgi(pin.try_dgi, bytes([pin.try_limit, pin.try_limit])))
        for name, dgi_id in self.profile.secret_dgis:
            value = record.secrets.get(name)
            if value:
                out.append(Dgi(dgi_id, self._translate(name, value, record.pan), True))
        shipped = self._shipped
        for name, value in record.secrets.items():  # not shipped: still must decrypt well
            if value and name not in shipped:
                self._check_encrypted(name, value, record.pan)
        return out

    def _check_encrypted(self, name: str, ciphertext: bytes, pan: str) -> None:
        check = self._secret_checks.get(name, TranslateCheck.NONE)
        if check is TranslateCheck.PIN_ISO0_TO_ISO2:
            check = TranslateCheck.PIN_ISO0
        if check is TranslateCheck.NONE:
            return
        try:
            self.store.check_encrypted(ciphertext, self.keys.kek, check=check, pan=pan)
        except KeyStoreError:
            raise
        except CryptoError as exc:
            raise _CardReject(
                RejectReason.SENSITIVE_UNDECRYPTABLE, name, f"does not decrypt: {exc.detail}"
            ) from None

    def _fci_gpo_dgis(self) -> list[Dgi]:
        profile = self.profile
        out = [Dgi(profile.select_dgi, self._select)]
        for gpo in profile.gpo:
            value = encode_tlv(b"\x82", gpo.aip) + encode_tlv(b"\x94", profile.afl)
            out.append(Dgi(gpo.dgi, value))
        return out

    def _constant_values(self) -> dict[bytes, bytes]:
        """The product's record values that do not depend on the card (profile, issuer PKI)."""
        profile, pki = self.profile, self.pki
        values: dict[bytes, bytes] = dict(profile.constants)
        values |= {
            b"\x82": profile.aip,
            b"\x8f": pki.ca_index,
            b"\x90": pki.certificate,
            b"\x92": pki.remainder,
            b"\x9f\x32": pki.exponent,
        }
        if profile.sda_tag_list:
            values[b"\x9f\x4a"] = profile.sda_tag_list
        return values

    def _build_constant_records(self) -> dict[int, tuple[bytes, Dgi]]:
        """Template index -> (record, its DGI) for records without a card tag.

        A record that cannot be built (too long) is left out: it is then built
        per card and rejected there, as before.
        """
        out: dict[int, tuple[bytes, Dgi]] = {}
        for index, template in enumerate(self.profile.records):
            if CARD_TAGS.isdisjoint(template.tags):
                try:
                    built = record_template(template, {}, self._encoded)
                except CardprepError:
                    continue
                out[index] = (built, Dgi(template.dgi, built))
        return out

    def _card_values(self, record: CardRecord, icc_exponent: bytes) -> dict[bytes, bytes]:
        values: dict[bytes, bytes] = dict(self._card_defaults)
        values |= {
            b"\x57": emv_data.track2_equivalent(
                record.pan, record.expiry, record.service_code, record.discretionary
            ),
            b"\x5a": emv_data.application_pan(record.pan),
            b"\x5f\x20": emv_data.cardholder_name(record.name),
            b"\x5f\x24": emv_data.expiration_date(record.expiry),
            b"\x5f\x30": emv_data.service_code(record.service_code),
            b"\x9f\x47": icc_exponent,
        }
        if record.effective:
            values[b"\x5f\x25"] = emv_data.effective_date(record.effective)
        if record.psn is not None:
            values[b"\x5f\x34"] = emv_data.pan_sequence_number(record.psn)
        return values

    def _records(self, record: CardRecord, icc_public: bytes, icc_exponent: bytes) -> list[Dgi]:
        profile, constant = self.profile, self._constant_records
        plan = self._templates
        values = self._card_values(record, icc_exponent)
        built: dict[tuple[int, int], bytes] = {}
        dgis: dict[int, Dgi] = {}
        for index, template, key, has_cert, parts in plan:
            known = constant.get(index)
            if known is not None:
                built[key], dgis[index] = known
            elif not has_cert:
                built[key] = _fill_record(template, parts, values)
        oda = self._oda
        static = (
            oda.static_data(built)
            if oda is not None
            else static_data_to_authenticate(profile.afl, built, profile.sda_tag_list, profile.aip)
        )
        values |= self._icc_certificate(record, icc_public, icc_exponent, static)
        for _, template, key, has_cert, parts in plan:
            if has_cert:
                built[key] = _fill_record(template, parts, values)
        return [
            dgis[index] if index in dgis else Dgi(template.dgi, built[key])
            for index, template, key, _, _ in plan
        ]

    def _icc_certificate(
        self, record: CardRecord, icc_public: bytes, icc_exponent: bytes, static: bytes
    ) -> dict[bytes, bytes]:
        """Sign the ICC certificate in the store and self-check it (R080 on failure)."""
        expiry = emv_data.certificate_expiry(record.expiry)
        serial = secrets.token_bytes(3)
        pki = self.pki
        try:
            if self._signer is not None:
                cert, remainder = sign_emv_icc_certificate(
                    self._signer,
                    pan=record.pan,
                    expiry_mmyy=expiry,
                    serial=serial,
                    icc_modulus=icc_public,
                    icc_exponent=icc_exponent,
                    static_data=static,
                )
                verify_emv_icc_certificate(
                    cert,
                    remainder,
                    issuer_modulus=pki.public_key,
                    issuer_exponent=pki.exponent,
                    icc_modulus=icc_public,
                    icc_exponent=icc_exponent,
                    static_data=static,
                    pan=record.pan,
                )
                return {b"\x9f\x46": cert, b"\x9f\x48": remainder}
            cert = sign_pboc_icc_certificate(
                self.store,
                pki.key,
                pan=record.pan,
                expiry_mmyy=expiry,
                serial=serial,
                icc_public_key=icc_public,
                static_data=static,
            )
            verify_pboc_icc_certificate(
                cert,
                issuer_public_key=self._sm2_verifier or pki.public_key,
                icc_public_key=icc_public,
                static_data=static,
                pan=record.pan,
            )
            return {b"\x9f\x46": cert}
        except (CertificateError, SignatureError) as exc:
            raise _CardReject(RejectReason.SELF_CHECK_CERT, "9F46", exc.detail) from None
        except KeyStoreError:
            raise
        except CardprepError as exc:
            raise _CardReject(RejectReason.SELF_CHECK_CERT, "9F46", exc.detail) from None
