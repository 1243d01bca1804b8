# Offline feature caching for transfer learning on Dogs vs Cats. `make` (or `make help`) lists the targets.
# Every setting is a Make variable passed to the stage's argparse, and recorded inside the artifact it makes.
.DEFAULT_GOAL := help
SHELL := /bin/bash

# --- environment -----------------------------------------------------------------------------------------
VENV ?= .venv
PY := $(VENV)/bin/python
TF_VERSION := 2.21.0
# GPU defaults to the variant already installed, so that a later `make features` never swaps TensorFlow back.
GPU ?= $(if $(wildcard $(VENV)/.installed-gpu),1,0)
SCALE ?= 0
TF_PACKAGE := $(if $(filter 1,$(GPU)),tensorflow[and-cuda]==$(TF_VERSION),tensorflow-cpu==$(TF_VERSION))
BASE_STAMP := $(VENV)/.installed-$(if $(filter 1,$(GPU)),gpu,cpu)
SCALE_STAMP := $(VENV)/.installed-scale
STAMP := $(BASE_STAMP) $(if $(filter 1,$(SCALE)),$(SCALE_STAMP))
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

# --- stage 1: features -------------------------------------------------------------------------------------
DATA ?= data/train
FEATURES ?= artifacts/features.h5
IMG_SIZE ?= 150
LAYER ?= mixed7
LAYERS ?= $(LAYER)
WEIGHTS ?= imagenet
VAL_SPLIT ?= 0.2
SEED ?= 42
DTYPE ?= float32
# size: input identity = relative paths + byte sizes; content: + sha256 of every file (catches same-size replacements)
VERIFY ?= size
AUG_VIEWS ?= 0
ENGINE ?= local
SHARDS ?= 2
# a CSV naming each image of DATA (a path relative to DATA, or the file's stem) and its `label`; empty: DATA's layout
LABELS ?=
# auto | float32 | bfloat16 compute for features, finetune (empty = auto), predict, submission (empty = the model's)
PRECISION ?=
# BATCH, EPOCHS and LR default per stage when left empty (see each stage's --help)
# seconds between commits of a training run's resume state (_work/); 0: every epoch. A kill repeats at most these
CHECKPOINT_S ?= 60
BATCH ?=
EPOCHS ?=
LR ?=
# --- stage 2: head -----------------------------------------------------------------------------------------
HEAD_DIR ?= artifacts/head
MEM_BUDGET ?= 2G
HEAD ?= flatten
UNITS ?= 1024
DROPOUT ?= 0.2
# --- sweep over head designs and settings -------------------------------------------------------------------
SWEEP_DIR ?= artifacts/sweep
TRIALS ?= 40
TIMEOUT ?=
STORAGE ?=
# --- stage 3: fine-tuning, prediction ------------------------------------------------------------------------
MODEL_DIR ?= artifacts/finetune
UNFREEZE_FROM ?= mixed6
MIXED_PRECISION ?= auto
XLA ?= 0
FROM_CACHE ?= 0
MODEL ?= $(MODEL_DIR)/model.keras
INPUT ?= data/test
TEST ?= data/test
CALIBRATE ?= 1
TTA ?= none
CLIP ?= 0.005
PREDICTIONS ?= artifacts/predictions.csv
SUBMISSION ?= artifacts/submission.csv
ZIP ?= dogs-vs-cats.zip
BENCH_N ?= 600
# SCALE_N=25000: `make bench` runs the Kaggle-size run instead (bench/scale.py; over an hour on 2 cores, not in CI)
SCALE_N ?=
# --- report -------------------------------------------------------------------------------------------------
REPORT_DIR ?= artifacts/report
TOP_N ?= 24
EXCLUDE ?=
# --- demo ---------------------------------------------------------------------------------------------------
# classes of `make demo` (2: the Kaggle cat/dog layout and a submission; K > 2: K class folders, no submission)
CLASSES ?= 2
DEMO_K := $(if $(filter 2,$(CLASSES)),,-$(CLASSES)classes)
DEMO_DIR ?= data/demo$(DEMO_K)
DEMO_ART ?= artifacts/demo$(DEMO_K)
DEMO_N ?= 240

