"""The references in docs/ match the code: docs/cli.md is what the parser generates, and docs/configuration.md
documents every key of the job files' dataclasses and no other."""
from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from pathlib import Path

from sparkdl import config
from sparkdl.cli import build_parser
from sparkdl.cli_reference import reference_markdown

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_the_cli_reference_is_generated_from_the_parser_and_current():
    text = reference_markdown()
    assert (DOCS / "cli.md").read_text() == text, "docs/cli.md is stale: run python scripts/gen_cli_reference.py"
    parser = build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert len(verbs.choices) >= 12
    for verb, sub in verbs.choices.items():
        section = text.split(f"## `sparkdl {verb}`\n", 1)[1].split("\n## ", 1)[0]
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert any(f"`{flag}" in section for flag in action.option_strings or [""]), (verb, action.dest)


def _keys(cls, prefix: str = "") -> set[str]:
    hints = typing.get_type_hints(cls)
    out = set()
    for f in dataclasses.fields(cls):
        if f.name == "origin":
            continue
        section = [a for a in (hints[f.name], *typing.get_args(hints[f.name])) if dataclasses.is_dataclass(a)]
        out |= _keys(section[0], f"{prefix}{f.name}.") if section else {prefix + f.name}
    return out


def test_the_configuration_reference_documents_every_key_and_no_other():
    documented = set()
    for line in (DOCS / "configuration.md").read_text().splitlines():
        if line.startswith("| `"):
            documented |= set(re.findall(r"`([a-z_.]+)`", line.split("|")[1]))
    keys = _keys(config.JobConfig)
    assert len(keys) > 80
    assert sorted(keys - documented) == [], "keys missing from docs/configuration.md"
    assert sorted(documented - keys) == [], "docs/configuration.md documents keys the config does not have"
