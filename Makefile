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

.PHONY: setup demo test bench policy clean

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

# The canonical label-trained policy from scratch (docs/policy.md): held-out labels, training labels,
# training with checks, then the paper's protocol on the latest weights.  Every step resumes where a
# killed or stopped run left off, so rerunning `make policy` continues it.  POLICY_SCENES=3150 and
# POLICY_UPDATES=9000 are what policy_canonical_64 used (its card has the exact commands).
POLICY_SCENES ?= 3150
POLICY_UPDATES ?= 9000
POLICY_RUN := runs/policy/labels-canonical-64-make

policy: $(STAMP)
	$(VENV)/bin/rcan label-states --out-dir data/labels/canonical-64-test --split test --scenes 200 --scenes-per-task 20 --resume
	$(VENV)/bin/rcan label-states --out-dir data/labels/canonical-64-train --scenes $(POLICY_SCENES) --scenes-per-task 25 --workers 2 --resume
	$(VENV)/bin/rcan train-labels --labels data/labels/canonical-64-train --eval-labels data/labels/canonical-64-test \
		--out-dir $(dir $(POLICY_RUN)) --run-name $(notdir $(POLICY_RUN)) --total-updates $(POLICY_UPDATES) --threads 2 \
		$(if $(wildcard $(POLICY_RUN)/checkpoint.json),--resume,)
	$(VENV)/bin/rcan eval-policy --policy $(POLICY_RUN) --episodes 102 --domain canonical --workers 2

clean:
	rm -rf $(VENV) build install log .pytest_cache