opt = $(if $(2),$(1) $(2))

.PHONY: help install data demo features head sweep finetune predict submission report browser bench test test-fast clean

## help: list the targets and the variables they read (the default target)
help:
	@echo "Targets (set variables as make TARGET VAR=value):"
	@grep -E '^## ' $(MAKEFILE_LIST) | sed -e 's/^## /  /'
	@echo "Main variables: DATA=$(DATA) FEATURES=$(FEATURES) IMG_SIZE=$(IMG_SIZE) LAYER=$(LAYER) WEIGHTS=$(WEIGHTS)"
	@echo "  LAYERS=$(LAYERS) AUG_VIEWS=$(AUG_VIEWS) ENGINE=$(ENGINE) SHARDS=$(SHARDS) VERIFY=$(VERIFY) DTYPE=$(DTYPE) VAL_SPLIT=$(VAL_SPLIT) SEED=$(SEED)"
	@echo "  PRECISION=$(PRECISION) (auto|float32|bfloat16; empty: auto for features/finetune, the model's own for predict/submission)"
	@echo "  HEAD_DIR=$(HEAD_DIR) MEM_BUDGET=$(MEM_BUDGET) MODEL_DIR=$(MODEL_DIR) UNFREEZE_FROM=$(UNFREEZE_FROM) FROM_CACHE=$(FROM_CACHE)"
	@echo "  MIXED_PRECISION=$(MIXED_PRECISION) XLA=$(XLA) CHECKPOINT_S=$(CHECKPOINT_S) MODEL=$(MODEL) INPUT=$(INPUT) TEST=$(TEST) GPU=$(GPU) SCALE=$(SCALE)"
	@echo "  PREDICTIONS=$(PREDICTIONS) SUBMISSION=$(SUBMISSION) ZIP=$(ZIP) BENCH_N=$(BENCH_N) SCALE_N=$(SCALE_N)"
	@echo "  HEAD=$(HEAD) UNITS=$(UNITS) DROPOUT=$(DROPOUT) SWEEP_DIR=$(SWEEP_DIR) TRIALS=$(TRIALS) TIMEOUT=$(TIMEOUT) STORAGE=$(STORAGE)"
	@echo "  CALIBRATE=$(CALIBRATE) TTA=$(TTA) CLIP=$(CLIP) REPORT_DIR=$(REPORT_DIR) TOP_N=$(TOP_N) EXCLUDE=$(EXCLUDE) LABELS=$(LABELS) CLASSES=$(CLASSES)"
	@echo "  BATCH, EPOCHS, LR: per stage when empty (python -m <stage> --help)"

$(BASE_STAMP): requirements.txt constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# tensorflow-cpu and tensorflow[and-cuda] both own site-packages/tensorflow: remove the other one first
	@if [ -e $(VENV)/.installed-$(if $(filter 1,$(GPU)),cpu,gpu) ]; then $(PY) -m pip uninstall -q -y tensorflow tensorflow-cpu; fi
	$(PY) -m pip install -q -c constraints.txt -r requirements.txt "$(TF_PACKAGE)"
	@rm -f $(VENV)/.installed-cpu $(VENV)/.installed-gpu
	@touch $@

$(SCALE_STAMP): $(BASE_STAMP) requirements-scale.txt
	$(PY) -m pip install -q -c constraints.txt -r requirements-scale.txt
	@touch $@

## install: create .venv with pinned dependencies (idempotent; GPU=1: tensorflow[and-cuda] instead of -cpu; SCALE=1: + Ray)
install: $(STAMP)

## data: unpack a Kaggle zip (ZIP=dogs-vs-cats.zip, nested zips included) into data/
data: $(STAMP)
	$(PY) -m extract.unpack --zip $(ZIP) --out data

