# SimAM-Viz: `make run` starts the product, `make test` runs every check. Both install first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PORT ?= 8501

.PHONY: audit install system-deps run test lint clean demo-weights evaluate-demo trust-study study-seeds \
	seed-study intervention-study consistency-study \
	docker-smoke \
	deploy-smoke

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Debian packages the tests need (emoji font for the scene generator); skipped when present.
system-deps:
	bash scripts/system-deps.sh

run: install
	$(VENV)/bin/streamlit run app/serve.py --server.port $(PORT)

lint: install
	$(VENV)/bin/ruff check simam_viz app tests scripts benchmarks harness setup.py

test: install system-deps lint audit
	$(PY) -m pytest -q

# Known vulnerabilities in the pinned requirements (fails on any that is not explained).
audit: install
	$(PY) scripts/audit.py

# Reproduce checkpoints/demo/: generate the scenes, train the three variants identically
# (same seed, data order, augmentation, schedule), then fine-tune them on 18000 fresh scenes
# (more data beat more epochs: 28 epochs of 6000 scenes overfit at 94-96%), copy in place.
# Sizes are 16k+1 (129 to train, 161 to test): then the stride-16 grid's first and last cells
# sit on the image's first and last pixels, so neither the network nor the CAM's upsampling
# favours one side. Blocks start as the identity (zero-init residual, the train default).
demo-weights: install system-deps
	$(VENV)/bin/simam-viz scenes build/scenes --seed 0 --size 128 --gallery app/examples
	$(VENV)/bin/simam-viz train --data build/scenes --out build/demo-stage1 --epochs 28 \
		--size 129 --device cpu
	$(VENV)/bin/simam-viz scenes build/scenes_more --seed 1 --size 128 --train 18000 --val 480 --test 120
	$(VENV)/bin/simam-viz train --data build/scenes_more --out build/demo --init build/demo-stage1 \
		--epochs 3 --lr 0.02 --warmup-epochs 0.2 --size 129 --test-size 161 --device cpu
	bash scripts/install-demo-weights.sh build/demo checkpoints/demo

# Two more training seeds of each demo model, same recipe as demo-weights (not shipped; for the
# spread across seeds in docs/studies.md). ~26 min per model on this CPU; resumes where it stopped.
study-seeds: install system-deps
	bash scripts/study-seeds.sh

# The localization study on every seed trained so far (the shipped models are seed 0; seeds
# that make study-seeds finished join): each seed's means, their spread, and each model minus
# ResNet-50 with its 95 % paired bootstrap interval per seed (build/seed_study/table.md).
# Only the test split is generated if build/scenes is missing; two single-threaded processes.
seed-study: install system-deps
	test -d build/scenes/test || $(VENV)/bin/simam-viz scenes build/scenes --seed 0 --size 128 \
		--train 0 --val 0 --test 600
	OMP_NUM_THREADS=1 $(PY) scripts/seed_study.py --data build/scenes --jobs 2

# The localization study of docs/studies.md (test split, all three demo models).
evaluate-demo: install
	$(VENV)/bin/simam-viz evaluate --data build/scenes --split test \
		--methods gradcam gradcam++ layercam --csv build/study.csv

# The trust study of docs/studies.md: faithfulness and sanity scores (simam-viz evaluate
# --faithfulness --sanity) of the three demo models on 48 test scenes, the tables
# (build/trust_study/table.md) and docs/study/sanity_cascade.png.
# Only the test split is generated if build/scenes is missing (scenes are a pure function of
# seed, split and index, so it is the same as the full run's); two single-threaded processes.
# TRUST_METHODS picks the CAM methods (docs/studies.md's tables: Grad-CAM only).
TRUST_METHODS ?= gradcam
trust-study: install system-deps
	test -d build/scenes/test || $(VENV)/bin/simam-viz scenes build/scenes --seed 0 --size 128 \
		--train 0 --val 0 --test 600
	OMP_NUM_THREADS=1 $(PY) scripts/trust_study.py --data build/scenes --limit 48 --jobs 2 \
		--methods $(TRUST_METHODS)

# The intervention study of docs/studies.md (simam-viz evaluate --interventions on the demo models with
# attention, all 600 test scenes, forward passes only; ~0.8 s per scene and model on this CPU):
# build/intervention_study/table.md and its CSVs. Resumes from the per-arch cache there.
intervention-study: install system-deps
	test -d build/scenes/test || $(VENV)/bin/simam-viz scenes build/scenes --seed 0 --size 128 \
		--train 0 --val 0 --test 600
	OMP_NUM_THREADS=1 $(PY) scripts/intervention_study.py --data build/scenes --jobs 2

# Figure 6's consistency (docs/studies.md): Spearman of SimAM's channel-mean attention with the
# Grad-CAM after SimAM, per block, against a shuffled null (another scene's attention).
consistency-study: install system-deps
	test -d build/scenes/test || $(VENV)/bin/simam-viz scenes build/scenes --seed 0 --size 128 \
		--train 0 --val 0 --test 600
	OMP_NUM_THREADS=1 $(PY) scripts/consistency_study.py --data build/scenes --jobs 2

# Build the Docker image with podman and probe it (health, page, upload in a real browser).
docker-smoke: install system-deps
	bash scripts/docker-smoke.sh

# Two replicas of that image behind the sticky proxy (deploy/), six browser sessions through
# it, one replica stopped mid-test: its sessions reconnect and get their figures again.
deploy-smoke: install system-deps
	bash scripts/deploy-smoke.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
