#!/usr/bin/env bash
# A local stand-in for the PyTorch CPU index's torchvision 0.28.0+cpu wheel.
#
# The CPU image (requirements-cpu.txt) takes torch AND torchvision from a CPU index
# (--build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu). PyPI's torchvision 0.28.0
# does not pair with torch 2.13.0+cpu: its C extension is linked against CUDA torch
# (libtorch_cuda.so, libc10_cuda.so, libcudart.so.13), so it fails to load, and `import
# torchvision` then stops with "operator torchvision::nms does not exist".
#
# On a machine that has the torch 2.13.0+cpu wheel on disk but cannot reach the CPU index, this
# script makes torchvision-0.28.0+cpu from PyPI's wheel: same Python code, its CUDA-linked
# extensions replaced by torchvision_ops.cpp compiled against the CPU torch. That file
# declares torchvision's operators without kernels: torchvision.models and .transforms (all
# SimAM-Viz uses) work; torchvision.ops (nms, roi_align, ...) and torchvision.io's decoders do
# not. Only for proving the CPU image where the index is out of reach; never publish an image
# built with it. Needs g++ and Python 3.11 headers.
#
#   deploy/cpu-standin/make-torchvision-cpu.sh OUT_DIR [TORCH_CPU_WHEEL]
# OUT_DIR then holds the CPU pair (the torch wheel is copied next to it):
#   podman build --format docker --network host --pull=never -v OUT_DIR:/opt/cpu-wheels:ro \
#       --build-arg TORCH_REQUIREMENTS=requirements-cpu.txt \
#       --build-arg TORCH_FIND_LINKS=/opt/cpu-wheels -t simam-viz:cpu .
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:?usage: make-torchvision-cpu.sh OUT_DIR [TORCH_CPU_WHEEL]}
TORCH_WHEEL=${2:-$(ls /opt/wheels/torch-2.13.0+cpu-cp311-*.whl 2>/dev/null | head -n1)}
[ -f "$TORCH_WHEEL" ] || { echo "error: no torch 2.13.0+cpu wheel (pass its path)" >&2; exit 2; }
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q "$TORCH_WHEEL" wheel
"$WORK/venv/bin/pip" download -q --no-deps -d "$WORK/dl" torchvision==0.28.0
TORCH_DIR=$("$WORK/venv/bin/python" -c "import os, torch; print(os.path.dirname(torch.__file__))")

"$WORK/venv/bin/wheel" unpack -d "$WORK/src" "$WORK"/dl/torchvision-0.28.0-*.whl
PKG="$WORK/src/torchvision-0.28.0"
rm -f "$PKG/torchvision/_C.so" "$PKG/torchvision/image.so"
rm -rf "$PKG/torchvision.libs"
g++ -O2 -shared -fPIC -std=c++20 -w -I"$TORCH_DIR/include" \
  -I"$TORCH_DIR/include/torch/csrc/api/include" "$HERE/torchvision_ops.cpp" \
  -L"$TORCH_DIR/lib" -lc10 -ltorch_cpu -Wl,-rpath,'$ORIGIN/../torch/lib' \
  -o "$PKG/torchvision/_C.so"
# the local version of PyTorch's own CPU wheels: `torchvision==0.28.0` still matches it
sed -i "s/^__version__ = .*/__version__ = '0.28.0+cpu'/" "$PKG/torchvision/version.py"
mv "$PKG/torchvision-0.28.0.dist-info" "$PKG/torchvision-0.28.0+cpu.dist-info"
sed -i 's/^Version: 0.28.0$/Version: 0.28.0+cpu/' "$PKG/torchvision-0.28.0+cpu.dist-info/METADATA"
"$WORK/venv/bin/wheel" pack -d "$OUT" "$PKG"

# it must import and run on the CPU torch
"$WORK/venv/bin/pip" install -q --no-deps "$OUT"/torchvision-0.28.0+cpu-*.whl numpy pillow
"$WORK/venv/bin/python" -c "
import torch, torchvision
from torchvision.models import resnet50
y = resnet50()(torch.zeros(1, 3, 64, 64))
print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'ok', tuple(y.shape))"
cp -f "$TORCH_WHEEL" "$OUT/"
ls -l "$OUT"