## demo: the built-in default: synthetic images, then every stage with WEIGHTS=none at 75x75 (a few minutes on 2 CPUs); CLASSES=5: five classes
demo: $(STAMP)
	$(PY) -m extract.synth --out $(DEMO_DIR)/train --n $(DEMO_N) --broken 4 --seed 1 --classes $(CLASSES) \
	  --layout $(if $(DEMO_K),folders,kaggle)
	$(PY) -m extract.synth --out $(DEMO_DIR)/test --n 20 --layout unlabelled --broken 1 --seed 2 --classes $(CLASSES)
	$(MAKE) --no-print-directory features DATA=$(DEMO_DIR)/train FEATURES=$(DEMO_ART)/features.h5 WEIGHTS=none IMG_SIZE=75 LAYERS=mixed7,mixed6 AUG_VIEWS=2
	$(MAKE) --no-print-directory head FEATURES=$(DEMO_ART)/features.h5 HEAD_DIR=$(DEMO_ART)/head EPOCHS=10
	$(MAKE) --no-print-directory finetune DATA=$(DEMO_DIR)/train FEATURES=$(DEMO_ART)/features.h5 HEAD_DIR=$(DEMO_ART)/head MODEL_DIR=$(DEMO_ART)/finetune-cached EPOCHS=2 FROM_CACHE=1
	$(MAKE) --no-print-directory finetune DATA=$(DEMO_DIR)/train FEATURES=$(DEMO_ART)/features.h5 HEAD_DIR=$(DEMO_ART)/head MODEL_DIR=$(DEMO_ART)/finetune EPOCHS=1
	$(MAKE) --no-print-directory predict INPUT=$(DEMO_DIR)/test MODEL=$(DEMO_ART)/finetune/model.keras PREDICTIONS=$(DEMO_ART)/predictions.csv
	$(if $(DEMO_K),,$(MAKE) --no-print-directory submission TEST=$(DEMO_DIR)/test MODEL=$(DEMO_ART)/finetune/model.keras SUBMISSION=$(DEMO_ART)/submission.csv)
	$(MAKE) --no-print-directory report DATA=$(DEMO_DIR)/train FEATURES=$(DEMO_ART)/features.h5 HEAD_DIR=$(DEMO_ART)/head MODEL_DIR=$(DEMO_ART)/finetune REPORT_DIR=$(DEMO_ART)/report
	@echo "demo done: artifacts in $(DEMO_ART)/; open $(DEMO_ART)/report/report.html in a browser"

## features: stage 1, cache InceptionV3 LAYERS of DATA into FEATURES (resumable; LABELS=csv; AUG_VIEWS=K; ENGINE=ray SHARDS=N; EXCLUDE=csv)
features: $(STAMP) $(if $(filter ray,$(ENGINE)),$(SCALE_STAMP))
	$(PY) -m extract --data $(DATA) --features $(FEATURES) --img-size $(IMG_SIZE) --layers $(LAYERS) \
	  --weights $(WEIGHTS) --val-split $(VAL_SPLIT) --seed $(SEED) --dtype $(DTYPE) --aug-views $(AUG_VIEWS) \
	  --engine $(ENGINE) --shards $(SHARDS) --verify $(VERIFY) --precision $(or $(PRECISION),auto) $(call opt,--batch,$(BATCH)) $(call opt,--exclude,$(EXCLUDE)) $(call opt,--labels,$(LABELS))

## head: stage 2, train the dense head + logistic-regression baseline on FEATURES into HEAD_DIR
head: $(STAMP)
	$(PY) -m classify --features $(FEATURES) --head-dir $(HEAD_DIR) --layer $(LAYER) --seed $(SEED) \
	  --mem-budget $(MEM_BUDGET) --head $(HEAD) --units $(UNITS) --dropout $(DROPOUT) --checkpoint-s $(CHECKPOINT_S) \
	  $(call opt,--epochs,$(EPOCHS)) $(call opt,--batch,$(BATCH)) $(call opt,--lr,$(LR))

## sweep: search head kinds and settings on FEATURES with Optuna (TRIALS, TIMEOUT=30m, STORAGE=<SQLAlchemy URL>) into SWEEP_DIR; best/ is a HEAD_DIR
sweep: $(STAMP)
	$(PY) -m classify.sweep --features $(FEATURES) --sweep-dir $(SWEEP_DIR) --trials $(TRIALS) --layer $(LAYER) \
	  --seed $(SEED) --mem-budget $(MEM_BUDGET) $(call opt,--timeout,$(TIMEOUT)) $(call opt,--storage,$(STORAGE)) \
	  $(call opt,--epochs,$(EPOCHS))

