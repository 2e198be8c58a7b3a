"""Delta table I/O for sparkdl: one API, two backends.

* **delta-spark** when the session has Delta Lake's Spark extension (`sparkdl.session.delta_backend(spark)`):
  `spark.read.format("delta")` with `versionAsOf`/`timestampAsOf`, `df.write.format("delta")`.
* **delta-rs** (`deltalake`) otherwise: delta-rs resolves the snapshot and Spark reads exactly its files;
  executors write Parquet files and the driver commits them in one Delta transaction.

Every read returns a `Snapshot` (table URI, version, commit time, schema, partitioning, files) used for lineage.
Local paths are normalized to absolute `file:///...` URIs. See `sparkdl.lake.schema` for the schema policy
(decimals kept exactly as `decimal(p,s)`, lossless widening on append, unsupported types).
"""
from sparkdl.lake.api import (
    clean_staging,
    exists,
    history,
    latest_version,
    read_table,
    snapshot,
    source_of,
    write_table,
)
from sparkdl.lake.snapshot import Snapshot
from sparkdl.lake.versions import Txn

__all__ = ["read_table", "write_table", "history", "latest_version", "exists", "snapshot", "clean_staging",
           "source_of", "Snapshot", "Txn"]
