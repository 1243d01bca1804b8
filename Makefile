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
EXPORT_STAMP := $(VENV)/.installed-export
STAMP := $(BASE_STAMP) $(if $(filter 1,$(SCALE)),$(SCALE_STAMP))
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

# --- stage 1: features -------------------------------------------------------------------------------------
DATA ?= data/train
FEATURES ?= artifacts/features.h5
# the network, from extract/backbones.py (`python -m extract.backbones` lists them); recorded in the cache, which
# every later stage follows. On a laptop: mobilenet_v2_035 (alpha 0.35) .. mobilenet_v2_140, mobilenet_025 ..
# mobilenet, mobilenet_v3_small / _large (docs/backbones.md)
BACKBONE ?= inception_v3
# several in one pass, name[:size],... (e.g. inception_v3,xception,resnet50): their pooled features concatenated;
# train with HEAD=concat
BACKBONES ?=
# empty: the backbone's registered default (`python -m extract.backbones` lists each one's)
IMG_SIZE ?=
LAYER ?=
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
# TensorBoard logs of make head, make finetune and each sweep trial under TB_DIR (empty: off); tensorboard --logdir TB_DIR
TB_DIR ?=
BATCH ?=
EPOCHS ?=
LR ?=
# --- stage 2: head -----------------------------------------------------------------------------------------
HEAD_DIR ?= artifacts/head
# auto: hold the features in memory when they take at most half of what is free, else stream them; or a size, e.g. 2G
MEM_BUDGET ?= auto
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
UNFREEZE_FROM ?=
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
# --- export -------------------------------------------------------------------------------------------------
FORMAT ?= savedmodel
EXPORT_DIR ?= artifacts/export
QUANTIZE ?= none
BENCH_N ?= 600
# SCALE_N=25000: `make bench` runs the Kaggle-size run instead (bench/scale.py; about 40 min on 2 cores, ~17 GB of scratch, not in CI)
SCALE_N ?=
# --- report -------------------------------------------------------------------------------------------------
REPORT_DIR ?= artifacts/report
TOP_N ?= 24
EXCLUDE ?=
# a CSV of path,label rows overriding those images' labels (make report writes label_fixes.csv in that format)
RELABEL ?=
# --- demo ---------------------------------------------------------------------------------------------------
# classes of `make demo` (2: the Kaggle cat/dog layout and a submission; K > 2: K class folders, no submission)
CLASSES ?= 2
DEMO_K := $(if $(filter 2,$(CLASSES)),,-$(CLASSES)classes)
DEMO_DIR ?= data/demo$(DEMO_K)
DEMO_ART ?= artifacts/demo$(DEMO_K)
DEMO_N ?= 240

opt = $(if $(2),$(1) $(2))

.PHONY: help install data demo features head sweep finetune predict submission export report browser postgres bench test test-fast clean

## help: list the targets and the variables they read (the default target)
help:
	@echo "Targets (set variables as make TARGET VAR=value):"
	@grep -E '^## ' $(MAKEFILE_LIST) | sed -e 's/^## /  /'
	@echo "Main variables: DATA=$(DATA) FEATURES=$(FEATURES) BACKBONE=$(BACKBONE) BACKBONES=$(BACKBONES) IMG_SIZE=$(IMG_SIZE) LAYER=$(LAYER) WEIGHTS=$(WEIGHTS)"
	@echo "  LAYERS=$(LAYERS) AUG_VIEWS=$(AUG_VIEWS) ENGINE=$(ENGINE) SHARDS=$(SHARDS) VERIFY=$(VERIFY) DTYPE=$(DTYPE) VAL_SPLIT=$(VAL_SPLIT) SEED=$(SEED)"
	@echo "  PRECISION=$(PRECISION) (auto|float32|bfloat16; empty: auto for features/finetune, the model's own for predict/submission)"
	@echo "  HEAD_DIR=$(HEAD_DIR) MEM_BUDGET=$(MEM_BUDGET) MODEL_DIR=$(MODEL_DIR) UNFREEZE_FROM=$(UNFREEZE_FROM) FROM_CACHE=$(FROM_CACHE)"
	@echo "  MIXED_PRECISION=$(MIXED_PRECISION) XLA=$(XLA) CHECKPOINT_S=$(CHECKPOINT_S) TB_DIR=$(TB_DIR) MODEL=$(MODEL) INPUT=$(INPUT) TEST=$(TEST) GPU=$(GPU) SCALE=$(SCALE)"
	@echo "  FORMAT=$(FORMAT) EXPORT_DIR=$(EXPORT_DIR) QUANTIZE=$(QUANTIZE)"
	@echo "  PREDICTIONS=$(PREDICTIONS) SUBMISSION=$(SUBMISSION) ZIP=$(ZIP) BENCH_N=$(BENCH_N) SCALE_N=$(SCALE_N)"
	@echo "  HEAD=$(HEAD) UNITS=$(UNITS) DROPOUT=$(DROPOUT) SWEEP_DIR=$(SWEEP_DIR) TRIALS=$(TRIALS) TIMEOUT=$(TIMEOUT) STORAGE=$(STORAGE)"
	@echo "  CALIBRATE=$(CALIBRATE) TTA=$(TTA) CLIP=$(CLIP) REPORT_DIR=$(REPORT_DIR) TOP_N=$(TOP_N) EXCLUDE=$(EXCLUDE) RELABEL=$(RELABEL) LABELS=$(LABELS) CLASSES=$(CLASSES)"
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

