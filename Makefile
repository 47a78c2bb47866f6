# ctr-pipeline: `make demo` sets up .venv and runs the local pipeline on synthetic logs;
# `make test` runs the whole test suite (what CI runs), `make test-fast` all but the tests marked
# slow (pytest.ini). All create the virtualenv on first use. Tests run a file per process on
# TEST_WORKERS processes (pytest-xdist; TEST_WORKERS=0 runs them in this process).
VENV        ?= .venv
PY          := $(VENV)/bin/python
CLI         := $(VENV)/bin/ctr-pipeline
STAMP       := $(VENV)/.installed
DEMO_USERS  ?= 800
DEMO_EVENTS ?= 60
DEMO_DATA   := data/demo
PYTEST_ARGS ?=
TEST_WORKERS ?= 2
PYTEST      := TF_USE_LEGACY_KERAS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

.PHONY: demo demo-daily test test-fast install clean-demo

install: $(STAMP)

$(STAMP): setup.py requirements/constraints-top.txt requirements/constraints-lock.txt requirements/test.txt
	@test -x $(PY) || { py=$$(sh scripts/find_python310.sh) && echo "creating $(VENV) with $$py" && $$py -m venv $(VENV); }
	$(PY) -m pip install --quiet -c requirements/constraints-lock.txt -r requirements/constraints-top.txt -r requirements/test.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

$(DEMO_DATA)/events.csv: | $(STAMP)
	$(CLI) generate-data --output $(DEMO_DATA) --users $(DEMO_USERS) --events-per-user $(DEMO_EVENTS)

demo: $(STAMP) $(DEMO_DATA)/events.csv
	$(CLI) run --config configs/demo.yaml

# daily retraining: two days delivered one at a time, a run after each (scripts/daily_demo.sh)
demo-daily: $(STAMP)
	CLI=$(CLI) sh scripts/daily_demo.sh

test: $(STAMP)
	$(PYTEST) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

clean-demo:
	rm -rf $(DEMO_DATA) runs/demo serving_models data/daily data/daily-source runs/daily serving_models_daily
