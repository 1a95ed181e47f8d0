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
# and real anatomy (Colin27 brain + AAL; the ITK example T1 brain with its k-means classes) for
# the reslicer and pseudo-acquisition tests and experiments/brain-real.yaml.
DEB_PKGS    := munge slurmctld slurmd slurm-client slurmdbd mariadb-server dicom3tools numactl mricron-data \
               insighttoolkit5-examples
# Real anatomy gathered in one ignored folder (sources/volumes.py looks here): the MNI152 2009a T1
# and GM/WM maps are data files inside the nilearn wheel (downloaded, unpacked, never installed),
# the ITK example brain comes from the Debian package above.
ANATOMY_DIR ?= .cache/anatomy
NILEARN_WHL ?= nilearn==0.14.1
ITK_DATA    := /usr/share/doc/insighttoolkit5-examples/examples/Data
MNI_FILES   := mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz \
               mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz

# make wheelhouse WHEEL_PY=3.12 [WHEEL_PLATFORM=manylinux_2_17_aarch64]: wheels for offline GPU nodes
WHEEL_PY        ?= 3.12
WHEEL_PLATFORM  ?= manylinux_2_17_x86_64
WHEELHOUSE      ?= wheelhouse

.PHONY: venv demo test test-fast bench clean debs anatomy wheelhouse

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

anatomy: venv
	@mkdir -p $(ANATOMY_DIR)
	@if ! ls $(addprefix $(ANATOMY_DIR)/,$(MNI_FILES)) >/dev/null 2>&1; then \
	  echo "pip download $(NILEARN_WHL) --no-deps (MNI152 2009a files only)"; \
	  rm -rf $(ANATOMY_DIR)/wheel && mkdir -p $(ANATOMY_DIR)/wheel && \
	  $(PY) -m pip download -q --no-deps -d $(ANATOMY_DIR)/wheel '$(NILEARN_WHL)' $(QUIET_PIP) && \
	  $(PY) -c "import sys, zipfile, glob, os; z = zipfile.ZipFile(glob.glob('$(ANATOMY_DIR)/wheel/nilearn-*.whl')[0]); \
	    [(open(os.path.join('$(ANATOMY_DIR)', n + '.part'), 'wb').write(z.read('nilearn/datasets/data/' + n)), \
	      os.replace(os.path.join('$(ANATOMY_DIR)', n + '.part'), os.path.join('$(ANATOMY_DIR)', n))) for n in sys.argv[1:]]" $(MNI_FILES) \
	  && rm -rf $(ANATOMY_DIR)/wheel || echo "nilearn wheel not reachable: MNI152 tests will be skipped"; \
	fi
	@for f in KmeansTest_T1UCharRaw.nii.gz KmeansTest_T1KmeansPrelimSegmentation.nii.gz; do \
	  if [ -f $(ITK_DATA)/$$f ]; then ln -sf $(ITK_DATA)/$$f $(ANATOMY_DIR)/$$f; \
	  else echo "$(ITK_DATA)/$$f missing (insighttoolkit5-examples not installed): ITK brain tests will be skipped"; fi; \
	done

demo: venv
	$(PY) -m anatplane_dist.demo --out $(DEMO_DIR)

test: venv debs anatomy
	$(PY) -m pytest tests

test-fast: venv anatomy
	$(PY) -m pytest tests -m "not slurm and not slow"

bench: venv
	$(PY) bench/run_all.py

wheelhouse: venv
	$(PY) launch/wheelhouse.py --out $(WHEELHOUSE) --python $(WHEEL_PY) $(foreach p,$(WHEEL_PLATFORM),--platform $(p))

clean:
	rm -rf $(DEMO_DIR) runs .pytest_cache
