"""Which Delta tables the delta-rs path can read and write correctly; the rest raise `UnsupportedTableFeature`.

Spark reads the snapshot's Parquet files directly, so anything that changes how file rows map to table rows
must be handled or refused. Handled: deletion vectors (`sparkdl.lake.deletion_vectors`) and column mapping in
`name` and `id` modes (`sparkdl.lake.column_mapping`). Refused: type widening (files hold narrower types), variant
columns and reader features unknown here. Readers of raw files (the stream source) also refuse the handled two.
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


def check_plain_files(dt, table: str, deleted_rows: int) -> None:
    """Raise `UnsupportedTableFeature` when the rows of `dt`'s loaded version are not simply the rows of its files
    (column mapping, or rows deleted by deletion vectors), for readers that read the files as they are."""
    mode = (dt.metadata().configuration or {}).get("delta.columnMapping.mode", "none")
    if mode and mode.lower() != "none":
        raise UnsupportedTableFeature(f"{table} uses column mapping (delta.columnMapping.mode={mode}), which the "
                                      f"sparkdl Delta stream source cannot map; read it in batch with "
                                      f"sparkdl.lake.read_table, or {_NEEDS}")
    if deleted_rows:
        raise UnsupportedTableFeature(f"{table} has {deleted_rows} row(s) deleted by deletion vectors at version "
                                      f"{dt.version()}, which the sparkdl Delta stream source cannot drop; read it "
                                      f"in batch with sparkdl.lake.read_table, or {_NEEDS}")


def check_writable(dt, table: str) -> None:
    """Raise `UnsupportedTableFeature` when a delta-rs write would ignore a rule of the table."""
    check_readable(dt, table)
    proto = dt.protocol()
    refused = sorted(set(proto.writer_features or []) & WRITE_REFUSED)
    config = dt.metadata().configuration or {}
    if str(config.get("delta.columnMapping.mode", "none")).lower() != "none":  # also on writer version 5
        refused.append("columnMapping")
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
