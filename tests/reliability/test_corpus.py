"""The bad-input corpus (tests/corpus/): every case gets its documented outcome, none crashes.

Issue 8 "Bad input corpus".  For every case of tests/corpus/manifest.json:

* parse + validate (:func:`verify_file`, :func:`iter_records`, :class:`Validator`)
  give exactly the manifest's batch-level check id, or exactly its reject
  code per input line; nothing but :class:`InputFileCheckError` escapes;
* records in = valid + rejected, the count agrees with the trailer, and no
  reject row carries a full PAN;

and for the representative subset marked ``full_path`` the valid records go
through card preparation with the demo key store: records in = prepared +
rejected (validation and prepare stage), prepare-stage rejects are exactly
the manifest's ``prepare_rejects``, and no ICC public key repeats.

No public test vectors exist for issuer-file handling; the expectations come
from the specifications named in tests/corpus/make_corpus.py, written down
independently of the parser.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pipeline.keys.soft import SoftKeyStore
from pipeline.prep import CardPreparer, PreparedCard, PreparerKeys
from pipeline.profiles import load_product
from pipeline.records.reasons import RejectReason
from pipeline.records.validate import Reject
from tests.corpus import make_corpus
from tests.reliability.corpuskit import CONFIG, CORPUS, cases, full_pans, issuer_for, run_validate

CASES = cases()

#: Cases whose correct outcome the code does not give yet (bug, owner); strict xfail.
KNOWN_BUGS: dict[str, str] = {
    "json-zero-byte-trailer": (
        "JSON Lines: an empty last line reports check 'trailer' ('not a JSON object') where "
        "fixed and CSV report 'trailer_missing' (blank line after the trailer?); records "
        "engineer, pipeline/records/parse.py _Codec._control_values"
    ),
    "json-blank-line-after-trailer": (
        "same as json-zero-byte-trailer; records engineer, pipeline/records/parse.py"
    ),
}
#: Full-path cases whose prepare-stage outcome is wrong today.
KNOWN_PREPARE_BUGS: dict[str, str] = {
    f"{fmt}-{slug}": (
        "R071 never fires for whole-block ciphertext: KeyStore.translate re-encrypts KEK->TK "
        "without checking ISO 9797-1 M2 padding (or the ISO 9564 PIN block format), so a "
        "secret under the wrong KEK, corrupted or badly padded is prepared and shipped; key "
        "store core engineer (a padding-checking translate) + prep engineer (card.py _translate)"
    )
    for fmt in ("fixed", "csv", "json")
    for slug in ("cvv-wrong-kek", "icvv-wrong-kek", "cvv-bit-flip", "cvv-bad-padding",
                 "pin-block-wrong-kek")
}  # fmt: skip

REQUIRED_CATEGORIES = {
    # issue 8: truncated files, wrong header/trailer counts and hash totals, empty file,
    # 0-byte trailer, BOMs, mixed line endings
    "batch/empty_file", "batch/trailer_missing", "batch/trailer", "batch/header", "batch/count",
    "batch/hash_total", "batch/bom", "batch/line_endings",
    # bad Luhn, bad dates, wrong service codes, overlong and empty fields, non-ASCII and
    # control characters, duplicated cards, unknown BIN or product
    "record/R001", "record/R002", "record/R003", "record/R010", "record/R011", "record/R012",
    "record/R020", "record/R030", "record/R031", "record/R040", "record/R041", "record/R050",
    "record/R060", "record/R061", "record/R062", "record/R063", "record/R064", "record/R065",
    "record/R066", "record/R070",
    # ciphertext under the wrong KEK, corrupted ciphertext, bad padding
    "record/R071",
}  # fmt: skip


def _param(case: dict[str, Any], bugs: dict[str, str]) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=bugs[case["id"]])] if case["id"] in bugs else []
    return pytest.param(case, id=case["id"], marks=marks)


def test_corpus_has_200_cases_covering_every_category() -> None:
    assert len(CASES) >= 200
    assert len({c["id"] for c in CASES}) == len(CASES)
    categories = Counter(c["category"] for c in CASES)
    missing = REQUIRED_CATEGORIES - set(categories)
    assert not missing, f"no corpus case for {sorted(missing)}"
    slugs = {c["id"].split("-", 1)[1] for c in CASES}
    for needed in ("truncated-in-detail", "truncated-in-trailer", "zero-byte-trailer",
                   "empty-file", "mixed-lf-then-crlf", "bom-utf8", "cvv-wrong-kek",
                   "cvv-bit-flip", "cvv-bad-padding", "unknown-product", "duplicate-pan-psn"):
        assert needed in slugs, needed
    for layout in ("demo-fixed", "demo-csv", "demo-json"):
        assert sum(c["layout"] == layout for c in CASES) >= 60


def test_committed_corpus_is_what_the_generator_writes(tmp_path: Path) -> None:
    """Regenerate into tmp: the committed files and manifest must match byte for byte."""
    fresh = make_corpus.write(tmp_path)
    committed = json.loads((CORPUS / "manifest.json").read_text())
    hint = "stale corpus: run .venv/bin/python tests/corpus/make_corpus.py and commit"
    assert fresh == committed, hint
    for case in fresh["cases"]:
        assert (tmp_path / case["file"]).read_bytes() == (CORPUS / case["file"]).read_bytes(), (
            f"{case['id']}: {hint}"
        )
    on_disk = {p.relative_to(CORPUS).as_posix() for p in (CORPUS / "cases").rglob("*")
               if p.is_file()}  # fmt: skip
    assert on_disk == {c["file"] for c in fresh["cases"]}, hint


@pytest.mark.parametrize("case", [_param(c, KNOWN_BUGS) for c in CASES])
def test_case_gets_its_documented_outcome(case: dict[str, Any]) -> None:
    outcome = run_validate(case)  # anything but InputFileCheckError escaping fails here
    expect = case["expect"]
    if "batch_error" in expect:
        assert outcome.batch_error == expect["batch_error"], outcome.message
        assert case["file"].rsplit("/", 1)[-1] in outcome.message  # names the file
        return
    assert outcome.batch_error is None, outcome.message
    assert outcome.rejects == expect["rejects"]
    assert outcome.records == expect["records"]
    assert len(outcome.valid) + len(outcome.reject_rows) == outcome.records
    lines = [r.line_no for r in outcome.valid] + [r.line_no for r in outcome.reject_rows]
    assert sorted(lines) == list(range(2, outcome.records + 2))
    for rej in outcome.reject_rows:
        text = f"{rej.field} {rej.detail} {rej.masked_pan or ''}"
        assert not full_pans(text), f"line {rej.line_no}: full PAN in a reject"
        assert rej.reason.stage == "validate"


# --- the full prepare path for a representative subset -------------------------------------


@pytest.fixture(scope="module")
def preparers(demo_store: SoftKeyStore) -> dict[str, CardPreparer]:
    out = {}
    for product in ("demo-visa-rsa", "demo-pboc-sm2"):
        profile = load_product(product, CONFIG)
        keys = PreparerKeys.resolve(demo_store, profile, kek="demo-kek",
                                    pan_token="demo-pan-token")  # fmt: skip
        out[product] = CardPreparer(profile, demo_store, keys)
    return out


FULL = [c for c in CASES if c["full_path"]]


@pytest.mark.slow
@pytest.mark.parametrize("case", [_param(c, KNOWN_PREPARE_BUGS | KNOWN_BUGS) for c in FULL])
def test_full_prepare_path(case: dict[str, Any], preparers: dict[str, CardPreparer]) -> None:
    """Records in = prepared + rejected; prepare-stage rejects are the documented ones."""
    outcome = run_validate(case)
    expect = case["expect"]
    if "batch_error" in expect:
        assert outcome.batch_error == expect["batch_error"]
        return
    issuer = issuer_for(case["issuer"])
    assert issuer.kek == "demo-kek"
    prepared: list[PreparedCard] = []
    prepare_rejects: dict[str, str] = {}
    for record in outcome.valid:
        result = preparers[record.product].prepare(record)
        if isinstance(result, Reject):
            assert result.reason.stage == "prepare" or result.reason is RejectReason.FIELD_FORMAT
            prepare_rejects[str(result.line_no)] = result.reason.code
            assert not full_pans(result.detail)
        else:
            prepared.append(result)
    assert len(prepared) + len(prepare_rejects) + len(outcome.reject_rows) == expect["records"]
    assert prepare_rejects == expect["prepare_rejects"]
    keys = [p.icc_public_key_sha256 for p in prepared]
    assert len(set(keys)) == len(keys), "an ICC key pair was used twice"
    assert len({p.line_no for p in prepared}) == len(prepared)
