#!/usr/bin/env bash
# Installs everything trainkit and its test suite need on a fresh Debian machine with Python 3.10+:
# Debian's chromium (browser tests drive it through Playwright; no browser download), g++ (what
# torch.compile builds its CPU kernels with, for training.compile) and the Python package with its
# [dev] and [mlflow] extras (the tests run a real MLflow; the default install has no MLflow). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v g++ >/dev/null 2>&1 || need+=(g++)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; fi
fi
python3 -m pip install -q --root-user-action=ignore "torch>=2.6" "torchvision>=0.21"
python3 -m pip install -q --root-user-action=ignore -e ".[dev,mlflow]"
python3 -m ipykernel install --user --name python3 >/dev/null 2>&1 || true
