#!/usr/bin/env bash
# Regenerate every benchmark of the README's Performance section under docs/perf/:
# <name>.md (table), <name>.json (one JSON line), <name>.svg (chart), and machine.md.
#
#   scripts/perf.sh            # everything (~25 min on 2 busy cores)
#   scripts/perf.sh attention  # one or more of: machine gemv attention kv-bytes generate capacity throughput serve
#
# KIVI_BACKEND (default auto) and KIVI_THREADS (default: the back end's) pass through to every command.
set -euo pipefail
cd "$(dirname "$0")/.."
npm run -s build

OUT=docs/perf
MODEL=models/llama-28m-gqa
mkdir -p "$OUT"
FLAGS=(--backend "${KIVI_BACKEND:-auto}")
if [ -n "${KIVI_THREADS:-}" ]; then FLAGS+=(--threads "$KIVI_THREADS"); fi
kivi() { echo "+ kivi $*" >&2; node dist/src/cli/main.js "$@"; }
want() { [[ " $ALL " == *" $1 "* ]]; }
ALL="${*:-machine gemv attention kv-bytes generate capacity throughput serve}"

# machine.md: the machine, then one line per part saying when, at which commit and under what load it ran.
stamp() {
  touch "$OUT/machine.md"
  grep -v "^  - \`$1\`:" "$OUT/machine.md" > "$OUT/machine.md.tmp" || true
  echo "  - \`$1\`: $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src scripts || echo '+changes'), load average $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/machine.md.tmp"
  mv "$OUT/machine.md.tmp" "$OUT/machine.md"
}

if want machine; then
  {
    echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores available"
    echo "- Caches: $(lscpu | grep -E '^L[123]' | sed -E 's/ +/ /g; s/ \(.*\)//' | paste -sd ';' -)"
    echo "- Memory: $(free -g | awk '/^Mem:/ {print $2}') GiB; Node $(node --version); $(uname -srm)"
    echo "- Runs (start time, code, load average over 1/5/15 min; 2 cores means load 2 is full):"
  } > "$OUT/machine.md"
fi

# Linear layers: a 8192×4096 float32 weight (128 MiB, 4× the L3) against the read-bandwidth bound.
if want gemv; then stamp gemv; kivi bench gemv "${FLAGS[@]}" --save "$OUT/gemv"; fi

# Decode attention, one layer of one sequence (4 heads, 2 kv heads, d=128), 1K..256K tokens (and 32K,
# where the issue's bytes target is set).
if want attention; then
  stamp attention
  kivi bench attention --context 1024,4096,16384,32768,65536,262144 "${FLAGS[@]}" --save "$OUT/attention"
fi

# One sequence's whole-model cache per spec at 4K and 32K (the README's method table).
if want kv-bytes; then stamp kv-bytes; kivi bench kv-bytes --model "$MODEL" --context 4096,32768 "${FLAGS[@]}" --save "$OUT/kv-bytes"; fi

# What `kivi generate` does for one sequence: a 1024-token WikiText prompt, 256 generated, per spec;
# the wasm back end on 1 and 2 threads, and the TypeScript reference.
if want generate; then
  stamp generate
  TEXT=data/wikitext-2-raw-test.txt
  for t in 1 2; do
    kivi bench generate --model "$MODEL" --text "$TEXT" --prompt 1024 --gen 256 --repeats 3 --backend wasm --threads $t --save "$OUT/generate-t$t"
  done
  kivi bench generate --model "$MODEL" --text "$TEXT" --prompt 1024 --gen 256 --repeats 3 --backend ts --save "$OUT/generate-ts"
fi

# Capacity at the model's context (2048) and at 16K (beyond it: synthetic K/V).
if want capacity; then
  stamp capacity
  kivi bench capacity --model "$MODEL" --budget 512MiB --context 2048 "${FLAGS[@]}" --save "$OUT/capacity-2k"
  kivi bench capacity --model "$MODEL" --budget 512MiB --context 16384 "${FLAGS[@]}" --save "$OUT/capacity-16k"
fi

# Throughput. Budgets are headroom above the weights + measured overhead (~210-220 MiB, and it varies
# by ~10 MiB from run to run with the worker threads' heaps): room for 1, 2, 4, 8, 16, 32 fp16 sequences
# of 160 + 338 tokens (3.89 MiB each at their peak). The headline (where fp16 admits only a few) runs
# each point 3 times in rounds; the whole curve once.
if want throughput; then
  stamp throughput
  kivi bench throughput --model "$MODEL" --budget +4MiB,+8MiB,+16MiB --prompt 160 --gen 338 \
    --max-batch 64 --repeats 3 "${FLAGS[@]}" --save "$OUT/throughput-headline"
  kivi bench throughput --model "$MODEL" --budget +4MiB,+8MiB,+16MiB,+32MiB,+64MiB,+128MiB --prompt 160 --gen 338 \
    --max-batch 64 "${FLAGS[@]}" --save "$OUT/throughput"
fi

# The server's capacity under one --kv-budget (README Server section): 16 clients of 1920-token WikiText
# prompts, the budget exactly 3 fp16 requests.
if want serve; then
  stamp serve
  kivi bench serve --model "$MODEL" --text data/wikitext-2-raw-test.txt --prompt 1920 --gen 16 --clients 16 \
    --fp16-seqs 3 "${FLAGS[@]}" --save "$OUT/serve-capacity"
fi
