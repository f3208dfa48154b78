"""``ShardWorker.run`` binds one append per part column (issue 7): the columns it
binds are exactly the part schema's, each once, so no column is left unfilled."""

from __future__ import annotations

from pipeline.io.parts import PART_SCHEMA
from pipeline.steps.prepare import _PART_COLUMNS


def test_the_bound_columns_are_the_part_schema_s() -> None:
    assert len(set(_PART_COLUMNS)) == len(_PART_COLUMNS)
    assert set(_PART_COLUMNS) == set(PART_SCHEMA.names)
