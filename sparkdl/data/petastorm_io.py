"""Petastorm conversion with a lifecycle you can trust: keyed, reused, listed, deleted.

`petastorm.spark.make_spark_converter(df)` materializes a DataFrame as Parquet under the folder of the Spark conf
`petastorm.spark.converter.parentCacheDirUrl`, into a *random* folder, remembers it only in this process (by
plan), and deletes it at exit. sparkdl keeps Petastorm's on-disk format and conf key but names the folder by WHAT
the data is, so a second run reuses it:

    key = {table URI, resolved version, columns, preprocessing fingerprint, dtype, with_label, + your `key` dict}

(when there is no snapshot, a hash of the DataFrame's canonicalized plan replaces table and version). The folder is
``<parent>/sparkdl-<sha256(key)[:16]>``, written to a temporary sibling and renamed when complete, with a
``_sparkdl_cache.json`` marker holding the key, the file list, row counts per row group, and the creation time. A
conversion whose key exists runs no Spark job at all. `list_caches()` and `cleanup(older_than, key)` manage the
folders; `temporary=True` deletes the folder when the process exits. `PetastormDataset.converter()` gives
Petastorm's own `SparkDatasetConverter` on the same files (its `make_tf_dataset`, `make_torch_dataloader`).

Zero-copy: when the DataFrame is a plain projection of a Delta snapshot and the preprocessing is the identity on
its columns (one `array<float>` feature without imputation/scaling + an integer class or float label, see
`PreprocessorModel.passthrough_columns`), the snapshot's Parquet files are handed to the reader as they are.
That path assumes `validate(spec, df)` passed (it checks every row for nulls, NaN and lengths).
"""
from __future__ import annotations

import atexit
import datetime as dt
import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field, replace

import pyarrow.fs as pafs

from sparkdl import stack
from sparkdl.data.images import ImageInput
from sparkdl.data.preprocess import invalid_row_counter
from sparkdl.data.validation import array_column, is_vector_udt
from sparkdl.errors import ConfigError, ValidationError
from sparkdl.log import get_logger
from sparkdl.parquet_reader import open_parquet
from sparkdl.session import work_dir
from sparkdl.session_kind import optimized_plan, plan_fingerprint
from sparkdl.spark_jobs import stopped_on_error
from sparkdl.uri import filesystem, join, local_path, normalized, same_file

log = get_logger("data.petastorm")

PARENT_CACHE_CONF = "petastorm.spark.converter.parentCacheDirUrl"
PREFIX = "sparkdl-"
TMP_PREFIX = ".tmp-sparkdl-"  # unfinished conversions of earlier releases (removed by `cleanup`)
DATA_PREFIX = "data-"  # a conversion's data folder inside its cache folder; the marker names the published one
MARKER = "_sparkdl_cache.json"
SPLIT_COLUMN = "_sparkdl_split"  # the part ("train" / "validation") of a row in `to_petastorm_split`'s one job
KEY_FORMAT = 1
DEFAULT_ROW_GROUP_BYTES = 32 * 1024 * 1024  # Petastorm's default
_PLAN_NODES_OK = {"Project", "LogicalRelation", "SubqueryAlias"}


@dataclass
class PetastormDataset:
    """Materialized training data, picklable, shipped to every Horovod worker.

    Attributes:
        files: Parquet file URIs, in a fixed order (all ranks must agree on it).
        num_rows: rows over all files.
        columns: the columns in the files that the reader uses.
        key: what the data is (see the module docstring).
        url: the cache folder URL (None on the zero-copy path).
        feature_column: the flat `array<float>` column holding prepared features (encoded image bytes when
            `image` is set).
        label_column: the label column, or None.
        row_groups: (file index, row group index, rows) for every row group, so workers need not read footers.
        zero_copy: True when `files` are a Delta snapshot's own files.
        temporary: the cache folder is deleted when the creating process exits.
        invalid_rows: {reason: rows} left out because preprocessing could not prepare them (recorded when the
            cache was written by `to_petastorm`).
        image: how the reader decodes `feature_column` when it holds encoded images (None: prepared floats).
    """

    files: tuple[str, ...]
    num_rows: int
    columns: tuple[str, ...]
    key: dict = field(default_factory=dict)
    url: str | None = None
    feature_column: str = "features"
    label_column: str | None = "label"
    row_groups: tuple[tuple[int, int, int], ...] = ()
    zero_copy: bool = False
    temporary: bool = False
    invalid_rows: dict = field(default_factory=dict)
    image: ImageInput | None = None

    @property
    def num_invalid(self) -> int:
        return int(sum(self.invalid_rows.values()))

    @property
    def urls(self) -> list[str]:
        return list(self.files)

    @property
    def key_hash(self) -> str:
        return key_hash(self.key)

    def converter(self):
        """Petastorm's `SparkDatasetConverter` over the same files (for `make_tf_dataset` etc.).

        Raises:
            SparkDLError: Petastorm cannot be imported here (it needs the pinned stack's PyArrow 14 and NumPy 1;
                the message names the pin).
        """
        stack.require_petastorm()
        from petastorm.spark.spark_dataset_converter import SparkDatasetConverter

        files = [_as_url(f) for f in self.files]
        return SparkDatasetConverter(_common_parent(files), files, self.num_rows)

    def delete(self) -> None:
        """Delete the cache folder (nothing on the zero-copy path: the table's files are never deleted)."""
        if self.url and not self.zero_copy:
            _delete_folder(self.url)


