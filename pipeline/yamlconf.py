"""YAML configuration text to Python values: ``yaml.safe_load``, by libyaml's parser when safe.

Every configuration file cardprep reads (settings, issuers, layouts, product
profiles, key ceremony plans, the DAG configuration) goes through
:func:`safe_load`.  Its result and its errors are those of
``yaml.safe_load``; most texts are parsed by libyaml's C parser
(``yaml.CSafeLoader``: the same safe constructor and resolver), ~8x faster
here than PyYAML's pure-Python one (a product profile 0.4 ms instead of
3-5 ms; a batch run and each of its worker processes load several; issue 7).

Where the two parsers part (found by differential fuzzing of the shipped
configs, ~240,000 cases): libyaml accepts tabs as separators, a block-scalar
header followed by ``#`` and a byte-order mark starting a comment line, reads
a bare ``!`` tag as ``''`` (PyYAML: ``None``) and refuses a lone surrogate
escape.  A text with a tab, a byte-order mark, a ``!`` or a block-scalar
header comment (:data:`_PYTHON_ONLY`) is therefore parsed by PyYAML, and any
text libyaml refuses is parsed again by PyYAML, whose error names the
offending token (libyaml's drops the alias name, the character and the
excerpt) and which accepts what it always accepted.  One difference is
deliberate: a document nested too deeply for PyYAML's recursion is a
``yaml.YAMLError``, not a ``RecursionError``.

Example:
    >>> safe_load("issuer: demo\\nproducts: [a, b]\\n")
    {'issuer': 'demo', 'products': ['a', 'b']}
"""

from __future__ import annotations

import re
from typing import Any

import yaml

__all__ = ["LOADER", "safe_load"]

#: libyaml's safe loader when PyYAML was built with it, else the pure-Python one.
LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

#: Text libyaml and PyYAML were seen to read differently: a tab, a byte-order mark, a tag
#: mark ``!``, a block-scalar header followed by a comment (``|#``, ``>-#``...).
_PYTHON_ONLY = re.compile(r"[\t\ufeff!]|[|>][-+0-9]*#")


def safe_load(text: str) -> Any:
    """``yaml.safe_load(text)``: the same value or error, faster (see the module docstring).

    Example:
        >>> safe_load("a: !!str 1\\n")  # a tag: parsed by PyYAML
        {'a': '1'}
    """
    if LOADER is yaml.SafeLoader or _PYTHON_ONLY.search(text):
        return _python(text)
    try:
        return yaml.load(text, Loader=LOADER)  # noqa: S506 - CSafeLoader, a safe loader
    except yaml.YAMLError:
        return _python(text)  # PyYAML's answer: its error (more detail), or its value


def _python(text: str) -> Any:
    """``yaml.safe_load``, with nesting too deep for its recursion a ``YAMLError`` too."""
    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise yaml.YAMLError("the document is nested too deeply to be read") from None
