#!/usr/bin/env bash
# Source this on the GPU machine, in the repository root the device tool copied (with .gpu/ and dist/
# carried): it unpacks Node, the production modules and the Vulkan packages, and puts `kivi` on PATH.
#   source scripts/gpu/setup.sh && kivi bench attention --backend webgpu ... --save $OUT/attention
for f in .gpu/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_ICD_FILENAMES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
mkdir -p /tmp/nodebin
[ -x /tmp/nodebin/node ] || { xz -dc .gpu/node.xz > /tmp/nodebin/node; chmod +x /tmp/nodebin/node; }
export PATH=/tmp/nodebin:$PATH
[ -d node_modules ] || tar -xJf .gpu/modules.tar.xz
kivi() { node "$PWD/dist/src/cli/main.js" "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
node --version
