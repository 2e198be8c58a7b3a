"""The one place that knows the two kinds of Spark session: classic (a local JVM, `SparkContext`, RDDs) and Spark
Connect (a gRPC client: shared and serverless notebooks, `SparkSession.builder.remote(...)`; no `SparkContext`,
no RDD, no accumulator, no `_jdf`/`_jvm`).

Everything sparkdl needs from a session that differs between the two goes through here: what the cluster looks like
(master, task slots, dynamic allocation), job tags and their cancellation, and the classic-only shortcuts, each
behind `is_connect`. Other modules use the DataFrame API only, which both kinds share.
"""
from __future__ import annotations

import os
import re
import sys
import time

from sparkdl.errors import SessionError

_LOCAL = re.compile(r"^local(?:-cluster)?\[(\*|\d+)(?:\s*,\s*\d+)?\]$|^local$")
# How long a Spark Connect session waits after cancelling a job before it counts the job's tasks as stopped: Spark
# Connect shows no task status, and Spark kills a cancelled Python task no later than its kill timeout.
_CONNECT_STOP_MARGIN_S = 1.0


def is_connect(spark) -> bool:
    """True for a Spark Connect session (or a DataFrame of one)."""
    session = getattr(spark, "sparkSession", spark)
    return type(session).__module__.startswith("pyspark.sql.connect")


def connect_client_problem() -> str | None:
    """Why this environment cannot run a Spark Connect client (None when it can)."""
    try:
        import pyspark.sql.connect.session  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or protobuf's own errors at import
        import pyspark

        try:
            from google.protobuf import __version__ as protobuf
        except ImportError:
            protobuf = "not installed"
        return (f"the Spark Connect client of pyspark {pyspark.__version__} cannot load ({type(exc).__name__}: "
                f"{exc}); it needs protobuf >= 5, grpcio, grpcio-status, googleapis-common-protos and zstandard "
                f"(pyspark's 'connect' extra), and this environment has protobuf {protobuf}. TensorFlow 2.15 "
                f"pins protobuf < 5, so Spark Connect is a feature of sparkdl's current stack "
                f"(scripts/setup.sh current)")
    return None


def require_connect_client() -> None:
    """Raise SessionError naming the versions when this environment cannot run a Spark Connect client."""
    problem = connect_client_problem()
    if problem:
        raise SessionError(problem)


# Settings fixed when a session starts: on Spark Connect each read is a round trip, so they are read once per session
_STATIC_PREFIXES = ("spark.master", "spark.default.parallelism", "spark.executor.", "spark.task.",
                    "spark.dynamicAllocation.", "spark.driver.host", "spark.python.task.killTimeout",
                    "spark.sql.extensions", "spark.databricks.clusterUsageTags.")
_static_settings: dict[tuple[str, str], str | None] = {}


def conf_get(spark, key: str, default: str | None = None) -> str | None:
    """A Spark setting of the session (runtime or static), `default` when unset or refused. A static setting of a
    Spark Connect session is read once per session."""
    cached = (getattr(spark, "session_id", None), key) \
        if key.startswith(_STATIC_PREFIXES) and is_connect(spark) else None
    if cached is not None and cached in _static_settings:
        value = _static_settings[cached]
    else:
        try:
            value = spark.conf.get(key, None)
        except Exception:  # noqa: BLE001 - Spark Connect refuses some keys
            value = None
        if cached is not None and cached[0] is not None:
            _static_settings[cached] = value
    return default if value is None else str(value)


def master(spark) -> str:
    """The session's master URL (`local[2]`, `spark://...`, `yarn`...), or "unknown"."""
    if not is_connect(spark):
        return spark.sparkContext.master
    return conf_get(spark, "spark.master", "unknown")


def local_cores(master_url: str) -> int | None:
    """Cores of a `local`, `local[N]` or `local[*]` master; None for a cluster master."""
    match = _LOCAL.match(master_url.strip())
    if not match:
        return None
    n = match.group(1)
    if n is None:
        return 1
    return (os.cpu_count() or 1) if n == "*" else int(n)


