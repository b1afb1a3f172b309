#!/usr/bin/env bash
# Build markd's Debian package: `make deb` runs this.
#
#     tools/build-deb.sh            -> dist/markd_VERSION_all.deb, checked by lintian
#
# The package is made from the files in debian/ (the packaging, kept in the repository) with
# debhelper and dh-python on a copy of the tree under build/deb/, so the checkout stays clean.
# VERSION is markd.__version__ and must equal debian/changelog's top entry.
#
# Environment:
#   DEB_VERSION  build this version instead (a changelog entry is added to the copy only):
#                for test builds and upgrade tests, e.g. DEB_VERSION=0.1.0+test1.
#   DEB_OUT      where the .deb goes (default dist/).
#   LINTIAN      "no" skips lintian (default: run it and fail on an error).
# As root, missing build tools are installed from Debian's packages first (debhelper,
# dh-python, pybuild-plugin-pyproject, python3-all, python3-setuptools, python3-wheel, lintian).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'build-deb: %s\n' "$*" >&2; }

version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' daemon/markd/__init__.py)
changelog=$(dpkg-parsechangelog -l debian/changelog -S Version 2>/dev/null || head -1 debian/changelog | sed 's/.*(\(.*\)).*/\1/')
if [ "$version" != "$changelog" ]; then
    say "markd.__version__ is $version but debian/changelog's top entry is $changelog;"
    say "add a changelog entry for $version (dch -v $version) before building"
    exit 1
fi
deb_version=${DEB_VERSION:-$version}
out=${DEB_OUT:-dist}

tools=(debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools python3-wheel dpkg-dev)
[ "${LINTIAN:-yes}" = "no" ] || tools+=(lintian)
missing=()
for pkg in "${tools[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        say "missing build tools: ${missing[*]}"
        say "run as root, or first: sudo apt-get install -y ${missing[*]}"
        exit 1
    fi
    say "installing build tools: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
fi

mkdir -p build "$out"
work=$(mktemp -d "$PWD/build/deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
src=$work/markd-$deb_version
mkdir "$src"
# The working tree's files as git sees them (tracked, and new ones not ignored), so a test
# build carries uncommitted changes; nothing of a venv, caches or earlier builds. A release is
# built from a clean checkout. A file that cannot be copied fails the build.
if [ -d .git ] && command -v git >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' file; do
            # A tracked file deleted in the working tree is not part of it.
            if [ -e "$file" ] || [ -L "$file" ]; then printf '%s\0' "$file"; fi
        done \
        | xargs -0 -r cp -P --parents -t "$src"
else
    tar -c --exclude=./.venv --exclude=./build --exclude=./dist --exclude=./.git \
        --exclude='*.egg-info' --exclude=__pycache__ . | tar -x -C "$src"
fi
[ -f "$src/debian/rules" ] || { say "copying the tree to $src failed"; exit 1; }

if [ "$deb_version" != "$version" ]; then
    say "building version $deb_version (DEB_VERSION) from markd $version"
    entry="markd ($deb_version) unstable; urgency=medium

  * Test build of markd $version.

 -- $(sed -n 's/^Maintainer: //p' debian/control)  $(date -R)
"
    printf '%s\n' "$entry" | cat - debian/changelog >"$src/debian/changelog"
fi

say "dpkg-buildpackage in $src"
# Debian's own python3 builds it: a pyenv, a venv or a self-built Python earlier on PATH
# would not have Debian's build modules (and is not what the kiosk runs).
(cd "$src" && PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -b -us -uc --no-sign) >"$work/build.log" 2>&1 \
    || { tail -40 "$work/build.log" >&2; say "dpkg-buildpackage failed (log above)"; exit 1; }
deb=markd_${deb_version}_all.deb
mv "$work/$deb" "$out/$deb"
say "built $out/$deb"

if [ "${LINTIAN:-yes}" != "no" ]; then
    # Errors fail the build; each warning left is explained in debian/markd.lintian-overrides.
    lintian --fail-on error --tag-display-limit 0 "$out/$deb" >&2 \
        || { say "lintian found errors in $out/$deb"; exit 1; }
fi
printf '%s\n' "$out/$deb"
