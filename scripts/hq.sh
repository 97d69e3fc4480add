#!/usr/bin/env bash
# Issue 14's measurements on the paged cache (docs/results/hq/): KL divergence and NLL on the golden windows
# on the TypeScript reference (vmeta=8 runs there only) and on wasm, and the copy task on wasm, one spec a run
# (so a run cut short keeps the specs it finished). Each run's command and JSON line are appended to
# docs/results/hq/runs/<name>.txt; scripts/hq-table.mjs turns the logs into results.md and the chart.
#
#   scripts/hq.sh                                  # everything (hours on 2 busy cores; the runs are independent)
#   scripts/hq.sh kld-golden-2 copy-d0             # some of them
set -euo pipefail
cd "$(dirname "$0")/.."
npm run -s build
OUT=docs/results/hq
mkdir -p "$OUT/runs"
W=(--model models/llama-28m-gqa --text data/wikitext-2-raw-test.txt)
# The first screen (log kld-golden.txt, commit 70ca8da: its kivi2-hq is kivi:k=4,v=2,gk=128,gv=32,vmeta=8,rot=hadamard).
SPECS=fp32,kivi4,kivi2,kivi:k=2,v=2,rot=hadamard,kivi:k=2,v=2,vmeta=8,kivi:k=4,v=2,kivi:k=4,v=2,g=64
SPECS+=,kivi:k=4,v=2,gk=128,gv=32,vmeta=8,kivi:k=4,v=2,gk=128,gv=32,rot=hadamard,kivi:k=4,v=2,gk=128,gv=32,vmeta=8,rot=hadamard
# ≤ 3.5 bits without vmeta=8 (runs on every back end).
SPECS2=fp32,kivi2,kivi:k=4,v=2,gk=128,gv=64,rot=hadamard,kivi:k=4,v=2,g=64,rot=hadamard,kivi:k=4,v=2,gk=128,gv=128,rot=hadamard
SPECS_WASM=fp32,kivi2,kivi4,kivi:k=4,v=2,gk=128,gv=64,rot=hadamard,kivi:k=4,v=2,g=64,rot=hadamard,kivi:k=4,v=2,gk=128,gv=64,kivi:k=4,v=2,g=64
# Sink tokens alone and with the other options (wasm).
SPECS_SINK=fp32,kivi2,kivi:k=2,v=2,sink=4,kivi:k=2,v=2,sink=16,kivi:k=2,v=2,rot=hadamard,sink=4,kivi2-hq,kivi:k=4,v=2,g=64,rot=hadamard,sink=4
SPECS_SINK+=,kivi:k=4,v=2,g=64,rot=hadamard,sink=16,kivi4,kivi:k=4,v=4,sink=4
COPY=(fp32 kivi2-hq kivi2 kivi4 kivi:k=4,v=2,gk=128,gv=64,rot=hadamard kivi:k=2,v=2,sink=4 kivi:k=4,v=2,g=64,rot=hadamard,sink=4)
run() {
  local name=$1; shift
  echo "+ kivi $*" >&2
  { echo "\$ kivi $*"; echo "# started $(date -u +%FT%TZ) (loaded 2-core machine; timings not meaningful), commit $(git rev-parse --short HEAD)"
    node dist/src/cli/main.js "$@"; echo "# finished $(date -u +%FT%TZ)"; } >> "$OUT/runs/$name.txt"
}
ALL="${*:-kld-golden-2 kld-golden-wasm kld-golden-sink copy-d0 copy-d512 copy-d512-n256 copy-d1024}"
for name in $ALL; do
  case $name in
    kld-golden) run "$name" eval kld "${W[@]}" --backend ts --max-windows 2 --json --kv "$SPECS" ;;
    kld-golden-2) run "$name" eval kld "${W[@]}" --backend ts --max-windows 2 --json --kv "$SPECS2" ;;
    kld-golden-sink) run "$name" eval kld "${W[@]}" --backend wasm --threads 1 --max-windows 2 --json --kv "$SPECS_SINK" ;;
    kld-golden-wasm) run "$name" eval kld "${W[@]}" --backend wasm --threads 1 --max-windows 2 --json --kv "$SPECS_WASM" ;;
    copy-d512)
      for kv in fp32 kivi2-hq kivi2 kivi4 kivi:k=2,v=2,sink=4; do
        run "$name" eval copy "${W[@]}" --backend wasm --threads 1 --n 64 --seed 0 --depth 512 --json --kv "$kv"
      done ;;
    copy-d512-n256)
      # The depth where fp32 still copies some lists: n = 256 so that a difference of a few lists means something.
      for kv in fp32 kivi2-hq kivi:k=4,v=2,g=64,rot=hadamard,sink=4 kivi4; do
        run "$name" eval copy "${W[@]}" --backend wasm --threads 1 --n 256 --seed 0 --depth 512 --json --kv "$kv"
      done ;;
    copy-d0 | copy-d1024)
      for kv in "${COPY[@]}"; do
        run "$name" eval copy "${W[@]}" --backend wasm --threads 1 --n 64 --seed 0 --depth "${name#copy-d}" --json --kv "$kv"
      done ;;
    *) echo "unknown run $name" >&2; exit 1 ;;
  esac
done
node scripts/hq-table.mjs > "$OUT/results.md"
