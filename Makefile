# Every target sets up what it needs: a fresh machine needs only Python 3.11+ and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
UV_VERSION := $(shell sed -n '/^name = "uv"$$/{n;s/^version = "\(.*\)"/\1/p;}' uv.lock)
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))
# mkdocs-material's banner about its successor, printed on every build.
export NO_MKDOCS_2_WARNING := 1
PYTEST_ARGS ?=
# Four pytest workers (pytest-xdist), a test file each at a time: most tests wait on machines, so
# four share a 2-core machine (20 minutes; three and two took longer when measured). Each worker is a session with its
# own sandboxes; they share one Prefect server, but for the modules of the push service's group, which one
# worker runs on a server of its own (tests/conftest.py's scheduler).
PYTEST_WORKERS ?= 4

.PHONY: env lint test docs demo demo-machines bench clean sandbox-host

env: $(VENV)/.synced
DOCS_VENV := .venv-docs

# uv comes from PyPI at the locked version, then installs exactly what uv.lock says, compiled to
# bytecode: where PYTHONDONTWRITEBYTECODE is set (CI, sandboxes) no import would ever write a .pyc,
# so every Python process the tests start (prefect's CLI, servers, clients) compiled prefect,
# google-cloud and boto3 from source again: about 6 CPU-seconds each, 30 s once here.
$(VENV)/.synced: pyproject.toml uv.lock
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	test -x $(VENV)/bin/uv || $(VENV)/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(VENV)/bin/uv sync --locked --all-extras --compile-bytecode --python $(VENV)/bin/python
	touch $@

# The docs tools, with the project (mkdocstrings reads its docstrings), in an environment of their own.
$(DOCS_VENV)/.synced: pyproject.toml uv.lock $(VENV)/.synced
	UV_PROJECT_ENVIRONMENT=$(abspath $(DOCS_VENV)) $(VENV)/bin/uv sync --locked --all-extras --no-default-groups --group docs \
		--python $(VENV)/bin/python
	touch $@

# Lint and format check (ruff, configured in pyproject.toml): `make lint` alone; `make test` first.
LINTED := prefect_remote tests bench examples docs/hooks
lint: env
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

# Then the docs: a broken link or anchor, or a public name the API reference renders without a
# docstring, fails the build (--strict) and so the suite. Then prefect-dask's own task-runner tests,
# which run on RemoteTaskRunner (tests/test_task_runner_prefect_dask.py), are fetched from their
# source distribution on PyPI at the version uv.lock pins (cached in .cache/).
# The sandbox clouds enforce security groups and firewall rules with nftables' `nft`, in each
# instance's network namespace; their container images need a registry (docker-registry), an engine
# (podman, run with runc; netavark for the networks of build steps, which drives iptables; catatonit,
# the init of `podman run --init`) and a base root file system builder (mmdebstrap), with uidmap for
# podman's user namespaces. Podman's recommended packages are not all installed (--no-install-recommends):
# these are the ones the sandbox needs. Debian's packages, installed when a command
# is missing (as root, where apt-get is).
SANDBOX_HOST_PACKAGES := nft:nftables podman:podman runc:runc /usr/lib/podman/netavark:netavark \
	docker-registry:docker-registry mmdebstrap:mmdebstrap newuidmap:uidmap iptables:iptables /usr/libexec/podman/catatonit:catatonit
sandbox-host:
	@missing="$$(for pair in $(SANDBOX_HOST_PACKAGES); do command -v $${pair%%:*} >/dev/null || echo $${pair#*:}; done)"; \
	if [ -n "$$missing" ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi
	@command -v nft >/dev/null || echo "no nft (package nftables): the sandbox clouds will not enforce ingress rules"
	@command -v podman >/dev/null || echo "no podman (package podman): the sandbox has no container registry or engine"

test: lint sandbox-host $(DOCS_VENV)/.synced
	$(DOCS_VENV)/bin/mkdocs build --strict
	$(VENV)/bin/python -m tests.upstream
	$(VENV)/bin/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=80 $(PYTEST_ARGS)

# The site (docs/, mkdocs.yml) into site/; `$(VENV)/bin/mkdocs serve` serves it while you write.
docs: $(DOCS_VENV)/.synced
	$(DOCS_VENV)/bin/mkdocs build --strict

demo: env
	PREFECT_REMOTE_HOME=$(CURDIR)/.demo/home $(VENV)/bin/python examples/demo.py

demo-machines: env
	PREFECT_REMOTE_HOME=$(CURDIR)/.demo/home $(VENV)/bin/python examples/machines_demo.py

bench: env
	@$(VENV)/bin/python bench/run.py

clean:
	-$(VENV)/bin/prefect-remote machines rm --all
	rm -rf $(VENV) $(DOCS_VENV) .pytest_cache .cache site
