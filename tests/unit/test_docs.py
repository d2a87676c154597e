"""docs/directives.md is generated from the DirectiveSpecs and must not go stale."""

from pathlib import Path

from jwtgate.conf.docs import render_directives
from jwtgate.modules import default_modules

DOC = Path(__file__).resolve().parents[2] / "docs" / "directives.md"


def test_directive_reference_is_current():
    assert DOC.read_text() == render_directives(default_modules()), (
        "docs/directives.md is stale: run `python -m jwtgate.conf.docs > docs/directives.md`")


def test_every_directive_is_documented():
    text = DOC.read_text()
    for module in default_modules():
        for spec in module.directives:
            assert f"### `{spec.name}`" in text
            assert spec.syntax and spec.doc, f"{spec.name} lacks syntax or doc"
