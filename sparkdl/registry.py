"""The model store: Keras models and their metadata, saved and loaded by name and version.

Layout (a plain folder tree, so it works on a local disk, NFS, or `/dbfs/...` on Databricks)::

    <root>/<name>/<version>/model.keras      the model, Keras v3 format (a zip: config JSON + weights, no pickle)
                           /metadata.json    what the model was trained on and how (see `ModelStore.save`)
                           /<artifacts>      metrics.json, PNG plots, ... added at save time or later

Versions are 1, 2, 3, ... per name. A version folder is written under a hidden temporary name and then renamed
into place, so readers never see a half-written version, and two concurrent saves never get the same number
(`os.rename` onto an existing, non-empty folder fails; the loser retries with the next number).

This module imports neither Spark nor (until a model is saved or loaded) TensorFlow: executors use it, and
`ModelStore.metadata()` is cheap.
"""
from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from sparkdl import stack
from sparkdl.errors import ConfigError, ModelStoreError, PromotionRefused
from sparkdl.fileutil import is_safe_name, write_atomic
from sparkdl.jsonlines import json_value
from sparkdl.log import get_logger
from sparkdl.session import work_dir

log = get_logger("registry")

MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
# Written last, once the version folder is in place: a version counts only once it is there, so a reader never
# sees a version half copied by a store whose rename copies (a FUSE mount, an object-store mount).
PUBLISHED_FILE = "_published"
RESERVED_FILES = (MODEL_FILE, METADATA_FILE, PUBLISHED_FILE)
STRAY_TMP_AGE_S = 3600.0  # `.tmp-*` folders older than this are a killed save's and are removed by the next save
STORE_KEYS = ("name", "version", "created_at", "library_versions", "model_file", "model_format", "keras_flavour",
              "model_sha256")
ALIASES_FILE = "aliases.json"  # all aliases in one file: read (written by earlier versions), never written
ALIASES_DIR = "aliases"        # one <alias>.json per alias
GATES_FILE = "gates.json"      # the gate report of a version's last gated evaluation (sparkdl.evaluation.gates)
_TMP_PREFIX = ".tmp-"
_MAX_PUBLISH_TRIES = 1000


@dataclass(frozen=True)
class ModelVersion:
    """One saved version of a model: `str()` gives the reference `"name@version"`."""

    name: str
    version: int
    path: Path

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass
class LoadedModel:
    """A model loaded from the store. `model` is loaded eagerly by `ModelStore.load` (so a corrupt file fails
    there, once, not at first use) with `safe_mode=True`; `metadata` is the parsed `metadata.json`."""

    name: str
    version: int
    path: Path
    metadata: dict
    model: Any = field(repr=False)

    @property
    def ref(self) -> ModelVersion:
        return ModelVersion(self.name, self.version, self.path)

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


def validate_name(name: str, what: str = "model name") -> str:
    """Return `name` if it matches [A-Za-z0-9_.-]+ (and is not `.`/`..`); else raise ConfigError."""
    if not is_safe_name(name) or name.startswith(_TMP_PREFIX):
        raise ConfigError(f"invalid {what} {name!r}: use letters, digits, '_', '.' and '-' only")
    return name


def _published(folder: Path) -> bool:
    """Whether a version folder is published: its marker is there, or it was saved before markers (its metadata
    does not say `published_by_marker`) and holds its model and metadata."""
    if (folder / PUBLISHED_FILE).exists():
        return True
    if not ((folder / MODEL_FILE).exists() and (folder / METADATA_FILE).exists()):
        return False
    try:
        return not json.loads((folder / METADATA_FILE).read_text()).get("published_by_marker", False)
    except (OSError, ValueError, AttributeError):
        return False  # being copied


def _remove_stray_folders(parent: Path) -> None:
    """Remove the `.tmp-*` folders killed saves left under `parent` (older than `STRAY_TMP_AGE_S`)."""
    now = time.time()
    for path in parent.glob(f"{_TMP_PREFIX}*"):
        try:
            if path.is_dir() and now - path.stat().st_mtime > STRAY_TMP_AGE_S:
                shutil.rmtree(path, ignore_errors=True)
                log.info("removed %s, left by a killed save", path)
        except OSError:
            continue


def default_root() -> Path:
    """$SPARKDL_MODEL_STORE, else `<sparkdl work folder>/models`."""
    env = os.environ.get("SPARKDL_MODEL_STORE")
    if env:
        return _as_path(env)

    return work_dir() / "models"


