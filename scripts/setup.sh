#!/usr/bin/env bash
# Idempotent set-up of sparkdl's two development environments:
#   pinned  -> .venv          (constraints.txt:         TF 2.15.1, Keras 2, NumPy 1.26, PyArrow 14, Petastorm 0.13.1)
#   current -> .venv-current  (constraints-current.txt: TF 2.21, tf_keras + Keras 3, NumPy 2, PyArrow 26, Spark 4.3)
# Usage: scripts/setup.sh [pinned|current|all]   (default: pinned; `make setup-current` sets up the current one)
# For each stack it
#   1. checks Python 3.11 and Java >= 17,
#   2. creates the venv and installs that stack's constraints, TensorFlow first,
#   3. compiles Horovod 0.28.1 against that TensorFlow with Gloo (no MPI, never the `[spark]` extra: it pins
#      pyarrow<11); on the current stack from the sdist with scripts/patches/horovod-0.28.1/*.patch applied, the
#      built wheel kept in a cache keyed by TensorFlow version and patch contents (beside pip's own cache),
#   4. installs this package editable with its test extra,
#   5. checks the result (horovod.tensorflow imports with Gloo built, the stack's Keras, Spark, delta-rs).
# On a ready machine it only re-runs the checks (seconds). Set PYTHON to choose the interpreter,
# SPARKDL_VENV / SPARKDL_VENV_CURRENT to put a stack's venv elsewhere, and SPARKDL_TENSORFLOW=gpu to install
# TensorFlow's CUDA build (tensorflow[and-cuda], same version as the constraints' tensorflow-cpu) instead.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3.11}"
WHICH="${1:-pinned}"
HOROVOD_VERSION=0.28.1

die() { echo "setup: ERROR: $*" >&2; exit 1; }
say() { echo "setup[$STACK]: $*" >&2; }

command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
command -v "$PYTHON" >/dev/null 2>&1 || die "Python 3.11 not found (looked for python3.11 and python3); install it or set PYTHON=/path/to/python3.11"
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$PYVER" = "3.11" ] || die "Python 3.11 is required (TensorFlow 2.15 + Horovod 0.28.1); $PYTHON is $PYVER. Set PYTHON=/path/to/python3.11"

command -v java >/dev/null 2>&1 || die "Java not found: Spark 4 needs a JDK/JRE >= 17 on PATH (e.g. apt-get install openjdk-17-jre-headless) or JAVA_HOME set"
JAVA_MAJOR="$(java -version 2>&1 | sed -nE 's/.*version "([0-9]+)(\.[0-9]+)*.*/\1/p' | head -1)"
[ -n "$JAVA_MAJOR" ] && [ "$JAVA_MAJOR" -ge 17 ] || die "Java >= 17 is required by Spark 4; found: $(java -version 2>&1 | head -1)"

verify() {  # $1: venv
  TF_CPP_MIN_LOG_LEVEL=2 "$1/bin/python" - <<'PY'
import sys
import sparkdl  # noqa: F401  (first: routes tf.keras to Keras 2 before Horovod's Keras module resolves it)
problems = []
try:
    import horovod.tensorflow as hvd
    if not hvd.gloo_built():
        problems.append("horovod is installed but was built without Gloo (rebuild: rm -rf the venv and re-run setup)")
    import horovod.tensorflow.keras  # noqa: F401  (the patched Keras backend import on TF >= 2.16)
except Exception as exc:  # noqa: BLE001
    problems.append(f"horovod.tensorflow does not import: {exc}")
for mod in ("pyspark", "deltalake", "sparkdl", "horovod.spark"):
    try:
        __import__(mod)
    except Exception as exc:  # noqa: BLE001
        problems.append(f"{mod} does not import: {exc}")
if not problems:
    from sparkdl import stack
    problems += [f"stack: {p}" for p in stack.check()]
if problems:
    print("\n".join("setup: check failed: " + p for p in problems), file=sys.stderr)
    sys.exit(1)
from sparkdl import stack
print(f"setup: ok: {stack.describe()}", file=sys.stderr)
PY
}