$(EXPORT_STAMP): $(BASE_STAMP) requirements-export.txt
	$(PY) -m pip install -q -c constraints.txt -r requirements-export.txt
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
	$(MAKE) --no-print-directory features DATA=$(DEMO_DIR)/train FEATURES=$(DEMO_ART)/features.h5 WEIGHTS=none IMG_SIZE=75 AUG_VIEWS=2
	$(MAKE) --no-print-directory head FEATURES=$(DEMO_ART)/features.h5 HEAD_DIR=$(DEMO_ART)/head EPOCHS=10
	$(MAKE) --no-print-directory finetune DATA=$(DEMO_DIR)/train FEATURES=$(DEMO_ART)/features.h5 HEAD_DIR=$(DEMO_ART)/head MODEL_DIR=$(DEMO_ART)/finetune-cached EPOCHS=2 FROM_CACHE=1
	$(MAKE) --no-print-directory finetune DATA=$(DEMO_DIR)/train FEATURES=$(DEMO_ART)/features.h5 HEAD_DIR=$(DEMO_ART)/head MODEL_DIR=$(DEMO_ART)/finetune EPOCHS=1
	$(MAKE) --no-print-directory predict INPUT=$(DEMO_DIR)/test MODEL=$(DEMO_ART)/finetune/model.keras PREDICTIONS=$(DEMO_ART)/predictions.csv
	$(if $(DEMO_K),,$(MAKE) --no-print-directory submission TEST=$(DEMO_DIR)/test MODEL=$(DEMO_ART)/finetune/model.keras SUBMISSION=$(DEMO_ART)/submission.csv)
	$(MAKE) --no-print-directory report DATA=$(DEMO_DIR)/train FEATURES=$(DEMO_ART)/features.h5 HEAD_DIR=$(DEMO_ART)/head MODEL_DIR=$(DEMO_ART)/finetune REPORT_DIR=$(DEMO_ART)/report
	@echo "demo done: artifacts in $(DEMO_ART)/; open $(DEMO_ART)/report/report.html in a browser"

## features: stage 1, cache BACKBONE's LAYERS of DATA into FEATURES (resumable; changed data: only the difference; LABELS=csv; AUG_VIEWS=K; ENGINE=ray SHARDS=N; EXCLUDE=csv; RELABEL=csv)
features: $(STAMP) $(if $(filter ray,$(ENGINE)),$(SCALE_STAMP))
	$(PY) -m extract --data $(DATA) --features $(FEATURES) --backbone $(BACKBONE) $(call opt,--backbones,$(BACKBONES)) $(call opt,--img-size,$(IMG_SIZE)) $(call opt,--layers,$(LAYERS)) \
	  --weights $(WEIGHTS) --val-split $(VAL_SPLIT) --seed $(SEED) --dtype $(DTYPE) --aug-views $(AUG_VIEWS) \
	  --engine $(ENGINE) --shards $(SHARDS) --verify $(VERIFY) --precision $(or $(PRECISION),auto) $(call opt,--batch,$(BATCH)) $(call opt,--exclude,$(EXCLUDE)) $(call opt,--labels,$(LABELS)) $(call opt,--relabel,$(RELABEL))

