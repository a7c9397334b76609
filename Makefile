# DynamicLoRA developer entry points. `make help` lists them.
SHELL := /bin/bash
VENV ?= $(HOME)/.cache/dynamiclora/venv
PY := $(VENV)/bin/python
export PATH := $(VENV)/bin:$(PATH)

.DEFAULT_GOAL := help

##@ General
.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} \
	  /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

.PHONY: install
install: ## Install every dependency into $(VENV) (cold ~10 min, warm seconds)
	bash hack/install.sh

.PHONY: demo
demo: install k8s-binaries ## Install everything, then run the whole loop on a local cluster (first run ~40 min)
	$(PY) -m dynamiclora_dev demo

.PHONY: demo-down
demo-down: ## Stop the demo's cluster and operator
	$(PY) -m dynamiclora_dev demo --down

##@ Development
.PHONY: manifests
manifests: ## Generate CRD YAML from the pydantic models into crds/ and the chart
	$(PY) -m dynamiclora.cli manifests --out crds --chart charts/dynamiclora/crds

.PHONY: lint
lint: ## ruff + mypy + the import contracts (pyproject.toml [tool.importlinter])
	$(PY) -m ruff check operator dev tests e2e bench
	$(PY) -m mypy
	$(PY) -c "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())" --no-cache

.PHONY: test
test: lint ## Lint, type-check and run every test (unit, integration, e2e)
	$(PY) -m pytest -ra

.PHONY: test-unit
test-unit: ## Unit tests only (no network, no servers)
	$(PY) -m pytest -ra tests/unit

# torch's portable kernels and MKL's compatible mode: the float path of another CPU model (the local
# cluster's pods inherit both variables).
OTHER_CPU := ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE

.PHONY: test-other-cpu
test-other-cpu: ## The learning tests (training integration, e2e loop) on another CPU's float path (~40 min)
	$(OTHER_CPU) $(PY) -m pytest -ra tests/integration/training e2e/test_loop.py

##@ Local cluster
.PHONY: k8s-binaries
k8s-binaries: ## Build etcd, kube-apiserver/-controller-manager/-scheduler, kubectl, kwok (cold ~15-40 min, then cached)
	bash hack/k8s-binaries.sh

.PHONY: kubeflow-binaries
kubeflow-binaries: ## Build the Kubeflow Trainer v2.0.0 and JobSet controllers for the e2e (cold ~7 min, then cached)
	nice $(PY) -c "from dynamiclora_dev.kubeflow_controllers import build_controllers as b; print(b())"

.PHONY: image-envs
image-envs: ## Build the environments the local cluster runs the operator and the Jobs from, as their images install them (~3 min cold)
	$(PY) -c "from dynamiclora_dev.localcluster import operator_env as o, trainer_env as t; print(t.ensure_trainer_env(), o.ensure_operator_env())"

.PHONY: cluster-up
cluster-up: k8s-binaries ## Start a local control plane + executor in the background; prints export KUBECONFIG=...
	$(PY) -m dynamiclora_dev cluster up

.PHONY: cluster-down
cluster-down: ## Stop the local cluster and every process it started
	$(PY) -m dynamiclora_dev cluster down

##@ Packaging
.PHONY: helm
helm: ## Build the pinned helm from the Go module proxy into ~/.cache/dynamiclora/bin (cold ~5 min)
	bash hack/helm.sh

.PHONY: chart-lint
chart-lint: ## helm lint --strict and helm template of charts/dynamiclora (default and every optional object)
	@HELM="$$(bash hack/helm.sh)" && set -x && \
	"$$HELM" lint --strict charts/dynamiclora && \
	"$$HELM" lint --strict charts/dynamiclora --set metrics.serviceMonitor.enabled=true \
	  --set metrics.prometheusRule.enabled=true --set watchNamespace=team && \
	"$$HELM" template dynamiclora charts/dynamiclora --namespace dynamiclora-system >/dev/null

.PHONY: dashboards
dashboards: ## Regenerate the Grafana dashboard JSON from dynamiclora/dashboards.py
	$(PY) -m dynamiclora.dashboards --out charts/dynamiclora/dashboards

##@ Benchmarks
.PHONY: bench-hot-swap
bench-hot-swap: ## Hot-swap latency vs bare load+completion on a real vLLM CPU server (~8 min)
	nice $(PY) bench/hot_swap.py --swaps 50 --out bench/results/hot_swap.json

.PHONY: bench-merge
bench-merge: ## Low-rank merge vs PEFT add_weighted_adapter(svd) at d=1024/2048/4096 (< 10 min)
	$(PY) bench/merge.py --out bench/results/merge.json

.PHONY: bench-continual
bench-continual: ## Continual learning through the operator's reconcilers and Job entrypoints (~60 min on 2 cores)
	nice $(PY) bench/jobs_continual.py --seeds 5 --out bench/results/continual_jobs.json

.PHONY: bench-continual-countries
bench-continual-countries: ## The same on real country -> capital facts (the countryinfo package's data, docs/continual.md)
	nice $(PY) bench/jobs_continual.py --facts countries --seeds 5 --methods dynamiclora,replay_full,replay_small,seq_lora,ewc \
	  --out bench/results/continual_jobs_countries.json

.PHONY: bench-continual-long
bench-continual-long: ## The same over 10 windows, on the tuning seeds 101-103, and against replay at matched compute
	nice $(PY) bench/jobs_continual.py --seeds 3 --windows 10 --methods dynamiclora,replay_full \
	  --out bench/results/continual_jobs_long.json
	nice $(PY) bench/jobs_continual.py --seeds 5 --windows 10 --window-shape 4,4,1 --methods dynamiclora,replay_full \
	  --out bench/results/continual_jobs_long_small.json
	nice $(PY) bench/jobs_continual.py --seeds 3 --first-seed 101 --out bench/results/continual_jobs_tuning.json
	nice $(PY) bench/jobs_continual.py --seeds 5 --methods dynamiclora,replay_full_2x \
	  --out bench/results/continual_jobs_compute.json

.PHONY: bench-placement
bench-placement: ## Placement of 1,000 agents on 8 simulated pods through the serving pass's plan_pods (seconds)
	$(PY) bench/placement.py --out bench/results/placement.json

.PHONY: bench-distributed
bench-distributed: ## Training throughput through torchrun: 1 process, 2 data-parallel, 2 fully sharded (< 1 min)
	$(PY) bench/distributed.py --out bench/results/distributed.json

.PHONY: bench-freshness
bench-freshness: ## Job completed -> verified served on 3 real vLLM pods, 30 training rounds: p50/p99 (~16 min)
	$(PY) bench/freshness.py --rounds 30 --out bench/results/freshness.json

.PHONY: bench-freshness-import
bench-freshness-import: ## Published into the store by anyone -> served on 3 real vLLM pods: store feed vs resync only (~15 min)
	$(PY) bench/freshness_import.py --rounds 10 --out bench/results/freshness_import.json

.PHONY: bench-scale
bench-scale: ## Operator convergence time and peak RSS for 10/100/1,000/10,000 agents on the local control plane (~15 min)
	$(PY) bench/scale.py --sizes 10 100 1000 10000 --out bench/results/scale.json