@dataclass(frozen=True)
class CacheInfo:
    """One cache folder, as listed by `list_caches`."""

    url: str
    key_hash: str
    key: dict
    created: dt.datetime
    num_rows: int
    size_bytes: int
    temporary: bool


def key_hash(key: dict) -> str:
    """The short hash naming the cache folder of `key`."""
    text = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parent_cache_dir(spark=None) -> str:
    """The parent cache folder URL from the Spark conf `petastorm.spark.converter.parentCacheDirUrl`.

    Without a Spark session, falls back to `<sparkdl work folder>/petastorm-cache`.

    Raises:
        ConfigError: the conf value has no scheme (Petastorm needs e.g. `file:///...`).
    """
    url = None
    if spark is None:
        try:
            from pyspark.sql import SparkSession

            spark = SparkSession.getActiveSession()
        except ImportError:  # pragma: no cover
            spark = None
    if spark is not None:
        url = spark.conf.get(PARENT_CACHE_CONF, None)
    if not url:
        url = (work_dir() / "petastorm-cache").as_uri()
    if "://" not in url and not url.startswith("file:"):
        raise ConfigError(f"{PARENT_CACHE_CONF}={url!r}: needs a scheme, e.g. 'file:///path/to/cache'")
    return url.rstrip("/")


def plan_hash(df) -> str:
    """A hash of the DataFrame's plan and data (`session_kind.plan_fingerprint`)."""
    return hashlib.sha256(plan_fingerprint(df).encode()).hexdigest()[:24]


def cache_key(df=None, snapshot=None, columns=(), fingerprint: str | None = None, dtype: str | None = "float32",
              with_label: bool = True, extra: dict | None = None) -> dict:
    """The key of a conversion (see the module docstring). With no snapshot, `df`'s plan hash stands in."""
    key = {"format": KEY_FORMAT, "columns": list(columns), "preprocessing": fingerprint, "dtype": dtype,
           "with_label": bool(with_label)}
    if snapshot is not None:
        key.update({"table": snapshot.table, "version": int(snapshot.version)})
    else:
        if df is None:
            raise ConfigError("cache_key: pass a DataFrame or a snapshot")
        key["plan"] = plan_hash(df)
    if extra:
        key["extra"] = extra
    return key


def is_plain_scan(df, snapshot) -> bool:
    """True when `df` is only a projection of exactly the snapshot's files (no filter, sample, join...)."""
    if snapshot is None or not snapshot.files:
        return False
    plan = optimized_plan(df)
    if plan is None:  # Spark Connect shows no plan: the data goes through the conversion job
        return False
    try:
        nodes = json.loads(plan.toJSON())
        classes = {n["class"].rsplit(".", 1)[-1] for n in nodes}
        if not classes <= _PLAN_NODES_OK:
            return False
        inputs = list(df.inputFiles())
    except Exception as exc:  # noqa: BLE001 - plans of unusual sources: not zero-copy
        log.debug("cannot inspect the plan for zero-copy: %s", exc)
        return False
    if len(inputs) != len(snapshot.files):
        return False
    wanted = sorted(_norm_key(f) for f in snapshot.files)
    return sorted(_norm_key(f) for f in inputs) == wanted


def _norm_key(uri: str) -> str:
    return normalized(uri)