## head: stage 2, train the dense head + logistic-regression baseline on FEATURES into HEAD_DIR
head: $(STAMP)
	$(PY) -m classify --features $(FEATURES) --head-dir $(HEAD_DIR) $(call opt,--layer,$(LAYER)) --seed $(SEED) \
	  --mem-budget $(MEM_BUDGET) --head $(HEAD) --units $(UNITS) --dropout $(DROPOUT) --checkpoint-s $(CHECKPOINT_S) \
	  $(call opt,--epochs,$(EPOCHS)) $(call opt,--batch,$(BATCH)) $(call opt,--lr,$(LR)) $(call opt,--tb-dir,$(TB_DIR))

## sweep: search head kinds and settings on FEATURES with Optuna (TRIALS, TIMEOUT=30m, STORAGE=<SQLAlchemy URL>) into SWEEP_DIR; best/ is a HEAD_DIR
sweep: $(STAMP)
	$(PY) -m classify.sweep --features $(FEATURES) --sweep-dir $(SWEEP_DIR) --trials $(TRIALS) $(call opt,--layer,$(LAYER)) \
	  --seed $(SEED) --mem-budget $(MEM_BUDGET) $(call opt,--timeout,$(TIMEOUT)) $(call opt,--storage,$(STORAGE)) \
	  $(call opt,--epochs,$(EPOCHS)) $(call opt,--tb-dir,$(TB_DIR))

## finetune: stage 3, head back on the cache's backbone, equivalence check, fine-tune from UNFREEZE_FROM (FROM_CACHE=1: on its cached cut)
finetune: $(STAMP)
	$(PY) -m finetune --data $(DATA) --features $(FEATURES) --head-dir $(HEAD_DIR) --model-dir $(MODEL_DIR) \
	  $(call opt,--unfreeze-from,$(UNFREEZE_FROM)) --seed $(SEED) --mixed-precision $(MIXED_PRECISION) --xla $(XLA) \
	  --from-cache $(FROM_CACHE) --precision $(or $(PRECISION),auto) --checkpoint-s $(CHECKPOINT_S) --mem-budget $(MEM_BUDGET) \
	  $(call opt,--epochs,$(EPOCHS)) $(call opt,--batch,$(BATCH)) $(call opt,--lr,$(LR)) $(call opt,--tb-dir,$(TB_DIR))

## predict: write PREDICTIONS (path,label,prob,prob_<class>...) for INPUT (an image or a folder) with MODEL (CALIBRATE=1, TTA=none|flip)
predict: $(STAMP)
	$(PY) -m finetune.predict --input $(INPUT) --model $(MODEL) --out $(PREDICTIONS) --calibrate $(CALIBRATE) --tta $(TTA) \
	  $(call opt,--batch,$(BATCH)) $(call opt,--precision,$(PRECISION))

## submission: write SUBMISSION in Kaggle Redux format (id,label=P(dog)) for the images in TEST (CALIBRATE, TTA, CLIP); cat/dog models only
submission: $(STAMP)
	$(PY) -m finetune.submission --test $(TEST) --model $(MODEL) --out $(SUBMISSION) --calibrate $(CALIBRATE) \
	  --tta $(TTA) --clip $(CLIP) $(call opt,--batch,$(BATCH)) \
	  $(call opt,--precision,$(PRECISION))

## export: MODEL as FORMAT=savedmodel|litert|onnx in EXPORT_DIR (uint8 RGB in, calibrated probabilities out; QUANTIZE=none|float16|int8|int8-full for litert), proven on the val images of its DATA/FEATURES
export: $(STAMP) $(EXPORT_STAMP)
	$(PY) -m export --model $(MODEL) --format $(FORMAT) --export-dir $(EXPORT_DIR) --quantize $(QUANTIZE) \
	  $(if $(filter command line,$(origin DATA)),--data $(DATA)) $(if $(filter command line,$(origin FEATURES)),--features $(FEATURES))

## report: REPORT_DIR/report.html (scores, top losses, suspected label errors, near-duplicates) + CSVs; MODEL_DIR if it has model.keras
report: $(STAMP)
	$(PY) -m report --features $(FEATURES) --head-dir $(HEAD_DIR) --data $(DATA) --report-dir $(REPORT_DIR) \
	  --top-n $(TOP_N) --seed $(SEED) \
	  $(if $(filter command line,$(origin MODEL_DIR)),$(call opt,--model-dir,$(MODEL_DIR)),$(if $(wildcard $(MODEL_DIR)/model.keras),--model-dir $(MODEL_DIR)))

