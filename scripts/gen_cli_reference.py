#!/usr/bin/env python
"""Write docs/cli.md, the `sparkdl` command's reference, from its parser (tests/test_cli_reference.py checks it)."""
from pathlib import Path

from sparkdl.cli_reference import reference_markdown

if __name__ == "__main__":
    target = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
    target.write_text(reference_markdown())
    print(f"wrote {target}")
