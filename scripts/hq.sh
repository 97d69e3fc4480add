#!/usr/bin/env bash
# Issue 14's final measurements (docs/results/hq/): KL divergence and NLL on the golden windows and on 16
# fresh windows, the copy task at depth 0, 512 and 1024, and the KLD-vs-bits charts. Each run's command and
# JSON go to docs/results/hq/runs/<name>.txt; scripts/hq-table.mjs turns them into results.md.
#
#   scripts/hq.sh                 # everything (hours on 2 busy cores; the runs are independent)
#   scripts/hq.sh kld-final-golden copy-final-d0   # some of them
set -euo pipefail
cd "$(dirname "$0")/.."
npm run -s build
OUT=docs/results/hq
mkdir -p "$OUT/runs"
W=(--model models/llama-28m-gqa --text ../shared/data/wikitext-2-raw-test.txt --threads "${KIVI_THREADS:-1}")
SPECS=fp32,fp16,kivi4,kivi2,kivi:k=2,v=2,rot=hadamard,kivi:k=2,v=2,vrot=hadamard,kivi:k=2,v=2,sink=4,kivi:k=2,v=2,meta=8
SPECS+=,kivi:k=2,v=2,clip=mse,kivi:k=2,v=2,g=16,meta=8,kivi:k=2,v=2,g=16,meta=8,rot=hadamard,vrot=hadamard,sink=4
SPECS+=,kivi:k=4,v=2,kivi:k=4,v=2,g=64,kivi:k=4,v=2,g=64,rot=hadamard,vrot=hadamard,sink=4,kivi:k=4,v=2,gk=128,gv=32,vmeta=8,kivi2-hq
run() {
  local name=$1; shift
  echo "+ kivi $*" >&2
  { echo "\$ kivi $*"; echo "# started $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD)"
    node dist/src/cli/main.js "$@"; } > "$OUT/runs/$name.txt"
}
ALL="${*:-kld-final-golden kld-final-16w copy-final-d0 copy-final-d512 copy-final-d1024}"
for name in $ALL; do
  case $name in
    kld-final-golden) run "$name" eval kld "${W[@]}" --max-windows 2 --json --chart "$OUT/kld-frontier-golden" --kv "$SPECS" ;;
    kld-final-16w) run "$name" eval kld "${W[@]}" --first-window 26 --max-windows 16 --json --chart "$OUT/kld-frontier" --kv "$SPECS" ;;
    copy-final-d0) run "$name" eval copy "${W[@]}" --n 64 --seed 0 --json --kv "$SPECS" ;;
    copy-final-d512) run "$name" eval copy "${W[@]}" --n 64 --seed 0 --depth 512 --json --kv "$SPECS" ;;
    copy-final-d1024) run "$name" eval copy "${W[@]}" --n 64 --seed 0 --depth 1024 --json --kv fp32,kivi4,kivi2,kivi2-hq ;;
    *) echo "unknown run $name" >&2; exit 1 ;;
  esac
done
node scripts/hq-table.mjs > "$OUT/results.md"