def _as_path(root: str | os.PathLike) -> Path:
    text = os.fspath(root)
    if text.startswith("file://"):
        text = text[len("file://"):]
    elif "://" in text:
        raise ConfigError(f"model store root {text!r}: only local or mounted paths are supported "
                          f"(e.g. /dbfs/... on Databricks), not URLs")
    return Path(text).expanduser().resolve()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _dumps(value, where: str) -> str:
    try:
        return json.dumps(value, indent=2, sort_keys=True, default=json_value, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: not JSON-serializable ({exc})") from None



def _num(value) -> str:
    return "none" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _content_bytes(filename: str, content) -> bytes:
    if isinstance(content, (bytes, bytearray, memoryview)):
        return bytes(content)
    if isinstance(content, str):
        return content.encode("utf-8")
    if isinstance(content, (dict, list)):
        return _dumps(content, f"artifact {filename!r}").encode("utf-8")
    raise ConfigError(f"artifact {filename!r}: content must be bytes, str or a dict, got {type(content).__name__}")


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries a model depends on (None when not installed); imports none of them."""
    tf_version = getattr(sys.modules.get("tensorflow"), "__version__", None)
    # (`sparkdl` on PyPI is an unrelated project: never ask for that distribution)
    sparkdl_version = (getattr(sys.modules.get("sparkdl"), "__version__", None)
                       or stack.dist_version("sparkdl-lakehouse"))
    out = {
        "sparkdl": sparkdl_version,
        "python": sys.version.split()[0],
        "tensorflow": tf_version or stack.dist_version("tensorflow", "tensorflow-cpu", "tensorflow-macos"),
        "pyspark": stack.dist_version("pyspark"),
        "petastorm": stack.dist_version("petastorm"),
        "keras": stack.keras_version("tf_keras"),
        "keras3": stack.keras_version("keras3"),
        "numpy": stack.dist_version("numpy"),
    }
    if importlib.util.find_spec("horovod") is not None:
        out["horovod"] = stack.dist_version("horovod")
    return out


class ModelStore:
    """A folder of named, versioned models. See the module docstring for the layout.

    Args:
        root: the store folder; default $SPARKDL_MODEL_STORE, else `sparkdl.session.work_dir() / "models"`.
            `file://` URIs are accepted; other URL schemes are not (mount them, e.g. /dbfs/...).

    References (`ref`) are `"name"` (the latest version), `"name@3"`, `"name@latest"` or a `ModelVersion`.
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = _as_path(root) if root is not None else default_root()

    @classmethod
    def of(cls, store: "ModelStore | str | os.PathLike | None") -> "ModelStore":
        """`store` itself when it is a ModelStore, else the store at that root (None: the default store)."""
        return store if isinstance(store, ModelStore) else cls(store)

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r})"

    # ------------------------------------------------------------------------------------------------ writing
    def save(self, name: str, model, metadata: dict | None = None,
             artifacts: dict[str, bytes | str | dict] | None = None) -> ModelVersion:
        """Save `model` as the next version of `name` and return it.

        Args:
            name: model name, [A-Za-z0-9_.-]+.
            model: a `tf.keras.Model` (saved in the Keras v3 format: custom layers must be registered
                serializable; Lambda layers would not load back with safe_mode).
            metadata: a JSON-able dict (numpy values and objects with `to_dict()` are converted). The trainer
                writes, when it has them:
                ``preprocessing`` (the FeatureSpec as ``spec`` and its fitted ``stats``),
                ``signature`` (ModelSignature.to_dict()), ``label_classes`` (index -> original label),
                ``history`` (per-epoch metrics), ``metrics`` (final/validation metrics),
                ``source`` ({"table", "version", "timestamp"} of the Delta snapshot trained on),
                ``hparams``, ``model_name``, ``num_proc``, ``run_name``. None of them is required.
                The store adds (and overrides): ``name``, ``version``, ``created_at`` (UTC ISO 8601),
                ``library_versions`` (sparkdl, python, tensorflow, pyspark, petastorm, numpy, horovod when
                installed), ``model_file``, ``model_format`` ("keras_v3"), ``keras_flavour`` ("tf_keras" or
                "keras3", see `sparkdl.stack`) and ``model_sha256``.
            artifacts: extra files for the version folder: filename -> bytes, str (UTF-8) or dict (JSON).

        Raises:
            ConfigError: invalid name or artifact filename, metadata not JSON-able, `model` not a Keras model.
            ModelStoreError: the model could not be written.
        """
        validate_name(name)
        if metadata is not None and not isinstance(metadata, dict):
            raise ConfigError(f"save {name!r}: metadata must be a dict, got {type(metadata).__name__}")
        metadata = dict(metadata or {})
        _dumps(metadata, f"save {name!r}: metadata")  # fail before writing anything
        files = {validate_name(fn, "artifact filename"): _content_bytes(fn, c) for fn, c in (artifacts or {}).items()}
        clash = sorted(set(files) & set(RESERVED_FILES))
        if clash:
            raise ConfigError(f"save {name!r}: artifact filename(s) {clash} are reserved for the store")
        if not (hasattr(model, "save") and hasattr(model, "get_config")):
            raise ConfigError(f"save {name!r}: model must be a tf.keras.Model, got {type(model).__name__}")
        overridden = sorted(k for k in STORE_KEYS if k in metadata)
        if overridden:
            log.warning("save %s: metadata keys %s are set by the store and were replaced", name, overridden)

        parent = self.root / name
        parent.mkdir(parents=True, exist_ok=True)
        _remove_stray_folders(parent)
        tmp = parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            model_path = tmp / MODEL_FILE
            try:
                from sparkdl.models.saving import save_keras_file

                save_keras_file(model, model_path)
            except Exception as exc:  # noqa: BLE001 - Keras raises many kinds
                raise ModelStoreError(f"save {name!r}: could not write the model to {model_path}: "
                                      f"{type(exc).__name__}: {exc}") from exc
            for filename, data in files.items():
                (tmp / filename).write_bytes(data)
            metadata.update({
                "name": name,
                "created_at": datetime.now(timezone.utc).isoformat(),
                "library_versions": library_versions(),
                "model_file": MODEL_FILE,
                "model_format": "keras_v3",
                "keras_flavour": stack.flavour_of(model),
                "model_sha256": _sha256(model_path),
                "published_by_marker": True,
            })
            version = self._publish(parent, tmp, metadata)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        ref = ModelVersion(name, version, parent / str(version))
        log.info("saved model %s to %s", ref, ref.path)
        return ref

    def _publish(self, parent: Path, tmp: Path, metadata: dict) -> int:
        """Rename the finished `tmp` folder to the next free version number under `parent`; return it."""
        for _ in range(_MAX_PUBLISH_TRIES):
            version = max(self._version_numbers(parent, complete_only=False), default=0) + 1
            metadata["version"] = version
            (tmp / METADATA_FILE).write_text(_dumps(metadata, "metadata"), encoding="utf-8")
            try:
                os.rename(tmp, parent / str(version))
                write_atomic(parent / str(version) / PUBLISHED_FILE, b"", _TMP_PREFIX)  # now readers see it
                return version
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) and not isinstance(exc, FileExistsError):
                    raise ModelStoreError(f"could not publish {tmp} as {parent / str(version)}: {exc}") from exc
                log.debug("version %d of %s was taken by a concurrent save; trying the next one", version, parent.name)
        raise ModelStoreError(f"could not find a free version number under {parent} after "
                              f"{_MAX_PUBLISH_TRIES} tries")

    def add_artifact(self, ref, filename: str, content: bytes | str | dict) -> Path:
        """Write (or replace) the file `filename` in a version's folder, atomically; return its path.

        Raises:
            ConfigError: invalid filename, `model.keras`/`metadata.json`, or unsupported content type.
            ModelStoreError: the model or version does not exist.
        """
        path = self.artifact_path(ref, filename, must_exist=False)
        write_atomic(path, _content_bytes(filename, content), _TMP_PREFIX)
        return path

    def artifact_path(self, ref, filename: str, must_exist: bool = True) -> Path:
        """The path of an artifact of a version; with `must_exist=False`, where to write one.

        Raises:
            ConfigError: invalid or reserved filename.
            ModelStoreError: missing version, or (with `must_exist`) missing artifact — lists those present.
        """
        validate_name(filename, "artifact filename")
        if filename in RESERVED_FILES:
            raise ConfigError(f"artifact filename {filename!r} is reserved for the store")
        version = self.resolve(ref)
        path = version.path / filename
        if must_exist and not path.is_file():
            raise ModelStoreError(f"model {version}: no artifact {filename!r} in {version.path}; "
                                  f"artifacts: {self.artifacts(version)}")
        return path

    def artifacts(self, ref) -> list[str]:
        """Filenames of a version's artifacts (everything but model.keras and metadata.json)."""
        version = self.resolve(ref)
        return sorted(p.name for p in version.path.iterdir()
                      if p.is_file() and p.name not in RESERVED_FILES and not p.name.startswith(_TMP_PREFIX))

    # ------------------------------------------------------------------------------------------------ reading
    def list_models(self) -> list[str]:
        """Names that have at least one complete version, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and is_safe_name(p.name) and not p.name.startswith(".")
                      and self._version_numbers(p))

    def list_versions(self, name: str) -> list[int]:
        """Complete versions of `name`, ascending.

        Raises:
            ConfigError: invalid name.
            ModelStoreError: no model of that name (lists the models there are).
        """
        validate_name(name)
        versions = self._version_numbers(self.root / name)
        if not versions:
            raise ModelStoreError(f"no model named {name!r} in the model store {self.root}; "
                                  f"models: {self.list_models() or 'none'}")
        return versions

    def latest(self, name: str) -> ModelVersion:
        """The highest version of `name`. Raises as `list_versions`."""
        version = self.list_versions(name)[-1]
        return ModelVersion(name, version, self.root / name / str(version))

    def resolve(self, ref) -> ModelVersion:
        """Turn `"name"`, `"name@3"`, `"name@latest"` or a `ModelVersion` into an existing `ModelVersion`.

        Raises:
            ConfigError: malformed reference or invalid name.
            ModelStoreError: missing model or version (lists what exists).
        """
        if isinstance(ref, (ModelVersion, LoadedModel)):
            name, version = ref.name, ref.version
        elif isinstance(ref, str):
            name, at, version = ref.partition("@")
            if not at or version == "latest":
                version = None
            elif version.isdigit():
                version = int(version)
            else:
                validate_name(name)
                validate_name(version, f"alias in model reference {ref!r} (after '@': a version number, "
                                       f"'latest' or an alias)")
                aliases = self.aliases(name)
                if version not in aliases:
                    raise ModelStoreError(f"model reference {ref!r}: the part after '@' must be a version number, "
                                          f"'latest' or an alias of {name!r} (aliases: {sorted(aliases) or 'none'})")
                version = aliases[version]
        else:
            raise ConfigError(f"model reference must be 'name', 'name@version' or a ModelVersion, "
                              f"got {type(ref).__name__}")
        validate_name(name)
        versions = self.list_versions(name)
        if version is None:
            version = versions[-1]
        elif int(version) not in versions:
            raise ModelStoreError(f"model {name!r} has no version {version} in {self.root}; "
                                  f"versions: {versions}")
        return ModelVersion(name, int(version), self.root / name / str(version))

    def aliases(self, name: str) -> dict[str, int]:
        """{alias: version} of model `name`: one file per alias, `<root>/<name>/aliases/<alias>.json` (and the
        single `aliases.json` earlier versions wrote, for aliases not set since)."""
        folder = self.root / validate_name(name)
        found: dict[str, int] = {}
        legacy = folder / ALIASES_FILE
        try:
            found.update({str(k): int(v) for k, v in json.loads(legacy.read_text()).items()})
        except FileNotFoundError:
            pass
        except (ValueError, AttributeError) as exc:
            raise ModelStoreError(f"{legacy} is not a JSON object of alias -> version: {exc}") from exc
        try:
            files = sorted((folder / ALIASES_DIR).glob("*.json"))
        except OSError:
            files = []
        for path in files:
            alias = path.name[:-len(".json")]
            if is_safe_name(alias):
                found[alias] = self._alias_file_version(path)
        return found

    @staticmethod
    def _alias_file_version(path: Path) -> int:
        try:
            return int(json.loads(path.read_text())["version"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelStoreError(f"{path} is not an alias file ({{\"version\": N}}): {exc}") from exc

    def set_alias(self, ref, alias: str, force: bool = False) -> ModelVersion:
        """Point `alias` of the model at the version `ref` names ("name@3", "name@other-alias", ...); `name@alias`
        then resolves to it everywhere a reference is taken (a server started on it follows the change). Each
        alias is a file of its own, replaced atomically: processes setting different aliases at once never lose
        each other's, and one alias is never rolled back by a write of another.

        A version whose last evaluation ran gates (`evaluate_model(..., gates=...)`, its `gates.json`) is promoted
        only if they passed; `force=True` promotes anyway and records the failed gates in the alias file.

        Raises:
            ConfigError: an alias that is a number, 'latest', or not [A-Za-z0-9_.-]+.
            ModelStoreError: the version does not exist.
            PromotionRefused: the version's gates failed (the message names each failing slice, metric, value and
                limit) and `force` is not set.
        """
        validate_name(alias, "alias")
        if alias.isdigit() or alias == "latest":
            raise ConfigError(f"alias {alias!r}: a number or 'latest' would shadow a version reference")
        version = self.resolve(ref)
        failed = self._failed_gates(version)
        if failed and not force:
            raise PromotionRefused(
                f"model {version}: not promoted to {alias!r}, its evaluation gates failed: "
                + "; ".join(f"slice {r['slice']!r} {r['metric']} = {_num(r['value'])} (limit {_num(r['limit'])}"
                            f"{', ' + r['detail'] if r.get('detail') else ''})" for r in failed)
                + " (force=True / --force overrides)", failed)
        record = {"version": int(version.version), "set_at": time.time()}
        if failed:
            record.update({"forced": True, "failed_gates": failed})
            log.warning("model %s: alias %r forced over %d failed gate(s)", version, alias, len(failed))
        folder = self.root / version.name / ALIASES_DIR
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / f"{alias}.json", json.dumps(record).encode())
        log.info("model %s: alias %r -> version %d", version.name, alias, version.version)
        return version

    def _failed_gates(self, version: ModelVersion) -> list[dict]:
        """The failing results of the version's stored gate report (`gates.json`), [] without one."""
        path = version.path / GATES_FILE
        if not path.is_file():
            return []
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelStoreError(f"model {version}: unreadable {GATES_FILE} ({exc}); evaluate it again") from exc
        return [r for r in report.get("results", []) if not r.get("passed")]

    def metadata(self, ref) -> dict:
        """The parsed metadata.json of a version — no TensorFlow import.

        Raises:
            ModelStoreError: missing version, or a metadata.json that is missing or not valid JSON.
        """
        return self._read_metadata(self.resolve(ref))

    def load(self, ref, compile: bool = False, verify: bool = True) -> LoadedModel:
        """Load a version's model (eagerly) and metadata.

        Args:
            ref: see the class docstring.
            compile: also restore the optimizer/loss/metrics the model was saved with (needed to resume
                training; not for inference).
            verify: check model.keras against the sha256 recorded in metadata.json first.

        Raises:
            ModelStoreError: missing model/version, missing or corrupt model.keras or metadata.json, sha256
                mismatch, or a model Keras cannot load with safe_mode (e.g. it contains a Lambda layer).
        """
        version = self.resolve(ref)
        metadata = self._read_metadata(version)
        model_file = str(metadata.get("model_file", MODEL_FILE))
        if (not model_file or PurePosixPath(model_file).is_absolute() or PureWindowsPath(model_file).is_absolute()
                or ".." in PurePosixPath(model_file.replace("\\", "/")).parts):
            raise ModelStoreError(f"model {version}: {version.path / METADATA_FILE} names the model file "
                                  f"{model_file!r}; expected a file name inside the version's folder (no absolute "
                                  f"path, no '..')")
        model_path = version.path / model_file
        if not model_path.is_file():
            raise ModelStoreError(f"model {version}: the model file {model_path} is missing")
        if verify:
            expected = metadata.get("model_sha256")
            if not expected:
                raise ModelStoreError(f"model {version}: {version.path / METADATA_FILE} records no model_sha256; "
                                      f"cannot verify {model_path} (load with verify=False to skip)")
            actual = _sha256(model_path)
            if actual != expected:
                raise ModelStoreError(f"model {version}: {model_path} is corrupt: its sha256 is {actual}, "
                                      f"metadata.json records {expected}")
        from sparkdl.models.saving import load_keras_file

        try:
            model = load_keras_file(model_path, compile=compile)
        except Exception as exc:  # noqa: BLE001 - zip, JSON, HDF5 and Keras errors all mean "cannot load"
            raise ModelStoreError(f"model {version}: cannot load {model_path}: {type(exc).__name__}: {exc}") from exc
        log.debug("loaded model %s from %s", version, model_path)
        return LoadedModel(version.name, version.version, version.path, metadata, model)

    # ------------------------------------------------------------------------------------------------ internals
    @staticmethod
    def _version_numbers(parent: Path, complete_only: bool = True) -> list[int]:
        """Numbered folders under `parent`; with `complete_only`, the published ones (`_published`)."""
        if not parent.is_dir():
            return []
        versions = []
        for p in parent.iterdir():
            if p.name.isdigit() and p.is_dir() and (not complete_only or _published(p)):
                versions.append(int(p.name))
        return sorted(versions)

    @staticmethod
    def _read_metadata(version: ModelVersion) -> dict:
        path = version.path / METADATA_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelStoreError(f"model {version}: {path} is missing") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelStoreError(f"model {version}: {path} is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ModelStoreError(f"model {version}: {path} holds a {type(data).__name__}, not an object")
        return data
