#!/usr/bin/env bash
# Put markd under systemd on this machine, or take it away again:
#
#     tools/install.sh install | uninstall        (what `make install` / `make uninstall` run)
#
# Settings come from the environment (the Makefile passes its variables through):
#   DESTDIR     staging root for packaging and tests. Empty (the default) means this machine,
#               and then the system is told about the new files: systemd-sysusers,
#               systemd-tmpfiles --create, journalctl --update-catalog, udevadm control
#               --reload and systemctl daemon-reload, each only where the tool exists (and
#               systemctl only when systemd runs).
#   PREFIX      /usr/local: `markd` and `markctl` links in PREFIX/bin, documentation in
#               PREFIX/share/doc/markd.
#   MARKD_HOME  /opt/markd: the virtual environment made for the daemon from PYTHON with the
#               Debian runtime packages tools/bootstrap.sh installs; markd.service runs
#               MARKD_HOME/bin/markd.
#   USE_VENV    an existing virtual environment with markd in it, used instead of making
#               MARKD_HOME (development machines, the system test): the unit then runs
#               USE_VENV/bin/markd, and uninstall leaves the venv alone.
#   PYTHON      /usr/bin/python3: the interpreter MARKD_HOME is made from.
#   SYSTEMDUNITDIR SYSUSERSDIR TMPFILESDIR CATALOGDIR UDEVDIR
#               where the pieces go; by default what pkg-config says (systemd.pc, udev.pc),
#               else Debian's paths.
#
# Never removed by uninstall: /etc/markd, /etc/credstore, the store in /var/lib/markd and the
# user markd (a reinstall finds them as they were).
set -euo pipefail

action=${1:-install}
cd "$(dirname "$0")/.."

say() { printf 'install: %s\n' "$*" >&2; }
pc() { pkg-config --variable="$2" "$1" 2>/dev/null || true; }

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
MARKD_HOME=${MARKD_HOME:-/opt/markd}
USE_VENV=${USE_VENV:-}
PYTHON=${PYTHON:-/usr/bin/python3}
SYSTEMDUNITDIR=${SYSTEMDUNITDIR:-$(pc systemd systemdsystemunitdir)}
SYSTEMDUNITDIR=${SYSTEMDUNITDIR:-/lib/systemd/system}
SYSUSERSDIR=${SYSUSERSDIR:-$(pc systemd sysusersdir)}
SYSUSERSDIR=${SYSUSERSDIR:-/usr/lib/sysusers.d}
TMPFILESDIR=${TMPFILESDIR:-$(pc systemd tmpfilesdir)}
TMPFILESDIR=${TMPFILESDIR:-/usr/lib/tmpfiles.d}
CATALOGDIR=${CATALOGDIR:-$(pc systemd catalogdir)}
CATALOGDIR=${CATALOGDIR:-/usr/lib/systemd/catalog}
UDEVDIR=${UDEVDIR:-$(pc udev udevdir)}
UDEVDIR=${UDEVDIR:-/lib/udev}
DOCDIR=${DOCDIR:-$PREFIX/share/doc/markd}

if [ -n "$USE_VENV" ]; then
    USE_VENV=$(cd "$USE_VENV" && pwd)  # the unit needs an absolute path
    bindir=$USE_VENV/bin
else
    bindir=$MARKD_HOME/bin
fi

unit=$DESTDIR$SYSTEMDUNITDIR/markd.service
sysusers=$DESTDIR$SYSUSERSDIR/markd.conf
tmpfiles=$DESTDIR$TMPFILESDIR/markd.conf
catalog=$DESTDIR$CATALOGDIR/markd.catalog
rulesdir=$DESTDIR$UDEVDIR/rules.d
docdir=$DESTDIR$DOCDIR
linkdir=$DESTDIR$PREFIX/bin
# Marks a MARKD_HOME made by this script, so uninstall never deletes a directory it did not make.
marker=.markd-install

live() { [ -z "$DESTDIR" ]; }
have() { command -v "$1" >/dev/null 2>&1; }
systemd_running() { [ -d /run/systemd/system ]; }

