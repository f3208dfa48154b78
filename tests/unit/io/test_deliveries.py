"""The delivery index fails closed, with a clear error (docs/INPUT.md "Deliveries").

QA: an index that is not UTF-8 raised a bare UnicodeDecodeError traceback, and
an index entry that is not an object was read as "no entry": the re-sent
delivery it recorded went through as new.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import PublishError
from pipeline.io.deliveries import (
    IN_PROGRESS,
    INDEX_FORMAT,
    Delivery,
    find_delivery,
    record_delivery,
)
from pipeline.io.paths import BatchPaths

DELIVERY = Delivery("DEMO", "20250115", "000042")


def _paths(tmp_path: Path) -> BatchPaths:
    return BatchPaths(tmp_path, "demo", "00ab12cd34ef5678")


def test_a_recorded_delivery_is_found(tmp_path: Path) -> None:
    """Control: the index round-trips."""
    paths = _paths(tmp_path)
    record_delivery(paths, DELIVERY, state=IN_PROGRESS, input_name="x.dat")
    entry = find_delivery(paths, Delivery("DEMO", "20250115", "42"))
    assert entry is not None and entry.batch_id == paths.batch_id


def test_an_index_that_is_not_utf8_is_refused_naming_it(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    paths.deliveries.parent.mkdir(parents=True)
    paths.deliveries.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(PublishError, match=r"deliveries/demo\.json \[deliveries\]: not a"):
        find_delivery(paths, DELIVERY)
    with pytest.raises(PublishError, match=r"\[deliveries\]: not a"):
        record_delivery(paths, DELIVERY, state=IN_PROGRESS, input_name="x.dat")


@pytest.mark.parametrize("damaged", ["x", None, [], {"state": "published"}, {"batch_id": 7}])
def test_a_damaged_entry_is_refused_not_read_as_absent(tmp_path: Path, damaged: object) -> None:
    paths = _paths(tmp_path)
    paths.deliveries.parent.mkdir(parents=True)
    doc = {"format": INDEX_FORMAT, "issuer": "demo", "deliveries": {DELIVERY.key: damaged}}
    paths.deliveries.write_text(json.dumps(doc))
    with pytest.raises(PublishError, match=r"entry 'DEMO/20250115/42' is not a delivery"):
        find_delivery(paths, DELIVERY)
    assert find_delivery(paths, Delivery("DEMO", "20250115", "43")) is None  # others: fine