## postgres: install Debian's PostgreSQL server, start it (as user postgres), create role and database dogcat (password dogcat): PG_URL, for STORAGE and the tests (as root)
PG_URL ?= postgresql://dogcat:dogcat@127.0.0.1:5432/dogcat
postgres:
	@command -v pg_ctlcluster >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql)
	@cluster=$$(pg_lsclusters -h | head -n1 | awk '{print $$1" "$$2}'); \
	if [ -z "$$cluster" ]; then pg_createcluster $$(ls /usr/lib/postgresql | sort -n | tail -n1) main >/dev/null; \
	  cluster=$$(pg_lsclusters -h | head -n1 | awk '{print $$1" "$$2}'); fi; \
	pg_lsclusters -h | head -n1 | grep -q online || pg_ctlcluster $$cluster start
	@runuser -u postgres -- psql -qtAc "SELECT 1 FROM pg_roles WHERE rolname='dogcat'" | grep -q 1 || \
	  runuser -u postgres -- psql -qc "CREATE ROLE dogcat LOGIN CREATEDB PASSWORD 'dogcat'"
	@runuser -u postgres -- psql -qtAc "SELECT 1 FROM pg_database WHERE datname='dogcat'" | grep -q 1 || \
	  runuser -u postgres -- createdb -O dogcat dogcat
	@echo "PostgreSQL up: STORAGE=$(PG_URL) (tests read PG_URL; stop it with pg_ctlcluster <version> main stop)"

## browser: install Debian's chromium (the test that renders report.html headless); a no-op when it is there
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

## bench: measure every stage against the recipe it replaces (BENCH_N images) and the exports, then every backbone (bench/backbones.py; float32 and, on a native-bf16 CPU, bf16: checks PRECISION=auto per backbone); writes artifacts/bench.json, bench.md, bench_backbones.json/.md; SCALE_N=25000: the Kaggle-size run (IMG_SIZE, MEM_BUDGET) into artifacts/bench_scale.json and .md
bench: $(STAMP) $(SCALE_STAMP) $(EXPORT_STAMP)
	$(PY) -m bench $(if $(SCALE_N),--scale-n $(SCALE_N) --scale-small $(BENCH_N) $(call opt,--img-size,$(IMG_SIZE)) --mem-budget $(MEM_BUDGET),--n $(BENCH_N))
	$(if $(SCALE_N),,$(PY) -m bench.backbones --out artifacts/bench_backbones.json --md artifacts/bench_backbones.md)

## test: everything, what CI runs: the whole suite with oneDNN's custom ops on, then the fast tier with them off, then as the other kind of CPU
# TF turns oneDNN's custom operations on by itself on CPUs with AVX512_VNNI/BF16 or AMX, and they compute in another
# order: the suite must pass both ways, whatever this machine's CPU would pick. Offline: generated images,
# WEIGHTS=none, 75x75, and the real tier (tests/test_real.py: ../shared/real's photos and MobileNet weights, about
# 1.5 min); installs the Ray extra that it tests. PRECISION=auto follows the CPU's bf16 flags, so the fast
# tier runs once more as the other kind of CPU: PRECISION_CPU_FLAGS (read by core/precision.py alone) stands in for them.
OTHER_CPU := $(shell grep -qsE 'avx512_bf16|amx_bf16' /proc/cpuinfo && echo none || echo avx512_bf16)
test: $(STAMP) $(SCALE_STAMP) $(EXPORT_STAMP)
	PG_URL=$(PG_URL) TF_ENABLE_ONEDNN_OPTS=1 $(PY) -m pytest
	TF_ENABLE_ONEDNN_OPTS=0 $(PY) -m pytest -m "not slow"
	PRECISION_CPU_FLAGS=$(OTHER_CPU) $(PY) -m pytest -m "not slow"

## test-fast: the edit-test loop: every test not marked slow (a few minutes on 2 cores), with this CPU's oneDNN default
test-fast: $(STAMP) $(SCALE_STAMP) $(EXPORT_STAMP)
	$(PY) -m pytest -m "not slow"

## clean: remove artifacts/ and data/demo (keeps .venv and real data)
clean:
	rm -rf artifacts $(DEMO_DIR)
