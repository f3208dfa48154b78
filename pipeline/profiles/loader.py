"""Load and validate ``config/products/<id>.yaml`` into a :class:`ProductProfile`.

Every problem raises :class:`~pipeline.errors.ConfigError` whose field names
the file and the YAML path (``demo-visa-rsa.yaml: records[2].tags[0]``) and
whose detail quotes the offending non-secret value.  Validation is strict:
unknown keys, unquoted hex (YAML reads ``0101`` as the octal integer 65),
duplicate DGIs or tags, a tag no source can fill, a constant no record uses,
an AFL that disagrees with the records, RSA-only tags in an SM2 product are
all refused when the profile is loaded, not when the first card is prepared.

The format is documented in docs/PROFILES.md.

Example:
    >>> profile = load_product("demo-visa-rsa")          # doctest: +SKIP
    >>> profile.afl.hex().upper()                          # doctest: +SKIP
    '08010100100101011801030000'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import CardprepError, ConfigError
from pipeline.keys.model import DerivationMethod, check_label
from pipeline.prep.static_data import build_afl
from pipeline.profiles.model import (
    CARD_TAGS,
    CERTIFICATE_TAGS,
    RSA_ONLY_TAGS,
    CaKeyId,
    CertificateSpec,
    DryPolicy,
    GpoResponse,
    IccKeyAlgorithm,
    IccKeySource,
    IccKeySpec,
    KeySetSpec,
    KmcSpec,
    PinSpec,
    ProductProfile,
    RecordTemplate,
    Scheme,
)
from pipeline.yamlconf import safe_load

__all__ = ["load_product", "parse_product", "product_path"]

_TOP_KEYS = frozenset(
    {
        "id", "version", "scheme", "description", "test_only", "aid", "derivation", "keys",
        "ca", "key_sets", "kmc", "icc_key", "certificate", "pin", "secret_dgis", "select",
        "aip", "afl", "sda_tag_list", "gpo", "records", "constants",
    }
)  # fmt: skip
_CARD_KEY_DERIVATIONS = frozenset(
    {
        DerivationMethod.OPTION_A,
        DerivationMethod.OPTION_B,
        DerivationMethod.AES,
        DerivationMethod.SM4,
    }
)
_RSA_EXPONENTS = (3, 65537)
_RSA_MIN_BITS, _RSA_MAX_BITS = 512, 1984  # Book 2 6.1: N_IC <= N_I <= N_CA <= 248 bytes
_RSA_CRT_DGIS = 5
_MAX_PIN_TRIES = 15
_ODA_FORBIDDEN = frozenset({b"\x9f\x46", b"\x9f\x48"})  # the certificate cannot sign itself


def product_path(product_id: str, config_dir: Path = Path("config")) -> Path:
    """The YAML file of ``product_id``: ``<config_dir>/products/<product_id>.yaml``."""
    return Path(config_dir) / "products" / f"{product_id}.yaml"


def load_product(product_id: str, config_dir: Path = Path("config")) -> ProductProfile:
    """Read and validate a product profile (see the module docstring)."""
    path = product_path(product_id, config_dir)
    if not path.is_file():
        raise ConfigError(f"product {product_id!r}", f"no profile file {path}")
    try:
        data = safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(path.name, f"not valid YAML: {exc}") from None
    profile = parse_product(data, source=path.name)
    if profile.id != product_id:
        raise ConfigError(f"{path.name}: id", f"{profile.id!r} differs from the file name")
    return profile


class _Ctx:
    """Builds ConfigErrors that name the source file and the YAML path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, where: str, detail: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where}", detail)

    def mapping(
        self, value: Any, where: str, allowed: frozenset[str] | None = None
    ) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise self.error(where, f"expected a mapping, got {type(value).__name__}")
        keys = [k for k in value if not isinstance(k, str)]
        if keys:
            raise self.error(where, f"keys must be quoted strings, got {keys[0]!r}")
        if allowed is not None:
            unknown = sorted(set(value) - allowed)
            if unknown:
                raise self.error(where, f"unknown key(s) {', '.join(unknown)}")
        return dict(value)

    def require(self, data: Mapping[str, Any], key: str, where: str) -> Any:
        if key not in data or data[key] is None:
            raise self.error(f"{where}.{key}" if where else key, "is required")
        return data[key]

    def text(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.error(where, f"expected a non-empty string, got {value!r}")
        return value

    def integer(self, value: Any, where: str, lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.error(where, f"expected an integer {lo}..{hi}, got {value!r}")
        return value

    def hexbytes(self, value: Any, where: str, lo: int = 0, hi: int = 0xFFFF) -> bytes:
        if not isinstance(value, str):
            raise self.error(where, f"expected a quoted hex string, got {value!r}")
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raise self.error(where, f"not hex: {value!r}") from None
        if not lo <= len(raw) <= hi:
            raise self.error(where, f"{len(raw)} bytes, expected {lo}..{hi}")
        return raw

    def dgi(self, value: Any, where: str) -> int:
        if not isinstance(value, str) or len(value) != 4:
            raise self.error(where, f"expected a DGI as 4 quoted hex digits, got {value!r}")
        return int.from_bytes(self.hexbytes(value, where, 2, 2), "big")

    def tag(self, value: Any, where: str) -> bytes:
        raw = self.hexbytes(value, where, 1, 3)
        multi = raw[0] & 0x1F == 0x1F
        ok = (len(raw) == 1 and not multi) or (
            multi and len(raw) > 1 and all(b & 0x80 for b in raw[1:-1]) and not raw[-1] & 0x80
        )
        if not ok:
            raise self.error(where, f"not a well-formed BER tag: {value!r}")
        return raw

    def label(self, value: Any, where: str) -> str:
        try:
            return check_label(self.text(value, where))
        except CardprepError as exc:
            raise self.error(where, exc.detail) from None

    def enum_value(self, enum: Any, value: Any, where: str) -> Any:
        try:
            return enum(value)
        except ValueError:
            choices = ", ".join(str(m.value) for m in enum)
            raise self.error(where, f"{value!r} is not one of {choices}") from None

    def value(self, value: Any, where: str) -> bytes:
        """A data object value: quoted hex, or ``{text: "..."}`` for ASCII (``ans``)."""
        if isinstance(value, Mapping):
            spec = self.mapping(value, where, frozenset({"text"}))
            text = self.text(spec.get("text"), f"{where}.text")
            if not all(0x20 <= ord(c) <= 0x7E for c in text):
                raise self.error(f"{where}.text", "only printable ASCII is allowed")
            return text.encode("ascii")
        return self.hexbytes(value, where, 1, 0xFF)


def _key_sets(
    ctx: _Ctx, raw: Any, keys: Mapping[str, Any], derivation: DerivationMethod
) -> tuple[KeySetSpec, ...]:
    if raw is None:
        raw = [{"name": "contact", "dgi": "8000", "kcv_dgi": "9000"}]
    if not isinstance(raw, list) or not raw:
        raise ctx.error("key_sets", "expected a non-empty list")
    sets = []
    allowed = frozenset({"name", "dgi", "kcv_dgi", "imk_ac", "imk_smi", "imk_smc", "derivation"})
    for i, item in enumerate(raw):
        where = f"key_sets[{i}]"
        spec = ctx.mapping(item, where, allowed)
        method = derivation
        if "derivation" in spec:
            method = ctx.enum_value(DerivationMethod, spec["derivation"], f"{where}.derivation")
            if method not in _CARD_KEY_DERIVATIONS:
                raise ctx.error(f"{where}.derivation", f"{method.value} is not a card key method")
        sets.append(
            KeySetSpec(
                name=ctx.text(ctx.require(spec, "name", where), f"{where}.name"),
                dgi=ctx.dgi(ctx.require(spec, "dgi", where), f"{where}.dgi"),
                kcv_dgi=ctx.dgi(ctx.require(spec, "kcv_dgi", where), f"{where}.kcv_dgi"),
                imk_ac=ctx.label(spec.get("imk_ac", keys.get("imk_ac")), f"{where}.imk_ac"),
                imk_smi=ctx.label(spec.get("imk_smi", keys.get("imk_smi")), f"{where}.imk_smi"),
                imk_smc=ctx.label(spec.get("imk_smc", keys.get("imk_smc")), f"{where}.imk_smc"),
                derivation=method,
            )
        )
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ctx.error("key_sets", f"duplicate key set names {names}")
    return tuple(sets)


def _kmc(ctx: _Ctx, raw: Any) -> KmcSpec | None:
    if raw is None:
        return None
    spec = ctx.mapping(raw, "kmc", frozenset({"key", "method", "dgi", "kcv_dgi"}))
    method = ctx.enum_value(DerivationMethod, ctx.require(spec, "method", "kmc"), "kmc.method")
    if not method.is_gp:
        raise ctx.error("kmc.method", f"{method.value} is not a KMC diversification method")
    return KmcSpec(
        key=ctx.label(ctx.require(spec, "key", "kmc"), "kmc.key"),
        method=method,
        dgi=ctx.dgi(ctx.require(spec, "dgi", "kmc"), "kmc.dgi"),
        kcv_dgi=ctx.dgi(spec["kcv_dgi"], "kmc.kcv_dgi") if spec.get("kcv_dgi") else None,
    )


def _pool_empty(ctx: _Ctx, spec: Mapping[str, Any], source: IccKeySource) -> DryPolicy:
    """``icc_key.pool_empty``: ``inline`` (default) or ``fail``; only with ``source: pool``.

    With ``source: inline`` there is no pool to run dry, so a ``pool_empty``
    there is refused rather than ignored: its owner most likely believes the
    product takes pool keys (the same rule as a constant no record uses).

    Example:
        >>> _pool_empty(_Ctx("p.yaml"), {"pool_empty": "fail"}, IccKeySource.POOL).value
        'fail'
    """
    if "pool_empty" not in spec:
        return DryPolicy.INLINE
    if source is not IccKeySource.POOL:
        raise ctx.error(
            "icc_key.pool_empty", f"applies only to source: pool (source is {source.value})"
        )
    policy: DryPolicy = ctx.enum_value(DryPolicy, spec["pool_empty"], "icc_key.pool_empty")
    return policy


def _icc_key(ctx: _Ctx, raw: Any, scheme: Scheme) -> IccKeySpec:
    spec = ctx.mapping(
        raw,
        "icc_key",
        frozenset({"algorithm", "bits", "exponent", "source", "dgis", "pool_empty"}),
    )
    algorithm = ctx.enum_value(
        IccKeyAlgorithm, ctx.require(spec, "algorithm", "icc_key"), "icc_key.algorithm"
    )
    source = ctx.enum_value(IccKeySource, spec.get("source", "inline"), "icc_key.source")
    pool_empty = _pool_empty(ctx, spec, source)
    dgis_raw = ctx.require(spec, "dgis", "icc_key")
    if not isinstance(dgis_raw, list):
        raise ctx.error("icc_key.dgis", "expected a list of DGIs")
    dgis = tuple(ctx.dgi(d, f"icc_key.dgis[{i}]") for i, d in enumerate(dgis_raw))
    if algorithm is IccKeyAlgorithm.RSA:
        if scheme is not Scheme.EMV:
            raise ctx.error("icc_key.algorithm", "an RSA ICC key needs scheme emv")
        bits = ctx.integer(
            ctx.require(spec, "bits", "icc_key"), "icc_key.bits", _RSA_MIN_BITS, _RSA_MAX_BITS
        )
        if bits % 8:
            raise ctx.error("icc_key.bits", f"{bits} is not a whole number of bytes")
        exponent = ctx.require(spec, "exponent", "icc_key")
        if exponent not in _RSA_EXPONENTS or isinstance(exponent, bool):
            raise ctx.error("icc_key.exponent", f"{exponent!r} is not 3 or 65537 (Book 2 A2.1.1)")
        if len(dgis) != _RSA_CRT_DGIS:
            raise ctx.error("icc_key.dgis", f"RSA needs {_RSA_CRT_DGIS} CRT DGIs, got {len(dgis)}")
        return IccKeySpec(algorithm, bits, int(exponent), source, dgis, pool_empty)
    if scheme is not Scheme.PBOC:
        raise ctx.error("icc_key.algorithm", "an SM2 ICC key needs scheme pboc")
    if spec.get("bits") not in (None, 256) or spec.get("exponent") is not None:
        raise ctx.error("icc_key", "SM2 takes no exponent and 256 bits only")
    if len(dgis) != 1:
        raise ctx.error("icc_key.dgis", f"SM2 needs one private key DGI, got {len(dgis)}")
    return IccKeySpec(algorithm, None, None, source, dgis, pool_empty)


def _pin(ctx: _Ctx, raw: Any) -> PinSpec | None:
    if raw is None:
        return None
    spec = ctx.mapping(raw, "pin", frozenset({"dgi", "try_dgi", "try_limit"}))
    return PinSpec(
        dgi=ctx.dgi(ctx.require(spec, "dgi", "pin"), "pin.dgi"),
        try_dgi=ctx.dgi(ctx.require(spec, "try_dgi", "pin"), "pin.try_dgi"),
        try_limit=ctx.integer(
            ctx.require(spec, "try_limit", "pin"), "pin.try_limit", 1, _MAX_PIN_TRIES
        ),
    )


def _tag_values(ctx: _Ctx, raw: Any, where: str) -> tuple[tuple[bytes, bytes], ...]:
    spec = ctx.mapping(raw if raw is not None else {}, where)
    return tuple(
        (ctx.tag(k, f"{where}.{k}"), ctx.value(v, f"{where}.{k}")) for k, v in spec.items()
    )


def _records(ctx: _Ctx, raw: Any) -> tuple[RecordTemplate, ...]:
    if not isinstance(raw, list) or not raw:
        raise ctx.error("records", "expected a non-empty list")
    records = []
    for i, item in enumerate(raw):
        where = f"records[{i}]"
        spec = ctx.mapping(item, where, frozenset({"sfi", "record", "oda", "tags"}))
        tags_raw = ctx.require(spec, "tags", where)
        if not isinstance(tags_raw, list) or not tags_raw:
            raise ctx.error(f"{where}.tags", "expected a non-empty list of tags")
        oda = spec.get("oda", False)
        if not isinstance(oda, bool):
            raise ctx.error(f"{where}.oda", f"expected true or false, got {oda!r}")
        records.append(
            RecordTemplate(
                sfi=ctx.integer(ctx.require(spec, "sfi", where), f"{where}.sfi", 1, 30),
                record=ctx.integer(ctx.require(spec, "record", where), f"{where}.record", 1, 255),
                tags=tuple(ctx.tag(t, f"{where}.tags[{j}]") for j, t in enumerate(tags_raw)),
                oda=oda,
            )
        )
    return tuple(records)


def _check_records(
    ctx: _Ctx,
    records: Sequence[RecordTemplate],
    constants: Mapping[bytes, bytes],
    scheme: Scheme,
    sda_tag_list: bytes | None,
) -> None:
    seen_records: set[tuple[int, int]] = set()
    seen_tags: dict[bytes, int] = {}
    computed = set(CARD_TAGS) | set(CERTIFICATE_TAGS)
    for i, rec in enumerate(records):
        where = f"records[{i}]"
        if (rec.sfi, rec.record) in seen_records:
            raise ctx.error(where, f"record {rec.dgi:04X} listed twice")
        seen_records.add((rec.sfi, rec.record))
        for tag in rec.tags:
            name = tag.hex().upper()
            if tag in seen_tags:
                raise ctx.error(where, f"tag {name} already in records[{seen_tags[tag]}]")
            seen_tags[tag] = i
            if tag not in computed and tag not in constants:
                raise ctx.error(where, f"tag {name} has no source (not computed, not a constant)")
            if scheme is Scheme.PBOC and tag in RSA_ONLY_TAGS:
                raise ctx.error(where, f"tag {name} does not exist for SM2 certificates")
            if rec.oda and tag in _ODA_FORBIDDEN:
                raise ctx.error(where, f"tag {name} cannot be in an ODA record (it signs them)")
    unused = sorted(t.hex().upper() for t in constants if t not in seen_tags)
    if unused:
        raise ctx.error("constants", f"not placed in any record: {', '.join(unused)}")
    required = [b"\x8f", b"\x90", b"\x9f\x46"]
    if scheme is Scheme.EMV:
        required += [b"\x9f\x32", b"\x9f\x47"]
    missing = [t.hex().upper() for t in required if t not in seen_tags]
    if missing:
        raise ctx.error("records", f"offline data authentication needs tags {', '.join(missing)}")
    if (b"\x9f\x4a" in seen_tags) != bool(sda_tag_list):
        raise ctx.error("sda_tag_list", "set it exactly when a record carries tag 9F4A")
    if not any(rec.oda for rec in records):
        raise ctx.error("records", "no record is marked oda: the certificate would sign nothing")


def _check_unique_dgis(ctx: _Ctx, profile: ProductProfile) -> None:
    named: list[tuple[str, int]] = [("select.dgi", profile.select_dgi)]
    for ks in profile.key_sets:
        named += [(f"key_sets {ks.name}.dgi", ks.dgi), (f"key_sets {ks.name}.kcv_dgi", ks.kcv_dgi)]
    named += [(f"icc_key.dgis[{i}]", d) for i, d in enumerate(profile.icc_key.dgis)]
    named += [(f"gpo[{i}].dgi", g.dgi) for i, g in enumerate(profile.gpo)]
    named += [(f"records {r.dgi:04X}", r.dgi) for r in profile.records]
    named += [(f"secret_dgis.{n}", d) for n, d in profile.secret_dgis]
    if profile.kmc is not None:
        named.append(("kmc.dgi", profile.kmc.dgi))
        if profile.kmc.kcv_dgi is not None:
            named.append(("kmc.kcv_dgi", profile.kmc.kcv_dgi))
    if profile.pin is not None:
        named += [("pin.dgi", profile.pin.dgi), ("pin.try_dgi", profile.pin.try_dgi)]
    seen: dict[int, str] = {}
    for where, dgi in named:
        if dgi in seen:
            raise ctx.error(where, f"DGI {dgi:04X} already used by {seen[dgi]}")
        seen[dgi] = where


def parse_product(data: Any, source: str = "<profile>") -> ProductProfile:
    """Validate a parsed YAML document and build the :class:`ProductProfile`."""
    ctx = _Ctx(source)
    top = ctx.mapping(data, "(top level)", _TOP_KEYS)
    product_id = ctx.text(ctx.require(top, "id", ""), "id")
    scheme = ctx.enum_value(Scheme, ctx.require(top, "scheme", ""), "scheme")
    derivation = ctx.enum_value(DerivationMethod, ctx.require(top, "derivation", ""), "derivation")
    if derivation not in _CARD_KEY_DERIVATIONS:
        raise ctx.error("derivation", f"{derivation.value} is not a card key derivation method")
    keys = ctx.mapping(
        ctx.require(top, "keys", ""),
        "keys",
        frozenset({"tk", "issuer", "imk_ac", "imk_smi", "imk_smc"}),
    )
    ca = ctx.mapping(ctx.require(top, "ca", ""), "ca", frozenset({"rid", "index"}))
    select = ctx.mapping(ctx.require(top, "select", ""), "select", frozenset({"dgi", "tags"}))
    constants = _tag_values(ctx, top.get("constants"), "constants")
    const_map = dict(constants)
    for tag in const_map:
        if tag in CARD_TAGS or tag in CERTIFICATE_TAGS:
            raise ctx.error(f"constants.{tag.hex().upper()}", "is computed per card, not constant")
    aip = ctx.hexbytes(ctx.require(top, "aip", ""), "aip", 2, 2)
    sda = top.get("sda_tag_list")
    sda_tag_list = ctx.hexbytes(sda, "sda_tag_list", 1, 3) if sda else None
    if sda_tag_list is not None and sda_tag_list != b"\x82":
        raise ctx.error("sda_tag_list", "may contain only tag 82 (Book 3 10.3)")
    records = _records(ctx, ctx.require(top, "records", ""))
    _check_records(ctx, records, const_map, scheme, sda_tag_list)
    afl = build_afl((r.sfi, r.record, r.oda) for r in records)
    if top.get("afl") is not None and ctx.hexbytes(top["afl"], "afl", 4, 252) != afl:
        raise ctx.error("afl", f"{top['afl']} disagrees with the records ({afl.hex().upper()})")
    gpo_raw = ctx.require(top, "gpo", "")
    if not isinstance(gpo_raw, list) or not gpo_raw:
        raise ctx.error("gpo", "expected a non-empty list")
    gpo = []
    for i, item in enumerate(gpo_raw):
        spec = ctx.mapping(item, f"gpo[{i}]", frozenset({"dgi", "aip"}))
        gpo.append(
            GpoResponse(
                dgi=ctx.dgi(ctx.require(spec, "dgi", f"gpo[{i}]"), f"gpo[{i}].dgi"),
                aip=ctx.hexbytes(spec["aip"], f"gpo[{i}].aip", 2, 2) if "aip" in spec else aip,
            )
        )
    secret_raw = ctx.mapping(top.get("secret_dgis") or {}, "secret_dgis")
    secret_dgis = tuple(
        (name, ctx.dgi(value, f"secret_dgis.{name}")) for name, value in sorted(secret_raw.items())
    )
    certificate = ctx.mapping(top.get("certificate") or {}, "certificate", frozenset({"expiry"}))
    if certificate.get("expiry", "card") != "card":
        raise ctx.error("certificate.expiry", "only 'card' (the card's expiry) is supported")
    version = ctx.integer(ctx.require(top, "version", ""), "version", 1, 1_000_000)
    profile = ProductProfile(
        id=product_id,
        version=version,
        scheme=scheme,
        description=str(top.get("description", "")),
        aid=ctx.hexbytes(ctx.require(top, "aid", ""), "aid", 5, 16),
        derivation=derivation,
        tk=ctx.label(ctx.require(keys, "tk", "keys"), "keys.tk"),
        issuer_key=ctx.label(ctx.require(keys, "issuer", "keys"), "keys.issuer"),
        ca=CaKeyId(
            rid=ctx.hexbytes(ctx.require(ca, "rid", "ca"), "ca.rid", 5, 5),
            index=ctx.hexbytes(ctx.require(ca, "index", "ca"), "ca.index", 1, 1),
        ),
        key_sets=_key_sets(ctx, top.get("key_sets"), keys, derivation),
        kmc=_kmc(ctx, top.get("kmc")),
        icc_key=_icc_key(ctx, ctx.require(top, "icc_key", ""), scheme),
        certificate=CertificateSpec(expiry="card"),
        pin=_pin(ctx, top.get("pin")),
        secret_dgis=secret_dgis,
        select_dgi=ctx.dgi(ctx.require(select, "dgi", "select"), "select.dgi"),
        select_tags=_tag_values(ctx, ctx.require(select, "tags", "select"), "select.tags"),
        aip=aip,
        afl=afl,
        sda_tag_list=sda_tag_list,
        gpo=tuple(gpo),
        records=records,
        constants=constants,
        source=source,
    )
    _check_unique_dgis(ctx, profile)
    return profile
