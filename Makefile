# The README's two commands: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

LEGACY_PYTHON ?= python3.11
LEGACY := .venv-legacy

.PHONY: demo test bench bench-peers studies fashion-s0 fashion-c fashion-s1 fashion-followup venv clean legacy-venv legacy-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Stamp files re-install only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	@# The PyTorch peer of `bench train --peers torch`, where a CPU wheel is at hand (pip's
	@# find-links, e.g. /opt/wheels); never gigabytes of CUDA wheels: its tests skip without it.
	$(BIN)/python -m pip install -q 'torch==2.13.0+cpu' 2>/dev/null \
	  || echo "note: no CPU wheel of torch 2.13.0+cpu at hand; the PyTorch peer tests will skip"
	touch $@ $(VENV)/.installed

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/normbench run configs/groupnorm.yaml

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

# Every benchmark, each measured side by side in one invocation; JSON lands in results/bench/.
bench: $(VENV)/.installed
	$(BIN)/normbench bench train --seeds 5 --epochs 4
	$(BIN)/normbench bench layers
	$(BIN)/normbench bench studynorms
	$(BIN)/normbench bench cli
	$(BIN)/normbench bench memory
	$(BIN)/normbench bench workers --reps 3
	$(BIN)/normbench bench floor
	$(BIN)/normbench bench startup

# normbench against PyTorch (the test extras install a CPU wheel where one is at hand): the
# tutorial CNN at batch 32 and 8, the study model with BN and with GN at batch 64.
VGG := --config configs/bench/vgg_sgd.yaml --batch-size 64 --epochs 3
bench-peers: $(VENV)/.installed-test
	$(BIN)/normbench bench train --peers torch --seeds 3 --epochs 4 --json results/bench/train.json
	$(BIN)/normbench bench train --peers torch --seeds 3 --epochs 3 --batch-size 8 \
	  --json results/bench/train_b8.json
	$(BIN)/normbench bench train --peers torch --seeds 2 $(VGG) --json results/bench/train_vgg_bn.json
	$(BIN)/normbench bench train --peers torch --seeds 2 $(VGG) -s model.norm.type=group \
	  --json results/bench/train_vgg_gn.json
	$(BIN)/normbench bench floor
	$(BIN)/normbench bench startup

# The Group Normalization paper's three studies (configs/studies/), each into its committed
# results directory, then its report. They resume: run again after an interruption.
STUDIES := gn_paper_replicas gn_paper_groups gn_paper_ghost
studies: $(VENV)/.installed
	for s in $(STUDIES); do \
	  $(BIN)/normbench run configs/studies/$$s.yaml -j 2 -q --results results/examples/studies/$$s \
	  && $(BIN)/normbench report configs/studies/$$s.yaml --results results/examples/studies/$$s \
	       --out results/examples/studies/$$s || exit 1; \
	done

# The pre-registered Fashion-MNIST studies (docs/preregistration_fashion.md), stage by stage in
# the order the pre-registration fixes; each resumes. S0 tunes, C checks convergence (its verdict
# and S1's seed count in fashion_convergence/convergence.md), S1 the primary study (S2's and the
# sensitivity cell's configs are written from S0's frozen rates, before S1 runs).
FASHION := results/examples/studies
fashion-s0: $(VENV)/.installed
	$(BIN)/normbench tune configs/studies/fashion_s1.yaml -j 2 --results $(FASHION)/fashion_s1
fashion-c: $(VENV)/.installed
	$(BIN)/normbench run configs/studies/fashion_convergence.yaml -j 2 --results $(FASHION)/fashion_convergence
	$(BIN)/python scripts/convergence_check.py $(FASHION)/fashion_convergence
fashion-s1: $(VENV)/.installed
	$(BIN)/normbench run configs/studies/fashion_s1.yaml -j 2 --results $(FASHION)/fashion_s1
	$(BIN)/normbench report configs/studies/fashion_s1.yaml --results $(FASHION)/fashion_s1 --out $(FASHION)/fashion_s1
# After S1, not pre-registered (docs/preregistration_fashion.md, "Follow-up: ..."): S1's cells it
# compares with are S1's own records (copied, the same run ids); its two analyses are reports of
# the same runs through two specs that train nothing.
fashion-followup: $(VENV)/.installed
	$(BIN)/normbench run configs/studies/fashion_followup.yaml -j 2 --results $(FASHION)/fashion_followup
	$(BIN)/normbench report configs/studies/fashion_followup_steps.yaml --results $(FASHION)/fashion_followup --out $(FASHION)/fashion_followup/steps
	$(BIN)/normbench report configs/studies/fashion_followup_rate.yaml --results $(FASHION)/fashion_followup --out $(FASHION)/fashion_followup/rate

# TF 2.15 + tensorflow-addons 0.23, where tfa still works: normbench is tested against it live.
$(LEGACY)/.installed: requirements-legacy.txt pyproject.toml
	$(LEGACY_PYTHON) -m venv $(LEGACY)
	$(LEGACY)/bin/python -m pip install -q --upgrade pip
	$(LEGACY)/bin/python -m pip install -q -r requirements-legacy.txt
	$(LEGACY)/bin/python -m pip install -q --no-deps -e .
	touch $@

legacy-venv: $(LEGACY)/.installed

legacy-test: $(LEGACY)/.installed
	$(LEGACY)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) $(LEGACY) .pytest_cache