def from_snapshot(snapshot, feature_column: str, label_column: str | None = None) -> PetastormDataset | None:
    """The zero-copy dataset over a snapshot's own Parquet files, or None when the files cannot be used as-is.

    Conditions: the files hold `feature_column` as list<float> (and `label_column`) physically (not partition
    columns), and their row count equals the snapshot's when the log knows it.
    """
    if not snapshot.files:
        return None
    columns = (feature_column,) + ((label_column,) if label_column else ())
    if set(columns) & set(snapshot.partition_columns):
        log.info("zero-copy not possible: %s are partition columns", set(columns) & set(snapshot.partition_columns))
        return None
    files = tuple(snapshot.files)
    row_groups, total = _row_groups(files, columns)
    if row_groups is None:
        return None
    if snapshot.num_rows is not None and snapshot.num_rows != total:
        log.info("zero-copy not possible: the files hold %d rows, the snapshot %d", total, snapshot.num_rows)
        return None
    key = {"format": KEY_FORMAT, "table": snapshot.table, "version": int(snapshot.version),
           "columns": list(columns), "zero_copy": True}
    return PetastormDataset(files, total, columns, key, None, feature_column, label_column, row_groups,
                            zero_copy=True)


def _row_groups(files, columns) -> tuple[tuple | None, int]:
    import pyarrow as pa

    out, total = [], 0
    for i, f in enumerate(files):
        with open_parquet(f) as parquet:
            meta = parquet.metadata
            schema = meta.schema.to_arrow_schema()
        for c in columns:
            if c not in schema.names:
                log.info("zero-copy not possible: column %r is not in %s", c, f)
                return None, 0
        ft = schema.field(columns[0]).type
        if not ((pa.types.is_list(ft) or pa.types.is_large_list(ft) or pa.types.is_fixed_size_list(ft))
                and pa.types.is_float32(ft.value_type)):
            log.info("zero-copy not possible: %r is %s in %s, not list<float>", columns[0], ft, f)
            return None, 0
        if len(columns) > 1:
            lt = schema.field(columns[1]).type
            if not (pa.types.is_integer(lt) or pa.types.is_floating(lt) or pa.types.is_boolean(lt)):
                log.info("zero-copy not possible: label %r is %s in %s, not numeric", columns[1], lt, f)
                return None, 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            out.append((i, g, n))
            total += n
    return tuple(out), total


def to_petastorm(df, model=None, snapshot=None, *, with_label: bool = True, key: dict | None = None,
                 temporary: bool = False, zero_copy: bool = True, dtype: str = "float32",
                 row_group_size_bytes: int = DEFAULT_ROW_GROUP_BYTES, parent: str | None = None,
                 spark=None) -> PetastormDataset:
    """Training data for `tf_dataset`: zero-copy from the snapshot when possible, else prepared and converted.

    Args:
        df: the raw input DataFrame (as read from the table, possibly split).
        model: a fitted `PreprocessorModel`; None when `df` already has `features` + `label` columns.
        snapshot: the Delta snapshot `df` was read from. It keys the cache by (table, version) when `df` is a
            plain scan of it or when `key` says how `df` derives from it (e.g. {"split": "train", ...});
            otherwise the plan hash keys it.
        with_label: include the label.
        key: extra key entries (how `df` was derived: split, filters, seed...).
        temporary: delete the cache folder at exit.
        zero_copy: allow the zero-copy path.
        dtype: float precision of the converted files ("float32" or "float64").
        row_group_size_bytes: Parquet row-group size of the converted files.
        parent: the parent cache folder URL (default: the Spark conf `petastorm.spark.converter.parentCacheDirUrl`).

    Raises:
        ValidationError: `df` lacks the spec's columns. ConfigError: bad arguments.
    """
    scan = snapshot is not None and is_plain_scan(df, snapshot)
    if zero_copy and scan:
        if model is not None:
            cols = model.passthrough_columns(df.schema)
        else:  # already prepared columns: `features` array<float> (+ `label`)
            cols = ("features", "label" if "label" in df.columns else None) if "features" in df.columns else None
        if cols is not None and (cols[1] is not None or not with_label):
            data = from_snapshot(snapshot, cols[0], cols[1] if with_label else None)
            if data is not None:
                log.info("zero-copy: reading %d files of %s@%s directly (%d rows)", len(data.files),
                         snapshot.table, snapshot.version, data.num_rows)
                return data
    prepared, fingerprint, image, counter = _prepare(df, model, with_label, spark)
    columns = ["features:encoded" if image is not None else "features"] + (["label"] if with_label else [])
    k = cache_key(df=df, snapshot=snapshot if (scan or key) else None, columns=columns, fingerprint=fingerprint,
                  dtype=dtype, with_label=with_label, extra=key)
    data = convert(prepared, k, temporary=temporary, dtype=dtype, row_group_size_bytes=row_group_size_bytes,
                   parent=parent, spark=spark, label_column="label" if with_label else None, counter=counter)
    return replace(data, image=image) if image is not None else data