## finetune: stage 3, head back on InceptionV3, equivalence check, fine-tune from UNFREEZE_FROM (FROM_CACHE=1: on cached mixed6)
finetune: $(STAMP)
	$(PY) -m finetune --data $(DATA) --features $(FEATURES) --head-dir $(HEAD_DIR) --model-dir $(MODEL_DIR) \
	  --unfreeze-from $(UNFREEZE_FROM) --seed $(SEED) --mixed-precision $(MIXED_PRECISION) --xla $(XLA) \
	  --from-cache $(FROM_CACHE) --precision $(or $(PRECISION),auto) --checkpoint-s $(CHECKPOINT_S) \
	  $(call opt,--epochs,$(EPOCHS)) $(call opt,--batch,$(BATCH)) $(call opt,--lr,$(LR))

## predict: write PREDICTIONS (path,label,prob,prob_<class>...) for INPUT (an image or a folder) with MODEL (CALIBRATE=1, TTA=none|flip)
predict: $(STAMP)
	$(PY) -m finetune.predict --input $(INPUT) --model $(MODEL) --out $(PREDICTIONS) --calibrate $(CALIBRATE) --tta $(TTA) \
	  $(call opt,--batch,$(BATCH)) $(call opt,--precision,$(PRECISION))

## submission: write SUBMISSION in Kaggle Redux format (id,label=P(dog)) for the images in TEST (CALIBRATE, TTA, CLIP); cat/dog models only
submission: $(STAMP)
	$(PY) -m finetune.submission --test $(TEST) --model $(MODEL) --out $(SUBMISSION) --calibrate $(CALIBRATE) \
	  --tta $(TTA) --clip $(CLIP) $(call opt,--batch,$(BATCH)) \
	  $(call opt,--precision,$(PRECISION))

## report: REPORT_DIR/report.html (scores, top losses, suspected label errors, near-duplicates) + CSVs; MODEL_DIR if it has model.keras
report: $(STAMP)
	$(PY) -m report --features $(FEATURES) --head-dir $(HEAD_DIR) --data $(DATA) --report-dir $(REPORT_DIR) \
	  --top-n $(TOP_N) --seed $(SEED) \
	  $(if $(filter command line,$(origin MODEL_DIR)),$(call opt,--model-dir,$(MODEL_DIR)),$(if $(wildcard $(MODEL_DIR)/model.keras),--model-dir $(MODEL_DIR)))

## browser: install Debian's chromium (the test that renders report.html headless); a no-op when it is there
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

## bench: measure every stage against the recipe it replaces (BENCH_N images); writes artifacts/bench.json and bench.md; SCALE_N=25000: the Kaggle-size run (IMG_SIZE, MEM_BUDGET) into artifacts/bench_scale.json and .md
bench: $(STAMP) $(SCALE_STAMP)
	$(PY) -m bench $(if $(SCALE_N),--scale-n $(SCALE_N) --img-size $(IMG_SIZE) --mem-budget $(MEM_BUDGET),--n $(BENCH_N))

## test: everything, what CI runs: the whole suite with oneDNN's custom ops on, then the fast tier with them off
# TF turns oneDNN's custom operations on by itself on CPUs with AVX512_VNNI/BF16 or AMX, and they compute in another
# order: the suite must pass both ways, whatever this machine's CPU would pick. Offline: generated images,
# WEIGHTS=none, 75x75; installs the Ray extra that it tests.
test: $(STAMP) $(SCALE_STAMP)
	TF_ENABLE_ONEDNN_OPTS=1 $(PY) -m pytest
	TF_ENABLE_ONEDNN_OPTS=0 $(PY) -m pytest -m "not slow"

## test-fast: the edit-test loop: every test not marked slow (a few minutes on 2 cores), with this CPU's oneDNN default
test-fast: $(STAMP) $(SCALE_STAMP)
	$(PY) -m pytest -m "not slow"

## clean: remove artifacts/ and data/demo (keeps .venv and real data)
clean:
	rm -rf artifacts $(DEMO_DIR)
