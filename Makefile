# The two commands of the README: `make demo` and `make test`. Both set up .venv first when needed.
PY := .venv/bin/python

.PHONY: setup setup-current demo test test-current bench clean
setup:
	@scripts/setup.sh pinned

# The current stack (TF 2.18 + tf_keras/Keras 3, NumPy 2, PyArrow 26, Spark 4.3) in .venv-current: work in progress.
setup-current:
	@scripts/setup.sh current

test-current: setup-current
	@.venv-current/bin/python -m pytest tests

demo: setup
	$(PY) -m sparkdl.cli demo

test: setup
	@$(PY) -m pytest tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: setup
	for b in scripts/benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf .sparkdl spark-warehouse
