# `make demo` and `make test` each set everything up on a fresh machine, then run.
# A second call finds the virtual environment in place and goes straight to work.

VENV       := .venv
PYTHON     := $(VENV)/bin/python
STAMP      := $(VENV)/.sslbench-installed
SYS_PYTHON ?= python3
FMNIST_DIR := /usr/share/datasets/fashion-mnist

# PyTorch builds that pip installs from this kind of machine's local disk (see README).
ARCH := $(shell uname -m)
ifeq ($(ARCH),aarch64)
TORCH_SPEC ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
endif

.PHONY: demo test test-fast lint data browser latex clean-venv

demo: $(STAMP) data
	$(VENV)/bin/sslbench demo

test: $(STAMP) data browser latex
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/pytest -q

test-fast: $(STAMP) data
	$(VENV)/bin/pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

$(STAMP): pyproject.toml
	test -x $(PYTHON) || $(SYS_PYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet $(TORCH_SPEC)
	$(PYTHON) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# Fashion-MNIST for the demo and the real-data tests, from Debian where we may install it.
data:
	@if [ -d $(FMNIST_DIR) ] || [ -n "$$SSLBENCH_DATA" -a -d "$$SSLBENCH_DATA/fashion-mnist" ]; then \
		true; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's dataset-fashion-mnist"; \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
		echo "note: Fashion-MNIST not found in $(FMNIST_DIR); sslbench will try to download it"; \
	fi

# Chromium, for the test that renders `sslbench report --format html` in a headless browser
# (tests/report/test_report.py skips it without one), from Debian where we may install it.
browser:
	@if command -v chromium >/dev/null; then \
		true; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium (for the HTML report test)"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
			>/dev/null; } \
			|| echo "note: could not install chromium; the HTML report test will be skipped"; \
	else \
		echo "note: chromium not found; the HTML report test will be skipped"; \
	fi

# pdflatex and booktabs, for the test that compiles `sslbench report --format latex`
# (tests/report/test_report_latex.py skips it without them), from Debian where we may
# install it.
latex:
	@if command -v pdflatex >/dev/null && kpsewhich booktabs.sty >/dev/null 2>&1; then \
		true; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's texlive-latex-base and -recommended (for the LaTeX report test)"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends texlive-latex-base texlive-latex-recommended >/dev/null; } \
			|| echo "note: could not install texlive; the LaTeX report test will be skipped"; \
	else \
		echo "note: pdflatex not found; the LaTeX report test will be skipped"; \
	fi

clean-venv:
	rm -rf $(VENV)