def _prepare(df, model, with_label: bool, spark, keep_columns=(), validated: bool = False):
    """(prepared DataFrame, preprocessing fingerprint, image input, invalid-row counter) of `to_petastorm`;
    `validated` data of numeric, vector and categorical features is prepared by Spark SQL
    (`transform_validated_sql`)."""
    if model is None:
        missing = [c for c in ["features"] + (["label"] if with_label else []) if c not in df.columns]
        if missing:
            raise ValidationError(f"to_petastorm without a model needs column(s) {missing}; the DataFrame has "
                                  f"{df.columns}", [])
        return df.select(*keep_columns, "features", *(["label"] if with_label else [])), None, None, None
    if validated:
        prepared = model.transform_validated_sql(df, keep_columns, with_label=with_label)
        if prepared is not None:
            return prepared, model.fingerprint, None, None
    counter = invalid_row_counter(spark or df.sparkSession)
    image = model.image_input
    if image is not None:  # the cache keeps the encoded bytes; the training reader decodes them
        prepared = model.transform_encoded(df, keep_columns, with_label=with_label, counter=counter)
    else:
        prepared = model.transform(df, keep_columns, with_label=with_label, counter=counter)
    return prepared, model.fingerprint, image, counter


def to_petastorm_split(df, model, snapshot, is_validation, *, key: dict, validated: bool = False,
                       dtype: str = "float32", row_group_size_bytes: int = DEFAULT_ROW_GROUP_BYTES,
                       parent: str | None = None, spark=None, with_label: bool = True
                       ) -> tuple[PetastormDataset, PetastormDataset]:
    """The training and validation caches of `df`, prepared and written by ONE Spark job (one pass over `df`).

    Args:
        df: the raw input DataFrame.
        model: the fitted `PreprocessorModel`.
        snapshot: the Delta snapshot `df` was read from (with `key`, it keys the cache), or None (the plan hash).
        is_validation: a boolean Column over `df`'s columns: true on validation rows
            (`sparkdl.data.dataset.validation_rows`).
        key: how the split derives from the data (e.g. {"validation": 0.2, "seed": 0}).
        validated: `df` passed `sparkdl.data.validation.validate`: a spec of numeric, vector and categorical
            features is then prepared by Spark SQL, with no Python round trip
            (`PreprocessorModel.transform_validated_sql`).
        dtype, row_group_size_bytes, parent, spark, with_label: as in `to_petastorm`.

    Returns:
        (train, validation): two `PetastormDataset`s of the one cache folder (`validation` may have 0 rows).
    """
    from pyspark.sql import functions as F

    labelled = df.withColumn(SPLIT_COLUMN, F.when(is_validation, "validation").otherwise("train"))
    prepared, fingerprint, image, counter = _prepare(labelled, model, with_label, spark,
                                                     keep_columns=[SPLIT_COLUMN], validated=validated)
    columns = ["features:encoded" if image is not None else "features"] + (["label"] if with_label else [])
    k = cache_key(df=df, snapshot=snapshot, columns=columns, fingerprint=fingerprint, dtype=dtype,
                  with_label=with_label, extra={**key, "split": "train+validation"})
    url = convert(prepared, k, dtype=dtype, row_group_size_bytes=row_group_size_bytes, parent=parent, spark=spark,
                  counter=counter, part_column=SPLIT_COLUMN, label_column="label" if with_label else None).url
    meta = _read_marker(url)  # once for both parts
    train, validation = _dataset(url, meta, "train"), _dataset(url, meta, "validation")
    if image is not None:
        train, validation = replace(train, image=image), replace(validation, image=image)
    return train, validation


