"""The limits and timeouts of `sparkdl serve`, declared once: the `ModelServer` and pool options, the CLI flags
(`--max-body-bytes`, ...) and their help are all generated from `ServingLimits`' fields.

Every limit has a safe default: a client can neither make the server buffer more than `max_body_bytes`, nor hold a
connection open by sending slowly (`read_timeout_s`) or by idling (`keep_alive_s`), nor open connections without
bound (`max_connections`: 503 beyond), nor wait forever on a wedged model (`scoring_timeout_s`: 503, and `/health`
answers 503 while a batch runs longer).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields

from sparkdl.errors import ConfigError


def _limit(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ServingLimits:
    """See the module docstring; each field is also a CLI flag (`max_body_bytes` -> `--max-body-bytes`)."""

    max_body_bytes: int = _limit(4 * 1024 * 1024, "largest request body in bytes (larger: 413)")
    max_rows: int = _limit(10_000, "most rows in one request (more: 413)")
    max_json_depth: int = _limit(32, "deepest JSON nesting of a request (deeper: 400)")
    read_timeout_s: float = _limit(10.0, "seconds to receive a whole request, headers and body, from its first "
                                         "byte (slower: the connection is closed)")
    keep_alive_s: float = _limit(5.0, "seconds an idle keep-alive connection stays open")
    max_connections: int = _limit(1024, "concurrent connections and requests per process (more: 503)")
    scoring_timeout_s: float = _limit(30.0, "seconds a request waits for its scores (longer: 503; /health answers "
                                            "503 while a model call runs longer)")
    drain_timeout_s: float = _limit(30.0, "on SIGTERM, seconds requests in flight get to finish before exit")

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"serve: {f.name} must be a positive number, got {value!r}")

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Add one flag per limit to `parser` (defaults: this class's)."""
        for f in fields(ServingLimits):
            parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                                help=f"{f.metadata['help']} (default {f.default:g})")

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> "ServingLimits":
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


__all__ = ["ServingLimits"]
