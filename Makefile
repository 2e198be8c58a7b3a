# The two commands of the README: `make demo` and `make test`. Both set up what they need first.
# SPARKDL_STACK=current runs the demo (and `make bench`) on the current stack instead of the pinned one.
SPARKDL_STACK ?= pinned
ifeq ($(SPARKDL_STACK),current)
PY := .venv-current/bin/python
else ifeq ($(SPARKDL_STACK),pinned)
PY := .venv/bin/python
else
$(error SPARKDL_STACK must be pinned or current, got '$(SPARKDL_STACK)')
endif

.PHONY: setup setup-current demo test test-pinned test-current bench clean
setup:
	@scripts/setup.sh pinned

# The current stack (TF 2.21 + tf_keras/Keras 3, NumPy 2, PyArrow 26, Spark 4.3) in .venv-current.
setup-current:
	@scripts/setup.sh current

# One stack's suite alone (no cross-stack checks unless SPARKDL_OTHER_PYTHON is set).
test-pinned: setup
	@.venv/bin/python -m pytest tests

test-current: setup-current
	@.venv-current/bin/python -m pytest tests

demo:
	@scripts/setup.sh $(SPARKDL_STACK)
	$(PY) -m sparkdl.cli demo

# Both stacks: set up, then the whole suite on each, with the time of every stage (scripts/test.sh).
test:
	@scripts/test.sh

bench:
	@scripts/setup.sh $(SPARKDL_STACK)
	for b in scripts/benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf .sparkdl spark-warehouse
