"""YAML configuration text to Python values, by libyaml's C parser when PyYAML has it.

Every configuration file cardprep reads (settings, issuers, layouts, product
profiles, key ceremony plans, the DAG configuration) goes through
:func:`safe_load`.  It is ``yaml.safe_load`` (the same safe constructor and
resolver: only plain scalars, lists and mappings) with the scanner and parser
of libyaml, ~8x faster here than PyYAML's pure-Python ones (a product profile
0.4 ms instead of 3-5 ms; a batch run and each of its worker processes load
several).  Errors are the same ``yaml.YAMLError`` classes, with the position.

Example:
    >>> safe_load("issuer: demo\\nproducts: [a, b]\\n")
    {'issuer': 'demo', 'products': ['a', 'b']}
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["LOADER", "safe_load"]

#: libyaml's safe loader when PyYAML was built with it, else the pure-Python one.
LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    """``yaml.safe_load(text)`` by :data:`LOADER` (see the module docstring)."""
    return yaml.load(text, Loader=LOADER)  # noqa: S506 - a safe loader (CSafeLoader/SafeLoader)
