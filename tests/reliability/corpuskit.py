"""Running the bad-input corpus (tests/corpus/manifest.json) through parse and validate.

Plain functions shared by tests/reliability/test_corpus.py and the report
script; no pytest fixtures here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import InputFileCheckError
from pipeline.records.issuers import IssuerConfig, load_issuer, parse_issuer
from pipeline.records.layout import load_layout
from pipeline.records.luhn import luhn_valid
from pipeline.records.parse import iter_records, verify_file
from pipeline.records.validate import CardRecord, Reject, Validator

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
CORPUS = ROOT / "tests" / "corpus"
PRODUCTS = frozenset(p.stem for p in (CONFIG / "products").glob("*.yaml"))
_DIGIT_RUN = re.compile(r"(?<![0-9])[0-9]{13,19}(?![0-9])")


def manifest() -> dict[str, Any]:
    return json.loads((CORPUS / "manifest.json").read_text(encoding="ascii"))  # type: ignore[no-any-return]


def cases() -> list[dict[str, Any]]:
    return manifest()["cases"]  # type: ignore[no-any-return]


@cache
def issuer_for(issuer_id: str, extra_bins: tuple[tuple[str, str], ...] = ()) -> IssuerConfig:
    """The demo issuer, with the case's extra BIN -> product rows (R041 cases)."""
    if not extra_bins:
        return load_issuer(issuer_id, CONFIG)
    data = yaml.safe_load((CONFIG / "issuers" / f"{issuer_id}.yaml").read_text())
    data["bins"] = {**data["bins"], **dict(extra_bins)}
    return parse_issuer(data, f"corpus:{issuer_id}")


@dataclass
class Outcome:
    """What parse + validate made of one case."""

    batch_error: str | None = None
    records: int = 0
    rejects: dict[str, str] = field(default_factory=dict)
    valid: list[CardRecord] = field(default_factory=list)
    reject_rows: list[Reject] = field(default_factory=list)
    message: str = ""

    def as_expect(self) -> dict[str, Any]:
        if self.batch_error is not None:
            return {"batch_error": self.batch_error}
        return {"records": self.records, "rejects": self.rejects}


def run_validate(case: dict[str, Any]) -> Outcome:
    """verify_file, then iter_records + Validator; only InputFileCheckError is expected."""
    issuer = issuer_for(case["issuer"], tuple(sorted(case.get("extra_bins", {}).items())))
    layout = load_layout(issuer.layout, CONFIG)
    path = CORPUS / case["file"]
    try:
        summary = verify_file(path, layout)
    except InputFileCheckError as exc:
        return Outcome(batch_error=exc.check, message=str(exc))
    assert summary.batch_date is not None
    validator = Validator(issuer, layout, summary.batch_date, products=PRODUCTS)
    out = Outcome()
    for raw in iter_records(path, layout):
        out.records += 1
        result = validator.check(raw)
        if isinstance(result, Reject):
            assert str(result.line_no) not in out.rejects, "one reject per line"
            out.rejects[str(result.line_no)] = result.reason.code
            out.reject_rows.append(result)
        else:
            out.valid.append(result)
    assert out.records == summary.record_count
    return out


def full_pans(text: str) -> list[str]:
    """Luhn-valid runs of 13..19 digits in ``text`` (what a PAN leak looks like)."""
    return [m for m in _DIGIT_RUN.findall(text) if luhn_valid(m)]
