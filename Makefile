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

.PHONY: setup demo test bench policy policy-rcan policy-128 policy-rcan-128 generator-128 clean

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

# The canonical policy at 128 px from scratch on the committed label sets (datasets/README.md): width 64 with the
# action merged at 16x16 (--merge-downsample 8, not in the paper), batches of 64 states, the rate decayed to 0,
# weight average (docs/policy.md, Results, thirteenth session: 64-70 of 102 on four selection sets after 15,000
# updates on a GPU, when the scripted set had 193 of its shards).  On the 2 cores, estimated from measured rates:
# about 16 min to render the sets, 2.45 updates/s, about 3 min per held-out check, so about 2.5 h in all;
# POLICY128_DEVICE=cuda trains on a GPU (52 updates/s on an H200).  Rerunning resumes.  The decay is what the
# measured run used; for the paper's layout a constant rate grasped far more (docs/policy.md, fifteenth session),
# for this one it did not (sixteenth session, on the 2 cores: 251 against 264 of 408 on four selection sets).
POLICY128_SETS := $(addprefix datasets/labels/descend-aimed-128-,scripted dagger12 dagger13 dagger14)
POLICY128_RUN ?= runs/policy/canonical-128-make
POLICY128_UPDATES ?= 15000
POLICY128_DEVICE ?= cpu

policy-128: $(STAMP)
	$(VENV)/bin/rcan train-labels --image-size 128 --width 64 --merge-downsample 8 --bf16 --device $(POLICY128_DEVICE) \
		--labels $(POLICY128_SETS) --eval-labels datasets/labels/descend-aimed-128-test --ema-decay 0.999 --lr-decay \
		--total-updates $(POLICY128_UPDATES) --batch-states 64 --eval-every 2500 --eval-episodes 30 --threads 2 \
		--render-workers 2 --log-every 250 --out-dir $(dir $(POLICY128_RUN)) --run-name $(notdir $(POLICY128_RUN)) \
		$(call RESUME_IF,$(POLICY128_RUN))
	$(VENV)/bin/rcan eval-policy --policy $(POLICY128_RUN) --episodes 102 --seed 1000 --domain canonical --workers 2

# The RCAN policy at 128 px by distillation from the shipped canonical network (docs/policy.md, "Distilling the
# canonical policy"): held-out executed labels for the early checks, then rounds of teacher labels on the states
# the current student visits in the randomized domain, each followed by feature distillation on every set so far,
# continuing the previous round's network.  Round 0 is the teacher itself on G(x) (no update).  Every step
# resumes where it left off, so rerunning `make policy-rcan-128` continues it.
RCAN128_SCENES ?= 2000
RCAN128_UPDATES ?= 1500
RCAN128_TEST_SCENES ?= 160
RCAN128_TEST_LABELS ?= datasets/labels/descend-aimed-128-test
RCAN128_LABELS ?= data/labels/teacher-128-make
RCAN128_RUN ?= runs/policy/rcan128-distill-make
RCAN128_GENERATOR ?= models/generator_64.onnx
TEACHER_128 := models/policy_canonical_128
TEACH := $(VENV)/bin/rcan label-states --teacher $(TEACHER_128).onnx --candidates 16 --aimed-candidates 4 \
	--image-size 128 --workers 2 --behaviour-epsilon 0.1 --aim-offset 0 --label-prob 1.0 --scenes $(RCAN128_SCENES) --resume
DISTILL := $(VENV)/bin/rcan train-labels --variant rcan --image-size 128 --trunk-width 64 \
	--generator $(RCAN128_GENERATOR) --feature-teacher $(TEACHER_128).safetensors \
	--ema-decay 0.999 --eval-labels $(RCAN128_TEST_LABELS) --out-dir $(dir $(RCAN128_RUN)) --threads 2 \
	--render-workers 2 --eval-every 750 --eval-episodes 0 --log-every 250

