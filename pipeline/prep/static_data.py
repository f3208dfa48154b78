"""The AFL and the static data to be authenticated (EMV 4.x Book 3 10.2-10.3, Book 2 5.4 / 6.3).

Application File Locator (Book 3 10.2): 4 bytes per entry, ``SFI << 3``,
first record, last record, number of records (from the first) that take part
in offline data authentication.  An entry with SFI 0 or 31, first record 0,
last < first, or more ODA records than records is invalid.

Static data to be authenticated (Book 3 10.3): the records the AFL marks for
ODA, in AFL order, then the values of the tags in the SDA Tag List
(``9F4A``).

* SFI 1..10: the record must be a tag-``70`` template; only its *value* is
  included (the ``70`` tag and its length are stripped).  Any other record
  makes ODA fail.
* SFI 11..30: the whole record, tag and length included.
* The SDA Tag List may contain only the tag of the AIP (``82``); its value
  (2 bytes) is appended.

This module only walks the AFL (which records, in which order); the 10.3
rule itself is :func:`pipeline.crypto.emv_certs.static_data_to_authenticate`,
the one implementation, whose errors this module re-raises as
:class:`~pipeline.errors.PreparationError` (same field and detail, e.g.
``record 0201: data after the tag-70 template``).

The ICC public key certificate (RSA, Book 2 6.3 / Table 14) and the PBOC SM2
format-14 certificate sign this data, so it is computed after the records
and the AIP are final and must not include the certificate's own record.

Example:
    >>> afl = build_afl([(1, 1, False), (2, 1, True), (2, 2, True), (3, 1, False)])
    >>> afl.hex().upper()
    '080101001001020218010100'
    >>> records = {(2, 1): bytes.fromhex("70035A0112"), (2, 2): bytes.fromhex("70035F3401")}
    >>> records |= {(1, 1): b"", (3, 1): b""}
    >>> static_data_to_authenticate(afl, records, bytes.fromhex("82"), bytes.fromhex("3C00")).hex()
    '5a01125f34013c00'
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from pipeline.crypto import emv_certs
from pipeline.crypto.emv_certs import AIP_TAG, RECORD_TEMPLATE_TAG, OdaRecord
from pipeline.errors import InvalidInputError, PreparationError

__all__ = [
    "AIP_TAG",
    "RECORD_TEMPLATE_TAG",
    "AflEntry",
    "OdaPlan",
    "build_afl",
    "oda_plan",
    "oda_record_data",
    "oda_records",
    "parse_afl",
    "static_data_to_authenticate",
]

MAX_SFI = emv_certs.MAX_SFI
AFL_ENTRY_LENGTH = 4


@dataclass(frozen=True, slots=True)
class AflEntry:
    """One AFL entry (Book 3 10.2).

    Example:
        >>> AflEntry(2, 1, 2, 1).encode().hex()
        '10010201'
    """

    sfi: int
    first_record: int
    last_record: int
    oda_records: int

    def __post_init__(self) -> None:
        if not 1 <= self.sfi <= MAX_SFI:
            raise PreparationError("afl", f"SFI {self.sfi} outside 1..{MAX_SFI}")
        if not 1 <= self.first_record <= self.last_record <= 0xFF:
            raise PreparationError(
                "afl", f"SFI {self.sfi}: records {self.first_record}..{self.last_record} invalid"
            )
        if not 0 <= self.oda_records <= self.last_record - self.first_record + 1:
            raise PreparationError(
                "afl", f"SFI {self.sfi}: {self.oda_records} ODA records exceed the entry's records"
            )

    def encode(self) -> bytes:
        """The 4 AFL bytes of this entry."""
        return bytes([self.sfi << 3, self.first_record, self.last_record, self.oda_records])

    def records(self) -> range:
        """The record numbers this entry covers."""
        return range(self.first_record, self.last_record + 1)

    def is_oda(self, record: int) -> bool:
        """True when ``record`` is among the entry's ODA records (the first ones)."""
        return self.first_record <= record < self.first_record + self.oda_records


