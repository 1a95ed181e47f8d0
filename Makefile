# Two commands set everything up on a fresh machine:  `make demo`  and  `make test`.
# TORCH_SPEC picks the torch build: the default is the CPU wheel these machines carry;
# GPU users override it, e.g.  make demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
DEMO_DIR    ?= demo
PY          := $(VENV)/bin/python
SHELL       := /bin/bash
# pip on these machines warns about every configured local index it cannot find: keep the noise out
PIP         := set -o pipefail; $(PY) -m pip install -q
QUIET_PIP   := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
STAMP       := $(VENV)/.installed
# Debian packages the tests use: a real one-node SLURM (+ accounting), a DICOM validator,
# and real anatomy (Colin27 brain) for the reslicer tests.
DEB_PKGS    := munge slurmctld slurmd slurm-client slurmdbd mariadb-server dicom3tools numactl mricron-data

# make wheelhouse WHEEL_PY=3.12 [WHEEL_PLATFORM=manylinux_2_17_aarch64]: wheels for offline GPU nodes
WHEEL_PY        ?= 3.12
WHEEL_PLATFORM  ?= manylinux_2_17_x86_64
WHEELHOUSE      ?= wheelhouse

.PHONY: venv demo test test-fast bench clean debs wheelhouse

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "pip install --upgrade pip"; $(PIP) --upgrade pip $(QUIET_PIP)
	@echo "pip install $(TORCH_SPEC)"; $(PIP) $(TORCH_SPEC) $(QUIET_PIP)
	@echo "pip install -e '.[test]'"; $(PIP) -e '.[test]' $(QUIET_PIP)
	@# nnU-Net next, with every package installed so far pinned: it must not replace torch
	@# (a CPU or CUDA build chosen by TORCH_SPEC), deepspeed or numpy
	$(PY) -m pip freeze --exclude-editable 2>/dev/null | grep -v ' @ ' > $(VENV)/constraints.txt
	@before=$$($(PY) -c "import torch; print(torch.__version__)"); \
	echo "pip install -e '.[test,nnunet]' -c $(VENV)/constraints.txt"; \
	$(PIP) -e '.[test,nnunet]' -c $(VENV)/constraints.txt $(QUIET_PIP) && \
	after=$$($(PY) -m pip show torch 2>/dev/null | sed -n 's/^Version: //p'); \
	if [ "$$before" != "$$after" ]; then echo "torch changed from $$before to $$after"; exit 1; fi
	@# timm (Primus networks only) pulls torchvision; PyPI's wheel is built for CUDA torch and
	@# does not load next to the CPU build. Nothing we or nnU-Net's U-Nets use needs it.
	@$(PY) -c "import torchvision" >/dev/null 2>&1 || { echo "pip uninstall torchvision (does not load with torch $$($(PY) -c 'import torch; print(torch.__version__)'))"; \
	  $(PY) -m pip uninstall -y -q torchvision $(QUIET_PIP); }
	touch $(STAMP)

debs:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "not root: SLURM/dciodvfy tests will be skipped (missing:$$missing)"; fi; \
	fi

demo: venv
	$(PY) -m anatplane_dist.demo --out $(DEMO_DIR)

test: venv debs
	$(PY) -m pytest tests

test-fast: venv
	$(PY) -m pytest tests -m "not slurm and not slow"

bench: venv
	$(PY) bench/run_all.py

wheelhouse: venv
	$(PY) launch/wheelhouse.py --out $(WHEELHOUSE) --python $(WHEEL_PY) $(foreach p,$(WHEEL_PLATFORM),--platform $(p))

clean:
	rm -rf $(DEMO_DIR) runs .pytest_cache