def convert(df, key: dict | None = None, *, temporary: bool = False, dtype: str | None = "float32",
            row_group_size_bytes: int = DEFAULT_ROW_GROUP_BYTES, compression: str = "uncompressed",
            feature_column: str = "features", label_column: str | None = "label", parent: str | None = None,
            spark=None, counter=None, part_column: str | None = None) -> PetastormDataset:
    """Materialize `df` (Petastorm's format) into the cache folder of `key`, or reuse it if it exists.

    Args:
        df: the DataFrame to write (its columns as they are; vectors become arrays, floats become `dtype`).
        key: what the data is (default: `cache_key(df)`, the plan hash).
        temporary: delete the folder when this process exits.
        dtype: "float32", "float64" or None (keep types).
        row_group_size_bytes: Parquet row-group size (`parquet.block.size`).
        compression: Parquet codec ("uncompressed", "snappy", ...).
        feature_column, label_column: what `tf_dataset` reads.
        parent: the parent cache folder URL (default: the Spark conf `petastorm.spark.converter.parentCacheDirUrl`).
        counter: an `invalid_row_counter` fed by `df`'s preprocessing; its counts are recorded with the cache.
        part_column: write one folder per value of this string column (in the same job); each is a part of the
            cache (`_dataset(url, marker, part)`, `to_petastorm_split`). The returned dataset is all of it.

    Raises:
        ConfigError: a bad dtype/compression or a parent cache URL without a scheme.
    """
    if dtype not in (None, "float32", "float64"):
        raise ConfigError(f"dtype must be None, 'float32' or 'float64', got {dtype!r}")
    if compression.lower() not in ("uncompressed", "snappy", "gzip", "lz4", "zstd"):
        raise ConfigError(f"compression must be one of uncompressed/snappy/gzip/lz4/zstd, got {compression!r}")
    key = key if key is not None else cache_key(df=df, columns=df.columns, dtype=dtype)
    parent = _as_url(parent) if parent else parent_cache_dir(spark or df.sparkSession)
    name = PREFIX + key_hash(key)
    url = join(parent, name)
    found = _load(url)
    if found is not None:
        log.info("reusing Petastorm cache %s (%d rows)", url, found.num_rows)
        if temporary:
            _delete_at_exit(url)
        return found
    # Published without a rename (object stores have none): the data goes to a folder of its own inside the
    # cache's, and the marker naming it is written last, in one write; a reader takes the cache only by its marker.
    data_dir = f"{DATA_PREFIX}{uuid.uuid4().hex[:12]}"
    tmp_url = join(url, data_dir)
    out = _cast(df, dtype)
    started = time.time()
    try:
        with stopped_on_error(spark or df.sparkSession, "sparkdl-cache"):
            writer = (out.write.option("compression", compression.lower())
                      .option("parquet.block.size", int(row_group_size_bytes)))
            (writer.partitionBy(part_column) if part_column else writer).parquet(tmp_url)
    except BaseException:
        try:
            _delete_folder(tmp_url)  # a failed write leaves no partial cache behind
            if _read_marker(url) is None and _is_empty(url):
                _delete_folder(url)
        except Exception as exc:  # noqa: BLE001 - the write's own error is the one to raise
            log.warning("could not remove the partial Petastorm cache %s: %s", tmp_url, exc)
        raise
    if part_column:  # one folder per part: <part_column>=<part>/part-*.parquet
        by_part = {folder[len(part_column) + 1:]: [f"{folder}/{f}" for f in _list_parquet(join(tmp_url, folder))]
                   for folder in _list_folders(tmp_url, f"{part_column}=")}
        files = [f for part_files in by_part.values() for f in part_files]
    else:
        files = _list_parquet(tmp_url)
    columns = tuple(c for c in out.columns if c != part_column)
    row_groups, total = _footers([join(tmp_url, f) for f in files])
    parts, first = {}, 0
    for part, part_files in (by_part.items() if part_column else ()):
        groups = [[i - first, g, n] for i, g, n in row_groups if first <= i < first + len(part_files)]
        parts[part] = {"files": part_files, "row_groups": groups, "num_rows": sum(n for _, _, n in groups)}
        first += len(part_files)
    meta = {"format": KEY_FORMAT, "key": key, "key_hash": key_hash(key), "data_dir": data_dir,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(), "created_ts": time.time(), "num_rows": total,
            "files": files, "row_groups": row_groups, "columns": list(columns), "feature_column": feature_column,
            "label_column": label_column, "temporary": bool(temporary),
            "invalid_rows": dict(counter.value) if counter is not None else {},
            "size_bytes": _folder_size(tmp_url), **({"parts": parts} if part_column else {})}
    found = _load(url)
    if found is None:  # nobody published this key meanwhile: publish ours (the marker, one write)
        fs, path = filesystem(url)
        with fs.open_output_stream(path + "/" + MARKER) as stream:
            stream.write(json.dumps(meta, sort_keys=True).encode())
        found = _load(url)
    if found is None:
        raise OSError(f"the Petastorm cache {url}: its marker {MARKER} was written but cannot be read back")
    if (_read_marker(url) or {}).get("data_dir") != data_dir:  # another process published first: use theirs;
        # ours is left to cleanup() (a reader that took it before the marker changed may still be reading it)
        log.info("Petastorm cache %s was published by another process meanwhile; using it", url)
    log.info("materialized %d rows into Petastorm cache %s in %.1fs", total, url, time.time() - started)
    if found.invalid_rows:
        log.warning("%d row(s) could not be prepared and are not in %s: %s", found.num_invalid, url,
                    found.invalid_rows)
    if temporary:
        _delete_at_exit(url)
    return found


