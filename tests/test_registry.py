"""The model store: versions, references, metadata, artifacts, integrity checks and concurrent saves."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from sparkdl import models
from sparkdl.data.spec import ModelSignature
from sparkdl.errors import ConfigError, ModelStoreError
from sparkdl.registry import LoadedModel, ModelStore, ModelVersion

SIGNATURE = ModelSignature((6,), "binary")
X = np.random.default_rng(0).normal(size=(20, 6)).astype("float32")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    tf.keras.utils.set_random_seed(3)
    return models.build("mlp", SIGNATURE, hidden=[8])


@pytest.fixture
def store(tmp_path):
    return ModelStore(tmp_path / "store")


def test_versions_increment_and_refs_resolve(store, model):
    assert store.list_models() == []
    first = store.save("churn", model, {"run_name": "a"})
    second = store.save("churn", model, {"run_name": "b"})
    store.save("fraud.v2_x-1", model, {})
    assert (first.version, second.version) == (1, 2)
    assert str(second) == "churn@2" and second.path == store.root / "churn" / "2"
    assert store.list_models() == ["churn", "fraud.v2_x-1"]
    assert store.list_versions("churn") == [1, 2]
    assert store.latest("churn") == second
    assert store.resolve("churn") == store.resolve("churn@latest") == second
    assert store.resolve("churn@1") == first == store.resolve(first)
    assert store.metadata("churn@1")["run_name"] == "a"
    assert store.metadata("churn")["run_name"] == "b"
    assert not [p for p in (store.root / "churn").iterdir() if p.name.startswith(".")]  # no temp folders left


def test_saved_model_loads_with_identical_predictions_and_metadata(store, model):
    meta = {"feature_spec": {"features": [{"name": "x", "kind": "vector", "shape": [6]}]},
            "signature": SIGNATURE, "history": {"loss": [np.float32(0.5), np.float32(0.25)]},
            "source": {"table": "/lake/t", "version": np.int64(3), "timestamp": "2026-01-01T00:00:00Z"},
            "label_classes": ["no", "yes"], "model_name": "mlp", "num_proc": 2}
    ref = store.save("churn", model, meta)
    loaded = store.load("churn@1")
    assert isinstance(loaded, LoadedModel) and (loaded.name, loaded.version, loaded.path) == ("churn", 1, ref.path)
    assert loaded.ref == ref and str(loaded) == "churn@1"
    np.testing.assert_allclose(loaded.model.predict(X, verbose=0), model.predict(X, verbose=0), atol=1e-6)
    md = loaded.metadata
    assert md["signature"] == SIGNATURE.to_dict()
    assert md["history"]["loss"] == [0.5, 0.25] and md["source"]["version"] == 3
    assert (md["name"], md["version"], md["model_format"]) == ("churn", 1, "keras_v3")
    assert md["created_at"].endswith("+00:00")
    assert md["model_sha256"] == hashlib.sha256((ref.path / "model.keras").read_bytes()).hexdigest()
    versions = md["library_versions"]
    assert versions["tensorflow"] == tf.__version__ and versions["numpy"] == np.__version__
    assert {"sparkdl", "pyspark", "petastorm"} <= set(versions)
    assert json.loads((ref.path / "metadata.json").read_text()) == md


def test_missing_name_or_version_lists_what_exists(store, model):
    with pytest.raises(ModelStoreError, match=r"no model named 'churn'.*models: none"):
        store.load("churn")
    store.save("churn", model, {})
    store.save("churn", model, {})
    with pytest.raises(ModelStoreError, match=r"model 'churn' has no version 7 in .*; versions: \[1, 2\]"):
        store.resolve("churn@7")
    with pytest.raises(ModelStoreError, match=r"no model named 'other'.*models: \['churn'\]"):
        store.metadata("other@latest")


@pytest.mark.parametrize("bad", ["", "a/b", "../up", "sp ace", "x@y@z", ".tmp-x", "name\n", "..", "a\nb"])
def test_invalid_names_are_config_errors(store, model, bad):
    with pytest.raises(ConfigError):
        store.save(bad, model, {})
    with pytest.raises(ConfigError):
        store.resolve(bad)


def test_malformed_refs(store, model):
    store.save("m", model, {})
    with pytest.raises(ModelStoreError, match=r"'m@two'.*a version number, 'latest' or an alias of 'm'"):
        store.resolve("m@two")  # no alias 'two'
    with pytest.raises(ConfigError, match=r"alias in model reference 'm@t w o'"):
        store.resolve("m@t w o")
    with pytest.raises(ConfigError, match="model reference must be"):
        store.resolve(3)


def test_flipped_bytes_in_model_file_are_detected(store, model):
    ref = store.save("m", model, {})
    path = ref.path / "model.keras"
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelStoreError, match=f"{path}.*is corrupt: its sha256 is"):
        store.load(ref)
    path.write_bytes(bytes(data[: len(data) // 3]))  # truncated: even without the check Keras cannot read it
    with pytest.raises(ModelStoreError, match=f"cannot load {path}"):
        store.load(ref, verify=False)
    assert store.metadata(ref)["name"] == "m"  # metadata stays readable


def test_missing_or_corrupt_files(store, model):
    ref = store.save("m", model, {})
    (ref.path / "metadata.json").write_text("{not json")
    with pytest.raises(ModelStoreError, match=r"metadata.json is not valid JSON"):
        store.metadata("m@1")
    (ref.path / "metadata.json").unlink()
    with pytest.raises(ModelStoreError, match=r"m@1: .*metadata.json is missing"):
        store.load("m@1")
    ref2 = store.save("m", model, {})
    (ref2.path / "model.keras").unlink()
    with pytest.raises(ModelStoreError, match=f"the model file {ref2.path / 'model.keras'} is missing"):
        store.load("m@2")


def test_lambda_layers_are_refused_at_load(store):
    inputs = tf.keras.Input((6,))
    unsafe = tf.keras.Model(inputs, tf.keras.layers.Lambda(lambda t: t * 2.0)(inputs))
    ref = store.save("unsafe", unsafe, {})
    with pytest.raises(ModelStoreError, match=r"unsafe@1: cannot load .*Lambda"):
        store.load(ref)


def test_metadata_must_be_json_and_nothing_is_written_otherwise(store, model):
    with pytest.raises(ConfigError, match=r"save 'm': metadata: not JSON-serializable.*object"):
        store.save("m", model, {"bad": object()})
    with pytest.raises(ConfigError, match="metadata must be a dict"):
        store.save("m", model, ["not", "a", "dict"])
    with pytest.raises(ConfigError, match="reserved"):
        store.save("m", model, {}, artifacts={"model.keras": b"x"})
    assert store.list_models() == []


def test_artifacts(store, model):
    ref = store.save("m", model, {}, artifacts={"notes.txt": "hello", "raw.bin": b"\x00\x01", "cfg.json": {"a": 1}})
    assert store.artifacts(ref) == ["cfg.json", "notes.txt", "raw.bin"]
    assert store.artifact_path(ref, "notes.txt").read_text() == "hello"
    assert json.loads(store.artifact_path("m", "cfg.json").read_text()) == {"a": 1}
    written = store.add_artifact("m@1", "metrics.json", {"auc": np.float64(0.9)})
    assert written == ref.path / "metrics.json" and json.loads(written.read_text()) == {"auc": 0.9}
    store.add_artifact(ref, "metrics.json", {"auc": 0.95})  # re-evaluation replaces it
    assert json.loads(written.read_text()) == {"auc": 0.95}
    assert store.artifact_path(ref, "roc.png", must_exist=False) == ref.path / "roc.png"
    with pytest.raises(ModelStoreError, match=r"no artifact 'roc.png'.*artifacts: \['cfg.json', 'metrics.json'"):
        store.artifact_path(ref, "roc.png")
    with pytest.raises(ConfigError, match="reserved"):
        store.add_artifact(ref, "metadata.json", {})
    with pytest.raises(ConfigError, match="invalid artifact filename"):
        store.add_artifact(ref, "../escape.txt", "x")
    with pytest.raises(ModelStoreError, match="has no version 5"):
        store.add_artifact("m@5", "metrics.json", {})
    # artifacts do not disturb the model's integrity check
    np.testing.assert_allclose(store.load(ref).model.predict(X, verbose=0), model.predict(X, verbose=0), atol=1e-6)


def test_default_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARKDL_MODEL_STORE", str(tmp_path / "env-store"))
    assert ModelStore().root == (tmp_path / "env-store").resolve()
    monkeypatch.delenv("SPARKDL_MODEL_STORE")
    monkeypatch.setenv("SPARKDL_WORK_DIR", str(tmp_path / "work"))
    assert ModelStore().root == (tmp_path / "work" / "models").resolve()
    assert ModelStore(f"file://{tmp_path}/s").root == (tmp_path / "s").resolve()
    with pytest.raises(ConfigError, match="not URLs"):
        ModelStore("s3://bucket/models")


def _run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=120)


def test_metadata_reads_import_neither_tensorflow_nor_spark(store, model):
    store.save("m", model, {"run_name": "r1"})
    result = _run_python(f"""
        import sys
        from sparkdl.registry import ModelStore
        store = ModelStore({str(store.root)!r})
        md = store.metadata("m@latest")
        assert md["run_name"] == "r1", md
        assert store.list_models() == ["m"] and store.list_versions("m") == [1]
        assert ModelStore().root.name == "models"  # the default root (via sparkdl.session) is light too
        heavy = sorted(m for m in ("tensorflow", "keras", "pyspark", "horovod", "petastorm") if m in sys.modules)
        print("HEAVY", heavy)
    """)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


def test_concurrent_publishers_never_share_a_version(store):
    """Four processes publish 10 versions each at once: 40 distinct versions, each with its own content."""
    script = f"""
        import sys, uuid
        from pathlib import Path
        from sparkdl.registry import ModelStore
        store = ModelStore({str(store.root)!r})
        parent = store.root / "race"
        parent.mkdir(parents=True, exist_ok=True)
        for i in range(10):
            tmp = parent / f".tmp-{{uuid.uuid4().hex}}"
            tmp.mkdir()
            (tmp / "model.keras").write_text(f"{{sys.argv[1]}}-{{i}}")
            store._publish(parent, tmp, {{"writer": sys.argv[1], "i": i}})
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), f"w{w}"], env=env,
                              stderr=subprocess.PIPE, text=True) for w in range(4)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert store.list_versions("race") == list(range(1, 41))
    seen = set()
    for version in range(1, 41):
        md = store.metadata(f"race@{version}")
        assert md["version"] == version
        content = (store.root / "race" / str(version) / "model.keras").read_text()
        assert content == f"{md['writer']}-{md['i']}"
        seen.add(content)
    assert len(seen) == 40


