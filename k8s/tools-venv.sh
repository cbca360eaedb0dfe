#!/usr/bin/env bash
# Builds .venv-tools: checkov (Kubernetes security scanner) in its own virtualenv, because its
# dependency pins conflict with kfp's. Idempotent; `make test` runs it before the k8s tests.
set -euo pipefail
cd "$(dirname "$0")/.."
CHECKOV_VERSION="${CHECKOV_VERSION:-3.3.30}"
if [ -x .venv-tools/bin/checkov ] && .venv-tools/bin/checkov --version 2>/dev/null | grep -qx "$CHECKOV_VERSION"; then
  echo '*' > .venv-tools/.gitignore
  exit 0
fi
python3 -m venv .venv-tools
# Keeps git, ruff and pytest out of the tools venv, as newer `python -m venv` does by itself.
echo '*' > .venv-tools/.gitignore
.venv-tools/bin/pip install -q --upgrade pip
.venv-tools/bin/pip install -q "checkov==${CHECKOV_VERSION}"
.venv-tools/bin/checkov --version
