#!/usr/bin/env bash
# Copies trained demo checkpoints (safetensors + JSON sidecar) into checkpoints/demo/ and
# prints their sha256 for the registry of demo weights (checkpoints/demo/SHA256SUMS).
set -euo pipefail
src=${1:-build/demo}; dst=${2:-checkpoints/demo}
mkdir -p "$dst"
for arch in resnet50 se_resnet50 simam_resnet50; do
  cp "$src/$arch.safetensors" "$src/$arch.json" "$dst/"
done
(cd "$dst" && sha256sum ./*.safetensors | sed 's| \./| |' > SHA256SUMS && cat SHA256SUMS)
