"""Slice definitions of an evaluation: which groups of rows get metrics of their own.

Three forms, as in YAML `evaluate.slices` and `evaluate_model(..., slices=[...])`:

- a column name, ``"sex"``: one slice per value (``sex=female``), the `top_k` most frequent kept and the rest
  merged into ``sex=other``;
- a list of columns, ``["sex", "age_band"]``: their crossing (``sex=female, age_band=young``), top-k likewise;
- a named SQL boolean expression, ``{"name": "young", "where": "age < 25"}``: one slice.

A mapping ``{"columns": [...], "top_k": 5}`` sets `top_k` of a column or crossing. The overall slice is always
there. Slice columns may be any columns of the evaluated table, model features or not.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from sparkdl.errors import ConfigError

OVERALL = "overall"
OTHER = "other"
DEFAULT_TOP_K = 20


@dataclass(frozen=True)
class Slice:
    """One slice definition: a column, a crossing of columns, or a named `where` expression."""

    name: str
    columns: tuple[str, ...] = ()
    where: str | None = None
    top_k: int = DEFAULT_TOP_K

    @property
    def by_value(self) -> bool:
        """Whether this definition makes one slice per value (columns and crossings) rather than one slice."""
        return not self.where

    def label(self, values: Sequence[Any]) -> str:
        """The slice name of one value tuple: ``sex=female, age_band=young``."""
        return ", ".join(f"{c}={'null' if v is None else v}" for c, v in zip(self.columns, values))

    def name_of(self, value: str) -> str:
        """The slice name of one `slice_keys` value: a column slice's JSON value tuple as `label` gives it, a
        `where` slice's own name as it is."""
        return self.label(json.loads(value)) if self.by_value else value

    def other_label(self) -> str:
        return ", ".join(f"{c}={OTHER}" for c in self.columns)


def parse_slices(items: Sequence[Any] | None) -> list[Slice]:
    """Slice definitions from their YAML/Python forms (see the module docstring).

    Raises:
        ConfigError: an item of no known form, an empty column list, a `where` without a name, a bad `top_k`, or
            two definitions with one name; the message names the item.
    """
    if items is None:
        return []
    if isinstance(items, (str, dict)) or not isinstance(items, Sequence):
        raise ConfigError(f"slices must be a list of slice definitions, got {items!r}")
    slices: list[Slice] = []
    for i, item in enumerate(items):
        where = f"slices[{i}]"
        if isinstance(item, Slice):
            slices.append(item)
        elif isinstance(item, str) and item.strip():
            slices.append(Slice(item, (item,)))
        elif isinstance(item, (list, tuple)) and item and all(isinstance(c, str) and c for c in item):
            slices.append(Slice(" x ".join(item), tuple(item)))
        elif isinstance(item, dict):
            slices.append(_from_mapping(item, where))
        else:
            raise ConfigError(f"{where}: expected a column name, a list of columns or a mapping with 'where' and "
                              f"'name' (or 'columns'), got {item!r}")
    names = [s.name for s in slices]
    twice = sorted({n for n in names if names.count(n) > 1} | ({OVERALL} & set(names)))
    if twice:
        raise ConfigError(f"slices: the name(s) {twice} are used twice ('{OVERALL}' is always there)")
    return slices


def _from_mapping(item: dict, where: str) -> Slice:
    unknown = sorted(set(item) - {"name", "where", "columns", "top_k"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: name, where, columns, top_k")
    top_k = item.get("top_k", DEFAULT_TOP_K)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ConfigError(f"{where}.top_k must be an integer >= 1, got {top_k!r}")
    if "where" in item:
        if not isinstance(item.get("name"), str) or not item["name"].strip():
            raise ConfigError(f"{where}: a 'where' slice needs a 'name', got {item!r}")
        if not isinstance(item["where"], str) or not item["where"].strip() or "columns" in item:
            raise ConfigError(f"{where}.where must be one SQL boolean expression (and no 'columns'), got {item!r}")
        return Slice(item["name"], (), item["where"])
    columns = item.get("columns")
    if isinstance(columns, str):
        columns = [columns]
    if not isinstance(columns, (list, tuple)) or not columns or not all(isinstance(c, str) and c for c in columns):
        raise ConfigError(f"{where}: expected 'columns' (a list of column names) or 'where', got {item!r}")
    return Slice(str(item.get("name") or " x ".join(columns)), tuple(columns), top_k=top_k)


def referenced_columns(slices: Sequence[Slice], columns: Sequence[str]) -> list[str]:
    """The columns of `columns` the slices read: their columns, and every column named in a `where` expression."""
    wanted: list[str] = []
    by_lower = {c.lower(): c for c in columns}
    for s in slices:
        names = list(s.columns)
        if s.where:
            names += [quoted or bare for quoted, bare in re.findall(r"`([^`]+)`|([A-Za-z_][A-Za-z0-9_]*)", s.where)]
        for name in names:
            found = by_lower.get(name.lower())
            if found and found not in wanted:
                wanted.append(found)
    return wanted


def check_slices(slices: Sequence[Slice], df: DataFrame, table: str) -> None:
    """Refuse slices the table cannot give, before any Spark job: a missing column (named, with the columns
    present) or a `where` that is not a valid boolean expression over the table (Spark's analysis error).

    Raises:
        ConfigError: as above.
    """
    from pyspark.sql import types as T

    present = {c.lower() for c in df.columns}
    for s in slices:
        missing = [c for c in s.columns if c.lower() not in present]
        if missing:
            raise ConfigError(f"slice {s.name!r}: {table} has no column(s) {missing}; columns: {df.columns}")
        if s.where:
            try:
                field = df.select(F.expr(s.where).alias("_w")).schema["_w"]
            except Exception as exc:  # noqa: BLE001 - Spark's analysis error, classic or Connect
                raise ConfigError(f"slice {s.name!r}: 'where: {s.where}' is not a valid expression over {table}: "
                                  f"{str(exc).splitlines()[0][:300]}") from exc
            if not isinstance(field.dataType, T.BooleanType):
                raise ConfigError(f"slice {s.name!r}: 'where: {s.where}' must be boolean, it is "
                                  f"{field.dataType.simpleString()}")


def slice_keys(slices: Sequence[Slice]) -> Column:
    """An array<struct<slice, value>> per row: the overall slice, one entry per column slice (its value tuple as
    a string, top-k merging happens on the driver), and the named `where` slices the row is in."""
    entries = [F.struct(F.lit(OVERALL).alias("slice"), F.lit(OVERALL).alias("value"))]
    for s in slices:
        if s.where:
            entries.append(F.when(F.expr(s.where), F.struct(F.lit(s.name).alias("slice"),
                                                            F.lit(s.name).alias("value"))))
        else:
            value = F.to_json(F.array(*[F.col(f"`{c}`").cast("string") for c in s.columns]))
            entries.append(F.struct(F.lit(s.name).alias("slice"), value.alias("value")))
    return F.filter(F.array(*entries), lambda e: e.isNotNull())
