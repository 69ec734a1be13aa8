# celery-fleet: `make demo` provisions the local lab and runs the tutorial's add(4, 4) on it;
# `make test` runs everything CI checks. Both start from a fresh clone on Debian 12, as root.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
VENV := $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
# The Molecule runs of `make test` (molecule/runs.sh names them: a scenario, or apps or drills on
# a broker and process manager). The failure drills run once per broker, each under the process
# manager the scenarios leave out for it (and switched to it from the other); apps and drills give
# the number of tests their verify must run (conftest fails it when fewer do), drills last its
# broker's ack timeout: the shortest the rules allow, so that a drill waits it out in seconds
# (Redis: above the drills' task time limit of 20 s plus 5 s of soft shutdown; RabbitMQ checks
# consumer timeouts once a minute and the role refuses less than 60 s).
# Two lanes at once, every run in one of them. The drills' lane holds the runs that wait out
# outages and timeouts (the cores about a third idle): both drills runs, then fleet, whose cluster
# drills wait out node kills and elections; the other lane keeps the cores busy meanwhile. Counts
# are by task id and must not depend on the machine's speed, which the lane beside them tests too;
# fleet's bounds in seconds (a send, a workers' pause, a countdown task's lateness) are the
# protocols' timeouts with room for a busy machine. Two busy runs side by side gain nothing on 2
# cores (measured: 21.5 against 24 minutes). django-app, the shortest, ends the drills' lane, so
# both lanes end together (35.4 + 1.4 and 36.0 minutes on 2026-12-07). Scenarios, networks and
# subnets are distinct; a scenario run twice stays in one lane; RUNS (none by default) run after
# both lanes, alone.
DRILLS := drills:redis:systemd:supervisor:31:30 drills:rabbitmq:supervisor:systemd:30:60 fleet django-app
BESIDE_DRILLS := apps:redis:supervisor:25 apps:rabbitmq:systemd:25 rabbitmq-systemd sqs staging-ssh
RUNS :=
# The lab's broker, process manager and (optional) result backend; inventory/lab reads them
# from the environment:  make demo BROKER=rabbitmq PM=systemd [RESULTS=redis]
BROKER ?= redis
PM ?= supervisor
RESULTS ?=
export FLEET_BROKER := $(BROKER)
export FLEET_PROCESS_MANAGER := $(PM)
export FLEET_RESULT_BACKEND := $(RESULTS)

.PHONY: setup browser lab lab-down demo-broker demo client-env test test-quick lint syntax unit molecule clean bench bench-settings

setup: $(VENV)/.complete

# The control node's tools, pinned exactly (requirements-dev.txt); the collections come with
# the pinned ansible package, so requirements.yml installs with no network.
$(VENV)/.complete: requirements-dev.txt requirements.yml
	python3 -c 'import ensurepip' 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv; }
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(VENV)/bin/ansible-galaxy collection install -r requirements.yml
	touch $@

# The monitoring tests drive a real browser: Debian's chromium and its matching driver (a test
# tool's own browser download does not work here).
browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }

# The lab: a Docker engine, the Debian 12 systemd image and the hosts of inventory/lab/.
lab: setup
	ansible-playbook lab/create.yml

lab-down: setup
	ansible-playbook lab/destroy.yml

# An environment file (.cache/client.env, mode 0600) for clients on this machine.
client-env: setup
	ansible-playbook playbooks/client_env.yml

# The demo's broker is Redis or RabbitMQ. SQS runs in Molecule's sqs scenario (make test), against
# the lab's AWS endpoint (lab/aws_endpoint.yml); a demo client on this machine would need boto3.
demo-broker:
	@case "$(BROKER)" in redis|rabbitmq) ;; *) echo "make demo: BROKER=$(BROKER): the demo runs redis or rabbitmq (SQS: scenario sqs of make test)" >&2; exit 2;; esac

demo: demo-broker lab
	ansible-playbook site.yml
	$(MAKE) --no-print-directory client-env
	set -a; . .cache/client.env; set +a; cd app/src && python -m fleetapp.client 4 4

test: lint syntax unit molecule

lint: setup
	yamllint --strict .
	ansible-lint

syntax: setup
	for playbook in site.yml playbooks/*.yml lab/*.yml; do \
	  ansible-playbook --syntax-check "$$playbook" >/dev/null || exit 1; \
	done
	@echo "syntax: every playbook parses"

unit: setup
	cd app && python -m pytest -q
	python -m pytest -q tests

# Each run through molecule/timing.py, which prints at the end (or at a failure) every run's wall
# time, its steps' times and the cores' idle share.
molecule: setup browser
	rm -f .cache/timings.jsonl
	bash lab/engine.sh && bash lab/image.sh >/dev/null
	FLEET_LANE="[drills] " molecule/runs.sh $(DRILLS) & drills=$$!; FLEET_LANE="[beside] " molecule/runs.sh $(BESIDE_DRILLS) & beside=$$!; \
	  failed=0; wait $$drills || failed=1; wait $$beside || failed=1; [ $$failed = 0 ] || { python molecule/timing.py report; exit 1; }
	[ -z "$(RUNS)" ] || molecule/runs.sh $(RUNS)
	python molecule/timing.py report

# The quick loop while developing: lint, syntax, unit tests and one scenario (about 3 to 15
# minutes):  make test-quick SCENARIO=fleet
SCENARIO ?= django-app
test-quick: lint syntax unit
	$(MAKE) --no-print-directory molecule DRILLS= BESIDE_DRILLS= RUNS=$(SCENARIO)

clean: lab-down
	rm -rf .cache

# The benchmarks (not part of `make test`; about 35 minutes on 2 cores): raw timings in bench/results/,
# tables in BENCHMARKS.md.
bench: setup
	python bench/bench.py provision
	python bench/bench.py throughput
	python bench/bench.py report

# What each of the fleet's settings costs in throughput, one at a time (about 15 minutes).
bench-settings: setup
	python bench/bench.py settings
	python bench/bench.py report
