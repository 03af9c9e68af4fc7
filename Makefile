# rcan: every target creates .venv itself (via `make setup`) when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.setup-done

# Keep DDS on loopback for every target that may start nodes.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export RMW_IMPLEMENTATION ?= rmw_fastrtps_cpp

.PHONY: setup demo test bench policy policy-rcan clean

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel 2>&1 | grep -v "is ignored: it is neither" || true
	# CPU build of torch from local disk; a bare `torch` would pull a multi-GB CUDA build.
	$(PIP) install torch==2.13.0 2>&1 | grep -v "is ignored: it is neither" || true
	$(PIP) install -e ".[dev,ray,ros-wheels]" --config-settings editable_mode=compat 2>&1 | grep -v "is ignored: it is neither" || true
	$(PY) -c "import torch, rclpy, pybullet, onnxruntime; print('setup ok: torch', torch.__version__)"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rcan demo

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) -m bench.run_all

# The canonical label-trained policy from scratch (docs/policy.md): held-out labels, training labels (blind
# descend completion), a first training run, then DAgger rounds: label the states the current policy visits
# (round 1 with the usual candidates, later rounds also with aimed candidates) and train on everything so far:
# from scratch after rounds 1-3, continuing the previous network with weight averaging after round 4.
# Every step resumes where a killed or stopped run left off, so rerunning `make policy` continues it.  The
# defaults are what policy_canonical_64 used (its card has the exact commands and times).
# `make policy-rcan` then trains the RCAN policy on the same labels, starting from the round-3 canonical network
# on G(x).
POLICY_SCENES ?= 4000
POLICY_DAGGER_SCENES ?= 2000
POLICY_AIMED_SCENES ?= 1500
POLICY_AIMED2_SCENES ?= 1000
POLICY_AIMED3_SCENES ?= 1000
POLICY_UPDATES ?= 9000
POLICY_FINAL_UPDATES ?= 12000
POLICY_WARM_UPDATES ?= 7500
POLICY_RCAN_UPDATES ?= 6000
POLICY_LABELS := data/labels/descend-64
POLICY_RUN := runs/policy/descend-canonical-64-make
LABEL := $(VENV)/bin/rcan label-states --completion descend --candidates 8 --resume
DAGGER := $(VENV)/bin/rcan label-states --completion descend --resume --workers 2 --behaviour-epsilon 0.1 --aim-offset 0
AIMED := --candidates 12 --aimed-candidates 4
TRAIN_LABELS := $(VENV)/bin/rcan train-labels --eval-labels $(POLICY_LABELS)-test --out-dir runs/policy --threads 2 \
	--eval-every 1500 --eval-episodes 30
RESUME_IF = $(if $(wildcard $(1)/checkpoint.json),--resume,)
SETS_3 := $(POLICY_LABELS)-train $(POLICY_LABELS)-dagger1 $(POLICY_LABELS)-aimed-dagger2 $(POLICY_LABELS)-aimed-dagger3
SETS_4 := $(SETS_3) $(POLICY_LABELS)-aimed-dagger4
WARM := --ema-decay 0.999 --init-from $(POLICY_RUN)-fourth/policy.safetensors

policy: $(STAMP)
	$(LABEL) --out-dir $(POLICY_LABELS)-test --split test --scenes 200
	$(LABEL) --out-dir $(POLICY_LABELS)-train --scenes $(POLICY_SCENES) --workers 2
	$(TRAIN_LABELS) --labels $(POLICY_LABELS)-train --run-name $(notdir $(POLICY_RUN))-first \
		--total-updates $(POLICY_UPDATES) $(call RESUME_IF,$(POLICY_RUN)-first)
	$(DAGGER) --candidates 8 --out-dir $(POLICY_LABELS)-dagger1 --scenes $(POLICY_DAGGER_SCENES) --seed 1 \
		--behaviour $(POLICY_RUN)-first/policy.safetensors
	$(TRAIN_LABELS) --labels $(POLICY_LABELS)-train $(POLICY_LABELS)-dagger1 --run-name $(notdir $(POLICY_RUN))-second \
		--total-updates $(POLICY_FINAL_UPDATES) $(call RESUME_IF,$(POLICY_RUN)-second)
	$(DAGGER) $(AIMED) --out-dir $(POLICY_LABELS)-aimed-dagger2 --scenes $(POLICY_AIMED_SCENES) --seed 2 \
		--behaviour $(POLICY_RUN)-second/policy.safetensors
	$(TRAIN_LABELS) --labels $(POLICY_LABELS)-train $(POLICY_LABELS)-dagger1 $(POLICY_LABELS)-aimed-dagger2 \
		--run-name $(notdir $(POLICY_RUN))-third --total-updates $(POLICY_FINAL_UPDATES) $(call RESUME_IF,$(POLICY_RUN)-third)
	$(DAGGER) $(AIMED) --out-dir $(POLICY_LABELS)-aimed-dagger3 --scenes $(POLICY_AIMED2_SCENES) --seed 3 \
		--behaviour $(POLICY_RUN)-third/policy.safetensors
	$(TRAIN_LABELS) --labels $(SETS_3) --run-name $(notdir $(POLICY_RUN))-fourth --total-updates $(POLICY_FINAL_UPDATES) \
		$(call RESUME_IF,$(POLICY_RUN)-fourth)
	$(DAGGER) $(AIMED) --out-dir $(POLICY_LABELS)-aimed-dagger4 --scenes $(POLICY_AIMED3_SCENES) --seed 4 \
		--behaviour $(POLICY_RUN)-fourth/policy.safetensors
	$(TRAIN_LABELS) --labels $(SETS_4) --run-name $(notdir $(POLICY_RUN)) $(WARM) --total-updates $(POLICY_WARM_UPDATES) \
		$(call RESUME_IF,$(POLICY_RUN))
	$(VENV)/bin/rcan eval-policy --policy $(POLICY_RUN) --episodes 102 --domain canonical --workers 2

policy-rcan: $(STAMP)
	$(TRAIN_LABELS) --variant rcan --labels $(SETS_4) --run-name $(notdir $(POLICY_RUN))-rcan \
		$(WARM) --total-updates $(POLICY_RCAN_UPDATES) $(call RESUME_IF,$(POLICY_RUN)-rcan)
	$(VENV)/bin/rcan eval-policy --policy $(POLICY_RUN)-rcan --episodes 102 --domain randomized --workers 2

clean:
	rm -rf $(VENV) build install log .pytest_cache