policy-rcan-128: $(STAMP)
	$(VENV)/bin/rcan label-states --completion descend --candidates 12 --aimed-candidates 4 --image-size 128 \
		--out-dir $(RCAN128_TEST_LABELS) --split test --scenes $(RCAN128_TEST_SCENES) --workers 2 --resume
	$(DISTILL) --labels $(RCAN128_TEST_LABELS) --run-name $(notdir $(RCAN128_RUN))-0 \
		--init-from $(TEACHER_128).safetensors --total-updates 0 $(call RESUME_IF,$(RCAN128_RUN)-0)
	$(TEACH) --behaviour $(RCAN128_RUN)-0/policy.safetensors --out-dir $(RCAN128_LABELS)-r1 --seed 11
	$(DISTILL) --labels $(RCAN128_LABELS)-r1 --run-name $(notdir $(RCAN128_RUN))-1 --total-updates $(RCAN128_UPDATES) \
		--init-from $(RCAN128_RUN)-0/policy.safetensors $(call RESUME_IF,$(RCAN128_RUN)-1)
	$(TEACH) --behaviour $(RCAN128_RUN)-1/policy.safetensors --out-dir $(RCAN128_LABELS)-r2 --seed 12
	$(DISTILL) --labels $(RCAN128_LABELS)-r1 $(RCAN128_LABELS)-r2 --run-name $(notdir $(RCAN128_RUN))-2 \
		--total-updates $(RCAN128_UPDATES) --init-from $(RCAN128_RUN)-1/policy.safetensors $(call RESUME_IF,$(RCAN128_RUN)-2)
	$(TEACH) --behaviour $(RCAN128_RUN)-2/policy.safetensors --out-dir $(RCAN128_LABELS)-r3 --seed 13
	$(DISTILL) --labels $(RCAN128_LABELS)-r1 $(RCAN128_LABELS)-r2 $(RCAN128_LABELS)-r3 --run-name $(notdir $(RCAN128_RUN)) \
		--total-updates $(RCAN128_UPDATES) --init-from $(RCAN128_RUN)-2/policy.safetensors $(call RESUME_IF,$(RCAN128_RUN))
	$(VENV)/bin/rcan eval-policy --policy $(RCAN128_RUN) --episodes 102 --domain randomized --workers 2

# A 128 px generator for the RCAN student, meant for a GPU: a student distilled through a perfect 128 px G comes
# within the RCAN goal, through the generators these 2 cores trained it does not (docs/policy.md, twenty-second
# session).  Pairs of the states the shipped student visits (the committed teacher sets, rendered again at 128 px;
# about 13 min on 2 cores, 2 GB), then `generator_64` widened to 128 px and trained at a GPU's batch (not yet run
# on one: the steps and rate are a starting point, not a measured recipe), then exported.  Every step resumes.
# Then: make policy-rcan-128 RCAN128_GENERATOR=$(GEN128_OUT)
GEN128_RUN ?= runs/generator-128-make
GEN128_OUT ?= models/generator_128.onnx
GEN128_DEVICE ?= cuda
GEN128_STEPS ?= 40000
GEN128_WORKERS ?= 2
GEN128_LABELS ?= datasets/labels/teacher-128-s1 datasets/labels/teacher-128-s2
GEN128_PAIRS ?= data/gen/pairs128-train
generator-128: $(STAMP)
	$(VENV)/bin/rcan label-pairs --labels $(GEN128_LABELS) --out $(GEN128_PAIRS) --image-size 128 --seed 8 \
		--workers $(GEN128_WORKERS) --resume
	$(VENV)/bin/rcan label-pairs --labels datasets/labels/descend-aimed-128-test --out data/gen/pairs128-test \
		--image-size 128 --seed 7 --workers $(GEN128_WORKERS) --resume
	$(VENV)/bin/rcan train-generator --data $(GEN128_PAIRS) --eval-data data/gen/pairs128-test \
		--init-from models/generator_64.safetensors --depth-range-m 0.5 2.25 --generator.channels 32 64 96 128 128 \
		--batch-size 32 --lr-g 2e-4 --augment --device $(GEN128_DEVICE) --steps $(GEN128_STEPS) --eval-every 2000 \
		--eval-frames 256 --checkpoint-every 500 --keep-checkpoints 2 --log-every 100 --no-progress \
		--runs-dir $(dir $(GEN128_RUN)) --name $(notdir $(GEN128_RUN)) \
		$(if $(wildcard $(GEN128_RUN)/checkpoints/step-*.json),--resume,)
	$(VENV)/bin/rcan export-generator $(GEN128_RUN) --out $(GEN128_OUT)

clean:
	rm -rf $(VENV) build install log .pytest_cache
