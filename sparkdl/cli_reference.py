"""The reference of the `sparkdl` command in Markdown, generated from its parser (`sparkdl.cli.build_parser`):
docs/cli.md is this text (`python scripts/gen_cli_reference.py` writes it; tests/test_cli_reference.py checks that
it is current)."""
from __future__ import annotations

import argparse

from sparkdl.cli import build_parser

HEADER = """# The `sparkdl` command

Generated from the command's parser by `python scripts/gen_cli_reference.py`; a test fails when it is stale.
Every verb that runs a job exits with status 1 and a one-line reason on failure (`--debug` shows the traceback).
"""


def _flags(action: argparse.Action) -> str:
    if not action.option_strings:
        name = "|".join(action.choices) if action.choices else (action.metavar or action.dest).upper()
        return f"`{name}`" + (" (optional)" if action.nargs == "?" else "")
    metavar = "" if action.nargs == 0 else " " + (action.metavar or action.dest.upper())
    return ", ".join(f"`{flag}{metavar}`" for flag in action.option_strings)


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if action.nargs == 0 or action.default in (None, [], argparse.SUPPRESS):
        return ""
    return f"`{action.default}`"


def _table(parser: argparse.ArgumentParser) -> list[str]:
    rows = [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
    if not rows:
        return []
    lines = ["| argument | default | meaning |", "|---|---|---|"]
    for action in rows:
        text = (action.help or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {_flags(action)} | {_default(action)} | {text} |")
    return lines + [""]


def reference_markdown(parser: argparse.ArgumentParser | None = None) -> str:
    """The Markdown reference of every verb and option of `parser` (default: the `sparkdl` command's)."""
    parser = parser or build_parser()
    lines = [HEADER, "## Global options", ""] + _table(parser)
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in verbs._choices_actions}
    for name, sub in verbs.choices.items():
        lines += [f"## `sparkdl {name}`", "", helps.get(name) or "", ""]
        if sub.description:
            lines += [sub.description, ""]
        lines += _table(sub)
    return "\n".join(lines).rstrip() + "\n"


__all__ = ["reference_markdown"]
