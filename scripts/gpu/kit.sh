#!/usr/bin/env bash
# Builds .gpu/, what a run on the GPU machine carries (it has no Node and reaches no registry):
# a Node binary, the production node_modules, the linux-x64 part of the `webgpu` package (Dawn), and the
# Vulkan loader and GLVND packages the NVIDIA driver's Vulkan ICD needs. ~40 MB in all.
# Usage: scripts/gpu/kit.sh            (then `source scripts/gpu/setup.sh` there; see docs/perf/gpu.md)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=.gpu
mkdir -p "$out"
ver=$(node -p "require('./package.json').optionalDependencies?.webgpu ?? '0.6.2'")
if [ ! -f "$out/node.xz" ]; then xz -T0 -c "$(command -v node)" > "$out/node.xz"; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp package.json package-lock.json "$tmp/"
(cd "$tmp" && npm ci --omit=dev --omit=optional --ignore-scripts --no-audit --no-fund >/dev/null)
(cd "$tmp" && npm install --no-save --omit=dev --ignore-scripts --no-audit --no-fund "webgpu@$ver" >/dev/null)
# Dawn: keep only the linux-x64 binary.
find "$tmp/node_modules/webgpu/dist" -mindepth 1 -maxdepth 1 ! -name 'linux-x64*' ! -name '*.js' ! -name '*.mjs' ! -name '*.d.ts' ! -name '*.json' -exec rm -rf {} + 2>/dev/null || true
tar -C "$tmp" -cf - node_modules | xz -T0 -6 > "$out/modules.tar.xz"
if ! ls "$out"/*.deb >/dev/null 2>&1; then
  mkdir -p /tmp/amd64/partial
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  apt-get $o update -qq >/dev/null
  (cd "$out" && apt-get $o download -qq libvulkan1 libglvnd0 libglx0 libegl1 libgl1 libopengl0 libgles2 >/dev/null)
fi
# Diagnostics (bench.sh robust), where this machine has gcc, the Vulkan headers and spirv-as
# (apt-get install libvulkan-dev spirv-tools): the driver's statistics tool and the attention kernel's SPIR-V.
if command -v gcc >/dev/null && [ -f /usr/include/vulkan/vulkan.h ] && command -v spirv-as >/dev/null; then
  gcc -O2 -o "$out/pipestats" scripts/gpu/pipestats.c -lvulkan
  mkdir -p "$out/spv"
  for cfg in "gqa 8 2 128" "gqa-b2 8 2 128 b2" "gqa-u1 8 2 128 u1" "gqa-u2 8 2 128 u2" "gqa-ch4 8 2 128 ch4" \
    "gqa-novalues 8 2 128 values" "gqa-nokeys 8 2 128 keys,fold" "mha 32 32 128" "mha-b2 32 32 128 b2" \
    "gqa-wacc 8 2 128 wacc" "mha-wacc 32 32 128 wacc" "gqa-stage 8 2 128 stage" "mha-stage 32 32 128 stage" \
    "gqa-nofkeys 8 2 128 fkeys" "gqa-ku1 8 2 128 ku1" "gqa-ku2 8 2 128 ku2" "gqa-nofold 8 2 128 fold" \
    "gqa-noti 8 2 128 ti" "gqa-nomax 8 2 128 max" "gqa-kvf 8 2 128 keys,fkeys,values" \
    "gqa-bare 8 2 128 ti,fold,keys,fkeys,max,values" "mha-ku1 32 32 128 ku1" "mha-nofkeys 32 32 128 fkeys" \
    "gqa-kp2 8 2 128 kp2" "gqa-kp4 8 2 128 kp4" "mha-kp2 32 32 128 kp2" "mha-kp4 32 32 128 kp4"; do
    set -- $cfg
    node scripts/gpu/spirv-dump.mjs "$out/spv/$1.spv" attend "$2" "$3" "$4" ${5:-}
  done
  # The bulk kernel (bulk.ts): the code width, then a bulk setting (parseBulkSetting).
  for cfg in "bulk-gqa-cw8 8 2 128 2,cw8" "bulk-gqa-cw8-noex 8 2 128 2,cw8,noex" "bulk-gqa-cw16 8 2 128 2,cw16" \
    "bulk-gqa-cw8-novalues 8 2 128 2,cw8,-values" "bulk-gqa-cw8-nokeys 8 2 128 2,cw8,-keys" \
    "bulk-mha-cw8 32 32 128 2,cw8" "bulk-mha-cw16 32 32 128 2,cw16" "bulk-mha-fused 32 32 128 2,on" \
    "bulk-mha-keys 32 32 128 2,split,sg,keys" "bulk-mha-values 32 32 128 2,split,sg,values" \
    "bulk-mha-values-vm 32 32 128 2,split,sg,vm,values" "bulk-mha-values-u4 32 32 128 2,split,sg,u4,values" \
    "bulk-mha-values-u16 32 32 128 2,split,sg,u16,values" "bulk-mha-values-vcw8 32 32 128 2,split,sg,vcw8,values" \
    "bulk-mha-values-vcw8-u4 32 32 128 2,split,sg,vcw8,u4,values" "bulk-gqa-keys 8 2 128 2,split,sg,keys" \
    "bulk-gqa-values 8 2 128 2,split,sg,vcw8,values"; do
    set -- $cfg
    node scripts/gpu/spirv-dump.mjs "$out/spv/$1.spv" bulk "$2" "$3" "$4" "$5"
  done
  # Tiles of 256 and 64 tokens (threads a workgroup), to see the registers the driver gives each.
  for t in 256 64; do
    KIVI_WEBGPU_TILE=$t node scripts/gpu/spirv-dump.mjs "$out/spv/gqa-t$t.spv" attend 8 2 128
    KIVI_WEBGPU_TILE=$t node scripts/gpu/spirv-dump.mjs "$out/spv/mha-t$t.spv" attend 32 32 128
  done
  KIVI_WEBGPU_ROBUST=0 node scripts/gpu/spirv-dump.mjs "$out/spv/gqa-r0.spv" attend 8 2 128
  KIVI_WEBGPU_ROBUST=0 node scripts/gpu/spirv-dump.mjs "$out/spv/mha-r0.spv" attend 32 32 128
  rm -f "$out"/spv/*.spvasm
fi
du -sh "$out"/*
