"""Feature kinds: what each kind of input column accepts, in each type system it meets, said once.

A feature's `kind` (`numeric`, `vector`, `sequence`, `categorical`, `text`, `image`) decides which columns it takes.
Each kind is one `FeatureKind` record holding its rules for the three type systems a column passes through:

- Spark (`spark_ok`): schema validation before training and scoring (`sparkdl.data.validation`);
- Arrow (`arrow_ok`): the batches a scoring UDF receives (`sparkdl.score.udf`);
- JSON (`from_json`): the values of an HTTP request (`sparkdl.serving.requests`);

and the words every error uses (`expects`). `register_kind` adds a kind (or replaces one with `overwrite=True`);
`feature_kind(name)` looks one up. How a kind is prepared into tensors (statistics, encoding) is still
`sparkdl.data.preprocess`'s, branched per kind: a new kind also needs its preparation there (docs/extending.md).
"""
from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from sparkdl.errors import ConfigError, RequestError


@dataclass(frozen=True)
class FeatureKind:
    """One feature kind.

    Attributes:
        name: the `kind` of a feature spec.
        expects: the column it takes, in words (the shape is added where the kind has one).
        spark_ok: whether a Spark column type can hold it.
        arrow_ok: whether an Arrow type can hold it (a null-typed, all-null batch always can).
        from_json: the Arrow array of one column of request values (RequestError naming column and row).
        shaped: the kind takes a `shape` (vector, sequence); scalar kinds refuse one.
    """

    name: str
    expects: str
    spark_ok: Callable[[Any], bool]
    arrow_ok: Callable[[pa.DataType], bool]
    from_json: Callable[[str, list], pa.Array]
    shaped: bool = False


_KINDS: dict[str, FeatureKind] = {}


def register_kind(kind: FeatureKind, overwrite: bool = False) -> FeatureKind:
    """Make `kind` known by its name. Raises ConfigError for a taken name, unless `overwrite`."""
    if not isinstance(kind, FeatureKind) or not kind.name:
        raise ConfigError(f"register_kind: expected a sparkdl.data.kinds.FeatureKind with a name, got {kind!r}")
    if kind.name in _KINDS and _KINDS[kind.name] != kind and not overwrite:
        raise ConfigError(f"register_kind: feature kind {kind.name!r} exists (pass overwrite=True)")
    _KINDS[kind.name] = kind
    return kind


def feature_kind(name: str) -> FeatureKind:
    """The kind called `name`. Raises ConfigError listing the known kinds."""
    found = _KINDS.get(name)
    if found is None:
        raise ConfigError(f"unknown feature kind {name!r}; known kinds: {', '.join(_KINDS)}")
    return found


def kind_names() -> tuple[str, ...]:
    return tuple(_KINDS)


# -- Spark types ---------------------------------------------------------------------------------------------------
def is_vector_udt(data_type) -> bool:
    """True for Spark ML (and old MLlib) vector columns."""
    from pyspark.ml.linalg import VectorUDT
    from pyspark.mllib.linalg import VectorUDT as OldVectorUDT

    return isinstance(data_type, (VectorUDT, OldVectorUDT))


def spark_numeric(data_type) -> bool:
    from pyspark.sql.types import BooleanType, NumericType

    return isinstance(data_type, (NumericType, BooleanType))


def spark_integral(data_type) -> bool:
    from pyspark.sql.types import BooleanType, IntegralType

    return isinstance(data_type, (IntegralType, BooleanType))


def spark_string(data_type) -> bool:
    from pyspark.sql.types import StringType

    return isinstance(data_type, StringType)


def _spark_binary_or_string(data_type) -> bool:
    from pyspark.sql.types import BinaryType

    return isinstance(data_type, BinaryType) or spark_string(data_type)


def _spark_array(data_type) -> bool:
    from pyspark.sql.types import ArrayType

    return is_vector_udt(data_type) or (isinstance(data_type, ArrayType) and spark_numeric(data_type.elementType))


# -- Arrow types ---------------------------------------------------------------------------------------------------
def _arrow_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _arrow_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _arrow_list(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) and (
        _arrow_number(t.value_type) or pa.types.is_null(t.value_type))


# -- JSON values ---------------------------------------------------------------------------------------------------
def _json_numbers(column: str, values: list) -> pa.Array:
    for i, v in enumerate(values):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise RequestError(f"column {column!r}, row {i}: expected a number, got {v!r}")
    return pa.array(values, pa.float64())


def _json_lists(inner: pa.DataType) -> Callable[[str, list], pa.Array]:
    def convert(column: str, values: list) -> pa.Array:
        for i, v in enumerate(values):
            if v is not None and not isinstance(v, list):
                raise RequestError(f"column {column!r}, row {i}: expected a list of numbers, got {v!r}")
        return pa.array(values, inner)
    return convert


def _json_images(column: str, values: list) -> pa.Array:
    return pa.array([base64.b64decode(v) if isinstance(v, str) else v for v in values], pa.binary())


for _kind in (
    FeatureKind("numeric", "a numeric or boolean column", spark_numeric,
                lambda t: _arrow_number(t) or pa.types.is_boolean(t), _json_numbers),
    FeatureKind("vector", "array<numeric>", _spark_array, _arrow_list,
                _json_lists(pa.list_(pa.float32())), shaped=True),
    FeatureKind("sequence", "array<numeric>", _spark_array, _arrow_list,
                _json_lists(pa.list_(pa.list_(pa.float32()))), shaped=True),
    FeatureKind("categorical", "a string, integer or boolean column",
                lambda t: spark_integral(t) or spark_string(t),
                lambda t: _arrow_string(t) or pa.types.is_integer(t) or pa.types.is_boolean(t),
                lambda column, values: pa.array(values)),
    FeatureKind("text", "a string column", spark_string, _arrow_string,
                lambda column, values: pa.array(values, pa.string())),
    FeatureKind("image", "a binary column of encoded images or a string column of paths", _spark_binary_or_string,
                lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t) or _arrow_string(t), _json_images),
):
    register_kind(_kind)
