"""The Spark session sparkdl runs on: the notebook's active session, or an embedded local default.

The embedded default is local Spark with the executors on this interpreter (`spark.pyspark.python`), Arrow on,
Petastorm's cache under the work folder, and the Delta Lake extension only when its jars can really be loaded:
explicit `spark.jars` files that exist, `spark.jars.packages` whose artifacts are in the Ivy cache or whose
repository answers, or a delta-spark jar already on Spark's classpath. Anything else would make Ivy try Maven
Central and kill the JVM ([JAVA_GATEWAY_EXITED]); sparkdl raises a `SessionError` instead, before starting it.
Without the extension, Delta tables go through delta-rs (see `sparkdl.lake`).

A Spark Connect session (a notebook's, or one `get_spark(remote=...)`, YAML `spark.remote` or $SPARKDL_REMOTE
starts) is used the same way; `sparkdl.session_kind` holds what differs.
"""
from __future__ import annotations

import glob
import os
import socket
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

from sparkdl.errors import SessionError
from sparkdl.log import configure_logging, get_logger, redact_url, shown
from sparkdl.session_kind import conf_get, has_jvm_class, is_connect, require_connect_client, set_log_level
from sparkdl.session_kind import master as master_of

log = get_logger("session")

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
PETASTORM_CACHE_KEY = "petastorm.spark.converter.parentCacheDirUrl"
MAVEN_CENTRAL = "https://repo1.maven.org/maven2/"


def work_dir(path: str | os.PathLike | None = None) -> Path:
    """The sparkdl work folder: `path`, else $SPARKDL_WORK_DIR, else `~/.sparkdl` (created if missing)."""
    folder = Path(path or os.environ.get("SPARKDL_WORK_DIR") or Path.home() / ".sparkdl").expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def default_conf(work: Path, master: str) -> dict[str, str]:
    """The embedded default's Spark configuration."""
    cores = os.cpu_count() or 2
    return {
        "spark.master": master,
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.executorEnv.PYSPARK_PYTHON": sys.executable,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(max(2, 2 * cores)),
        "spark.sql.warehouse.dir": str(work / "spark-warehouse"),
        "spark.driver.memory": os.environ.get("SPARKDL_DRIVER_MEMORY", "4g"),
        "spark.ui.showConsoleProgress": "false",
        "spark.ui.enabled": os.environ.get("SPARKDL_SPARK_UI", "false"),
        "spark.python.worker.reuse": "true",
    }