horovod_patched_wheel() {  # $1: venv, $2: patch folder -> prints the path of a built wheel (cached)
  local venv="$1" patches="$2" tfv key cache src wheel
  tfv="$("$venv/bin/python" -c 'import tensorflow as tf; print(tf.__version__)' 2>/dev/null)"
  key="$( { echo "horovod-$HOROVOD_VERSION tf-$tfv ${SPARKDL_TENSORFLOW:-cpu}"; cat "$patches"/*.patch; } | sha256sum | cut -c1-16)"
  cache="${SPARKDL_WHEEL_CACHE:-$("$venv/bin/python" -m pip cache dir 2>/dev/null || echo "$HOME/.cache/pip")/sparkdl-wheels}/$key"
  wheel="$(ls "$cache"/horovod-*.whl 2>/dev/null | head -1 || true)"
  if [ -z "$wheel" ]; then
    command -v patch >/dev/null 2>&1 || die "the 'patch' program is needed to patch Horovod's sdist (apt-get install patch)"
    src="$(mktemp -d)"
    say "building Horovod $HOROVOD_VERSION against TensorFlow $tfv with Gloo, patched ($(ls "$patches" | tr '\n' ' ')); about 15 minutes on 2 cores, once"
    "$venv/bin/python" -m pip download -q --no-deps --no-binary :all: -d "$src" "horovod==$HOROVOD_VERSION" >&2
    tar -xzf "$src"/horovod-$HOROVOD_VERSION.tar.gz -C "$src"
    for p in "$patches"/*.patch; do patch -s -d "$src/horovod-$HOROVOD_VERSION" -p1 < "$p" >&2 || die "patch $p does not apply"; done
    mkdir -p "$cache"
    HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
    HOROVOD_WITHOUT_MPI=1 HOROVOD_WITH_GLOO=1 CMAKE_POLICY_VERSION_MINIMUM=3.5 MAKEFLAGS="-j$(nproc)" PATH="$venv/bin:$PATH" \
      "$venv/bin/python" -m pip wheel -q --no-deps --no-build-isolation -w "$cache" "$src/horovod-$HOROVOD_VERSION" >&2
    rm -rf "$src"
    wheel="$(ls "$cache"/horovod-*.whl | head -1)"
  fi
  echo "$wheel"
}

setup_stack() {  # $1: pinned | current
  STACK="$1"
  local venv constraints patches extras stamp hash t0
  t0=$SECONDS
  case "$STACK" in
    pinned)  venv="${SPARKDL_VENV:-$ROOT/.venv}"; constraints=constraints.txt; patches=""; extras="cpu,petastorm,mlflow,serve,tune,ann,test" ;;
    current) venv="${SPARKDL_VENV_CURRENT:-$ROOT/.venv-current}"; constraints=constraints-current.txt
             patches="$ROOT/scripts/patches/horovod-$HOROVOD_VERSION"; extras="cpu,tf-keras,mlflow,connect,serve,tune,ann,test" ;;
    *) die "unknown stack '$STACK' (expected pinned, current or all)" ;;
  esac
  stamp="$venv/.sparkdl-setup-stamp"
  hash="$( { echo "${SPARKDL_TENSORFLOW:-cpu}"; cat "$constraints" setup.cfg scripts/setup.sh ${patches:+"$patches"/*.patch}; } | sha256sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ] && verify "$venv"; then
    return 0
  fi
  [ -x "$venv/bin/python" ] || { say "creating $venv"; "$PYTHON" -m venv "$venv"; }
  local pip=("$venv/bin/python" -m pip --disable-pip-version-check)
  "${pip[@]}" install -q "pip<25" wheel "setuptools<81"
  # Horovod 0.28.1's CMake files predate CMake 4 (which drops cmake_minimum_required < 3.5): use CMake 3.x.
  if ! command -v cmake >/dev/null 2>&1 || [ "$(cmake --version | sed -nE 's/cmake version ([0-9]+).*/\1/p')" -ge 4 ]; then
    "${pip[@]}" install -q "cmake>=3.20,<4"
  fi
  say "installing TensorFlow and the stack of $constraints"
  if [ "${SPARKDL_TENSORFLOW:-cpu}" = gpu ]; then
    local tf_pin
    tf_pin="$(sed -nE 's/^tensorflow-cpu==([0-9.]+).*/\1/p' "$constraints")"
    extras="${extras/cpu/gpu}"
    "${pip[@]}" install -q -c "$constraints" "tensorflow[and-cuda]==$tf_pin" numpy pyarrow pandas
  else
    "${pip[@]}" install -q -c "$constraints" tensorflow-cpu numpy pyarrow pandas
  fi
  if ! "$venv/bin/python" -c 'import horovod.tensorflow as h, sys; sys.exit(0 if h.gloo_built() else 1)' 2>/dev/null; then
    if [ -z "$patches" ]; then
      say "building Horovod $HOROVOD_VERSION against TensorFlow with Gloo (about 10 minutes on 2 cores the first time; pip caches the wheel)"
      HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
      HOROVOD_WITHOUT_MPI=1 HOROVOD_WITH_GLOO=1 CMAKE_POLICY_VERSION_MINIMUM=3.5 MAKEFLAGS="-j$(nproc)" PATH="$venv/bin:$PATH" \
        "${pip[@]}" install -q --no-build-isolation -c "$constraints" "horovod==$HOROVOD_VERSION"
    else
      "${pip[@]}" install -q --no-deps "$(horovod_patched_wheel "$venv" "$patches")"
      "${pip[@]}" install -q -c "$constraints" cloudpickle psutil pyyaml packaging   # Horovod's own requirements
    fi
  fi
  say "installing sparkdl (editable) with the extras $extras"
  "${pip[@]}" install -q -c "$constraints" -e ".[$extras]"
  verify "$venv" || die "the $STACK environment is incomplete (see the checks above)"
  echo "$hash" > "$stamp"
  say "ready: $venv ($((SECONDS - t0)) s)"
}

case "$WHICH" in
  all) setup_stack pinned; setup_stack current ;;
  pinned|current) setup_stack "$WHICH" ;;
  *) die "usage: scripts/setup.sh [pinned|current|all]" ;;
esac
