#!/usr/bin/env bash
# Idempotent set-up of the sparkdl development environment in ./.venv:
#   1. checks Python 3.11 and Java >= 17,
#   2. creates .venv and installs the pinned stack (constraints.txt), TensorFlow first,
#   3. compiles Horovod against that TensorFlow with Gloo (no MPI, no `[spark]` extra: it pins pyarrow<11),
#   4. installs this package editable with its test extra,
#   5. checks the result (horovod.tensorflow imports with Gloo built, petastorm imports, Spark's Java).
# On a ready machine it only re-runs the checks (seconds). Set PYTHON to choose the interpreter.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${SPARKDL_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
STAMP="$VENV/.sparkdl-setup-stamp"

die() { echo "setup: ERROR: $*" >&2; exit 1; }
say() { echo "setup: $*" >&2; }

command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
command -v "$PYTHON" >/dev/null 2>&1 || die "Python 3.11 not found (looked for python3.11 and python3); install it or set PYTHON=/path/to/python3.11"
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$PYVER" = "3.11" ] || die "Python 3.11 is required (TensorFlow 2.15 + Horovod 0.28.1); $PYTHON is $PYVER. Set PYTHON=/path/to/python3.11"

command -v java >/dev/null 2>&1 || die "Java not found: Spark 4.0 needs a JDK/JRE >= 17 on PATH (e.g. apt-get install openjdk-17-jre-headless) or JAVA_HOME set"
JAVA_MAJOR="$(java -version 2>&1 | sed -nE 's/.*version "([0-9]+)(\.[0-9]+)*.*/\1/p' | head -1)"
[ -n "$JAVA_MAJOR" ] && [ "$JAVA_MAJOR" -ge 17 ] || die "Java >= 17 is required by Spark 4.0; found: $(java -version 2>&1 | head -1)"

HASH="$(cat constraints.txt setup.cfg scripts/setup.sh | sha256sum | cut -d' ' -f1)"

verify() {
  TF_CPP_MIN_LOG_LEVEL=2 "$VENV/bin/python" - <<'PY'
import sys
problems = []
try:
    import horovod.tensorflow as hvd
    if not hvd.gloo_built():
        problems.append("horovod is installed but was built without Gloo (rebuild: rm -rf .venv && make setup)")
except Exception as exc:  # noqa: BLE001
    problems.append(f"horovod.tensorflow does not import: {exc}")
for mod in ("petastorm", "pyspark", "deltalake", "sparkdl", "horovod.spark"):
    try:
        __import__(mod)
    except Exception as exc:  # noqa: BLE001
        problems.append(f"{mod} does not import: {exc}")
if problems:
    print("\n".join("setup: check failed: " + p for p in problems), file=sys.stderr)
    sys.exit(1)
import tensorflow as tf, pyarrow, numpy
print(f"setup: ok: tensorflow {tf.__version__}, horovod with gloo, pyarrow {pyarrow.__version__}, numpy {numpy.__version__}", file=sys.stderr)
PY
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] && verify; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q "pip<25" wheel "setuptools<81"
# Horovod 0.28.1's CMake files predate CMake 4 (which drops cmake_minimum_required < 3.5): use CMake 3.x.
if ! command -v cmake >/dev/null 2>&1 || [ "$(cmake --version | sed -nE 's/cmake version ([0-9]+).*/\1/p')" -ge 4 ]; then
  "${PIP[@]}" install -q "cmake>=3.20,<4"
fi
say "installing TensorFlow and the pinned stack"
"${PIP[@]}" install -q -c constraints.txt tensorflow-cpu numpy pyarrow pandas

if ! "$VENV/bin/python" -c 'import horovod.tensorflow as h, sys; sys.exit(0 if h.gloo_built() else 1)' 2>/dev/null; then
  say "building Horovod 0.28.1 against TensorFlow with Gloo (about 10 minutes on 2 cores the first time; pip caches the wheel)"
  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
  HOROVOD_WITHOUT_MPI=1 HOROVOD_WITH_GLOO=1 CMAKE_POLICY_VERSION_MINIMUM=3.5 MAKEFLAGS="-j$(nproc)" PATH="$VENV/bin:$PATH" \
    "${PIP[@]}" install -q --no-build-isolation -c constraints.txt horovod==0.28.1
fi

say "installing sparkdl (editable) with the test extra"
"${PIP[@]}" install -q -c constraints.txt -e ".[cpu,test]"
verify || die "the environment is incomplete (see the checks above)"
echo "$HASH" > "$STAMP"
say "ready: $VENV"