def test_concurrent_alias_writers_lose_nothing(store, model):
    """Two processes set 200 aliases each at once: all 400 are kept (one file per alias, replaced atomically)."""
    store.save("aliased", model, {})
    script = f"""
        import sys
        from sparkdl.registry import ModelStore
        store = ModelStore({str(store.root)!r})
        for i in range(200):
            store.set_alias("aliased@1", f"{{sys.argv[1]}}-{{i}}")
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), f"w{w}"], env=env,
                              stderr=subprocess.PIPE, text=True) for w in range(2)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    aliases = store.aliases("aliased")
    assert len(aliases) == 400 and set(aliases.values()) == {1}
    assert str(store.resolve("aliased@w1-199")) == "aliased@1"


def test_aliases_written_by_earlier_versions_in_one_file_still_resolve(store, model):
    store.save("legacy", model, {})
    store.save("legacy", model, {})
    (store.root / "legacy" / "aliases.json").write_text(json.dumps({"champion": 1, "old": 2}))
    assert str(store.resolve("legacy@champion")) == "legacy@1"
    store.set_alias("legacy@2", "champion")  # a new write wins over the old file
    assert store.aliases("legacy") == {"champion": 2, "old": 2}


def test_model_version_is_a_value(tmp_path):
    ref = ModelVersion("m", 3, tmp_path)
    assert str(ref) == "m@3" and ref == ModelVersion("m", 3, tmp_path)


@pytest.mark.parametrize("model_file", ["/etc/passwd", "../other/model.keras", "sub/../../x.keras", "C:\\x.keras"])
def test_a_model_file_outside_the_version_folder_is_refused(store, model, tmp_path, model_file):
    import json

    outside = tmp_path / "outside.keras"
    outside.write_bytes((store.save("m", model, {}).path / "model.keras").read_bytes())
    ref = store.save("m", model, {})
    meta_path = ref.path / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["model_file"] = model_file
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelStoreError, match=r"expected a file name inside the version's folder"):
        store.load(ref, verify=False)


def test_settings_that_look_secret_are_never_logged(spark, sparkdl_log):
    from sparkdl.log import looks_secret, redact_url
    from sparkdl.session import get_spark

    assert all(looks_secret(k) for k in ("spark.hadoop.fs.s3a.secret.key", "fs.s3a.access.key", "db.password",
                                         "spark.databricks.token", "azure.account.key", "my_secret",
                                         "spark.hadoop.fs.azure.account.key.myacct.dfs.core.windows.net",
                                         "fs.azure.sas.container.myacct.blob.core.windows.net", "DATABRICKS_PAT",
                                         "AWS_SECRET_ACCESS_KEY", "fs.azure.account.oauth2.client.secret"))
    assert not any(looks_secret(k) for k in ("spark.master", "spark.sql.shuffle.partitions", "spark.keytab.dir",
                                             "spark.sql.warehouse.path", "spark.sql.session.timeZone"))
    assert (redact_url("could not reach sc://host:15002/;user_id=ann;token=dapi123 (timeout)")
            == "could not reach sc://host:15002/;user_id=ann;token=*** (timeout)")
    assert redact_url("https://ann:pw@host/x") == "https://***@host/x"
    get_spark(conf={"spark.hadoop.fs.s3a.secret.key": "hunter2-not-logged", "spark.driver.memory": "9g"})
    text = "\n".join(sparkdl_log)
    assert "hunter2-not-logged" not in text and "spark.hadoop.fs.s3a.secret.key=*** ignored" in text
    assert "spark.driver.memory=9g ignored" in text


def test_a_model_saved_twice_from_a_worker_thread_is_a_keras_v3_file_each_time(store, model):
    """Spark ML's tuners fit in a thread pool: Keras 2's own `save` wrote HDF5 under a `.keras` name on a thread's
    second save; the store's saver writes the v3 format every time, from any thread."""
    import threading
    import zipfile

    from sparkdl.train.serialization import model_to_bytes

    refs, blobs = [], []

    def fit_like_a_tuner():
        for _ in range(2):
            blobs.append(model_to_bytes(model))
            refs.append(store.save("threaded", model, {}))

    worker = threading.Thread(target=fit_like_a_tuner)
    worker.start()
    worker.join()
    import io

    assert all(zipfile.is_zipfile(io.BytesIO(b)) for b in blobs)
    assert all(zipfile.is_zipfile(r.path / "model.keras") for r in refs)
    assert store.load(refs[-1]) is not None  # and Keras loads it


def test_a_version_counts_only_once_its_marker_is_written_and_stray_saves_are_cleaned(store, model):
    """A store whose rename copies (a FUSE mount) shows a version folder before all of it is there: readers of
    name@latest must not take it until the marker, written last, says it is whole; a killed save's `.tmp-*`
    folder is removed by the next save once it is an hour old."""
    import shutil
    import time

    first = store.save("published", model, {})
    half = store.root / "published" / "2"
    shutil.copytree(first.path, half)
    (half / "_published").unlink()  # copied so far: model and metadata, no marker yet
    assert store.list_versions("published") == [1] and str(store.resolve("published@latest")) == "published@1"
    (half / "_published").touch()
    assert store.list_versions("published") == [1, 2]

    stale, fresh = store.root / "published" / ".tmp-killed", store.root / "published" / ".tmp-running"
    for folder in (stale, fresh):
        folder.mkdir()
        (folder / "model.keras").write_bytes(b"partial")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    assert store.save("published", model, {}).version == 3
    assert not stale.exists() and fresh.exists()
    assert "_published" not in store.artifacts("published@3")