def default_parallelism(spark) -> int | None:
    """Spark's default parallelism: the classic session's, else read from the settings (None when they do not
    say, e.g. a Connect session on a cluster without `spark.default.parallelism` or fixed executors)."""
    if not is_connect(spark):
        return int(spark.sparkContext.defaultParallelism)
    explicit = conf_get(spark, "spark.default.parallelism")
    if explicit:
        return int(explicit)
    cores = local_cores(master(spark))
    if cores is not None:
        return cores
    instances, per_executor = conf_get(spark, "spark.executor.instances"), conf_get(spark, "spark.executor.cores")
    if instances and per_executor:
        return int(instances) * int(per_executor)
    return None


def live_task_slots(spark) -> int | None:
    """The tasks the executors registered right now can run at once, as Spark's barrier scheduler counts them
    (classic sessions on a cluster; the default parallelism is never below 2 and lags executor loss). None on a
    Spark Connect session or in local mode (nothing to count: the slots do not change)."""
    if is_connect(spark) or local_cores(master(spark)) is not None:
        return None
    try:
        context = spark.sparkContext._jsc.sc()
        return int(context.maxNumConcurrentTasks(context.resourceProfileManager().defaultResourceProfile()))
    except Exception:  # noqa: BLE001 - a Spark without this internal: the caller falls back on the settings
        return None


def dynamic_allocation(spark) -> bool:
    """True when the session's cluster adds and removes executors (barrier stages refuse to run there)."""
    return (conf_get(spark, "spark.dynamicAllocation.enabled", "false") or "false").strip().lower() == "true"


def add_tag(spark, tag: str) -> None:
    """Tag the Spark jobs this thread starts from now on: a SparkContext job tag on a classic session (the status
    tracker finds its jobs by it), the session's operation tag under Spark Connect. Additive: the caller's own job
    group and tags are kept."""
    if is_connect(spark):
        spark.addTag(tag)
    else:
        spark.sparkContext.addJobTag(tag)


def remove_tag(spark, tag: str) -> None:
    if is_connect(spark):
        spark.removeTag(tag)
    else:
        spark.sparkContext.removeJobTag(tag)


def tags(spark) -> set[str]:
    """The tags `add_tag` set for this thread."""
    return set(spark.getTags() if is_connect(spark) else spark.sparkContext.getJobTags())


def cancel_tag(spark, tag: str) -> None:
    """Cancel every running job tagged `tag` (from any thread)."""
    if is_connect(spark):
        spark.interruptTag(tag)
    else:
        spark.sparkContext.cancelJobsWithTag(tag)


def running_tasks(spark, tag: str) -> int | None:
    """How many tasks of the jobs tagged `tag` run now (a running job counts as at least one); None under Spark
    Connect, which shows no task status."""
    if is_connect(spark):
        return None
    sc = spark.sparkContext
    tracker = sc.statusTracker()
    running = 0
    # PySpark's StatusTracker has no getJobIdsForTag; the JVM's SparkStatusTracker has (Spark 3.5+).
    for job_id in sc._jsc.sc().statusTracker().getJobIdsForTag(tag):
        job = tracker.getJobInfo(job_id)
        if job is None:
            continue
        active = 0
        for stage_id in job.stageIds:
            stage = tracker.getStageInfo(stage_id)
            active += stage.numActiveTasks if stage is not None else 0
        running += max(active, 1 if job.status == "RUNNING" else 0)
    return running


