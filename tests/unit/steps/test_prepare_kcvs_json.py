"""The part rows' ``kcvs`` column keeps its exact JSON (issue 7: encoder built once).

``ShardWorker.run`` writes each card's KCVs as ``json.dumps(kcvs,
sort_keys=True)``; the encoder is now built once per process.  Random role
names (non-ASCII, quotes, control characters) must give the same text, so a
part written before and after the change reads the same.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.steps.prepare import _kcvs_json


@given(st.dictionaries(st.text(), st.text("0123456789ABCDEF", min_size=6, max_size=6)))
@settings(max_examples=200, deadline=None)
def test_kcvs_column_is_json_dumps_with_sorted_keys(kcvs: dict[str, str]) -> None:
    assert _kcvs_json(kcvs) == json.dumps(kcvs, sort_keys=True)


def test_a_real_card_s_kcvs() -> None:
    kcvs = {"contact.mk_smi": "1A2B3C", "contact.mk_ac": "08D7B4", "kmc.kenc": "ABCDEF"}
    assert _kcvs_json(kcvs) == (
        '{"contact.mk_ac": "08D7B4", "contact.mk_smi": "1A2B3C", "kmc.kenc": "ABCDEF"}'
    )