def parse_afl(afl: bytes) -> tuple[AflEntry, ...]:
    """Parse an AFL value (Book 3 10.2); invalid syntax raises PreparationError.

    Example:
        >>> parse_afl(bytes.fromhex("10010201"))
        (AflEntry(sfi=2, first_record=1, last_record=2, oda_records=1),)
    """
    if not afl or len(afl) % AFL_ENTRY_LENGTH:
        raise PreparationError("afl", f"length {len(afl)} is not a positive multiple of 4")
    entries = []
    for offset in range(0, len(afl), AFL_ENTRY_LENGTH):
        first_byte, first, last, oda = afl[offset : offset + AFL_ENTRY_LENGTH]
        if first_byte & 0x07:
            raise PreparationError("afl", f"entry {offset // 4}: low bits of byte 1 not zero")
        entries.append(AflEntry(first_byte >> 3, first, last, oda))
    return tuple(entries)


@functools.lru_cache(maxsize=64)
def _parse_afl_once(afl: bytes) -> tuple[AflEntry, ...]:
    """:func:`parse_afl` remembered per AFL value (one per product; errors are not cached)."""
    return parse_afl(afl)


def build_afl(records: Iterable[tuple[int, int, bool]]) -> bytes:
    """The AFL for ``(sfi, record, oda)`` triples, in the given order (Book 3 10.2).

    Consecutive records of one SFI share an entry as long as the ODA records
    come first in it (byte 4 counts from the first record); an ODA record after
    a non-ODA one, or a gap in numbering, starts a new entry.

    Example:
        >>> build_afl([(1, 1, True), (1, 2, False), (1, 3, True)]).hex()
        '0801020108030301'
    """
    entries: list[list[int]] = []  # [sfi, first, last, oda]
    for sfi, record, oda in records:
        last = entries[-1] if entries else None
        extends = last is not None and last[0] == sfi and last[2] + 1 == record
        in_oda_prefix = last is not None and last[3] == last[2] - last[1] + 1
        if last is not None and extends and (not oda or in_oda_prefix):
            last[2] = record
            last[3] += 1 if oda else 0
        else:
            entries.append([sfi, record, record, 1 if oda else 0])
    if not entries:
        raise PreparationError("afl", "no records")
    return b"".join(AflEntry(*entry).encode() for entry in entries)


def oda_record_data(sfi: int, record_number: int, record: bytes) -> bytes:
    """What one ODA record contributes to the static data (Book 3 10.3).

    SFI 1..10: the value of the tag-70 template (which must be the whole
    record); SFI 11..30: the record as read.  The rule is
    :func:`pipeline.crypto.emv_certs.authenticated_record_data`; its errors
    come back as PreparationError naming the record.

    Example:
        >>> oda_record_data(2, 1, bytes.fromhex("70035A0112")).hex()
        '5a0112'
        >>> oda_record_data(11, 1, bytes.fromhex("70035A0112")).hex()
        '70035a0112'
        >>> oda_record_data(2, 1, bytes.fromhex("70035A01125A00"))
        Traceback (most recent call last):
        ...
        pipeline.errors.PreparationError: record 0201: data after the tag-70 template
    """
    try:
        return emv_certs.authenticated_record_data(OdaRecord(sfi, record_number, record))
    except InvalidInputError as exc:
        raise PreparationError(exc.field, exc.detail) from None


def oda_records(afl: bytes, records: Mapping[tuple[int, int], bytes]) -> Iterator[OdaRecord]:
    """The records the AFL marks for ODA, in AFL order (Book 3 10.2, 10.3).

    Each AFL entry contributes its first ``oda_records`` records; ``records``
    maps ``(sfi, record)`` to the record bytes.  A named record missing from
    ``records`` raises PreparationError (field ``afl``) when the walk reaches
    it, so with several faults the first one in AFL order is reported.

    Example:
        >>> afl = bytes.fromhex("0801010010010202")
        >>> empty = bytes.fromhex("7000")
        >>> found = oda_records(afl, {(1, 1): empty, (2, 1): empty, (2, 2): empty})
        >>> [r.label for r in found]
        ['record 0201', 'record 0202']
    """
    for entry in _parse_afl_once(bytes(afl)):
        for number in range(entry.first_record, entry.first_record + entry.oda_records):
            record = records.get((entry.sfi, number))
            if record is None:
                raise PreparationError(
                    "afl", f"ODA record {entry.sfi:02X}{number:02X} is not among the card's records"
                )
            yield OdaRecord(entry.sfi, number, record)


