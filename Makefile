# Every target sets up what it needs: a fresh machine needs only Python 3.11+ and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
UV_VERSION := $(shell sed -n '/^name = "uv"$$/{n;s/^version = "\(.*\)"/\1/p;}' uv.lock)
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))
PYTEST_ARGS ?=
# Two pytest workers (pytest-xdist), a test file each at a time: most tests wait on machines,
# so two share this 2-core machine well. Each worker is a session with its own server and sandboxes.
PYTEST_WORKERS ?= 2

.PHONY: env test demo demo-machines bench clean

env: $(VENV)/.synced

# uv comes from PyPI at the locked version, then installs exactly what uv.lock says.
$(VENV)/.synced: pyproject.toml uv.lock
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	test -x $(VENV)/bin/uv || $(VENV)/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(VENV)/bin/uv sync --locked --all-extras --python $(VENV)/bin/python
	touch $@

# prefect-dask's own task-runner tests run on RemoteTaskRunner (tests/test_task_runner_prefect_dask.py):
# fetched first from their source distribution on PyPI at the version uv.lock pins, cached in .cache/.
test: env
	$(VENV)/bin/python -m tests.upstream
	$(VENV)/bin/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

demo: env
	PREFECT_REMOTE_HOME=$(CURDIR)/.demo/home $(VENV)/bin/python examples/demo.py

demo-machines: env
	PREFECT_REMOTE_HOME=$(CURDIR)/.demo/home $(VENV)/bin/python examples/machines_demo.py

bench: env
	@$(VENV)/bin/python bench/run.py

clean:
	-$(VENV)/bin/prefect-remote machines rm --all
	rm -rf $(VENV) .pytest_cache .cache
