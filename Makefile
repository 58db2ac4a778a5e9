# A newcomer runs two commands: `make demo` (the main job) and `make test`. Each sets up its own virtual
# environment on first use: .venv for the demo, .venv-test for the tests.

PYTHON ?= python3
# The CPU build of PyTorch. On a machine with a GPU, install the torch build you want instead (TORCH=torch).
TORCH ?= torch==2.13.0
PIP_FLAGS ?= -q --disable-pip-version-check
# Installed without their dependencies (they pin another torch and bring their training stacks, or pin numpy<2): the
# tests run clip-retrieval's ClipClient and back end (KnnService), CLIP_benchmark's metric functions, its build
# command and its WebDataset writer and reader (tests/clip_benchmark_code.py), and autofaiss's build_index, which
# need only what the dev extra installs.
PROTOCOL_CLIENTS ?= clip-retrieval==2.45.0 clip-benchmark==1.6.2 autofaiss==2.18.0 embedding-reader==1.8.1

.PHONY: demo test test-fast check clean

# The demo environment has what the README's commands use beyond the core: the service (serve) and writing
# embedding files (index: pyarrow, faiss). Other extras are installed where the README shows them.
DEMO_EXTRAS ?= serve,index

.venv/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv .venv
	.venv/bin/pip install $(PIP_FLAGS) "$(TORCH)"
	.venv/bin/pip install $(PIP_FLAGS) -e ".[$(DEMO_EXTRAS)]"
	touch $@

.venv-test/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv .venv-test
	.venv-test/bin/pip install $(PIP_FLAGS) "$(TORCH)"
	.venv-test/bin/pip install $(PIP_FLAGS) -e ".[dev]"
	.venv-test/bin/pip install $(PIP_FLAGS) --no-deps $(PROTOCOL_CLIENTS)
	touch $@

demo: .venv/.installed
	@.venv/bin/altclip demo examples/photos || { status=$$?; if [ $$status -eq 3 ]; then \
	  echo "To see the demo run without downloading the model (random weights, meaningless answers):"; \
	  if [ -d checkpoints/tiny ]; then echo "  ALTCLIP_MODEL=./checkpoints/tiny make demo"; \
	  else echo "  .venv/bin/altclip random-checkpoint ./checkpoints/tiny && ALTCLIP_MODEL=./checkpoints/tiny make demo"; fi; fi; \
	  exit $$status; }

test: .venv-test/.installed
	.venv-test/bin/python -m pytest

# The inner loop: every test but the end-to-end and full-size ones marked slow (`make test` runs those too).
test-fast: .venv-test/.installed
	.venv-test/bin/python -m pytest -m "not slow"

# What CI checks before the tests: lint, formatting and types (settings in pyproject.toml).
check: .venv-test/.installed
	.venv-test/bin/ruff check .
	.venv-test/bin/ruff format --check .
	.venv-test/bin/mypy

clean:
	rm -rf .venv .venv-test
