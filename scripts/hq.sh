#!/usr/bin/env bash
# Issue 14's measurements on the paged cache (docs/results/hq/): KL divergence and NLL on the golden windows,
# and the copy task, on the TypeScript reference back end (rot=hadamard and vmeta=8 run there only). Each run's
# command and JSON go to docs/results/hq/runs/<name>.txt; scripts/hq-table.mjs turns them into results.md and
# the chart.
#
#   scripts/hq.sh                          # everything (long on 2 busy cores; the runs are independent)
#   scripts/hq.sh kld-golden copy-d0       # some of them
set -euo pipefail
cd "$(dirname "$0")/.."
npm run -s build
OUT=docs/results/hq
mkdir -p "$OUT/runs"
W=(--model models/llama-28m-gqa --text data/wikitext-2-raw-test.txt --backend ts)
SPECS=fp32,kivi4,kivi2,kivi:k=2,v=2,rot=hadamard,kivi:k=2,v=2,vmeta=8,kivi:k=4,v=2,kivi:k=4,v=2,g=64
SPECS+=,kivi:k=4,v=2,gk=128,gv=32,vmeta=8,kivi:k=4,v=2,gk=128,gv=32,rot=hadamard,kivi2-hq
run() {
  local name=$1; shift
  echo "+ kivi $*" >&2
  { echo "\$ kivi $*"; echo "# started $(date -u +%FT%TZ) (loaded 2-core machine; timings not meaningful), commit $(git rev-parse --short HEAD)"
    node dist/src/cli/main.js "$@"; echo "# finished $(date -u +%FT%TZ)"; } > "$OUT/runs/$name.txt"
}
ALL="${*:-kld-golden copy-d0}"
for name in $ALL; do
  case $name in
    kld-golden) run "$name" eval kld "${W[@]}" --max-windows 2 --json --kv "$SPECS" ;;
    kld-16w) run "$name" eval kld "${W[@]}" --first-window 26 --max-windows 16 --json --kv "$SPECS" ;;
    copy-d0) run "$name" eval copy "${W[@]}" --n 64 --seed 0 --json --kv fp32,kivi4,kivi2,kivi2-hq ;;
    copy-d1024) run "$name" eval copy "${W[@]}" --n 64 --seed 0 --depth 1024 --json --kv fp32,kivi4,kivi2,kivi2-hq ;;
    *) echo "unknown run $name" >&2; exit 1 ;;
  esac
done
node scripts/hq-table.mjs > "$OUT/results.md"
