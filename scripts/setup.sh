#!/usr/bin/env bash
# Idempotent set-up: Debian packages (when run as root and missing), the .venv with pinned requirements,
# and this project installed editable into it (the `masktune` command).
set -euo pipefail
cd "$(dirname "$0")/.."

want_apt=()
[ -x /usr/bin/chromium ] || want_apt+=(chromium)
[ -d /usr/share/datasets/fashion-mnist ] || want_apt+=(dataset-fashion-mnist)
if [ "${#want_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian packages: ${want_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want_apt[@]}" >/dev/null
  else
    echo "note: missing Debian packages ${want_apt[*]} (browser tests and Fashion-MNIST need them);" \
         "install them with: sudo apt-get install ${want_apt[*]}" >&2
  fi
fi

# The stamp covers pyproject.toml too, so a new console script or package is installed on the next run.
stamp=.venv/.installed-$(cat requirements.txt requirements-dev.txt pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements-dev.txt
  # Editable: the dashboard runs app.py and views/ from this tree. The pinned requirements are already
  # in; setuptools comes with them, so the build needs no download of its own. The warning silenced is
  # setuptools' notice that a folder named like a package in the working directory wins imports: here
  # that folder is the package itself.
  PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  rm -f .venv/.installed-*
  touch "$stamp"
fi