@dataclass(frozen=True, slots=True)
class OdaPlan:
    """Which of a product's own records make its static data, worked out once (Book 3 10.3).

    ``records`` are the ODA records' ``(sfi, record)`` keys in AFL order, each
    with whether only the tag-70 template's value counts (SFI 1..10) or the
    whole record (SFI 11..30); ``suffix`` is the AIP when the SDA Tag List
    names it.  :meth:`static_data` applies it to records the preparer built
    itself, each exactly one tag-70 template of at most 254 bytes (a one-byte
    or ``81 xx`` length), so nothing is parsed per card.  A product whose AFL,
    records or SDA Tag List the rule would refuse gets no plan
    (:func:`oda_plan` raises) and its cards take
    :func:`static_data_to_authenticate`, which reports the fault per card.

    Example:
        >>> plan = OdaPlan((((2, 1), True), ((11, 1), False)), b"\\x3c\\x00")
        >>> records = {(2, 1): bytes.fromhex("70035A0112"), (11, 1): bytes.fromhex("7001AA")}
        >>> plan.static_data(records).hex()
        '5a01127001aa3c00'
    """

    records: tuple[tuple[tuple[int, int], bool], ...]
    suffix: bytes

    def static_data(self, built: Mapping[tuple[int, int], bytes]) -> bytes:
        """The static data to be authenticated from the product's built records."""
        parts = []
        for key, value_only in self.records:
            record = built[key]
            if value_only:  # 70 || L || value, L one byte (< 80) or 81 xx
                record = record[2:] if record[1] < 0x80 else record[3:]
            parts.append(record)
        parts.append(self.suffix)
        return b"".join(parts)


def oda_plan(
    afl: bytes, keys: Iterable[tuple[int, int]], sda_tag_list: bytes | None, aip: bytes
) -> OdaPlan:
    """The :class:`OdaPlan` of a product whose records are ``keys`` ((sfi, record) pairs).

    Raises PreparationError where :func:`static_data_to_authenticate` would
    (a malformed AFL, an ODA record that is not among ``keys``, an SDA Tag
    List other than ``82``, an AIP that is not 2 bytes).

    Example:
        >>> oda_plan(bytes.fromhex("10010201"), [(2, 1), (2, 2)], b"\\x82", b"\\x3c\\x00")
        OdaPlan(records=(((2, 1), True),), suffix=b'<\\x00')
    """
    known = set(keys)
    records = []
    for entry in _parse_afl_once(bytes(afl)):
        for number in range(entry.first_record, entry.first_record + entry.oda_records):
            if (entry.sfi, number) not in known:
                raise PreparationError(
                    "afl", f"ODA record {entry.sfi:02X}{number:02X} is not among the card's records"
                )
            records.append(((entry.sfi, number), entry.sfi <= emv_certs.LAST_TEMPLATE_SFI))
    try:
        suffix = emv_certs.static_data_to_authenticate((), sda_tag_list, aip)
    except InvalidInputError as exc:
        raise PreparationError(exc.field, exc.detail) from None
    return OdaPlan(tuple(records), suffix)


def static_data_to_authenticate(
    afl: bytes,
    records: Mapping[tuple[int, int], bytes],
    sda_tag_list: bytes | None,
    aip: bytes,
) -> bytes:
    """Static data to be authenticated (Book 3 10.3): ODA records, then the AIP if listed.

    ``records`` maps ``(sfi, record)`` to the record bytes (tag-70 template).
    ``sda_tag_list`` is the value of ``9F4A`` (``None`` or empty when absent);
    it may contain only ``82``.  :func:`oda_records` picks the records;
    :func:`pipeline.crypto.emv_certs.static_data_to_authenticate` applies the
    10.3 rule; its errors come back as PreparationError with the same field.

    Example:
        >>> records = {(2, 1): bytes.fromhex("70035A0112"), (11, 1): bytes.fromhex("7001AA")}
        >>> afl, sda, aip = bytes.fromhex("1001010158010101"), b"\\x82", b"\\x3c\\x00"
        >>> static_data_to_authenticate(afl, records, sda, aip).hex()
        '5a01127001aa3c00'
        >>> records[(2, 1)] = bytes.fromhex("70035A01125A00")
        >>> static_data_to_authenticate(afl, records, sda, aip)
        Traceback (most recent call last):
        ...
        pipeline.errors.PreparationError: record 0201: data after the tag-70 template
        >>> static_data_to_authenticate(afl, {}, sda, aip)
        Traceback (most recent call last):
        ...
        pipeline.errors.PreparationError: afl: ODA record 0201 is not among the card's records
    """
    try:
        return emv_certs.static_data_to_authenticate(oda_records(afl, records), sda_tag_list, aip)
    except InvalidInputError as exc:
        raise PreparationError(exc.field, exc.detail) from None
