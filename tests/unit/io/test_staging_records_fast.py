"""records_from_ipc builds each CardRecord as the validator does (issue 7).

``pipeline.io.staging.records_from_table`` fills each instance dictionary in
one call (``pipeline.records.validate._card_record``) instead of the frozen
``__init__``; the records must be equal to ``CardRecord(...)`` of the same
fields, hold plain dicts and stay frozen.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.io.staging import records_from_ipc, records_to_ipc
from pipeline.records.validate import CardRecord
from tests.unit.io.test_sealed_staging import records


@given(st.lists(records, max_size=10))
@settings(max_examples=50, deadline=None)
def test_records_from_ipc_equal_the_dataclass_built_records(recs: list[CardRecord]) -> None:
    back = records_from_ipc(records_to_ipc(recs))
    assert back == [
        CardRecord(
            r.line_no, r.product, r.pan, r.psn, r.expiry, r.effective, r.service_code, r.name,
            r.discretionary, r.kdd, dict(r.secrets), dict(r.extra),
        )
        for r in recs
    ]  # fmt: skip
    for record in back:
        assert type(record.secrets) is dict and type(record.extra) is dict
        with pytest.raises(dataclasses.FrozenInstanceError):
            record.pan = "0"  # type: ignore[misc]


def test_an_empty_table_gives_no_records() -> None:
    assert records_from_ipc(records_to_ipc([])) == []
