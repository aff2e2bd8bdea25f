# The README's two commands: `make run` and `make test`. Both set up .venv first (idempotent).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
CONFIG ?= config/config.yaml

.PHONY: setup run test dry-run report docs clean

$(BIN)/snakemake: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

setup: $(BIN)/snakemake

run: setup
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG)
	@echo "tables:  results/tables/   figures: results/figures/   tidy metrics: results/metrics.csv"

dry-run: setup
	$(BIN)/snakemake -n --cores $(CORES) --configfile $(CONFIG)

test: setup
	$(BIN)/python -m pytest -q

# Performance figures side by side (results/bench/summary.md); e.g. BENCH_ARGS="--device cuda --backbone RN50 --image-size 224"
.PHONY: bench
bench: setup
	$(BIN)/python -m medtune.bench $(BENCH_ARGS)

# Scale rehearsal at PCam's size (not part of `make bench` or `make test`): results/bench/scale.{json,md};
# e.g. SCALE_ARGS="--scales 16 4" for 1/16 and 1/4 only (hours at full size on 2 cores)
.PHONY: bench-scale
bench-scale: setup
	$(BIN)/python -m medtune.bench.scale $(SCALE_ARGS)

# The documentation site (docs/, mkdocs.yml) into site/: first the generated pages (the configuration
# reference and the tables of the method and study pages, python -m medtune.docs), then the build
docs: setup
	$(BIN)/python -m medtune.docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

report: run
	$(BIN)/snakemake --cores 1 --configfile $(CONFIG) --report results/report.html

clean:
	rm -rf results .snakemake
