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

.PHONY: setup demo test bench clean

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

clean:
	rm -rf $(VENV) build install log .pytest_cache
