"""YAML job configuration: valid files load; each kind of bad file names its key."""
import textwrap

import pytest

from sparkdl.config import JobConfig, load_config
from sparkdl.errors import ConfigError

VALID = """
spark:
  master: local[2]
  conf: {spark.sql.shuffle.partitions: 4}
work_dir: ${SPARKDL_TEST_WORK:-/tmp/sparkdl-work}
data:
  table: digits
  version: 0
  features: [{name: pixels, kind: vector, shape: [8, 8, 1]}]
  label: {name: digit, task: multiclass, num_classes: 10}
model: {name: cnn, hparams: {filters: [8, 16]}}
train: {num_proc: 2, epochs: 3, batch_size: 32, learning_rate: 0.01}
"""


def write(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_valid_file_loads_typed(tmp_path, monkeypatch):
    monkeypatch.delenv("SPARKDL_TEST_WORK", raising=False)
    monkeypatch.delenv("SPARKDL_WORK_DIR", raising=False)
    monkeypatch.delenv("SPARKDL_MASTER", raising=False)
    cfg = load_config(write(tmp_path, VALID))
    assert isinstance(cfg, JobConfig)
    assert cfg.spark.master == "local[2]" and cfg.spark.conf == {"spark.sql.shuffle.partitions": "4"}
    assert cfg.work_dir == "/tmp/sparkdl-work"
    assert cfg.data.version == 0 and cfg.data.features[0]["shape"] == [8, 8, 1]
    assert cfg.train.learning_rate == 0.01 and isinstance(cfg.train.learning_rate, float)
    assert cfg.train.early_stopping is None and cfg.model.hparams == {"filters": [8, 16]}
    # Horovod's scaling options: the estimator's defaults unless set
    assert (cfg.train.backward_passes_per_step, cfg.train.compression, cfg.train.fusion_threshold_mb,
            cfg.train.cycle_time_ms) == (1, "none", None, 0.1)
    tuned = load_config(write(tmp_path, VALID), overrides=["train.backward_passes_per_step=4",
                                                           "train.compression=fp16", "train.cycle_time_ms=1"])
    assert (tuned.train.backward_passes_per_step, tuned.train.compression, tuned.train.cycle_time_ms) == \
        (4, "fp16", 1.0)


def test_env_and_command_line_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv("SPARKDL_WORK_DIR", raising=False)
    monkeypatch.setenv("SPARKDL_TEST_WORK", "/data/work")
    monkeypatch.setenv("SPARKDL_LAKE_DIR", "/data/lake")
    cfg = load_config(write(tmp_path, VALID), overrides=["train.epochs=7", "model.name=mlp"])
    assert cfg.work_dir == "/data/work"
    assert cfg.lake.root == "/data/lake"
    assert cfg.table_uri("digits") == "/data/lake/digits"
    assert cfg.table_uri("/abs/t") == "/abs/t"
    assert cfg.train.epochs == 7 and cfg.model.name == "mlp"
    # the command line wins over the environment
    assert load_config(write(tmp_path, VALID), overrides=["lake.root=/cli/lake"]).lake.root == "/cli/lake"


def test_unknown_key_is_named_with_file(tmp_path):
    path = write(tmp_path, VALID + "\n  epoch: 5\n".replace("\n  epoch", "\ntrain2:\n  epoch"))
    with pytest.raises(ConfigError, match=r"job.yaml: unknown key 'train2'"):
        load_config(path)
    path = write(tmp_path, VALID.replace("epochs: 3", "epochs: 3, epoch: 4"))
    with pytest.raises(ConfigError, match=r"job.yaml: unknown key 'train.epoch'.*allowed keys here: .*epochs"):
        load_config(path)


def test_missing_required_key_is_named(tmp_path):
    path = write(tmp_path, VALID.replace("  table: digits\n", ""))
    with pytest.raises(ConfigError, match=r"job.yaml: missing required key 'data.table'"):
        load_config(path)


def test_wrong_type_is_named(tmp_path):
    path = write(tmp_path, VALID.replace("epochs: 3", "epochs: three"))
    with pytest.raises(ConfigError, match=r"job.yaml: train.epochs: expected an integer, got 'three'"):
        load_config(path)
    path = write(tmp_path, VALID.replace("num_proc: 2", "num_proc: true"))
    with pytest.raises(ConfigError, match=r"train.num_proc: expected an integer, got True"):
        load_config(path)


@pytest.mark.parametrize("old, new, message", [
    ("shape: [8, 8, 1]", "shape: oops", r"feature 'pixels': shape must be a list of integers .* got 'oops'"),
    ("shape: [8, 8, 1]", "shape: [8, eight, 1]", r"feature 'pixels': shape must be a list of integers"),
    ("num_classes: 10", "num_classes: three", r"label 'digit': num_classes must be an integer, got 'three'"),
    ("kind: vector, shape: [8, 8, 1]", "impute: constant, impute_value: abc",
     r"feature 'pixels': impute_value must be a number, got 'abc'"),
])
def test_feature_spec_values_are_type_checked_naming_file_and_key(tmp_path, old, new, message):
    """Checked when the job builds its FeatureSpec (before Spark starts), the file and the key named."""
    from sparkdl.workflows import feature_spec

    cfg = load_config(write(tmp_path, VALID.replace(old, new)))
    with pytest.raises(ConfigError, match=r"job.yaml: data: " + message):
        feature_spec(cfg)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "data: [unclosed"))
    with pytest.raises(ConfigError, match=r"override 'train.epochs': expected dotted.key=value"):
        load_config(write(tmp_path, VALID), overrides=["train.epochs"])


def test_every_train_key_is_the_estimator_param_of_that_name_with_its_default():
    """The YAML `train.*` keys go to `KerasEstimator` by name (`workflows.estimator_for`): each must be one of its
    declared params (`_PARAMS`), with the same default."""
    from dataclasses import fields

    from sparkdl.config import TrainSection
    from sparkdl.train.estimator import _PARAMS

    declared = {param.name: param.default for param in _PARAMS}
    for f in fields(TrainSection):
        assert f.name in declared, f"train.{f.name} is not a KerasEstimator param"
        assert getattr(TrainSection(), f.name) == declared[f.name], f"train.{f.name}: default differs"


def test_every_shipped_job_config_loads_and_its_train_section_makes_an_estimator():
    from pathlib import Path

    from sparkdl.workflows import estimator_for, feature_spec

    shipped = sorted((Path(__file__).resolve().parents[1] / "conf").glob("*.yaml"))
    assert len(shipped) >= 8
    for path in shipped:
        cfg = load_config(path)
        spec = feature_spec(cfg) if not cfg.data.forecast else None
        estimator_for(cfg, spec, "/tmp/sparkdl-config-test-store")._checked()  # every param checked, no Spark
