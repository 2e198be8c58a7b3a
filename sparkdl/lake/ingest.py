"""Image files into a Delta table: the ImageFolder layout (one sub-folder per class) through Spark's `binaryFile`.

    >>> from sparkdl.lake.ingest import image_folder_to_delta
    >>> snap = image_folder_to_delta("/data/photos", "/lake/photos")      # photos/<class>/<file>.jpg
    >>> snap.version, snap.schema.fieldNames()
    (0, ['path', 'label', 'content', 'length', 'modificationTime'])

The table has one row per file: ``path`` (the file's URI), ``label`` (the name of its class folder), ``content``
(the encoded bytes, as they are: the table is the size of the files), ``length`` and ``modificationTime``. An image
feature reads ``content`` (``kind: image``); the files can be deleted once ingested. Spark lists and reads the
files on the executors (`recursiveFileLookup`), and the table is written in one atomic commit by
`sparkdl.lake.write_table`, with the source folder in the commit metadata.
"""
from __future__ import annotations

import os

import pyarrow.fs as pafs

from sparkdl.errors import TableError
from sparkdl.lake.api import write_table
from sparkdl.lake.snapshot import Snapshot
from sparkdl.log import get_logger
from sparkdl.session import get_spark
from sparkdl.uri import filesystem, normalized

log = get_logger("lake.ingest")

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "gif", "bmp", "webp", "tif", "tiff")


def image_folder_to_delta(folder: str | os.PathLike, table: str | os.PathLike, mode: str = "error",
                          extensions: tuple[str, ...] = IMAGE_EXTENSIONS, label_column: str = "label",
                          spark=None) -> Snapshot:
    """Write the images under `folder` (``folder/<class>/<file>``) to the Delta table `table`.

    Args:
        folder: the root folder (local path or URI); each direct sub-folder is a class, its name the label.
            Files deeper down belong to the class of their top sub-folder.
        table: the Delta table (path or URI).
        mode: as for `write_table`: "error" (default: fail if the table exists), "overwrite", "append", "ignore".
        extensions: file name endings taken (case-insensitive); other files are left out.
        label_column: the name of the label column.
        spark: the session (default: `sparkdl.session.get_spark()`).

    Returns:
        The Snapshot of the version written.

    Raises:
        TableError: `folder` does not exist, holds no class sub-folder, or no image file with `extensions`
            (the message names the folder and the endings looked for); what `write_table` raises.
    """
    from pyspark.sql import functions as F

    spark = spark or get_spark()
    root = normalized(str(folder)).rstrip("/")
    fs, path = filesystem(root)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.Directory:
        raise TableError(f"image folder {root}: not found or not a folder")
    classes = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path))
                     if i.type == pafs.FileType.Directory and not i.base_name.startswith((".", "_")))
    if not classes:
        raise TableError(f"image folder {root}: no class sub-folders (expected {root}/<class>/<image file>)")
    glob = "*.{" + ",".join(sorted({e.lower() for e in extensions} | {e.upper() for e in extensions})) + "}"
    files = (spark.read.format("binaryFile").option("recursiveFileLookup", "true")
             .option("pathGlobFilter", glob).load(root))
    prefix = F.lit(root)  # `normalized` gives local folders as binaryFile gives their paths: file:/abs/path
    relative = F.expr("substring(path, length(_root) + 2)")
    out = (files.withColumn("_root", prefix)
           .withColumn(label_column, F.substring_index(relative, "/", 1))
           .where(F.instr(relative, "/") > 0)
           .select("path", label_column, "content", "length", "modificationTime"))
    if out.limit(1).count() == 0:
        raise TableError(f"image folder {root}: no image file ending in {list(extensions)} under its class "
                         f"folders {classes[:10]}")
    snap = write_table(out, table, mode=mode, commit_metadata={"source": root, "ingest": "image_folder"},
                       spark=spark)
    log.info("ingested the images of %d class folder(s) under %s into %s@%s", len(classes), root, snap.table,
             snap.version)
    return snap


__all__ = ["image_folder_to_delta", "IMAGE_EXTENSIONS"]
