"""Step 3 (DAG task ``plan_shards``): cut the valid records into shards.

A shard is a half-open range ``[start, end)`` of the valid-record ordinal (the
order records were staged in, i.e. input order), at most ``shard_size``
records.  Each shard dict is self-contained (batch dir, issuer, segment size
and the staged segments it reads), so Airflow can map ``prepare_shard`` over
the list with ``.expand()`` and any worker can run any shard.

Example:
    >>> parsed = {"batch_id": "00ab12cd34ef5678", "issuer": "demo", "valid": 2500,
    ...           "batch_dir": "/srv/b", "segment_size": 1000, "products": ["p"],
    ...           "input_sha256": "00" * 32}
    >>> [(s["index"], s["start"], s["end"], s["segments"]) for s in plan_shards(parsed, 1200)]
    [(0, 0, 1200, [0, 1]), (1, 1200, 2400, [1, 2]), (2, 2400, 2500, [2])]
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import ConfigError

__all__ = ["plan_shards"]


def plan_shards(parsed: dict[str, Any], shard_size: int) -> list[dict[str, Any]]:
    """The shards of a parsed batch (an empty list when nothing is valid)."""
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ConfigError("shard_size", f"must be a positive integer, got {shard_size!r}")
    valid = int(parsed["valid"])
    segment = int(parsed["segment_size"])
    shards: list[dict[str, Any]] = []
    for index, start in enumerate(range(0, valid, shard_size)):
        end = min(start + shard_size, valid)
        shards.append(
            {
                "batch_id": parsed["batch_id"],
                "issuer": parsed["issuer"],
                "batch_dir": parsed["batch_dir"],
                "input_sha256": parsed["input_sha256"],
                # the parse that staged these records (None: staged before it had one)
                "staging_id": parsed.get("staging_id"),
                "products": list(parsed["products"]),
                "index": index,
                "start": start,
                "end": end,
                "count": end - start,
                "segment_size": segment,
                "segments": list(range(start // segment, (end - 1) // segment + 1)),
            }
        )
    return shards