tell_system() {
    live || return 0
    if have journalctl; then journalctl --update-catalog || say "journalctl --update-catalog failed"; fi
    if have udevadm && [ -S /run/udev/control ]; then
        udevadm control --reload || say "udevadm control --reload failed"
    fi
    if have systemctl && systemd_running; then systemctl daemon-reload; fi
}

make_venv() {
    local venv=$DESTDIR$MARKD_HOME
    say "making the daemon's virtual environment $venv from $PYTHON"
    PYTHON=$PYTHON MARKD_PIP_SPEC=. tools/bootstrap.sh "$venv"
    touch "$venv/$marker"
    if [ -n "$DESTDIR" ]; then
        # A venv names its own path in its scripts; staged under DESTDIR, that path must be the
        # final one. Only text files in bin/ carry it (console-script shebangs, activate*), and
        # pyvenv.cfg for information.
        local file
        for file in "$venv"/bin/* "$venv/pyvenv.cfg"; do
            if [ -f "$file" ] && [ ! -L "$file" ] && grep -Iq . "$file" 2>/dev/null; then
                sed -i "s|$venv|$MARKD_HOME|g" "$file"
            fi
        done
    fi
}

do_install() {
    if [ -n "$USE_VENV" ]; then
        [ -x "$USE_VENV/bin/markd" ] || { say "no markd in $USE_VENV (USE_VENV)"; exit 1; }
    else
        make_venv
    fi

    say "unit $unit runs $bindir/markd"
    install -d -m 0755 "$(dirname "$unit")"
    sed -e "s|@BINDIR@|$bindir|g" -e "s|@DOCDIR@|$DOCDIR|g" systemd/markd.service.in >"$unit.tmp"
    chmod 0644 "$unit.tmp"
    mv "$unit.tmp" "$unit"
    install -D -m 0644 systemd/markd.sysusers "$sysusers"
    install -D -m 0644 systemd/markd.tmpfiles "$tmpfiles"
    install -D -m 0644 systemd/markd.catalog "$catalog"

    local rules=(udev/*.rules)
    if [ -e "${rules[0]}" ]; then
        install -d -m 0755 "$rulesdir"
        install -m 0644 "${rules[@]}" "$rulesdir/"
    fi

    install -d -m 0755 "$docdir"
    install -m 0644 docs/*.md "$docdir/"

    install -d -m 0755 "$linkdir"
    ln -sfn "$bindir/markd" "$linkdir/markd"
    ln -sfn "$bindir/markctl" "$linkdir/markctl"

    if live; then
        if have systemd-sysusers; then systemd-sysusers "$SYSUSERSDIR/markd.conf"; fi
        if have systemd-tmpfiles; then systemd-tmpfiles --create "$TMPFILESDIR/markd.conf"; fi
    fi
    tell_system
    if live; then
        say "done. Put secrets in /etc/credstore/markd.<name>, settings in /etc/markd/markd.toml,"
        say "then: systemctl enable --now markd   (docs: $DOCDIR/operations.md)"
    fi
}

do_uninstall() {
    if live && have systemctl && systemd_running; then
        systemctl disable --now markd.service 2>/dev/null || true
    fi
    rm -f "$unit" "$sysusers" "$tmpfiles" "$catalog"
    local rule
    for rule in udev/*.rules; do
        [ -e "$rule" ] && rm -f "$rulesdir/$(basename "$rule")"
    done
    rm -rf "$docdir"
    local link
    for link in markd markctl; do
        if [ -L "$linkdir/$link" ] && [ "$(readlink "$linkdir/$link")" = "$bindir/$link" ]; then
            rm -f "$linkdir/$link"
        fi
    done
    if [ -z "$USE_VENV" ] && [ -f "$DESTDIR$MARKD_HOME/$marker" ]; then
        rm -rf "$DESTDIR$MARKD_HOME"
    fi
    tell_system
    if live; then
        say "removed. Kept: /etc/markd, /etc/credstore, /var/lib/markd and the user markd"
    fi
}

case $action in
    install) do_install ;;
    uninstall) do_uninstall ;;
    *) say "usage: tools/install.sh install|uninstall"; exit 2 ;;
esac
