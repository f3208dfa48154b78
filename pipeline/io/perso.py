"""Card data at rest and the bureau personalization file (docs/OUTPUT.md).

**Card data** (``card_data`` in the Parquet parts, and the last field of each
``D`` record of the bureau file) is one card's DGI list, sealed by the key
store (:mod:`pipeline.io.sealed`, kind ``card``; the clear header binds the
batch id, input line and product).  Inside the seal the DGIs are, in
personalization order::

    DGI id (2 bytes) || flags (1 byte: 01 = value encrypted under the TK) ||
    length (2 bytes, big-endian) || value

Secret DGIs (card keys, ICC private key, PIN, CVV) are *also* under the TK
(EMV CPS 1.1 section 4.3) inside the seal, exactly as STORE DATA carries them.

**Bureau personalization file** ``bureau/<batch_id>.cps``: ASCII text, one
record per line (LF), fields separated by ``|``::

    H|CARDPREP-PERSO|1|<batch id>|<issuer>|<cards>|<created_at>|<seal key>|<seal KCV>|<TKs>
    D|<seq>|<input line>|<product>|<masked PAN>|<TK>|<DGI list>|<sealed card, base64>
    ...
    T|<cards>|<SHA-256 hex of every D line, LF included, in order>

``<TKs>`` is a comma list of ``label@vN:KCV``; ``<DGI list>`` is a comma list
of 4-hex DGI ids in STORE DATA order, an ``E`` suffix marking the encrypted
ones (``0101,...,8000E,9000``).  A file without its trailer, or whose count
or hash differs, is incomplete: :func:`read_bureau_file` refuses it.

Example:
    >>> from pipeline.records.dgi import Dgi
    >>> blob = encode_card_dgis([Dgi(0x9000, b"\\x01\\x02\\x03"), Dgi(0x8000, b"K" * 16, True)])
    >>> blob[:8].hex().upper()
    '9000000003010203'
    >>> [(d.id, d.encrypted) for d in decode_card_dgis(blob)]
    [(36864, False), (32768, True)]
    >>> dgi_list([Dgi(0x0101, b"p"), Dgi(0x8000, b"K" * 16, True)])
    '0101,8000E'
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from pipeline.audit.trail import canonical
from pipeline.errors import InvalidInputError, VerificationError
from pipeline.io.atomic import atomic_writer
from pipeline.io.sealed import frame_header, open_sealed, seal, seal_framed
from pipeline.keys.model import KeyRef
from pipeline.keys.store import KeyStore
from pipeline.records.dgi import Dgi

__all__ = [
    "BUREAU_FORMAT",
    "BUREAU_VERSION",
    "CARD_KIND",
    "BureauCard",
    "BureauFileWriter",
    "BureauHeader",
    "CardFields",
    "CardSealer",
    "bureau_record",
    "count_bureau_records",
    "decode_card_dgis",
    "dgi_fields",
    "dgi_list",
    "encode_card_dgis",
    "open_card",
    "parse_dgi_list",
    "read_bureau_file",
    "seal_card",
]

CARD_KIND = "card"
BUREAU_FORMAT = "CARDPREP-PERSO"
BUREAU_VERSION = "1"
FLAG_ENCRYPTED = 0x01
_SEP = "|"
#: ``id (2) || flags (1) || length (2)``, big-endian: one call per DGI instead of three
_DGI_HEAD = struct.Struct(">HBH").pack


def encode_card_dgis(dgis: Iterable[Dgi]) -> bytes:
    """The clear card payload: ``id || flags || len(2) || value`` per DGI."""
    parts: list[bytes] = []
    for d in dgis:
        value = d.value
        if len(value) > 0xFFFF:
            raise InvalidInputError(f"dgi {d.id:04X}", f"{len(value)} bytes exceeds 65535")
        parts.append(_DGI_HEAD(d.id, FLAG_ENCRYPTED if d.encrypted else 0, len(value)))
        parts.append(value)
    return b"".join(parts)


def decode_card_dgis(data: bytes) -> list[Dgi]:
    """Inverse of :func:`encode_card_dgis`; InvalidInputError on truncation or unknown flags."""
    out: list[Dgi] = []
    offset = 0
    while offset < len(data):
        if offset + 5 > len(data):
            raise InvalidInputError("card data", f"offset {offset}: truncated DGI header")
        dgi = int.from_bytes(data[offset : offset + 2], "big")
        flags = data[offset + 2]
        if flags & ~FLAG_ENCRYPTED:
            raise InvalidInputError("card data", f"DGI {dgi:04X}: unknown flags {flags:02X}")
        length = int.from_bytes(data[offset + 3 : offset + 5], "big")
        end = offset + 5 + length
        if end > len(data):
            raise InvalidInputError("card data", f"DGI {dgi:04X} runs past the end")
        out.append(Dgi(dgi, data[offset + 5 : end], bool(flags & FLAG_ENCRYPTED)))
        offset = end
    return out


def dgi_list(dgis: Iterable[Dgi]) -> str:
    """Comma list of DGI ids, ``E`` marking encrypted ones (the bureau file's DGI field)."""
    return ",".join(f"{d.id:04X}{'E' if d.encrypted else ''}" for d in dgis)


def parse_dgi_list(text: str) -> list[tuple[int, bool]]:
    """Inverse of :func:`dgi_list`: ``[(id, encrypted), ...]``.

    Example:
        >>> parse_dgi_list("0101,8000E")
        [(257, False), (32768, True)]
    """
    out: list[tuple[int, bool]] = []
    for item in text.split(",") if text else []:
        encrypted = item.endswith("E") and len(item) == 5
        ident = item[:4]
        if len(item) != (5 if encrypted else 4):
            raise InvalidInputError("dgi list", f"bad entry {item!r}")
        try:
            out.append((int(ident, 16), encrypted))
        except ValueError:
            raise InvalidInputError("dgi list", f"bad entry {item!r}") from None
    return out


def seal_card(
    store: KeyStore, key: KeyRef, *, batch_id: str, line_no: int, product: str, dgis: Sequence[Dgi]
) -> bytes:
    """Seal one card's DGIs (kind ``card``), bound to batch, input line and product."""
    header = {"batch_id": batch_id, "line_no": line_no, "product": product}
    return seal(store, key, CARD_KIND, header, encode_card_dgis(dgis))


class CardSealer:
    """:func:`seal_card` for every card of one batch, with each product's header cut once.

    The clear header of a sealed card is canonical JSON of batch id, key,
    kind, input line and product (:mod:`pipeline.io.sealed`); only the line
    differs from card to card.  A sealer keeps, per product, the header's
    bytes before and after the line number, so a card costs one join and the
    store's ``encrypt_data``: the bytes are :func:`seal_card`'s exactly
    (``tests/unit/io/test_perso.py``).  A batch id or product whose header
    cannot be cut at the line number (it would have to contain it) is sealed
    by :func:`seal_card` itself.

    Example:
        >>> sealer = CardSealer(store, data_key, "00ab")                      # doctest: +SKIP
        >>> sealer.seal(7, "demo-visa-rsa", dgis) == seal_card(               # doctest: +SKIP
        ...     store, data_key, batch_id="00ab", line_no=7, product="demo-visa-rsa", dgis=dgis)
        False
    """

    #: a line number no header holds otherwise; its digits mark where the line goes
    _MARK = 918273645546372819

    def __init__(self, store: KeyStore, key: KeyRef, batch_id: str) -> None:
        self.store, self.key, self.batch_id = store, key, batch_id
        self._cut: dict[str, tuple[bytes, bytes] | None] = {}

    def _header_cut(self, product: str) -> tuple[bytes, bytes] | None:
        header = {"batch_id": self.batch_id, "line_no": self._MARK, "product": product}
        text = canonical({**header, "kind": CARD_KIND, "key": str(self.key)})
        parts = text.split(str(self._MARK).encode())
        return (parts[0], parts[1]) if len(parts) == 2 else None

    def seal(self, line_no: int, product: str, dgis: Sequence[Dgi]) -> bytes:
        """The sealed card (kind ``card``) bound to this batch, ``line_no`` and ``product``."""
        try:
            cut = self._cut[product]
        except KeyError:
            cut = self._cut[product] = self._header_cut(product)
        if cut is None or type(line_no) is not int:
            return seal_card(
                self.store, self.key, batch_id=self.batch_id, line_no=line_no,
                product=product, dgis=dgis,
            )  # fmt: skip
        framed = frame_header(b"%b%d%b" % (cut[0], line_no, cut[1]))
        return seal_framed(self.store, self.key, CARD_KIND, framed, encode_card_dgis(dgis))


def open_card(
    store: KeyStore, blob: bytes, *, batch_id: str, line_no: int, where: str
) -> tuple[str, list[Dgi]]:
    """Open a sealed card; check its binding; return (product, DGIs)."""
    header, payload = open_sealed(store, blob, CARD_KIND, where)
    if header.get("batch_id") != batch_id or header.get("line_no") != line_no:
        raise VerificationError(
            f"{where} [card binding]",
            f"sealed for batch {header.get('batch_id')} line {header.get('line_no')}, "
            f"found at batch {batch_id} line {line_no}",
        )
    try:
        return str(header.get("product")), decode_card_dgis(payload)
    except InvalidInputError as exc:
        raise VerificationError(f"{where} [card data]", str(exc)) from None


# --- the bureau file -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BureauHeader:
    """The ``H`` record (no cardholder data)."""

    batch_id: str
    issuer: str
    cards: int
    created_at: str
    seal_key: str
    seal_kcv: str
    tks: tuple[tuple[str, str], ...]  # (label@vN, KCV)

    def line(self) -> str:
        """The header line without its LF."""
        tks = ",".join(f"{ref}:{kcv}" for ref, kcv in self.tks)
        return _SEP.join(
            ["H", BUREAU_FORMAT, BUREAU_VERSION, self.batch_id, self.issuer, str(self.cards),
             self.created_at, self.seal_key, self.seal_kcv, tks]
        )  # fmt: skip

    @classmethod
    def parse(cls, line: str, where: str) -> BureauHeader:
        """Parse an ``H`` line (VerificationError naming ``where``)."""
        parts = line.split(_SEP)
        if len(parts) != 10 or parts[0] != "H" or parts[1] != BUREAU_FORMAT:
            raise VerificationError(f"{where} [header]", "not a CARDPREP-PERSO header")
        if parts[2] != BUREAU_VERSION:
            raise VerificationError(f"{where} [header]", f"version {parts[2]!r} unsupported")
        try:
            tks = tuple(
                (item.rsplit(":", 1)[0], item.rsplit(":", 1)[1])
                for item in parts[9].split(",")
                if item
            )
            return cls(parts[3], parts[4], int(parts[5]), parts[6], parts[7], parts[8], tks)
        except (ValueError, IndexError):
            raise VerificationError(f"{where} [header]", "malformed header fields") from None


@dataclass(frozen=True, slots=True)
class BureauCard:
    """One ``D`` record: the card's sealed DGIs and their clear ids/flags."""

    seq: int
    line_no: int
    product: str
    masked_pan: str
    tk: str
    dgis: tuple[tuple[int, bool], ...]
    sealed: bytes

    def line(self) -> str:
        """The record line without its LF."""
        ids = ",".join(f"{i:04X}{'E' if e else ''}" for i, e in self.dgis)
        data = base64.b64encode(self.sealed).decode("ascii")
        return _SEP.join(
            ["D", str(self.seq), str(self.line_no), self.product, self.masked_pan, self.tk, ids,
             data]
        )  # fmt: skip

    def record(self) -> bytes:
        """The record as the file holds it: ``(self.line() + "\\n").encode("ascii")``, cheaper.

        What :class:`BureauFileWriter` writes (issue 7: ~4.3 -> ~1.6 us a card).
        The DGI list field of a DGI layout is formatted once
        (:func:`_dgi_field`), and the card data is base64-encoded straight to
        bytes, LF included (``binascii.b2a_base64``), so the long field is
        neither decoded to text nor encoded back.
        """
        return bureau_record(
            self.seq, self.line_no, self.product, self.masked_pan, self.tk, self.dgis, self.sealed
        )


#: one ``D`` record's fields after ``seq``: input line, product, masked PAN, TK,
#: DGI (id, encrypted) pairs or their field text already formatted (:func:`dgi_fields`),
#: sealed card (what :meth:`BureauFileWriter.write_many` takes)
CardFields = tuple[int, str, str, str, tuple[tuple[int, bool], ...] | str, bytes]


def bureau_record(  # noqa: PLR0917 (the record's fields, in file order)
    seq: int,
    line_no: int,
    product: str,
    masked_pan: str,
    tk: str,
    dgis: tuple[tuple[int, bool], ...] | str,
    sealed: bytes,
) -> bytes:
    """One ``D`` record as the file holds it, LF included (:meth:`BureauCard.record`).

    ``dgis``: the (id, encrypted) pairs, or their field text from :func:`dgi_fields`.

    Example:
        >>> bureau_record(1, 2, "p", "476173******0119", "tk@v1", ((0x8000, True),), b"x")
        b'D|1|2|p|476173******0119|tk@v1|8000E|eA==\\n'
    """
    field = dgis if isinstance(dgis, str) else _dgi_field(dgis)
    head = _SEP.join(("D", str(seq), str(line_no), product, masked_pan, tk, field, ""))
    return head.encode("ascii") + binascii.b2a_base64(sealed)


#: DGI list field per DGI layout (the cards of a product share one): formatted once.
_DGI_FIELDS: dict[tuple[tuple[int, bool], ...], str] = {}
#: Bound on :data:`_DGI_FIELDS` (a layout is per product, so few are ever seen).
_DGI_FIELDS_MAX = 256


def _dgi_field(dgis: tuple[tuple[int, bool], ...]) -> str:
    """The ``D`` record's DGI list field of ``dgis``, as :meth:`BureauCard.line` writes it.

    Example:
        >>> _dgi_field(((0x0101, False), (0x8000, True)))
        '0101,8000E'
    """
    try:
        return _DGI_FIELDS[dgis]
    except KeyError:
        cache = len(_DGI_FIELDS) < _DGI_FIELDS_MAX
    except TypeError:  # not hashable (a list): formatted each time
        cache = False
    text = ",".join(f"{i:04X}{'E' if e else ''}" for i, e in dgis)
    if cache:
        _DGI_FIELDS[dgis] = text
    return text


def dgi_fields(ids: Any, flags: Any) -> list[str]:
    """Each row's ``D`` record DGI list field, from a part's ``dgi_ids`` and ``dgi_encrypted``.

    ``ids`` (``list<uint16>``) and ``flags`` (``list<bool>``) are Arrow list
    arrays of one part batch (docs/OUTPUT.md "Parts").  Row ``i`` gets
    ``_dgi_field(tuple(zip(ids[i], flags[i])))`` without a Python list per
    row (issue 7: publish): each row is keyed by its raw value bytes, and the
    cards of a product share one DGI layout, so a layout is formatted once.
    Rows whose two lists differ in length make the part unusable
    (:class:`~pipeline.errors.VerificationError`).

    Example:
        >>> import pyarrow as pa
        >>> dgi_fields(pa.array([[0x0101, 0x8000], [0x0101]], pa.list_(pa.uint16())),
        ...            pa.array([[False, True], [False]], pa.list_(pa.bool_())))
        ['0101,8000E', '0101']
    """
    import pyarrow as pa  # noqa: PLC0415 (only publish formats from Arrow)

    # list offsets and buffers only: the length, cast and flatten helpers import
    # pyarrow.compute, which costs a process ~40 ms, more than this saves
    offsets, flag_offsets = ids.offsets.to_pylist(), flags.offsets.to_pylist()
    first, last = offsets[0], offsets[-1]
    if (
        ids.null_count or flags.null_count or len(flag_offsets) != len(offsets)
        or any(a - first != b - flag_offsets[0] for a, b in zip(offsets, flag_offsets, strict=True))
    ):  # fmt: skip
        raise VerificationError("dgi_encrypted", "a row's DGI flags do not match its DGI ids")
    values = ids.values.slice(first, last - first)
    marks = flags.values.slice(flag_offsets[0], last - first)
    if values.type != pa.uint16() or values.null_count or marks.null_count:
        raise VerificationError("dgi_ids", f"expected DGI ids as uint16, got {values.type}")
    # the uint16 values in native byte order, as Arrow lays them out
    raw_ids = values.buffers()[1].slice(2 * values.offset, 2 * len(values)).to_pybytes()
    flat_marks = marks.to_pylist()
    known: dict[tuple[bytes, tuple[bool, ...]], str] = {}
    out: list[str] = []
    for start, end in pairwise(offsets):
        at, to = start - first, end - first
        key = (raw_ids[2 * at : 2 * to], tuple(flat_marks[at:to]))
        text = known.get(key)
        if text is None:
            pairs = zip(struct.unpack(f"={to - at}H", key[0]), key[1], strict=True)
            text = known[key] = _dgi_field(tuple(pairs))
        out.append(text)
    return out


class BureauFileWriter:
    """Streams the bureau file to a temporary name; the rename happens in :meth:`close`.

    Use as a context manager; an exception discards the partial file.  Once
    closed, :attr:`sha256` is the SHA-256 of the whole file as written (the
    manifest's entry for it), so nobody reads it back to hash it.  Both
    digests (the trailer's over the records, the file's) are computed on a
    background thread, in write order, while the caller formats the next
    records (``hashlib`` releases the GIL on large blocks; issue 7).
    """

    def __init__(self, path: Path, header: BureauHeader) -> None:
        self.path = path
        self.header = header
        self._ctx = atomic_writer(path)
        self._fh: IO[bytes] | None = None
        self._digest = hashlib.sha256()  # the records: the trailer's hash
        self._file_digest = hashlib.sha256()  # every byte of the file
        self._hashing: ThreadPoolExecutor | None = None
        self._hashed: list[Future[None]] = []
        self.count = 0
        #: hex SHA-256 of the whole file, set when it is closed without error
        self.sha256: str | None = None

    def __enter__(self) -> BureauFileWriter:
        self._fh = self._ctx.__enter__()
        self._hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bureau-sha256")
        head = self.header.line().encode("ascii") + b"\n"
        self._fh.write(head)
        self._file_digest.update(head)
        return self

    def write(self, card: BureauCard) -> None:
        """Append one ``D`` record (``seq`` must be the next number)."""
        if card.seq != self.count + 1:
            raise InvalidInputError("seq", f"expected {self.count + 1}, got {card.seq}")
        fields = (card.line_no, card.product, card.masked_pan, card.tk, card.dgis, card.sealed)
        self.write_many((fields,))

    def write_many(self, cards: Iterable[CardFields]) -> None:
        """Append one ``D`` record per card, numbered on from :attr:`count`, in one write.

        What ``publish`` calls per part batch (issue 7): :meth:`write`'s bytes
        for the same cards, without a :class:`BureauCard` per card or a write
        and a hash update per record.
        """
        assert self._fh is not None and self._hashing is not None
        seq = self.count
        records = []
        for line_no, product, masked_pan, tk, dgis, sealed in cards:
            seq += 1
            records.append(bureau_record(seq, line_no, product, masked_pan, tk, dgis, sealed))
        data = b"".join(records)
        self._hashed.append(self._hashing.submit(self._hash_records, data))
        self._fh.write(data)
        self.count = seq

    def _hash_records(self, data: bytes) -> None:
        self._digest.update(data)
        self._file_digest.update(data)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._fh is not None and self._hashing is not None
        self._hashing.shutdown(wait=True)  # every block hashed, in order
        if exc is None:
            try:
                for block in self._hashed:
                    block.result()  # a hashing failure is the file's
            except BaseException as failed:
                self._ctx.__exit__(type(failed), failed, failed.__traceback__)  # discards it
                raise
        if exc is None and self.count != self.header.cards:
            err = VerificationError(
                f"{self.path} [count]",
                f"header says {self.header.cards} cards, {self.count} written",
            )
            self._ctx.__exit__(VerificationError, err, None)  # discards the temporary file
            raise err
        if exc is None:
            trailer = f"T{_SEP}{self.count}{_SEP}{self._digest.hexdigest()}\n".encode("ascii")
            self._fh.write(trailer)
            self._file_digest.update(trailer)
        self._ctx.__exit__(exc_type, exc, tb)
        if exc is None:
            self.sha256 = self._file_digest.hexdigest()


#: The longest line a bureau file may hold (a ``D`` record is a few KB): a damaged file
#: without line feeds is refused by its readers, not read into memory whole.
MAX_LINE = 1 << 20


def _lines(fh: IO[bytes], where: str) -> Iterator[bytes]:
    """The lines of ``fh`` (LF kept), each at most :data:`MAX_LINE` bytes or an error."""
    readline = fh.readline
    while raw := readline(MAX_LINE + 1):
        if len(raw) > MAX_LINE:
            raise VerificationError(f"{where} [line]", f"a line is longer than {MAX_LINE} bytes")
        yield raw


def _open_bureau_file(path: Path) -> tuple[BureauHeader, IO[bytes]]:
    """Open a bureau file and parse its ``H`` line; the handle is left after it."""
    where = str(path)
    fh = path.open("rb")
    first = fh.readline(MAX_LINE + 1)
    try:
        header = BureauHeader.parse(first.rstrip(b"\n").decode("ascii"), where)
    except (UnicodeDecodeError, VerificationError):
        fh.close()
        raise VerificationError(f"{where} [header]", "not a CARDPREP-PERSO file") from None
    return header, fh


def read_bureau_file(path: Path) -> tuple[BureauHeader, Iterator[BureauCard]]:
    """Open a bureau file: (header, iterator of cards).

    The iterator checks sequence numbers and, at the end, the trailer's count
    and hash; any failure raises :class:`VerificationError` naming the file
    and the check.  Every field of every record is decoded (DGI list, base64
    card data): this is the full structural check ``cardprep verify`` runs.
    """
    where = str(path)
    header, fh = _open_bureau_file(path)

    def cards() -> Iterator[BureauCard]:
        digest = hashlib.sha256()
        seq = 0
        with fh:
            for raw in _lines(fh, where):
                if not raw.endswith(b"\n"):
                    raise VerificationError(f"{where} [truncated]", "last line has no LF")
                text = raw[:-1].decode("ascii", errors="replace")
                if text.startswith("T" + _SEP):
                    _check_trailer(text, seq, digest.hexdigest(), header, where)
                    if fh.read(1):
                        raise VerificationError(f"{where} [trailer]", "data after the trailer")
                    return
                digest.update(raw)
                seq += 1
                yield _parse_card(text, seq, where)
        raise VerificationError(f"{where} [trailer]", "missing: the file is incomplete")

    return header, cards()


def count_bureau_records(path: Path) -> tuple[BureauHeader, int]:
    """The header of a bureau file and its number of ``D`` records, checked as counting needs.

    For reconcile (DESIGN.md step 6), which has just matched the file's size
    and SHA-256 against the MACed manifest and needs the record count: it
    checks what the count rests on, with the errors of
    :func:`read_bureau_file` -- the header, every line ending in LF
    (``[truncated]``), every record a ``D`` record of 8 fields numbered
    1, 2, ... (``[record N]``), the trailer present and last (``[trailer]``),
    its count equal to the records and the header (``[count]``) and its
    SHA-256 over the records (``[hash]``).  It does not decode the other
    fields of a record (input line, DGI list, base64 card data): a file the
    manifest vouches for was written by :class:`BureauFileWriter`, and that
    full structural check, with the part rows and the sealed cards, is
    ``cardprep verify``'s (:mod:`pipeline.steps.verify`, through
    :func:`read_bureau_file`).  Decoding them cost reconcile ~10 us per card
    (issue 7), to count.

    A record whose sequence number is not written as :class:`BureauCard`
    writes it (e.g. ``007``) is handed to the full record parser, so such a
    file gets the very answer :func:`read_bureau_file` gives.
    """
    where = str(path)
    header, fh = _open_bureau_file(path)
    digest = hashlib.sha256()
    update = digest.update
    seq = 0
    with fh:
        for raw in _lines(fh, where):
            if not raw.endswith(b"\n"):
                raise VerificationError(f"{where} [truncated]", "last line has no LF")
            if raw.startswith(b"T|"):
                text = raw[:-1].decode("ascii", errors="replace")
                _check_trailer(text, seq, digest.hexdigest(), header, where)
                if fh.read(1):
                    raise VerificationError(f"{where} [trailer]", "data after the trailer")
                return header, seq
            update(raw)
            seq += 1
            # "D|<seq>|" as the writer writes it, and 8 fields (7 separators)
            if not raw.startswith(b"D|%d|" % seq) or raw.count(b"|") != 7:
                _parse_card(raw[:-1].decode("ascii", errors="replace"), seq, where)
    raise VerificationError(f"{where} [trailer]", "missing: the file is incomplete")


def _check_trailer(text: str, seq: int, digest: str, header: BureauHeader, where: str) -> None:
    parts = text.split(_SEP)
    if len(parts) != 3:
        raise VerificationError(f"{where} [trailer]", "malformed trailer")
    if parts[1] != str(seq) or seq != header.cards:
        raise VerificationError(
            f"{where} [count]", f"header {header.cards}, trailer {parts[1]}, records {seq}"
        )
    if parts[2] != digest:
        raise VerificationError(f"{where} [hash]", "trailer hash differs from the records")


def _parse_card(text: str, seq: int, where: str) -> BureauCard:
    parts = text.split(_SEP)
    if len(parts) != 8 or parts[0] != "D":
        raise VerificationError(f"{where} [record {seq}]", "not a D record of 8 fields")
    try:
        if int(parts[1]) != seq:
            raise VerificationError(f"{where} [record {seq}]", f"sequence number {parts[1]}")
        return BureauCard(
            seq=seq,
            line_no=int(parts[2]),
            product=parts[3],
            masked_pan=parts[4],
            tk=parts[5],
            dgis=tuple(parse_dgi_list(parts[6])),
            sealed=base64.b64decode(parts[7], validate=True),
        )
    except (ValueError, InvalidInputError, binascii.Error) as exc:
        raise VerificationError(f"{where} [record {seq}]", f"malformed ({exc})") from None
