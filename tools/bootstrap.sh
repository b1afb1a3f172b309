#!/usr/bin/env bash
# Prepare .venv for markd on a Debian/Ubuntu machine: install the apt packages that are
# missing, create the virtual environment and install the package with its test extras in
# editable mode.
#
# markd itself is pure Python and compiles nothing. Two kinds of venv come out of here:
# * the daemon's runtime venv (`make install` passes MARKD_PIP_SPEC=.): with Debian's own
#   interpreter it sees the system's packages (--system-site-packages) and takes its runtime
#   libraries from Debian (python3-systemd, python3-lmdb, python3-serial, python3-usb,
#   python3-h11, python3-cryptography, python3-prometheus-client, python3-wsproto), so it needs
#   no compiler and no headers; pip finds the requirements met and installs markd alone;
# * the development and test venv (the default): every library from PyPI at its current
#   release. PyPI ships systemd-python as source, which pip builds against libsystemd, so this
#   one needs a compiler, libsystemd's headers and Python.h.
# A runtime venv made from another interpreter (pyenv, a self-built Python) cannot use
# Debian's packages and falls back to the development way (compiler included).
#
# Usage: tools/bootstrap.sh [VENV_DIR]      (default .venv)
# Environment: PYTHON (interpreter to build the venv from, default python3);
#   MARKD_PIP_SPEC (what pip installs, default "-e .[test,lint]"; `make install` passes "."
#   for the daemon's own runtime venv); MARKD_POLICY_RC_D (the policy-rc.d written while
#   packages install, default /usr/sbin/policy-rc.d: a test points it elsewhere).
# As root it also installs systemd-container (systemd-nspawn) for the system test, tinyproxy
# for the proxy tests and prometheus (for its promtool) for the monitoring tests, when missing.
set -euo pipefail

venv=${1:-.venv}
python=${PYTHON:-python3}
cd "$(dirname "$0")/.."

say() { printf 'bootstrap: %s\n' "$*" >&2; }

if ! command -v "$python" >/dev/null 2>&1; then
    say "no '$python' on PATH; install python3 (>= 3.11) or set PYTHON=/path/to/python3"
    exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    say "markd needs Python >= 3.11; '$python' is $("$python" -V 2>&1)"
    exit 1
fi

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
"$python" -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
venv_args=()
# Debian builds its python3-* packages for its default interpreter only: /usr/bin/python3.
if [ "${MARKD_PIP_SPEC:-}" = "." ] \
    && [ -x /usr/bin/python3 ] \
    && [ "$(readlink -f "$(command -v "$python")")" = "$(readlink -f /usr/bin/python3)" ] \
    && [ -d /usr/lib/python3/dist-packages ]; then
    # The runtime venv on Debian's libraries: nothing to build.
    venv_args=(--system-site-packages)
    for pkg in python3-systemd python3-lmdb python3-serial python3-usb python3-h11 python3-cryptography python3-prometheus-client python3-wsproto; do
        have_pkg "$pkg" || need+=("$pkg")
    done
else
    # Only to build systemd-python from PyPI's source (see the top): libsystemd's headers, a
    # compiler, and Python.h (a pyenv or self-built Python ships its own; Debian's python3
    # needs python3-dev).
    have_pkg libsystemd-dev || need+=(libsystemd-dev)
    have_pkg pkg-config || have_pkg pkgconf || need+=(pkg-config)
    command -v cc >/dev/null 2>&1 || need+=(gcc)
    inc=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    [ -f "$inc/Python.h" ] || need+=(python3-dev)
fi
# systemd-nspawn boots the real systemd for tests/system/; only root can run it, so only a root
# bootstrap asks for it (the system test is skipped with a reason elsewhere). tinyproxy is a
# real proxy the HTTP client is tested against (tests/integration/test_http_proxy.py, skipped
# without it); test-only, so it rides along here. So does Debian's prometheus package: its
# promtool checks and unit-tests monitoring/, and its server binary is started on a free port
# by tests/integration/test_monitoring_prometheus.py (tests/*/test_monitoring_*.py skip without
# them, and fail without them when CI=true); the system's prometheus service is never run.
# Debian's chromium is the headless browser tests/browser/ drive over the DevTools protocol
# (no chromedriver, no Python package); it brings no service. umockdev, its GObject
# introspection data and python3-gi emulate USB devices below libusb for
# tests/integration/test_scanner_libusb.py (the real libusb path; the venv reaches Debian's gi
# module by path, tests/umockdev_usb.py); no service either.
if [ "$(id -u)" -eq 0 ] && [ "${MARKD_PIP_SPEC:--e}" != "." ]; then
    command -v systemd-nspawn >/dev/null 2>&1 || need+=(systemd-container)
    command -v tinyproxy >/dev/null 2>&1 || need+=(tinyproxy)
    command -v promtool >/dev/null 2>&1 || need+=(prometheus)
    command -v chromium >/dev/null 2>&1 || need+=(chromium)
    command -v umockdev-wrapper >/dev/null 2>&1 || need+=(umockdev)
    have_pkg gir1.2-umockdev-1.0 || need+=(gir1.2-umockdev-1.0)
    have_pkg python3-gi || need+=(python3-gi)
    have_pkg libusb-1.0-0 || need+=(libusb-1.0-0)
fi

if [ ${#need[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        say "missing packages (${need[*]}) and no apt-get to install them"
        exit 1
    fi
    if [ "$(id -u)" -ne 0 ]; then
        say "missing packages: ${need[*]}"
        say "run as root, or first: sudo apt-get install -y ${need[*]}"
        exit 1
    fi
    say "installing apt packages: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Debian's prometheus package would start a server (port 9090, a database under
    # /var/lib/prometheus) from its maintainer scripts. A policy-rc.d that refuses every start
    # (exit 101, invoke-rc.d(8)) keeps it down during the install; one already in place (a
    # container's) is left as it is.
    policy=${MARKD_POLICY_RC_D:-/usr/sbin/policy-rc.d}
    made_policy=
    if [[ " ${need[*]} " == *" prometheus "* ]] && [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# tools/bootstrap.sh: no service starts while it installs packages\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        made_policy=1
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    if [ -n "$made_policy" ]; then
        rm -f "$policy"
        trap - EXIT
    fi
    # Debian's tinyproxy and prometheus packages enable their services (and tinyproxy starts
    # its own); the tests start their own tinyproxy on a free port and only need promtool, so
    # the system services are switched off again, for this boot and the next.
    for service in tinyproxy prometheus; do
        [[ " ${need[*]} " == *" $service "* ]] || continue
        if [ -d /run/systemd/system ]; then
            systemctl disable --now "$service" >/dev/null 2>&1 || true
        elif command -v update-rc.d >/dev/null 2>&1; then
            # No systemd running (a container): only the SysV links would start it at a boot.
            update-rc.d "$service" disable >/dev/null 2>&1 || true
        fi
    done
fi

if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv"
    "$python" -m venv "${venv_args[@]}" "$venv"
fi
say "installing markd and its test dependencies into $venv"
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if [ -n "${MARKD_PIP_SPEC:-}" ]; then spec=("$MARKD_PIP_SPEC"); else spec=(-e '.[test,lint]'); fi
"$venv/bin/python" -m pip install -q "${spec[@]}"
"$venv/bin/python" -c 'import markd, lmdb, serial, usb; import systemd.journal, systemd.daemon' \
    || { say "the venv is incomplete (see the import error above)"; exit 1; }
say "ready: $venv"
