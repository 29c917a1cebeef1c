# Two commands for a new user: `make demo` and `make test` (`make test-fast` leaves out the tests marked slow).
# Each creates .venv if missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch 2.13.0 lies on this project's build machines; any torch >= 2.1 works elsewhere
# (override with `make TORCH_SPEC=torch test`).
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test test-fast lint bench clean install

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,lora,plot,detect,video,pointcloud,curate,tensorboard,wandb]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/un2clip demo

# pytest's exit 5 means "no tests collected": not a failure here
PYTEST_OK5 = rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider; $(PYTEST_OK5)

# the edit-test loop: every test but those marked @pytest.mark.slow (world end-to-end runs, multi-process training)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"; $(PYTEST_OK5)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(BIN)/un2clip bench --preset tiny --batch-size 32 --steps 10

clean:
	rm -rf $(VENV) runs .pytest_cache
