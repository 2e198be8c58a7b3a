"""Which Delta tables the delta-rs path can read and write correctly; the rest raise `UnsupportedTableFeature`.

Spark reads the snapshot's Parquet files directly, so anything that changes how file rows map to table rows
must be refused: deletion vectors (rows marked deleted outside the file), column mapping (physical column names
differ from the schema), type widening (files hold narrower types) and reader features unknown here.
Writes are refused for features whose rules sparkdl does not apply: generated/identity columns, CHECK
constraints, invariants, row tracking, column mapping.
"""
from __future__ import annotations

import json

from sparkdl.errors import UnsupportedTableFeature

# Reader features whose data layout Spark's plain Parquet scan reads exactly (the first two after extra checks).
# `variantType` is accepted as long as no column is a variant (delta-rs enables it along with other features).
READ_OK = {"deletionVectors", "columnMapping", "timestampNtz", "v2Checkpoint", "vacuumProtocolCheck", "variantType"}
WRITE_REFUSED = {"columnMapping", "generatedColumns", "identityColumns", "checkConstraints", "rowTracking",
                 "icebergCompatV1", "icebergCompatV2", "typeWidening", "invariants"}
_NEEDS = "read and write it with delta-spark (a Spark session with the Delta Lake extension)"


def check_readable(dt, table: str) -> None:
    """Raise `UnsupportedTableFeature` when the delta-rs path could return wrong rows for `dt`'s loaded version.

    Args:
        dt: a `deltalake.DeltaTable` at the version to read.
        table: the table URI, for messages.
    """
    proto = dt.protocol()
    if proto.min_reader_version > 3:
        raise UnsupportedTableFeature(f"{table} needs Delta reader version {proto.min_reader_version} (max 3 "
                                      f"supported by the delta-rs path); {_NEEDS}")
    features = set(proto.reader_features or [])
    unknown = sorted(features - READ_OK)
    if unknown:
        raise UnsupportedTableFeature(f"{table} uses Delta reader feature(s) {', '.join(unknown)}, which the "
                                      f"delta-rs path cannot read correctly; {_NEEDS}")
    if '"variant"' in dt.schema().to_json():
        raise UnsupportedTableFeature(f"{table} has variant columns, which the delta-rs path cannot read; {_NEEDS}")
    mode = (dt.metadata().configuration or {}).get("delta.columnMapping.mode", "none")
    if mode and mode.lower() != "none":
        raise UnsupportedTableFeature(f"{table} uses column mapping (delta.columnMapping.mode={mode}); the "
                                      f"delta-rs path reads Parquet columns by name and cannot map them; {_NEEDS}")
    if "deletionVectors" in features and _has_deletion_vectors(dt):
        raise UnsupportedTableFeature(f"{table} has deletion vectors at version {dt.version()} (rows deleted "
                                      f"without rewriting files); the delta-rs path would return deleted rows; "
                                      f"{_NEEDS}")


def check_writable(dt, table: str) -> None:
    """Raise `UnsupportedTableFeature` when a delta-rs write would ignore a rule of the table."""
    check_readable(dt, table)
    proto = dt.protocol()
    refused = sorted(set(proto.writer_features or []) & WRITE_REFUSED)
    config = dt.metadata().configuration or {}
    if any(key.startswith("delta.constraints.") for key in config):
        refused.append("CHECK constraints")
    for fld in json.loads(dt.schema().to_json()).get("fields", []):
        meta = fld.get("metadata") or {}
        if "delta.generationExpression" in meta:
            refused.append(f"generated column {fld['name']}")
        if any(key.startswith("delta.identity.") for key in meta):
            refused.append(f"identity column {fld['name']}")
        if "delta.invariants" in meta:
            refused.append(f"invariant on {fld['name']}")
    refused = [r for r in refused if r != "invariants"]  # the feature alone (no column invariant) is harmless
    if refused:
        raise UnsupportedTableFeature(f"{table} uses {', '.join(sorted(set(refused)))}, which the delta-rs write "
                                      f"path does not enforce; {_NEEDS}")


def _has_deletion_vectors(dt) -> bool:
    reader = dt.deletion_vectors()
    for batch in reader:
        if getattr(batch, "num_rows", 0):
            return True
    return False