def _cast(df, dtype):
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, DoubleType, FloatType

    cols = []
    src, dst = (DoubleType, FloatType()) if dtype == "float32" else (FloatType, DoubleType())
    for f in df.schema.fields:
        col = F.col(f"`{f.name}`")
        t = f.dataType
        if is_vector_udt(t):
            col = array_column(df, f.name)
            t = ArrayType(FloatType())
        if dtype is not None:
            if isinstance(t, src):
                col = col.cast(dst)
            elif isinstance(t, ArrayType) and isinstance(t.elementType, src):
                col = col.cast(ArrayType(dst, t.containsNull))
        cols.append(col.alias(f.name))
    return df.select(*cols)


def _list_parquet(url: str) -> list[str]:
    fs, path = filesystem(url)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                  and not i.base_name.startswith(("_", ".")))


def _list_folders(url: str, prefix: str) -> list[str]:
    fs, path = filesystem(url)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith(prefix))


def _footers(files: list[str]) -> tuple[list, int]:
    out, total = [], 0
    for i, f in enumerate(files):
        with open_parquet(f) as parquet:
            meta = parquet.metadata
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            out.append([i, g, n])
            total += n
    return out, total


def _read_marker(url: str) -> dict | None:
    fs, path = filesystem(url)
    try:
        with fs.open_input_stream(path + "/" + MARKER) as stream:
            return json.loads(stream.read().decode())
    except (FileNotFoundError, OSError, ValueError):
        return None


def _load(url: str) -> PetastormDataset | None:
    """The cache published at `url` (its marker names the data folder), or None."""
    return _dataset(url, _read_marker(url))


def _dataset(url: str, meta: dict | None, part: str | None = None) -> PetastormDataset | None:
    """The cache whose marker is `meta`, or one `part` of it (`to_petastorm_split`); None without a marker."""
    if meta is None:
        return None
    data = join(url, meta["data_dir"]) if meta.get("data_dir") else url
    listing = meta
    if part is not None:
        if "parts" not in meta:
            return None  # a cache written before parts existed: not this one
        listing = meta["parts"].get(part) or {"files": [], "row_groups": [], "num_rows": 0}  # a part with no rows
    return PetastormDataset(
        files=tuple(join(data, f) for f in listing["files"]), num_rows=int(listing["num_rows"]),
        columns=tuple(meta["columns"]), key=meta["key"], url=url, feature_column=meta["feature_column"],
        label_column=meta["label_column"], row_groups=tuple(tuple(r) for r in listing["row_groups"]),
        temporary=bool(meta.get("temporary")), invalid_rows=dict(meta.get("invalid_rows") or {}))


def _unpublished_data(url: str, before: float) -> list[str]:
    """Delete the data folders in cache folder `url` that its marker does not name (a failed or losing conversion)
    and that were last changed before `before` (a conversion may still be writing a newer one); their URLs."""
    meta = _read_marker(url) or {}
    fs, path = filesystem(url)
    deleted = []
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=False)):
        if (info.base_name.startswith(DATA_PREFIX) and info.base_name != meta.get("data_dir")
                and info.mtime is not None and info.mtime.timestamp() < before):
            if _delete_folder(join(url, info.base_name)):
                deleted.append(join(url, info.base_name))
    return deleted


