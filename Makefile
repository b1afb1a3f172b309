# Thin wrappers: each target bootstraps .venv (apt build deps, venv, editable install) first.
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.markd-installed

.PHONY: demo test bench lint venv clean install uninstall deb

# PRINTER=shtrih sells through the Shtrih emulator (protocol 1 on a pty) instead.
PRINTER ?= emulator

demo: $(STAMP)
	$(VENV)/bin/markd demo --printer $(PRINTER)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

BENCH_ENTRIES ?= 10000000
SOAK_SCANS    ?= 1000000

bench: $(STAMP)
	$(PY) tools/bench/parse.py
	$(PY) tools/bench/store.py --entries $(BENCH_ENTRIES)
	$(PY) tools/bench/checks.py
	$(PY) tools/bench/scanners.py
	$(PY) tools/bench/soak.py --scans $(SOAK_SCANS)
	$(PY) tools/bench/api.py
	$(PY) tools/bench/mark_unit.py
	$(PY) tools/bench/http_client.py
	$(PY) tools/bench/shtrih.py

lint: $(STAMP)
	$(VENV)/bin/ruff check daemon tests tools

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml tools/bootstrap.sh
	tools/bootstrap.sh $(VENV)
	touch $@

clean:
	rm -rf $(VENV) build dist daemon/*.egg-info .pytest_cache .hypothesis

# -- the Debian package (docs/operations.md, "Install"): dist/markd_VERSION_all.deb ---------
# Built with debhelper and dh-python from debian/ on a copy of the tree, checked by lintian;
# as root, the build tools are installed from Debian's packages. No venv is involved:
# the package runs on Debian's python3-* libraries. DEB_VERSION=X builds a test version.
deb:
	DEB_VERSION="$(DEB_VERSION)" tools/build-deb.sh

# -- install under systemd for development (a till installs the .deb instead) -------------
# `make install` (as root): a venv for the daemon in MARKD_HOME made from INSTALL_PYTHON
# (default /usr/bin/python3), the unit, sysusers/tmpfiles snippets, the journal catalog and
# udev/*.rules, then the system is told about them (sysusers, tmpfiles, catalog, udev, systemd).
# DESTDIR stages instead (nothing outside it is touched); USE_VENV=/path/to/venv uses an
# existing venv instead of making MARKD_HOME. tools/install.sh documents every variable.
PREFIX     ?= /usr/local
MARKD_HOME ?= /opt/markd
INSTALL_VARS = DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" MARKD_HOME="$(MARKD_HOME)" \
	USE_VENV="$(USE_VENV)" PYTHON="$(or $(INSTALL_PYTHON),/usr/bin/python3)" \
	SYSTEMDUNITDIR="$(SYSTEMDUNITDIR)" SYSUSERSDIR="$(SYSUSERSDIR)" \
	TMPFILESDIR="$(TMPFILESDIR)" CATALOGDIR="$(CATALOGDIR)" UDEVDIR="$(UDEVDIR)"

install:
	$(INSTALL_VARS) tools/install.sh install

uninstall:
	$(INSTALL_VARS) tools/install.sh uninstall