def get_spark(
    conf: Mapping[str, str] | None = None,
    master: str | None = None,
    app_name: str = "sparkdl",
    work: str | os.PathLike | None = None,
    remote: str | None = None,
) -> "pyspark.sql.SparkSession":  # noqa: F821
    """Return the active SparkSession (classic or Spark Connect), or start one: a Spark Connect session when
    `remote` (or the setting `spark.remote`, or $SPARKDL_REMOTE) names a server, else the embedded default.

    Args:
        conf: extra Spark settings (`spark.*` keys). On an active session only runtime-settable keys are
            applied; static ones are logged and ignored.
        master: Spark master for a new session; default $SPARKDL_MASTER or `local[*]`.
        app_name: application name for a new session.
        work: work folder (Petastorm cache, warehouse); default $SPARKDL_WORK_DIR or ~/.sparkdl.
        remote: a Spark Connect server, `sc://host:port` or `local[N]` (a local server started for this process).

    Raises:
        SessionError: Delta jars are configured but cannot be loaded (missing file, unreachable repository); a
            Spark Connect session is asked for where its client cannot run (the pinned stack's protobuf), or its
            server cannot be reached.
    """
    configure_logging()
    conf = {str(k): str(v) for k, v in (conf or {}).items()}
    remote = remote or conf.pop("spark.remote", None) or os.environ.get("SPARKDL_REMOTE") or None
    wants_delta = _check_delta_jars(conf)

    active = active_session()
    if active is not None:
        _apply_runtime_conf(active, conf)
        if not conf_get(active, PETASTORM_CACHE_KEY):
            active.conf.set(PETASTORM_CACHE_KEY, (work_dir(work) / "petastorm-cache").as_uri())
        log.info("using the active %sSpark session (%s); Delta backend: %s",
                 "Spark Connect " if is_connect(active) else "", master_of(active), delta_backend(active))
        return active

    folder = work_dir(work)
    if remote:
        return _start_remote(remote, conf, folder, app_name, wants_delta)
    from pyspark.sql import SparkSession

    settings = default_conf(folder, master or conf.get("spark.master") or os.environ.get("SPARKDL_MASTER", "local[*]"))
    settings.update(conf)
    if master:
        settings["spark.master"] = master
    submitted: dict[str, str] = {}
    if os.environ.get("PYSPARK_GATEWAY_PORT"):
        # Under spark-submit the JVM is already configured: its settings (--master, --conf) win over ours.
        from pyspark import SparkConf, SparkContext

        SparkContext._ensure_initialized()
        submitted = dict(SparkConf().getAll())
    if wants_delta or _delta_jar_on_classpath():
        current = submitted.get("spark.sql.extensions") or settings.get("spark.sql.extensions", "")
        exts = [e for e in current.split(",") if e]
        if DELTA_EXTENSION not in exts:
            settings["spark.sql.extensions"] = ",".join(exts + [DELTA_EXTENSION])
        settings.setdefault("spark.sql.catalog.spark_catalog", DELTA_CATALOG)
    settings = {k: v for k, v in settings.items() if k not in submitted or k == "spark.sql.extensions"}
    # Local-mode Python workers inherit the driver's environment: make them use this interpreter too.
    os.environ["PYSPARK_PYTHON"] = settings.get("spark.pyspark.python",
                                                os.environ.get("PYSPARK_PYTHON", sys.executable))
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

    builder = SparkSession.builder.appName(app_name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:
        raise SessionError(f"could not start Spark (master={settings.get('spark.master')}): {exc}") from exc
    set_log_level(spark, os.environ.get("SPARKDL_SPARK_LOG_LEVEL", "WARN"))
    # not a spark.* key, so spark-submit would warn and drop it at launch: set it on the running session
    spark.conf.set(PETASTORM_CACHE_KEY, conf.get(PETASTORM_CACHE_KEY) or (folder / "petastorm-cache").as_uri())
    log.info("started Spark %s on %s; work folder %s; Delta backend: %s",
             spark.version, master_of(spark), folder, delta_backend(spark))
    return spark


def active_session():
    """The active SparkSession of this thread: a classic one, else a Spark Connect one (looked up only when the
    Connect client is already loaded, so a classic-only process never imports it); None when there is none."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is None and "pyspark.sql.connect.session" in sys.modules:
        from pyspark.sql.connect.session import SparkSession as ConnectSession

        active = ConnectSession.getActiveSession()
    return active


def _start_remote(remote: str, conf: dict[str, str], folder: Path, app_name: str, wants_delta: bool):
    """A Spark Connect session on `remote`: `sc://host:port`, or `local[N]` (a local server, child of this
    process, whose Python workers run this interpreter)."""
    remote = remote.strip()
    if not (remote.startswith("sc://") or remote.startswith("local")):
        raise SessionError(f"spark.remote / SPARKDL_REMOTE: {redact_url(repr(remote))} is not a Spark Connect "
                           f"address; expected 'sc://host:port' or 'local[N]'")
    require_connect_client()
    from pyspark.sql import SparkSession  # its builder starts a local server for `local[N]`, then connects

    settings: dict[str, str] = {}
    if remote.startswith("local"):
        # the server starts as a child of this process: its Python workers inherit this environment
        settings = {k: v for k, v in default_conf(folder, remote).items() if k != "spark.master"}
        os.environ["PYSPARK_PYTHON"] = conf.get("spark.pyspark.python", sys.executable)
        if wants_delta or _delta_jar_on_classpath():
            settings["spark.sql.extensions"] = DELTA_EXTENSION
            settings["spark.sql.catalog.spark_catalog"] = DELTA_CATALOG
    settings.update(conf)
    builder = SparkSession.builder.remote(remote).appName(app_name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    try:
        with warnings.catch_warnings():  # a local server took the static settings at its start; the client
            warnings.filterwarnings("ignore", message="Failed to set", category=UserWarning)  # re-sets them all
            spark = builder.getOrCreate()
        spark.conf.set(PETASTORM_CACHE_KEY, conf.get(PETASTORM_CACHE_KEY) or (folder / "petastorm-cache").as_uri())
        version = spark.version
    except Exception as exc:
        raise SessionError(f"could not start or reach the Spark Connect server {redact_url(remote)}: "
                           f"{redact_url(str(exc))}") from None
    log.info("started a Spark Connect session (Spark %s) on %s; work folder %s; Delta backend: %s",
             version, redact_url(remote), folder, delta_backend(spark))
    return spark


def delta_backend(spark) -> str:
    """`"delta-spark"` when the session can use Delta's Spark extension, else `"delta-rs"`."""
    if conf_get(spark, "spark.databricks.clusterUsageTags.clusterId"):
        return "delta-spark"  # Databricks runtimes ship Delta built in
    if DELTA_EXTENSION not in (conf_get(spark, "spark.sql.extensions") or ""):
        return "delta-rs"
    # configured but its classes absent: delta-rs; a Connect session cannot look, and trusts its configuration
    return "delta-rs" if has_jvm_class(spark, DELTA_EXTENSION) is False else "delta-spark"


def _apply_runtime_conf(spark, conf: Mapping[str, str]) -> None:
    for key, value in conf.items():
        try:
            if spark.conf.isModifiable(key):
                spark.conf.set(key, value)
                continue
        except Exception:  # noqa: BLE001
            pass
        if conf_get(spark, key) != value:
            log.warning("Spark setting %s=%s ignored: it is static and the session is already running", key,
                        shown(key, value))


def _check_delta_jars(conf: Mapping[str, str]) -> bool:
    """Validate configured Delta jars before the JVM starts. True when Delta jars are requested."""
    wants = False
    for jar in [j.strip() for j in conf.get("spark.jars", "").split(",") if j.strip()]:
        parsed = urlparse(jar)
        if parsed.scheme in ("", "file", "local"):
            path = Path(parsed.path if parsed.scheme else jar)
            if not path.is_file():
                raise SessionError(f"spark.jars: file not found: {jar} (Delta Lake needs the delta-spark and "
                                   f"delta-storage jars; point spark.jars at files that exist, or leave it "
                                   f"unset to use delta-rs)")
        if "delta-spark" in jar or "delta-core" in jar:
            wants = True
    packages = [p.strip() for p in conf.get("spark.jars.packages", "").split(",") if p.strip()]
    delta_packages = [p for p in packages if p.startswith("io.delta:")]
    if delta_packages:
        wants = True
        missing = [p for p in delta_packages if not _in_ivy_cache(p, conf)]
        repos = [r for r in conf.get("spark.jars.repositories", "").split(",") if r] + [MAVEN_CENTRAL]
        if missing and not any(_reachable(r) for r in repos):
            raise SessionError(
                f"spark.jars.packages asks for {', '.join(missing)}, which is not in the local Ivy cache, and no "
                f"repository is reachable ({', '.join(repos)}). Starting Spark would fail with "
                f"[JAVA_GATEWAY_EXITED]. Download the jars and set spark.jars to their paths, or drop "
                f"spark.jars.packages to use the delta-rs backend.")
    return wants


def _in_ivy_cache(coordinate: str, conf: Mapping[str, str]) -> bool:
    parts = coordinate.split(":")
    if len(parts) != 3:
        raise SessionError(f"spark.jars.packages: {coordinate!r} is not group:artifact:version")
    group, artifact, version = parts
    roots = [conf["spark.jars.ivy"]] if conf.get("spark.jars.ivy") else ["~/.ivy2.5.2", "~/.ivy2"]
    for root in filter(None, roots):
        base = Path(root).expanduser()
        if (base / "jars" / f"{group}_{artifact}-{version}.jar").is_file():
            return True
        if (base / "cache" / group / artifact / "jars" / f"{artifact}-{version}.jar").is_file():
            return True
    return False


def _reachable(url: str, timeout: float = 3.0) -> bool:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(parsed.path).exists()
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _delta_jar_on_classpath() -> bool:
    folders = []
    try:
        import pyspark

        folders.append(Path(pyspark.__file__).parent / "jars")
    except ImportError:
        pass
    if os.environ.get("SPARK_HOME"):
        folders.append(Path(os.environ["SPARK_HOME"]) / "jars")
    return any(glob.glob(str(f / "delta-spark_*.jar")) for f in folders)