def _is_empty(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.get_file_info(path).type == pafs.FileType.Directory and not fs.get_file_info(
        pafs.FileSelector(path, recursive=False))


def _exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _folder_size(url: str) -> int:
    fs, path = filesystem(url)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sum(i.size or 0 for i in infos if i.type == pafs.FileType.File)


def _delete_folder(url: str) -> bool:
    fs, path = filesystem(url)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return False
    fs.delete_dir(path)
    return True


_AT_EXIT: set[str] = set()


def _delete_at_exit(url: str) -> None:
    if url in _AT_EXIT:
        return
    _AT_EXIT.add(url)

    def _run():
        try:
            _delete_folder(url)
        except Exception as exc:  # noqa: BLE001 - best effort at exit
            log.warning("could not delete temporary Petastorm cache %s: %s", url, exc)

    atexit.register(_run)


def _common_parent(files) -> str:
    return files[0].rsplit("/", 1)[0] if files else ""


def _as_url(folder: str) -> str:
    """A folder path or URL as a URL (plain local paths become `file:///...`)."""
    folder = str(folder)
    if "://" in folder or folder.startswith("file:"):
        return folder.rstrip("/")
    from pathlib import Path

    return Path(folder).expanduser().resolve().as_uri()


def list_caches(parent: str | None = None) -> list[CacheInfo]:
    """The sparkdl cache folders under `parent` (default: the Spark conf / work folder), oldest first."""
    parent = _as_url(parent) if parent else parent_cache_dir()
    fs, path = filesystem(parent)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    out = []
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=False)):
        if info.type != pafs.FileType.Directory or not info.base_name.startswith(PREFIX):
            continue
        url = join(parent, info.base_name)
        meta = _read_marker(url)
        if meta is None:
            continue
        out.append(CacheInfo(url, meta["key_hash"], meta["key"],
                             dt.datetime.fromtimestamp(meta["created_ts"], dt.timezone.utc), int(meta["num_rows"]),
                             int(meta.get("size_bytes", 0)), bool(meta.get("temporary"))))
    return sorted(out, key=lambda c: c.created)


def cleanup(older_than: dt.timedelta | None = None, key: dict | str | None = None,
            parent: str | None = None) -> list[str]:
    """Delete cache folders; return their URLs.

    Args:
        older_than: only caches created longer ago than this (None: any age).
        key: only the cache of this key (a key dict, its hash, or the folder URL). None: every key.
        parent: the parent folder (default: the Spark conf / work folder).

    With neither `older_than` nor `key`, every sparkdl cache is deleted. Unfinished temporary folders of failed
    conversions are deleted too (when `key` is None and they are older than `older_than`, or an hour).
    """
    parent = _as_url(parent) if parent else parent_cache_dir()
    now = dt.datetime.now(dt.timezone.utc)
    wanted = None
    if isinstance(key, dict):
        wanted = key_hash(key)
    elif isinstance(key, str):
        wanted = key.rstrip("/").rsplit("/", 1)[-1].removeprefix(PREFIX)
    deleted = []
    for info in list_caches(parent):
        if wanted is not None and info.key_hash != wanted:
            continue
        if older_than is not None and now - info.created < older_than:
            continue
        if _delete_folder(info.url):
            deleted.append(info.url)
    if wanted is None:
        limit = (older_than or dt.timedelta(hours=1)).total_seconds()
        fs, path = filesystem(parent)
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            for info in fs.get_file_info(pafs.FileSelector(path, recursive=False)):
                old = info.mtime is not None and now.timestamp() - info.mtime.timestamp() > limit
                if info.base_name.startswith(TMP_PREFIX) and old:
                    url = join(parent, info.base_name)
                    if _delete_folder(url):
                        deleted.append(url)
                elif info.base_name.startswith(PREFIX) and info.type == pafs.FileType.Directory:
                    deleted += _unpublished_data(join(parent, info.base_name), now.timestamp() - limit)
    if deleted:
        log.info("deleted %d Petastorm cache folder(s)", len(deleted))
    return deleted


__all__ = ["PetastormDataset", "CacheInfo", "to_petastorm", "to_petastorm_split", "convert", "from_snapshot",
           "cache_key", "key_hash", "plan_hash", "is_plain_scan", "parent_cache_dir", "list_caches", "cleanup",
           "local_path", "same_file"]
