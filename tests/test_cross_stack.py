"""The model store across stacks: a model saved here is scored by the other stack's interpreter, in its own Spark.

`make test` runs the suite once per stack and points SPARKDL_OTHER_PYTHON at the other stack's interpreter, so the
pinned suite checks pinned -> current and the current suite checks current -> pinned. Keras 2 models (TF 2.15's
keras, tf_keras 2.21) score on both stacks to 1e-5 of in-process predict; a Keras 3 model is refused on the pinned
stack with an error naming both Keras versions.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_score_udf import as_matrix, expected_outputs

from sparkdl import stack

OTHER_PYTHON = os.environ.get("SPARKDL_OTHER_PYTHON")
REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not OTHER_PYTHON, reason="SPARKDL_OTHER_PYTHON (the other stack's interpreter) "
                                                          "is not set: `make test` sets it")]

# Runs in the other interpreter: score a Parquet file with a store model, write the result as Parquet.
SCORE_ELSEWHERE = """
import json, sys
from sparkdl import stack
from sparkdl.session import get_spark
from sparkdl.registry import ModelStore
from sparkdl.score import score_dataframe
store_root, ref, rows, out = sys.argv[1:5]
spark = get_spark(master="local[1]", app_name="sparkdl-cross-stack")
scored = score_dataframe(spark.read.parquet(rows), ref, store=ModelStore(store_root), output="probabilities",
                         keep_columns=["id"])
scored.write.parquet(out)
print(json.dumps({"stack": stack.describe()}))
"""


def _score_on_the_other_stack(tmp_path: Path, store, version, pdf) -> subprocess.CompletedProcess:
    rows, out = tmp_path / "rows.parquet", tmp_path / "scored.parquet"
    pdf.to_parquet(rows, index=False)
    env = {**os.environ, "SPARKDL_WORK_DIR": str(tmp_path / "work"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([OTHER_PYTHON, "-c", SCORE_ELSEWHERE, str(store.root), str(version), str(rows), str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _other_stack_name() -> str:
    out = subprocess.run([OTHER_PYTHON, "-c", "from sparkdl import stack; print(stack.stack_name())"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def test_the_other_interpreter_is_the_other_stack():
    assert _other_stack_name() != stack.stack_name()


@pytest.mark.parametrize("fixture, columns", [("cancer", None), ("digits_cnn", ["pixels"])])
def test_demo_models_saved_here_score_on_the_other_stack(request, fixture, columns, score_store, digits_df,
                                                         tmp_path):
    import pandas as pd

    if fixture == "cancer":
        df, columns, version, prep, model = request.getfixturevalue("cancer")
    else:
        version, prep, model = request.getfixturevalue("digits_cnn")
        df = digits_df
    pdf = df.select("id", *columns).orderBy("id").limit(200).toPandas()
    expected, valid = expected_outputs(prep, model, pdf, columns)
    assert valid.all()

    done = _score_on_the_other_stack(tmp_path, score_store, version, pdf)
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["stack"].split()[0] != stack.stack_name()
    scored = pd.read_parquet(tmp_path / "scored.parquet").sort_values("id")
    assert scored["id"].tolist() == pdf["id"].tolist()
    if expected.shape[1] == 1:  # a sigmoid output: "probabilities" holds [P(class 0), P(class 1)]
        expected = np.hstack([1.0 - expected, expected])
    np.testing.assert_allclose(as_matrix(scored["probabilities"]), expected, atol=1e-5)


@pytest.mark.skipif(stack.keras_version("keras3") is None, reason="Keras 3 exists on the current stack only")
def test_a_keras3_model_is_refused_on_the_pinned_stack_naming_both_keras_versions(score_store, digits_df,
                                                                                    tmp_path):
    from test_score_udf import DIGITS_SPEC, train_and_save

    version, _, model = train_and_save(score_store, "digits_mlp_k3", DIGITS_SPEC, digits_df, "mlp",
                                       {"hidden": (16,)}, epochs=1, keras="keras3")
    assert score_store.metadata(version)["keras_flavour"] == "keras3"
    pdf = digits_df.select("id", "pixels").orderBy("id").limit(20).toPandas()
    done = _score_on_the_other_stack(tmp_path, score_store, version, pdf)
    assert done.returncode != 0
    assert f"saved with Keras {stack.keras_version('keras3')}" in done.stderr
    assert "tf_keras 2.15" in done.stderr and not (tmp_path / "scored.parquet").exists()
