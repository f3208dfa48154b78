"""QA of pipeline.yamlconf (682b3a0): where libyaml's CSafeLoader and yaml.safe_load part.

Found by differential fuzzing of the shipped config files (insertions of tabs, BOMs,
tags, comment marks...).  The values of every file both loaders accept were the same
except for the constructs below.  The error positions (line, column) are the same,
but for an unknown escape in a double-quoted scalar (libyaml points at its backslash,
one column earlier); the error texts lose the source excerpt and some details (the
offending character, the alias name, the expected tokens).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline import yamlconf
from pipeline.errors import ConfigError
from pipeline.records.issuers import load_issuer


def _outcome(loader: object, text: str) -> tuple[str, object]:
    try:
        return "ok", yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        return "error", type(exc).__name__


@pytest.mark.parametrize(
    "text",
    [
        "a: [1, 2\nb: 3\n",
        "a:\n  b: 1\n c: 2\n",
        "a: 'x\n",
        "a: b: c\n",
        "é€: [\n",
        "a: *nope\n",
        "a: &x 1\nb: &x 2\n",
        "- 1\n- - 2\n  -3: [\n",
    ],
)
def test_error_positions_are_those_of_the_python_loader(text: str) -> None:
    marks = []
    for loader in (yaml.SafeLoader, yamlconf.LOADER):
        with pytest.raises(yaml.MarkedYAMLError) as caught:
            yaml.load(text, Loader=loader)
        mark = caught.value.problem_mark
        assert mark is not None
        marks.append((mark.line, mark.column))
    assert marks[0] == marks[1]


def test_deep_nesting_is_a_yaml_error_not_a_recursion_error() -> None:
    """The C loader caps nesting (1000); the Python one ran out of stack (RecursionError)."""
    with pytest.raises(yaml.YAMLError):
        yamlconf.safe_load("- " * 5000 + "x\n")
    with pytest.raises(yaml.YAMLError):
        yamlconf.safe_load("[" * 5000 + "]" * 5000)


@pytest.mark.parametrize(
    "text",
    [
        "marker: !\nname: x\n",
        "kek:\tdemo-kek\n",
        "bins: [a,\tb]\n",
        "retention_days: 30\t# days\n",
        "description: |#note\n  x\n",
        "a: 1\n\ufeff# appended file\nb: 2\n",
        "a: 1\n\ufeffb: 2\n",
    ],
    ids=[
        "bare-tag",
        "tab-after-colon",
        "tab-in-flow",
        "tab-before-comment",
        "block-header-comment",
        "bom-comment-line",
        "bom-key-line",
    ],
)
def test_same_outcome_as_yaml_safe_load(text: str) -> None:
    """Texts where libyaml reads otherwise are parsed by PyYAML (yamlconf._PYTHON_ONLY)."""
    try:
        ours: tuple[str, object] = ("ok", yamlconf.safe_load(text))
    except yaml.YAMLError as exc:
        ours = ("error", type(exc).__name__)
    assert ours == _outcome(yaml.SafeLoader, text)


def test_an_issuer_file_error_names_what_is_wrong(tmp_path: Path) -> None:
    if yamlconf.LOADER is yaml.SafeLoader:
        pytest.skip("PyYAML without libyaml: the loader is yaml.safe_load's")
    (tmp_path / "issuers").mkdir()
    (tmp_path / "issuers" / "qa.yaml").write_text("id: qa\nkek: *demo_kek\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_issuer("qa", tmp_path)
    message = str(caught.value)
    assert "line 2, column 6" in message
    assert "demo_kek" in message  # PyYAML: "found undefined alias 'demo_kek'"
