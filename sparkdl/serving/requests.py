"""Turning an HTTP scoring request into the Arrow table the model's `Scorer` takes, and telling a client exactly
what is wrong with its input.

The request formats are MLflow's scoring server's (`POST /invocations`, JSON):
`{"dataframe_split": {"columns": [...], "data": [[...], ...]}}`, `{"dataframe_records": [{col: value}, ...]}`,
`{"instances": [{col: value}, ...]}` and `{"inputs": {col: [values]}}` (or `"inputs": [{...}, ...]`). Columns are
the model's raw feature columns, as in the table it was trained on; each is converted to the Arrow type of its
feature kind, and a value that does not fit is a `RequestError` (HTTP 400) naming the column and the row.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa

from sparkdl.data.kinds import feature_kind
from sparkdl.errors import RequestError

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


@dataclass(frozen=True)
class ParsedRequest:
    table: pa.Table
    rows: int


def parse_request(body: bytes, spec, max_rows: int | None = None, max_depth: int | None = None) -> ParsedRequest:
    """The request's rows as an Arrow table of the spec's feature columns (typed by feature kind). Linear in the
    size of the body: only the model's feature columns are collected, whatever else a request carries.

    Raises:
        RequestError: malformed JSON or nesting deeper than `max_depth` (400), more rows than `max_rows` (413),
            an unknown format, missing feature columns, columns of different lengths, or a value that does not fit
            its column's kind (the message names the column and the row).
    """
    try:
        payload = json.loads(body)
    except RecursionError:
        raise RequestError(f"the JSON is nested deeper than {max_depth or 'Python can parse'} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"malformed JSON: {exc}") from None
    if max_depth is not None and _deeper_than(payload, max_depth):
        raise RequestError(f"the JSON is nested deeper than max_json_depth={max_depth} levels")
    names = spec.feature_names
    columns, found = _columns(payload, names, max_rows)
    missing = [n for n in names if n not in columns]
    if missing:
        shown = sorted(found)[:20]
        raise RequestError(f"missing column(s) {missing}: the model takes the raw feature columns {names}; the "
                           f"request has {shown}{' ...' if len(found) > len(shown) else ''}")
    lengths = {len(columns[n]) for n in names}
    if len(lengths) != 1:
        raise RequestError(f"the feature columns have different numbers of rows: "
                           f"{ {n: len(columns[n]) for n in names} }")
    arrays = [_typed(f, columns[f.name]) for f in spec.features]
    table = pa.Table.from_arrays(arrays, names=names)
    return ParsedRequest(table, table.num_rows)


def _deeper_than(payload, limit: int) -> bool:
    """Whether `payload` nests containers more than `limit` levels deep (one pass, no recursion)."""
    stack = [(payload, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in (node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()):
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def _check_rows(rows: int, max_rows: int | None) -> None:
    if max_rows is not None and rows > max_rows:
        raise RequestError(f"the request has {rows} rows, more than max_rows={max_rows}; split it", status=413)


def _columns(payload, names: list[str], max_rows: int | None) -> tuple[dict[str, list], set]:
    """({feature column: values}, the column names the request has) from any of the request formats; only the
    feature columns' values are collected."""
    if not isinstance(payload, dict) or len(set(payload) & set(FORMATS)) != 1:
        found = sorted(payload)[:20] if isinstance(payload, dict) else type(payload).__name__
        raise RequestError(f"unknown request format {found}: expected a JSON object with exactly one of {FORMATS}")
    kind = next(k for k in FORMATS if k in payload)
    body = payload[kind]
    wanted = set(names)
    if kind == "dataframe_split":
        if not isinstance(body, dict) or not isinstance(body.get("columns"), list) or not isinstance(
                body.get("data"), list):
            raise RequestError('dataframe_split: expected {"columns": [...], "data": [[...], ...]}')
        bad = [c for c in body["columns"] if not isinstance(c, str)]
        if bad:
            raise RequestError(f"dataframe_split: column names must be strings, got {bad[:5]!r}")
        _check_rows(len(body["data"]), max_rows)
        width = len(body["columns"])
        for i, row in enumerate(body["data"]):
            if not isinstance(row, list) or len(row) != width:
                raise RequestError(f"dataframe_split: row {i} has {len(row) if isinstance(row, list) else row!r} "
                                   f"values, expected {width} (one per column)")
        positions = {c: j for j, c in enumerate(body["columns"]) if c in wanted}
        return {c: [row[j] for row in body["data"]] for c, j in positions.items()}, set(body["columns"])
    if kind == "inputs" and isinstance(body, dict):
        columns = {k: v if isinstance(v, list) else [v] for k, v in body.items() if k in wanted}
        _check_rows(max((len(v) for v in columns.values()), default=0), max_rows)
        return columns, set(body)
    if not isinstance(body, list) or not all(isinstance(r, dict) for r in body):
        raise RequestError(f"{kind}: expected a list of {{column: value}} objects, one per row")
    _check_rows(len(body), max_rows)
    present = {n for n in names if any(n in record for record in body)}
    columns = {n: [record.get(n) for record in body] for n in present}
    found = present if len(present) == len(names) else set().union(*(record.keys() for record in body[:100]))
    return columns, found


def _typed(feature, values: list) -> pa.Array:
    """The values of one feature column as the Arrow type of its kind (`sparkdl.data.kinds`)."""
    try:
        return feature_kind(feature.kind).from_json(feature.name, values)
    except RequestError:
        raise
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise RequestError(f"column {feature.name!r}: the values do not fit a {feature.kind} feature: {exc}") from None


def invalid_rows_error(valid, reasons, first: int = 5) -> RequestError:
    """HTTP 422 for rows the fitted preprocessing cannot prepare, naming the first rows and their reasons."""
    bad = [(i, reasons[i]) for i in range(len(valid)) if not valid[i]]
    listed = "; ".join(f"row {i}: {r}" for i, r in bad[:first])
    more = f" (and {len(bad) - first} more)" if len(bad) > first else ""
    return RequestError(f"{len(bad)} row(s) cannot be scored: {listed}{more}", status=422)
