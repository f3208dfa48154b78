"""pipeline.yamlconf: the configuration loader is yaml.safe_load, only faster."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline import yamlconf

ROOT = Path(__file__).resolve().parents[2]
CONFIG_FILES = sorted((ROOT / "config").rglob("*.yaml"))


def test_libyaml_is_used_here() -> None:
    """The lock file's PyYAML wheel carries libyaml; without it the loader falls back."""
    assert yaml.__with_libyaml__
    assert yamlconf.LOADER is yaml.CSafeLoader


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_file_loads_as_yaml_safe_load_does(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert yamlconf.safe_load(text) == yaml.safe_load(text)


@pytest.mark.parametrize(
    "text",
    [
        "a: 1\nb: [x, 2.5, true, null, 0o17, 0x1F, '007', 2026-11-29]\n",
        "key: !!binary AAEC\n",
        "anchors: &a {k: v}\nref: *a\n",
        "",
        "- 1\n- - 2\n  - 3\n",
    ],
)
def test_same_values_as_the_python_loader(text: str) -> None:
    assert yamlconf.safe_load(text) == yaml.safe_load(text)


def test_an_unsafe_tag_is_refused_as_by_safe_load() -> None:
    text = "x: !!python/object/apply:os.system ['true']\n"
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.safe_load(text)
    with pytest.raises(yaml.constructor.ConstructorError):
        yamlconf.safe_load(text)


def test_a_syntax_error_is_a_yaml_error_with_its_position() -> None:
    with pytest.raises(yaml.YAMLError) as caught:
        yamlconf.safe_load("a: [1, 2\nb: 3\n")
    mark = getattr(caught.value, "problem_mark", None)
    assert mark is not None and mark.line >= 1


def test_the_fallback_is_the_pure_python_safe_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamlconf, "LOADER", yaml.SafeLoader)
    assert yamlconf.safe_load("a: [1, 2]\n") == {"a": [1, 2]}