def wait_until_stopped(spark, tag: str, timeout: float, poll_s: float = 0.05) -> bool:
    """After `cancel_tag`: wait until no task of the jobs tagged `tag` runs; False when `timeout` passed first.

    A classic session reads the tasks from Spark's status tracker. A Connect session cannot see them: it waits for
    `spark.python.task.killTimeout` (by when Spark has killed a cancelled Python task) plus a margin.
    """
    if is_connect(spark):
        kill = conf_get(spark, "spark.python.task.killTimeout", "2s") or "2s"
        seconds = float(re.sub(r"[^0-9.]", "", kill) or 2) / (1000 if kill.endswith("ms") else 1)
        time.sleep(min(timeout, seconds + _CONNECT_STOP_MARGIN_S))
        return True
    deadline = time.monotonic() + timeout
    while running_tasks(spark, tag):
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True


def accumulator(spark, zero, param):
    """A Spark accumulator on a classic session; None under Spark Connect, which has none."""
    if is_connect(spark):
        return None
    return spark.sparkContext.accumulator(zero, param)


def set_log_level(spark, level: str) -> None:
    """The driver's Spark log level (classic only: a Connect server keeps its own)."""
    if not is_connect(spark):
        spark.sparkContext.setLogLevel(level)


def has_jvm_class(spark, name: str) -> bool | None:
    """Whether the session's JVM can load class `name`; None under Spark Connect (no JVM handle)."""
    if is_connect(spark):
        return None
    try:
        spark.sparkContext._jvm.java.lang.Class.forName(name)
        return True
    except Exception:  # noqa: BLE001
        return False


def optimized_plan(df):
    """The JVM handle of `df`'s optimized logical plan (classic only; None under Spark Connect)."""
    if is_connect(df):
        return None
    return df._jdf.queryExecution().optimizedPlan()


def scan_partitions(df) -> int | None:
    """How many partitions Spark's own scan of `df` has (classic only; None under Spark Connect or on failure)."""
    if is_connect(df):
        return None
    try:
        return int(df._jdf.queryExecution().toRdd().getNumPartitions())
    except Exception:  # noqa: BLE001 - a plan that cannot be planned here: the caller uses its default
        return None


def connect_parquet_read(df) -> str | None:
    """For a Spark Connect DataFrame that is plain column references over one `spark.read.parquet(...)` (no
    filter, no expression, no given schema): its read options as `key->value` text (lower case); else None.
    Classic sessions look at the optimized plan instead (`optimized_plan`)."""
    if not is_connect(df):
        return None
    plan = getattr(df, "_plan", None)
    while type(plan).__name__ == "Project":
        columns = getattr(plan, "_columns", None) or []
        if any(type(getattr(c, "_expr", None)).__name__ != "ColumnReference" for c in columns):
            return None
        plan = getattr(plan, "_child", None)
    if type(plan).__name__ != "DataSource":
        return None
    if (str(getattr(plan, "_format", "")).lower() != "parquet" or getattr(plan, "_schema", "")
            or getattr(plan, "_predicates", None) or getattr(plan, "_is_streaming", None)):
        return None
    options = getattr(plan, "_options", None) or {}
    return ",".join(f"{k}->{v}" for k, v in options.items()).lower().replace(" ", "")


def plan_fingerprint(df) -> str:
    """A text that changes with `df`'s plan and data: the canonicalized optimized plan (classic), or the plan's
    semantic hash with its schema and input files (Spark Connect, which has no plan handle)."""
    plan = optimized_plan(df)
    if plan is not None:
        canonical = plan.canonicalized()
        return f"{canonical.toString()}|{canonical.hashCode()}"
    try:
        files = sorted(df.inputFiles())
    except Exception:  # noqa: BLE001 - sources without files
        files = []
    return f"{df.semanticHash()}|{df.schema.json()}|{files}"


def client_host(spark) -> str | None:
    """The host of the Spark Connect server this client talks to (None for a classic session)."""
    if not is_connect(spark):
        return None
    client = getattr(spark, "client", None)
    host = getattr(client, "host", None) or getattr(getattr(client, "_builder", None), "host", None)
    return str(host) if host else None


def python_of_executors() -> str:
    """The interpreter executors must run: `PYSPARK_PYTHON`, else this one."""
    return os.environ.get("PYSPARK_PYTHON") or sys.executable
