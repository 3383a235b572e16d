# pyinfra-swarm: `make demo` runs the deploy on the local lab, `make test` runs every test.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LAB ?= lab
MANAGERS ?= 1
WORKERS ?= 3
export PYINFRA_SWARM_LAB := $(LAB)

ANSIBLE_VENV := benchmarks/.venv-ansible
# Ansible 14 runs on Python 3.12 or newer: the first that runs (pyenv's versions too; its shims may not run).
ANSIBLE_PYTHON ?= $(shell for p in python3.14 python3.13 python3.12 $(HOME)/.pyenv/versions/3.1[2-9]*/bin/python; do \
	"$$p" -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null && { echo "$$p"; break; }; done)

.PHONY: demo test test-vm unit lint engine lab-up lab-down lab-status bench bench-compare bench-scale clean vagrant-up vagrant-deploy vagrant-down

demo: $(STAMP) engine lab-up ## bring the lab up, run deploy.py against it, say where to look
	$(BIN)/pyinfra -y inventory/lab.py deploy.py
	@$(BIN)/pyinfra-swarm lab summary --name $(LAB)

test: $(STAMP) engine lint ## unit tests, then end-to-end tests on a lab of their own
	@scripts/ensure-test-tools
	$(BIN)/pytest -v --durations=25 -m "not vm" tests

test-vm: $(STAMP) engine ## the real-kernel tests: QEMU VMs and the Vagrant lab with libvirt (root; builds the VM image once)
	@scripts/ensure-vm-tools
	$(BIN)/pytest -v --durations=10 -m vm tests

unit: $(STAMP) ## the fast unit-only tests
	$(BIN)/pytest -q -m "not e2e and not vagrant and not vm" tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

engine: ## make sure a Docker engine answers (installs and starts one on a Debian host as root)
	@scripts/ensure-docker

lab-up: $(STAMP) engine ## VM=1: QEMU virtual machines instead of containers
	@$(if $(VM),scripts/ensure-vm-tools)
	$(BIN)/pyinfra-swarm lab up --name $(LAB) --managers $(MANAGERS) --workers $(WORKERS) $(if $(VM),--vm)

lab-down: $(STAMP)
	$(BIN)/pyinfra-swarm lab down --name $(LAB)

lab-status: $(STAMP)
	$(BIN)/pyinfra-swarm lab status --name $(LAB)

bench: $(STAMP) engine ## print the lab and deploy figures
	$(BIN)/python benchmarks/bench.py

bench-compare: $(STAMP) engine ## pyinfra-swarm and Ansible 14 side by side (SIZES=1+3,1+11): table, JSON, chart
	@[ -n "$(ANSIBLE_PYTHON)" ] || { echo "Ansible 14 (ansible-core 2.21) needs Python 3.12 or newer, and none was found: set ANSIBLE_PYTHON" >&2; exit 1; }
	@$(ANSIBLE_VENV)/bin/python -c 'import ansible.release as r; assert r.__version__.startswith("2.21")' 2>/dev/null || \
		{ rm -rf $(ANSIBLE_VENV) && $(ANSIBLE_PYTHON) -m venv $(ANSIBLE_VENV) && \
		$(ANSIBLE_VENV)/bin/pip install -q 'ansible~=14.5'; }
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/pip install -q 'matplotlib~=3.9'
	$(BIN)/python benchmarks/compare.py $(if $(SIZES),--sizes $(SIZES))

bench-scale: $(STAMP) engine ## the controller at 16 to 500 hosts: facts recorded once from a lab, replayed (SCALE_SIZES=16,100)
	$(BIN)/python benchmarks/scale.py $(if $(SCALE_SIZES),--sizes $(SCALE_SIZES))

# Every Vagrant target reads $(PYINFRA_SWARM_VAGRANT_SETTINGS) when set, else vagrant/settings.yml.
VAGRANT_SETTINGS = $(abspath $(or $(PYINFRA_SWARM_VAGRANT_SETTINGS),vagrant/settings.yml))

vagrant-up: $(STAMP) ## boot the Vagrant lab (a local box made first where settings ask for one)
	@needs=$$($(BIN)/python -m pyinfra_swarm.vagrant "$(VAGRANT_SETTINGS)") && scripts/ensure-vagrant-tools $$needs
	$(BIN)/pyinfra-swarm vagrant up --settings "$(VAGRANT_SETTINGS)"

vagrant-deploy: $(STAMP) ## run deploy.py on the Vagrant lab
	PYINFRA_SWARM_VAGRANT_SETTINGS="$(VAGRANT_SETTINGS)" $(BIN)/pyinfra -y inventory/vagrant.py deploy.py

vagrant-down: $(STAMP) ## destroy the Vagrant lab's VMs
	$(BIN)/pyinfra-swarm vagrant down --settings "$(VAGRANT_SETTINGS)"

$(STAMP): pyproject.toml
	@command -v python3 >/dev/null || { echo "python3 is missing: install it (apt-get install python3 python3-venv)"; exit 1; }
	@python3 -c 'import ensurepip, venv' 2>/dev/null || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null || \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null; }
	python3 -m venv $(VENV) || { echo "creating $(VENV) failed: install python3-venv"; exit 1; }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,lab]'
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
