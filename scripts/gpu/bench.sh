#!/usr/bin/env bash
# The GPU measurements of the README and docs/perf/, in phases that each fit one device call (10 min):
#   bash scripts/gpu/bench.sh PHASE [OUT]
# Run on the GPU machine in the repository root with .gpu/ and dist/ carried (scripts/gpu/kit.sh builds
# .gpu/) and models/llama-28m-gqa moved out of the tree: every model here is config.json + random weights.
# Each command is printed before it runs; its Markdown and JSON land in OUT (default $OUT).
set -u
PHASE=${1:?phase: fused-items, vcw8-mha, final15, e2e15, items3, items2, items-mha, vx, aw-bench, aw-e2e, aw, parts-mha-1m, split-builds, mha-long, mha-split, mha-1m, long-800k, parts-default, items-gqa, long-1m, bulk-check, sg, split, split-gqa, vdp4a, long-alt, ik-gqa, long7b, long7b-profile, long7b-passes, long7b-orders, ik, dp4a, profile, bulk-min, bulk, bulk-parts, bulk-mha, kernels, tiles, parts, regs, stage, census, kp, ladder, robust, mha, ablate, attn-items, matmul, e2e, paper, paper-large, long}
OUT=${2:-${OUT:?}}
source scripts/gpu/setup.sh 2>&1
run() { # run SECONDS NAME kivi-args...
  local t=$1 name=$2; shift 2
  echo "\$ kivi $*"
  timeout "$t" node "$PWD/dist/src/cli/main.js" "$@" --save "$OUT/$name" >/tmp/$name.log 2>&1
  echo "exit $? after ${SECONDS}s"
  rm -f "$OUT/$name.svg"
  cat "$OUT/$name.md" 2>/dev/null || tail -n 8 /tmp/$name.log
}
C=models/configs
# An attention kernel variant: the registers the driver gives the named SPIR-V builds (kit.sh makes them),
# the variant CHECK against the reference at 4:1 and at MHA (none if empty), then the builds VARIANTS
# (attn-ablate.mjs, comma list, + within one) timed in turns at the benches' two shapes.
variant() { # variant NAME CHECK VARIANTS SPV...
  local name=$1 check=$2 vs=$3
  shift 3
  timeout 120 .gpu/pipestats "$@" 2>&1 | cut -c1-600 | tee "$OUT/pipestats-$name.txt"
  if [ -n "$check" ]; then
    KIVI_WEBGPU_ATTN_ITEMS=4 VARIANT=$check T=9000 timeout 100 node scripts/gpu/attn-check.mjs 2>&1 | tee "$OUT/attn-check-$name.txt"
    KIVI_WEBGPU_ATTN_ITEMS=16 VARIANT=$check HEADS=32 KV=32 T=5000 SPECS=kivi2,kivi4,fp16 timeout 100 node scripts/gpu/attn-check.mjs 2>&1 | tee -a "$OUT/attn-check-$name.txt"
  fi
  VARIANTS=${VARIANTS:-$vs} timeout 150 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/$name-gqa-1m.txt"
  HEADS=32 KV=32 T=262144 VARIANTS=${VARIANTS:-$vs} timeout 150 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/$name-mha-256k.txt"
}
# The split bulk kernel (bulk.ts BulkPhase) against the reference, forced on from one block: 4:1 with items
# of several passes, MHA, pages over several arenas.
split_check() { # split_check [SETTING] [NAME]
  export KIVI_WEBGPU_BULK=${1:-on,split${SPLIT_CHECK:-}}
  local name=${2:-split}
  KIVI_WEBGPU_ATTN_ITEMS=4 T=9000 SPECS=kivi2,kivi4,kivi:k=2,v=2,g=64,r=64,sink=3 timeout 100 node scripts/gpu/attn-check.mjs 2>&1 | tee "$OUT/attn-check-$name.txt"
  KIVI_WEBGPU_ATTN_ITEMS=16 HEADS=32 KV=32 T=5000 SPECS=kivi2,kivi4 timeout 100 node scripts/gpu/attn-check.mjs 2>&1 | tee -a "$OUT/attn-check-$name.txt"
  BIND=1048576 ARENAS=4 T=9000 SPECS=kivi2 timeout 100 node scripts/gpu/attn-check.mjs 2>&1 | tee -a "$OUT/attn-check-$name.txt"
  unset KIVI_WEBGPU_BULK
}
A_MHA="bench attention --backend webgpu --heads 32 --kv-heads 32 --kv fp16,kivi2,kivi4"
case $PHASE in
  profile)
    # Where a decode step's GPU time goes, kernel by kernel (timestamp queries), fp16 against kivi2: the
    # bundled model's shapes at 1 and 64 sequences (beside its timed rounds), then Llama-2-7B at 1.
    run 200 profile-28m bench generate --backend webgpu --model $C/llama-28m-gqa --random-weights 1 --weights native --prompt 1024 --gen 128 --kv fp16,kivi2 --repeats 3 --gpu-profile 1,64
    run 200 profile-7b bench generate --backend webgpu --model $C/llama-2-7b --random-weights 1 --weights native --prompt 160 --gen 64 --kv fp16,kivi2 --repeats 1 --gpu-profile 1,16
    ;;
  bulk-min)
    # Where the bulk kernel starts to pay at 32 kv heads: one decode step's attention from 4K to 128K tokens
    # with it (on) and without (0), in turns; then Llama-2-7B decode (one sequence, 160-token prompt) both ways.
    for b in on 0 on-2 0-2; do
      export KIVI_WEBGPU_BULK=${b%-2}
      run 150 attention-bulkmin-$b-mha $A_MHA --context 4096,16384,65536,131072
    done
    for b in on 0; do
      export KIVI_WEBGPU_BULK=$b
      run 200 generate-7b-bulk-$b bench generate --backend webgpu --model $C/llama-2-7b --random-weights 1 --weights native --prompt 160 --gen 64 --kv fp16,kivi2 --repeats 3
    done
    unset KIVI_WEBGPU_BULK
    ;;
  bulk)
    # The bulk kernel (bulk.ts: the quantized prefix of KIVI tasks) against the reference on this GPU (4:1,
    # MHA, pages over several arenas), then one decode step's attention at 4:1 with it (forced on: its
    # default there is off), without it (KIVI_WEBGPU_BULK=0: every token by the general kernel) and with 8
    # channels a thread, in one call.
    T=9000 timeout 100 node scripts/gpu/attn-check.mjs 2>&1 | tee "$OUT/attn-check-bulk.txt"
    HEADS=32 KV=32 T=5000 SPECS=kivi2,kivi4,fp16 timeout 100 node scripts/gpu/attn-check.mjs 2>&1 | tee -a "$OUT/attn-check-bulk.txt"
    BIND=1048576 ARENAS=4 T=9000 SPECS=kivi2,kivi4 timeout 100 node scripts/gpu/attn-check.mjs 2>&1 | tee -a "$OUT/attn-check-bulk.txt"
    for b in on 0 cw8; do
      export KIVI_WEBGPU_BULK=$b
      run 150 attention-bulk-$b-1m bench attention --backend webgpu --heads 8 --kv-heads 2 --kv fp16,kivi2,kivi4 --context 65536,1048576
    done
    unset KIVI_WEBGPU_BULK
    ;;
  bulk-parts)
    # What the bulk kernel's builds get from the driver (registers), then its settings and parts left out
    # timed against the general kernel alone (0), one decode step replayed (attn-ablate.mjs BULKS).
    timeout 120 .gpu/pipestats .gpu/spv/bulk-*.spv 2>&1 | cut -c1-600 | tee "$OUT/pipestats-bulk.txt"
    B="0|cw16,u8,sb4|cw16,u8,sb2|cw16,u4,sb4|cw16,u8,sb4,noex|cw8,u8,sb4,noex|0"
    SPECS=kivi2 BULKS="$B" timeout 200 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/bulk-parts-gqa-1m.txt"
    SPECS=kivi2 HEADS=32 KV=32 T=262144 BULKS="0|cw16,u8,sb8|cw16,u4,sb8|cw16,u8,sb8,noex|cw32,u8,sb8|cw32,u8,sb4|cw32,u8,sb16|cw32,u4,sb8|0" timeout 200 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/bulk-parts-mha-256k.txt"
    ;;
  bulk-mha)
    # One decode step's attention at 32 kv heads (64K and 262K tokens) with the bulk kernel (its default
    # there) and without it (KIVI_WEBGPU_BULK=0).
    for b in on 0 on-2 0-2; do
      export KIVI_WEBGPU_BULK=${b%-2}
      run 150 attention-bulk-$b-mha $A_MHA --context 65536,262144
    done
    # The kernel alone with the three specs' caches in one pool (as in the bench) and each alone.
    for keep in 1 0; do
      KEEP=$keep SPECS=fp16,kivi2,kivi4 HEADS=32 KV=32 T=262144 BULKS="0|on|0|on" timeout 200 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/bulk-keep$keep-mha-256k.txt"
    done
    unset KIVI_WEBGPU_BULK
    ;;
  kernels)
    # Attention of one decode step over 4K..4M cached tokens beside a streaming read of the same GPU.
    A="bench attention --backend webgpu --heads 8 --kv-heads 2 --kv fp16,kivi2,kivi4"
    run 120 attention-small $A --context 4096,65536,262144
    run 100 attention-1m $A --context 1048576
    run 150 attention-4m $A --context 4194304
    ;;
  tiles)
    # The attention tile (threads per workgroup = tokens per tile; KIVI_WEBGPU_TILE) at 64, 128 (the
    # default) and 256, at 4:1 and 1M tokens, then at 32 kv heads and 262K; then a correctness check at 256.
    for t in 128 256 64; do export KIVI_WEBGPU_TILE=$t; run 120 attention-tile$t-1m bench attention --backend webgpu --heads 8 --kv-heads 2 --kv fp16,kivi2 --context 1048576; done
    for t in 128 256 64; do export KIVI_WEBGPU_TILE=$t; run 120 attention-tile$t-mha bench attention --backend webgpu --heads 32 --kv-heads 32 --kv fp16,kivi2 --context 262144; done
    export KIVI_WEBGPU_TILE=256; timeout 120 node scripts/gpu/attn-check.mjs 2>&1 | tail -n 20
    unset KIVI_WEBGPU_TILE
    ;;
  mha)
    # The same kernels at Llama-2-7B's attention shape (32 heads, each its own kv head, d = 128): a KIVI
    # code then feeds one multiply-add per query head instead of four (GQA 4:1 above).
    # (1M tokens at this shape: the mha-1m phase.)
    run 150 attention-mha $A_MHA --context 65536,262144
    ;;
  ablate)
    # Where the attention kernel's time goes (no profiler through WebGPU): parts left out, value-loop tuning,
    # loads by select instead of switch; then each spec alone and both kept in one pool (KEEP=1), each order.
    A="node scripts/gpu/attn-ablate.mjs"
    timeout 150 $A 2>&1 | tee "$OUT/ablate-gqa-1m.txt"
    HEADS=32 KV=32 T=262144 timeout 150 $A 2>&1 | tee "$OUT/ablate-mha-256k.txt"
    HEADS=32 KV=32 T=262144 SPECS=kivi2 VARIANTS=,vscale,vcodes,unpack,values,ti timeout 100 $A 2>&1 | tee "$OUT/parts-mha-256k.txt"
    HEADS=32 KV=32 T=1048576 SPECS=kivi2 VARIANTS=,sel,values timeout 120 $A 2>&1 | tee "$OUT/sel-mha-1m-kivi2.txt"
    for S in kivi2,fp16 fp16,kivi2; do KEEP=1 HEADS=32 KV=32 T=262144 SPECS=$S VARIANTS=,na4 timeout 100 $A 2>&1 | tee -a "$OUT/keep-mha-256k.txt"; done
    # The kernel built for 1-4 arena bindings (unused ones bound to dummies), the cache in arena 0.
    HEADS=32 KV=32 T=262144 SPECS=kivi2 VARIANTS=,na2,na3,na4 timeout 120 $A 2>&1 | tee "$OUT/na-mha-256k.txt"
    SPECS=kivi2 VARIANTS=,na2,na3,na4 timeout 120 $A 2>&1 | tee "$OUT/na-gqa-1m.txt"
    ;;
  parts)
    # The real kernel with each part left out (wrong outputs, only the time counts), beside the ladder:
    # what each phase costs inside the kernel rather than on its own.
    P=${VARIANTS:-,values,ti,fold,keys,fold+keys,fkeys,max,ti+fold+keys+fkeys+max+values}
    SPECS=kivi2,fp16 VARIANTS=$P timeout 200 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/parts-gqa-1m-2.txt"
    HEADS=32 KV=32 T=262144 SPECS=kivi2,fp16 VARIANTS=$P timeout 200 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/parts-mha-256k-2.txt"
    ;;
  regs)
    # Registers the driver gives each attention build (and its machine code, if the driver hands it out,
    # packed in ir.tar.xz); then the variant wacc (value accumulators in workgroup memory between tiles,
    # so fewer registers live through the key phase).
    mkdir -p /tmp/ir
    IR_DIR=/tmp/ir variant wacc wacc ,wacc,,wacc .gpu/spv/*.spv
    tar cJf "$OUT/ir.tar.xz" -C /tmp/ir . && ls /tmp/ir | head -n 40
    ;;
  stage)
    # The variant stage (each thread loads its token's 2/4-bit key row, value row and value scales into
    # workgroup memory while resolving its addresses; the key and value phases read them from there).
    variant stage stage ,stage,stage+u2,,stage,stage+u2 .gpu/spv/{gqa,gqa-stage,mha,mha-stage}.spv
    ;;
  census)
    # Which part of the attention kernel sets its registers: the driver's count for builds with parts
    # left out (kit.sh names them); then the float16 key path with fewer row pieces in flight (kuN).
    variant census '' ,ku1,ku2,,ku1,ku2 .gpu/spv/*.spv
    ;;
  kp)
    # KIVI key scores summed in 2 or 4 partial sums a query head (variant kpN: shorter chains of dependent
    # multiply-adds).
    variant kp kp4 ,kp2,kp4,,kp2,kp4 .gpu/spv/{gqa,gqa-kp2,gqa-kp4,mha,mha-kp2,mha-kp4}.spv
    ;;
  ik)
    # The bulk kernel's integer key path (bulk.ts IK: the folded query as int16, packed 8-bit dot products)
    # against the reference on this GPU (forced on from one block: 4:1, MHA, pages over several arenas),
    # then the bench at 32 kv heads with it (ik) and with float key scores (fk), in turns, then one decode
    # step replayed: the general kernel alone (0), fk and ik, at MHA 262K and at 4:1 1M.
    export KIVI_WEBGPU_BULK=on
    T=9000 SPECS=kivi2,kivi4,kivi:k=2,v=2,g=64,r=64,sink=3 timeout 100 node scripts/gpu/attn-check.mjs 2>&1 | tee "$OUT/attn-check-ik.txt"
    HEADS=32 KV=32 T=5000 SPECS=kivi2,kivi4 timeout 100 node scripts/gpu/attn-check.mjs 2>&1 | tee -a "$OUT/attn-check-ik.txt"
    BIND=1048576 ARENAS=4 T=9000 SPECS=kivi2,kivi4 timeout 100 node scripts/gpu/attn-check.mjs 2>&1 | tee -a "$OUT/attn-check-ik.txt"
    for b in ik fk ik-2 fk-2; do
      export KIVI_WEBGPU_BULK=${b%-2}
      run 150 attention-$b-mha $A_MHA --context 65536,262144
    done
    unset KIVI_WEBGPU_BULK
    SPECS=kivi2,kivi4 HEADS=32 KV=32 T=262144 BULKS="0|fk|ik|fk|ik" timeout 150 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/ik-mha-256k.txt"
    SPECS=kivi2 BULKS="0|on,fk|on,ik|on,fk|on,ik|0" timeout 100 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/ik-gqa-1m.txt"
    ;;
  split)
    # The bulk kernel split in two (bulk.ts BulkPhase: the keys' scores through a scratch, then softmax
    # and values): the registers the driver gives each kernel, the split build against the reference
    # (forced on from one block), then one decode step replayed, fused and split builds in turns.
    timeout 120 .gpu/pipestats .gpu/spv/bulk-{mha,gqa}*.spv 2>&1 | cut -c1-600 | tee "$OUT/pipestats-split.txt"
    [ -n "${NOCHECK:-}" ] || split_check
    SPECS=kivi2 HEADS=32 KV=32 T=262144 BULKS=${BULKS_MHA:-"on|split|on|split|split,sb16|split,sb32|split,u4|0"} timeout 200 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/split-mha-256k.txt"
    SPECS=kivi2 BULKS=${BULKS_GQA:-"0|on|on,split|0|on|on,split|on,split,sb8|on,split,cw8"} timeout 200 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/split-gqa-1m.txt"
    ;;
  bulk-check)
    # The bulk kernel's build for each shape as resolveBulk makes it (min32: forced on from one block,
    # every other choice the default: fused at MHA, split with subgroup shuffles at 4:1) against the reference.
    split_check ${CHECK:-min32} ${CHECK_NAME:-bulk-default}
    ;;
  sg)
    # A lane's partial key scores summed by subgroup shuffles (bulk.ts sg), fused and split: registers, the
    # reference (forced on from one block), then one decode step replayed in turns with the default builds.
    timeout 120 .gpu/pipestats .gpu/spv/bulk-{mha,gqa}{,-keys,-sg,-sg-keys}.spv 2>&1 | cut -c1-600 | tee "$OUT/pipestats-sg.txt"
    split_check on,sg sg
    split_check on,split,sg sg-split
    SPECS=kivi2 HEADS=32 KV=32 T=262144 BULKS=${BULKS_MHA:-"on|on,sg|on|on,sg|split,sg|on,sg,sb16|on,sg,sb4|0"} timeout 200 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/sg-mha-256k.txt"
    SPECS=kivi2 BULKS=${BULKS_GQA:-"0|on,sg|on,split,sg|0|on,sg|on,split,sg|on,split,sg,vcw8|on,sg,sb8"} timeout 200 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/sg-gqa-1m.txt"
    ;;
  split-gqa)
    # At 4 query heads a kv head: the bench with the default (the general kernel alone) and with the split
    # bulk kernel from BULK_MIN_DEFAULT tokens (8 channels a values thread), in turns.
    # SETTING (default split,vcw8,min49152) names the other build; HEADS and KV another shape (NAME its files).
    S=${SETTING:-split,vcw8,min49152}
    for b in def $S def-2 $S-2; do
      if [ "${b%-2}" = def ]; then unset KIVI_WEBGPU_BULK; else export KIVI_WEBGPU_BULK=${b%-2}; fi
      run 200 "attention-${NAME:-gqa}-${b//,/-}" bench attention --backend webgpu --heads ${HEADS:-8} --kv-heads ${KV:-2} --kv fp16,kivi2,kivi4 --context ${CONTEXTS:-65536,262144,1048576}
    done
    unset KIVI_WEBGPU_BULK
    ;;
  items-gqa)
    # The flash-decoding split at 4 query heads a kv head with the 4:1 default (the split bulk build from
    # 768K tokens): work items a dispatch (KIVI_WEBGPU_ATTN_ITEMS; 2048 the default, bulk items of 1024
    # tokens at 1M, two passes of a workgroup's 16 lanes) at 1M and 4M cached tokens, in turns.
    for it in ${ITEMS:-2048 4096 1024 2048-2 4096-2 1024-2}; do
      export KIVI_WEBGPU_ATTN_ITEMS=${it%-2}
      run 200 attention-gqa-items-$it bench attention --backend webgpu --heads 8 --kv-heads 2 --kv fp16,kivi2 --context ${CONTEXTS:-1048576,4194304}
    done
    unset KIVI_WEBGPU_ATTN_ITEMS
    ;;
  mha-1m)
    # 32 kv heads (Llama-2-7B's attention shape) at 1M cached tokens, fp16 and kivi2 (19 GiB of pages a
    # layer in one pool; with kivi4 too, 24 GiB pass the H200's 12 bindings of 2 GiB). Two runs. MHA2=1:
    # only what follows them.
    A="bench attention --backend webgpu --heads 32 --kv-heads 32 --kv fp16,kivi2"
    if [ "${MHA2:-}" != 1 ]; then
      run 300 attention-mha-1m $A --context 1048576
      run 300 attention-mha-1m-2 $A --context 1048576
    fi
    # kivi4 beside fp16 (21 GiB), and the bulk kernel's builds at this length, one step replayed (the MHA
    # default, the fused kernel, first and last).
    run 300 attention-mha-1m-kivi4 bench attention --backend webgpu --heads 32 --kv-heads 32 --kv fp16,kivi4 --context 1048576
    HEADS=32 KV=32 T=1048576 SPECS=kivi2 BULKS='|sg|split,sg|split,sg,vcw8|split|0|' timeout 250 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/builds-mha-1m.txt"
    nvidia-smi --query-gpu=memory.used,memory.total --format=csv || true
    ;;
  mha-split)
    # Where the split sg build overtakes the fused one at 32 kv heads: the default (fused), split sg and
    # split, one step replayed, in turns, twice, at 512K, 1M and 2M tokens (kivi2 alone).
    for t in 524288 1048576 2097152; do
      HEADS=32 KV=32 T=$t SPECS=kivi2 BULKS='|split,sg|split||split,sg|split|' timeout 180 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/split-mha-$t.txt"
    done
    ;;
  mha-long)
    # The MHA default with its build for long steps (split sg from BULK_LONG_MHA bulk tokens of a task):
    # checked against the reference with the threshold at one block, then the bench at 512K (below it) and
    # 1M (past it), then Llama-2-7B shapes decoding after 800K cached tokens with it and without (wg: the
    # fused build at every length), kivi2 alone (fp16 would need 400 GiB).
    KIVI_WEBGPU_BULK=min32,long32 KIVI_WEBGPU_ATTN_ITEMS=16 HEADS=32 KV=32 T=5000 SPECS=kivi2,kivi4 timeout 100 node scripts/gpu/attn-check.mjs 2>&1 | tee "$OUT/attn-check-long-mha.txt"
    A="bench attention --backend webgpu --heads 32 --kv-heads 32 --kv fp16,kivi2"
    run 300 attention-mha-long-1m $A --context 1048576
    run 300 attention-mha-long-512k $A --context 524288
    run 300 attention-mha-long-1m-2 $A --context 1048576
    G="bench generate --backend webgpu --model $C/llama-2-7b --random-weights 1 --gen 33 --weights native --fill 800000 --repeats 1 --kv kivi2"
    run 280 long7b-800000 $G
    KIVI_WEBGPU_BULK=wg run 280 long7b-800000-wg $G
    nvidia-smi --query-gpu=memory.used,memory.total --format=csv || true
    ;;
  split-builds)
    # The split sg build's options at 1M tokens, one step replayed, in turns, each list twice: at MHA (the
    # default there since mha-long) rounds of 16 or 32 tokens, 32 channels a values thread, 4 value tokens in
    # flight, every thread exponentiating; at 4:1 (the default's vcw8) rounds of 8 or 2, 4 value tokens in
    # flight, every thread exponentiating, 4 channels a values thread.
    B='|split,sg,sb16|split,sg,sb32|split,sg,vcw32|split,sg,u4|split,sg,noex|split,sg,sb16,vcw32'
    HEADS=32 KV=32 T=1048576 SPECS=kivi2 BULKS="$B$B|" timeout 280 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/split-builds-mha-1m.txt"
    B='|split,sg,vcw8,sb8|split,sg,vcw8,sb2|split,sg,vcw8,u4|split,sg,vcw8,noex|split,sg,vcw4'
    SPECS=kivi2 BULKS="$B$B|" timeout 280 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/split-builds-gqa-1m.txt"
    ;;
  aw)
    # The bulk kernel's arenas bound as words (KIVI_WEBGPU_BULK aw: array<u32>, one word a load, no pick by
    # selects): against the reference (4:1 and MHA, one arena and several), then one step replayed against
    # the defaults, in turns, twice: MHA at 1M (split sg) and 262K (fused), 4:1 at 1M (split sg vcw8).
    KIVI_WEBGPU_BULK=on,aw KIVI_WEBGPU_ATTN_ITEMS=4 T=9000 SPECS=kivi2,kivi4 timeout 100 node scripts/gpu/attn-check.mjs 2>&1 | tee "$OUT/attn-check-aw.txt"
    KIVI_WEBGPU_BULK=on,split,sg,vcw8,aw BIND=1048576 ARENAS=4 KIVI_WEBGPU_ATTN_ITEMS=4 T=9000 SPECS=kivi2 timeout 100 node scripts/gpu/attn-check.mjs 2>&1 | tee -a "$OUT/attn-check-aw.txt"
    KIVI_WEBGPU_BULK=on,split,sg,aw KIVI_WEBGPU_ATTN_ITEMS=16 HEADS=32 KV=32 T=5000 SPECS=kivi2,kivi4 timeout 100 node scripts/gpu/attn-check.mjs 2>&1 | tee -a "$OUT/attn-check-aw.txt"
    HEADS=32 KV=32 T=1048576 SPECS=kivi2 BULKS='|split,sg,aw||split,sg,aw|' timeout 200 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/aw-mha-1m.txt"
    HEADS=32 KV=32 T=262144 SPECS=kivi2 BULKS='|aw||aw|' timeout 150 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/aw-mha-256k.txt"
    SPECS=kivi2 BULKS='|split,sg,vcw8,aw||split,sg,vcw8,aw|' timeout 150 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/aw-gqa-1m.txt"
    ;;
  fused-items)
    # At MHA and 1M tokens with the bulk kernel's own item count: the fused build (97 registers: 4 workgroups
    # an SM, 528 at once) against the split sg default, at 3168 items (6 fused waves) and 2112 (4).
    I='fused|fused,items2112|split,sg,items2112'
    HEADS=32 KV=32 T=1048576 SPECS=kivi2 BULKS="|$I||$I|" timeout 200 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/fused-items-mha-1m.txt"
    ;;
  vcw8-mha)
    # Registers of the split build's kernels (the MHA values kernel at 16 channels a thread holds 75: 6
    # workgroups an SM), then MHA at 1M with 8 channels a values thread and item counts for its occupancy.
    timeout 60 .gpu/pipestats .gpu/spv/bulk-mha-[fkv]*.spv .gpu/spv/bulk-gqa-[kv]*.spv 2>&1 | cut -c1-300 | tee "$OUT/pipestats-bulk.txt"
    I='vcw8|vcw8,items2376|vcw8,items3564|vcw8,items4224'
    HEADS=32 KV=32 T=1048576 SPECS=kivi2 BULKS="|$I||$I|" timeout 200 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/vcw8-mha-1m.txt"
    ;;
  final15)
    # The benches with exact value codes (vx) and 3168 bulk items at MHA (the defaults since): 32 kv heads at
    # 1M (twice) and 262K, 4:1 at 1M and 4M (e2e15: end to end, Llama-2-7B after 800K tokens, Llama-3-8B
    # after 1M).
    A="bench attention --backend webgpu --heads 32 --kv-heads 32"
    run 300 attention-15-mha-1m $A --kv fp16,kivi2 --context 1048576
    run 300 attention-15-mha-262k $A --kv fp16,kivi2,kivi4 --context 262144
    run 300 attention-15-mha-1m-2 $A --kv fp16,kivi2 --context 1048576
    run 300 attention-15-gqa bench attention --backend webgpu --heads 8 --kv-heads 2 --kv fp16,kivi2,kivi4 --context 1048576,4194304
    ;;
  e2e15)
    # The MHA 1M bench twice more (fp16's time spreads by 10% between runs), then end to end.
    A="bench attention --backend webgpu --heads 32 --kv-heads 32"
    run 150 attention-15-mha-1m-3 $A --kv fp16,kivi2 --context 1048576
    run 150 attention-15-mha-1m-4 $A --kv fp16,kivi2 --context 1048576
    G="bench generate --backend webgpu --random-weights 1 --gen 33 --weights native --repeats 1 --kv kivi2"
    run 290 e2e15-llama-2-7b-800000 $G --model $C/llama-2-7b --fill 800000
    run 290 e2e15-llama-3-8b-1048576 $G --model $C/llama-3-8b --fill 1048576
    ;;
  items3)
    # The bulk items a step is cut into (KIVI_WEBGPU_BULK itemsN; the general kernel's stay 2048), in turns:
    # MHA at 1M and 2M (split sg) and 262K (fused), 4:1 at 1M and 4M; then fp16 at MHA 1M with fewer items.
    I='items2048|items2640|items3168|items3696|items4224'
    HEADS=32 KV=32 T=1048576 SPECS=kivi2 BULKS="$I|$I|items2048" timeout 150 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/items3-mha-1m.txt"
    I='items2048|items3168|items4224'
    HEADS=32 KV=32 T=2097152 SPECS=kivi2 BULKS="$I|$I" timeout 150 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/items3-mha-2m.txt"
    I='items1056|items2048|items3168'
    HEADS=32 KV=32 T=262144 SPECS=kivi2 BULKS="$I|$I" timeout 100 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/items3-mha-256k.txt"
    I='items528|items792|items1056|items1584|items2048'
    SPECS=kivi2 BULKS="$I|$I" timeout 100 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/items3-gqa-1m.txt"
    I='items528|items1056|items2048'
    T=4194304 SPECS=kivi2 BULKS="$I|$I" timeout 100 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/items3-gqa-4m.txt"
    for n in 1056 1584 2048; do
      KIVI_WEBGPU_ATTN_ITEMS=$n HEADS=32 KV=32 T=1048576 SPECS=fp16 BULKS='||' timeout 100 node scripts/gpu/attn-ablate.mjs 2>&1 | sed "s/^/items $n: /" | tee -a "$OUT/items3-fp16-mha-1m.txt"
    done
    ;;
  items2)
    # The items a step is cut into, more turns: MHA at 1M (kivi2 with 16-token key rounds in turns, then fp16),
    # and 4:1 at 1M (fp16 and kivi2), from fewer items than the default 2048 (longer ones) to more.
    for n in 2048 3168 4224; do
      KIVI_WEBGPU_ATTN_ITEMS=$n HEADS=32 KV=32 T=1048576 SPECS=kivi2 BULKS='|sb16||sb16||sb16|' timeout 100 node scripts/gpu/attn-ablate.mjs 2>&1 | sed "s/^/items $n: /" | tee -a "$OUT/items2-mha-1m.txt"
      KIVI_WEBGPU_ATTN_ITEMS=$n HEADS=32 KV=32 T=1048576 SPECS=fp16 BULKS='||' timeout 100 node scripts/gpu/attn-ablate.mjs 2>&1 | sed "s/^/items $n: /" | tee -a "$OUT/items2-mha-1m.txt"
    done
    for n in 264 528 1056 2048 4224; do
      KIVI_WEBGPU_ATTN_ITEMS=$n SPECS=fp16,kivi2 BULKS='||' timeout 100 node scripts/gpu/attn-ablate.mjs 2>&1 | sed "s/^/items $n: /" | tee -a "$OUT/items2-gqa-1m.txt"
    done
    ;;
  items-mha)
    # MHA at 1M tokens (kivi2, the split sg build): the items a step's attention is cut into (the H200 has 132
    # SMs: 8, 12, 16, 20, 24 and 32 a unit), each with 16 value tokens in flight a thread and 16-token key
    # rounds beside the default; then the default's parts left out in turns.
    for n in 1056 1584 2112 2640 3168 4224; do
      KIVI_WEBGPU_ATTN_ITEMS=$n HEADS=32 KV=32 T=1048576 SPECS=kivi2 BULKS='|u16|sb16|' timeout 100 node scripts/gpu/attn-ablate.mjs 2>&1 | sed "s/^/items $n: /" | tee -a "$OUT/items-mha-1m.txt"
    done
    HEADS=32 KV=32 T=1048576 SPECS=kivi2 BULKS='|-values|-keys|-keys,-values|-vload|' timeout 150 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/parts-vx-mha-1m.txt"
    ;;
  vx)
    # The bulk kernel's value codes as exact small floats (KIVI_WEBGPU_BULK vx, the default since) against the
    # magic floats (vm): against the reference (4:1 and MHA, one arena and several), then one step replayed
    # in turns, twice: MHA at 1M (split sg) and 262K (fused), 4:1 at 1M (split sg vcw8); MHA at 1M also with
    # 32 channels a values thread and 4 value tokens in flight; then the MHA 1M bench.
    KIVI_WEBGPU_BULK=on KIVI_WEBGPU_ATTN_ITEMS=4 T=9000 SPECS=kivi2,kivi4 timeout 100 node scripts/gpu/attn-check.mjs 2>&1 | tee "$OUT/attn-check-vx.txt"
    KIVI_WEBGPU_BULK=on,split,sg,vcw8 BIND=1048576 ARENAS=4 KIVI_WEBGPU_ATTN_ITEMS=4 T=9000 SPECS=kivi2 timeout 100 node scripts/gpu/attn-check.mjs 2>&1 | tee -a "$OUT/attn-check-vx.txt"
    KIVI_WEBGPU_BULK=on,split,sg KIVI_WEBGPU_ATTN_ITEMS=16 HEADS=32 KV=32 T=5000 SPECS=kivi2,kivi4 timeout 100 node scripts/gpu/attn-check.mjs 2>&1 | tee -a "$OUT/attn-check-vx.txt"
    HEADS=32 KV=32 T=1048576 SPECS=kivi2 BULKS='|vm||vm|vcw32|u4|' timeout 200 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/vx-mha-1m.txt"
    HEADS=32 KV=32 T=262144 SPECS=kivi2,kivi4 BULKS='|vm||vm|' timeout 150 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/vx-mha-256k.txt"
    SPECS=kivi2 BULKS='|vm||vm|' timeout 150 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/vx-gqa-1m.txt"
    run 300 attention-vx-mha-1m bench attention --backend webgpu --heads 32 --kv-heads 32 --kv fp16,kivi2 --context 1048576
    ;;
  aw-bench)
    # The benches with the bulk kernel's arenas bound as words (the default since aw): 32 kv heads at 262K and
    # 1M (twice), 4:1 at 1M and 4M.
    A="bench attention --backend webgpu --heads 32 --kv-heads 32"
    run 300 attention-aw-mha-1m $A --kv fp16,kivi2 --context 1048576
    run 300 attention-aw-mha-262k $A --kv fp16,kivi2,kivi4 --context 262144
    run 300 attention-aw-mha-1m-2 $A --kv fp16,kivi2 --context 1048576
    run 300 attention-aw-gqa bench attention --backend webgpu --heads 8 --kv-heads 2 --kv fp16,kivi2,kivi4 --context 1048576,4194304
    ;;
  aw-e2e)
    # End to end with it: Llama-3-8B shapes after 1M cached tokens, Llama-2-7B shapes after 800K (kivi2; fp16
    # does not fit either).
    G="bench generate --backend webgpu --random-weights 1 --gen 33 --weights native --repeats 1 --kv kivi2"
    run 290 aw-llama-3-8b-1048576 $G --model $C/llama-3-8b --fill 1048576
    run 290 aw-llama-2-7b-800000 $G --model $C/llama-2-7b --fill 800000
    ;;
  parts-mha-1m)
    # Where the MHA default's time goes at 1M tokens (the split sg build since mha-long), parts left out in
    # turns as in parts-default, twice.
    P='|-values|-keys|-keys,-values|-vload|0'
    HEADS=32 KV=32 T=1048576 SPECS=kivi2 BULKS="$P$P|" timeout 280 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/parts-default-mha-1m.txt"
    ;;
  parts-default)
    # What each part of the default bulk build costs, one decode step replayed, parts left out in turns
    # (their outputs wrong, only timed): 4:1 at 1M tokens (the split sg build), MHA at 262K (the fused one).
    P='|-values|-keys|-keys,-values|-keys,-values,-max|-vload|0|'
    SPECS=kivi2 BULKS=$P timeout 200 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/parts-default-gqa-1m.txt"
    HEADS=32 KV=32 T=262144 SPECS=kivi2 BULKS="$P" timeout 200 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/parts-default-mha-256k.txt"
    ;;
  long-800k)
    # Just past the 4:1 bulk default's threshold (768K quantized tokens a sequence; 800 000 cached tokens
    # leave at least that many quantized), where fp16 still fits: fp16 against kivi2 with the default
    # (4 rounds, order alternating), then both with the general kernel alone (KIVI_WEBGPU_BULK=0, 2 rounds).
    M=${MODEL:-llama-3-8b}
    G="bench generate --backend webgpu --model $C/$M --random-weights 1 --gen 33 --weights native --fill 800000"
    run 300 long-$M-800000 $G --repeats 4 --kv fp16,kivi2
    KIVI_WEBGPU_BULK=0 run 300 long-$M-800000-bulk0 $G --repeats 2 --kv fp16,kivi2
    # kivi2 at 4M cached tokens (96 GiB of cache; fp16 would need 512 GiB), leaving room for 33 more.
    run 300 long-$M-4194240 bench generate --backend webgpu --model $C/$M --random-weights 1 --gen 33 --weights native --fill 4194240 --repeats 1 --kv kivi2
    nvidia-smi --query-gpu=memory.used,memory.total --format=csv || true
    ;;
  long-1m)
    # Llama-3-8B shapes (MODEL), one sequence: fp16 against kivi2 at 512K cached tokens (4 rounds, the
    # specs' order alternating); kivi2 at 1M with the 4:1 default (the split bulk build from 768K tokens)
    # and with the general kernel alone (KIVI_WEBGPU_BULK=0), in turns; then fp16 at 1M, whose 128 GiB of
    # cache does not fit beside the weights on a 141 GB GPU (what a user sees then).
    M=${MODEL:-llama-3-8b}
    G="bench generate --backend webgpu --model $C/$M --random-weights 1 --gen 33 --weights native"
    run 300 long-$M-524288 $G --fill 524288 --repeats 4 --kv fp16,kivi2
    for b in def 0 def-2 0-2; do
      if [ "${b%-2}" = def ]; then unset KIVI_WEBGPU_BULK; else export KIVI_WEBGPU_BULK=${b%-2}; fi
      run 300 long-$M-1048576-bulk$b $G --fill 1048576 --repeats 1 --kv kivi2
    done
    unset KIVI_WEBGPU_BULK
    run 200 long-$M-1048576-fp16 $G --fill 1048576 --repeats 1 --kv fp16
    nvidia-smi --query-gpu=memory.used,memory.total --format=csv || true
    ;;
  ik-gqa)
    # With integer key scores the bulk kernel holds fewer registers for its keys: its builds at 4 query
    # heads a kv head (1M tokens), forced on, against the general kernel alone (0), one decode step replayed.
    SPECS=kivi2 BULKS="0|on,ik|on,ik,cw8|on,ik,cw8,u4|on,ik,cw8,sb8|on,ik,u4|on,ik,sb2|on,ik,cw8,sb2|0" timeout 200 node scripts/gpu/attn-ablate.mjs 2>&1 | tee "$OUT/ik-builds-gqa-1m.txt"
    ;;
  vdp4a)
    # Value sums with packed 8-bit dot products (attn-ladder.mjs vb-dp4a: a 4-token interleaved value
    # layout, weights ready; -q: weights quantized in the kernel; -t: the cache's layout transposed in
    # registers; -tq: both) against the bulk kernel's float way (vb-float), in turns, at 4:1 1M and MHA 262K.
    R=vb-float,vb-dp4a,vb-dp4a-q,vb-dp4a-t,vb-dp4a-tq,vb-float,vb-dp4a,vb-dp4a-q,vb-dp4a-t,vb-dp4a-tq
    ROWS=2097152 NQ=4 RUNGS=$R timeout 120 node scripts/gpu/attn-ladder.mjs 2>&1 | tee "$OUT/ladder-vdp4a-gqa-1m.txt"
    ROWS=8388608 NQ=1 RUNGS=$R timeout 120 node scripts/gpu/attn-ladder.mjs 2>&1 | tee "$OUT/ladder-vdp4a-mha-256k.txt"
    ;;
  dp4a)
    # Key scores with packed 8-bit integer dot products (attn-ladder.mjs k2-dp4a: an int16 query in two
    # bytes; k2-dp4a8: an int8 one) against the float rung the kernels use (k2-score), in turns, at the
    # 4:1 1M-token and the MHA 262K-token shapes.
    R=k2-read,k2-score,k2-dp4a,k2-dp4a8,k2-score,k2-dp4a,k2-dp4a8
    ROWS=2097152 NQ=4 RUNGS=$R timeout 120 node scripts/gpu/attn-ladder.mjs 2>&1 | tee "$OUT/ladder-dp4a-gqa-1m.txt"
    ROWS=8388608 NQ=1 RUNGS=$R timeout 120 node scripts/gpu/attn-ladder.mjs 2>&1 | tee "$OUT/ladder-dp4a-mha-256k.txt"
    ;;
  ladder)
    # Decode attention's parts as kernels of their own (attn-ladder.mjs: loads, key scores, weights,
    # value sums, float16 rows), at the shapes of the 4:1 1M-token and the MHA 262K-token benches, beside
    # the real kernel timed the same way (attn-ablate.mjs, main only).
    ROWS=2097152 NQ=4 timeout 120 node scripts/gpu/attn-ladder.mjs 2>&1 | tee "$OUT/ladder-gqa-1m.txt"
    ROWS=8388608 NQ=1 timeout 120 node scripts/gpu/attn-ladder.mjs 2>&1 | tee "$OUT/ladder-mha-256k.txt"
    VARIANTS=, timeout 120 node scripts/gpu/attn-ablate.mjs 2>&1 | tee -a "$OUT/ladder-gqa-1m.txt"
    HEADS=32 KV=32 T=262144 VARIANTS=, timeout 120 node scripts/gpu/attn-ablate.mjs 2>&1 | tee -a "$OUT/ladder-mha-256k.txt"
    ;;
  robust)
    # Dawn's robustness (Tint's index clamps on every array access) on (1, the default) and off (0,
    # KIVI_WEBGPU_ROBUST=0): the attention check without clamps on this GPU, then the attention kernel and
    # a 7B decode timed both ways, in turns.
    # First what the driver made of the attention kernel (registers, spills; kit.sh builds the tool and the SPIR-V).
    if [ -x .gpu/pipestats ]; then timeout 120 .gpu/pipestats .gpu/spv/*.spv 2>&1 | tee "$OUT/pipestats.txt"; fi
    KIVI_WEBGPU_ROBUST=0 T=9000 timeout 100 node scripts/gpu/attn-check.mjs 2>&1 | tee "$OUT/attn-check-robust0.txt"
    for r in 1 0 1 0; do
      export KIVI_WEBGPU_ROBUST=$r
      run 100 attention-robust$r-1m-$SECONDS bench attention --backend webgpu --heads 8 --kv-heads 2 --kv fp16,kivi2 --context 1048576
    done
    for r in 1 0; do
      export KIVI_WEBGPU_ROBUST=$r
      run 120 attention-robust$r-mha bench attention --backend webgpu --heads 32 --kv-heads 32 --kv fp16,kivi2 --context 262144
      run 120 generate-7b-robust$r bench generate --backend webgpu --model $C/llama-2-7b --random-weights 1 --prompt 160 --gen 64 --kv fp16,kivi2 --repeats 1
    done
    unset KIVI_WEBGPU_ROBUST
    ;;
  attn-items)
    # The attention kernel checked against the reference on this GPU (sink and rotated specs included), then
    # the flash-decoding split swept at 1M and 4M cached tokens (KIVI_WEBGPU_ATTN_ITEMS; 2048 is the default).
    echo "\$ node scripts/gpu/attn-check.mjs"
    T=20000 SPECS=${CHECK_SPECS:-kivi:k=2,v=2,sink=4,kivi:k=4,v=2,g=64,rot=hadamard,sink=16,kivi2-hq} timeout 100 node scripts/gpu/attn-check.mjs 2>&1 | tee "$OUT/attn-check.txt"
    # Each cache spread over 2-3 arenas of 1 MiB: tiles in one arena (loads from it directly) and across two.
    BIND=1048576 ARENAS=4 T=9000 SPECS=kivi2,kivi4,kivi:k=2,v=4,g=16,r=32,kivi:k=4,v=2,gk=96,gv=64,r=96,residual=fp32 timeout 120 node scripts/gpu/attn-check.mjs 2>&1 | tee "$OUT/attn-check-arenas.txt"
    for it in ${ITEMS:-2048 4096 8192 16384}; do
      export KIVI_WEBGPU_ATTN_ITEMS=$it
      run 150 attention-items-$it bench attention --backend webgpu --heads 8 --kv-heads 2 --kv fp16,kivi2 --context 1048576,4194304
    done
    unset KIVI_WEBGPU_ATTN_ITEMS
    ;;
  matmul)
    # The linear layers alone at Llama-2-7B shapes (down 11008→4096, gate/up 4096→22016), float16 weights,
    # at every row count the dispatch tells apart, beside a streaming read; then alternative GEMV tables
    # (KIVI_WEBGPU_GEMV) on the down projection: blocks of 8 rows past 8 and GEMV instead of GEMM up to
    # 512 rows; x staged in workgroup memory from 5 rows.
    echo "\$ node scripts/gpu/matmul-check.mjs"
    timeout 120 node scripts/gpu/matmul-check.mjs 2>&1 | tee "$OUT/matmul-check.txt"
    M="bench gemv --backend webgpu --weights f16 --rows 1,2,4,8,9,16,33,64,65,160,512"
    run 120 gemv-down $M --in 11008 --out 4096
    run 120 gemv-gu $M --in 4096 --out 22016
    export KIVI_WEBGPU_GEMV=${GEMV_ALT:-1:1,1,4,8;2:2,1,4,8;4:4,2,2,4;8:8,2,2,4;64:8,4,1,4;512:16,4,1,4}
    run 120 gemv-down-alt $M --in 11008 --out 4096
    export KIVI_WEBGPU_GEMV=${GEMV_ALT2:-1:1,1,4,8;2:2,1,4,8;4:4,2,2,4;8:8,4,1,4,x;64:16,4,1,4,x;512:16,4,1,4,x}
    run 120 gemv-down-staged $M --in 11008 --out 4096
    unset KIVI_WEBGPU_GEMV
    ;;
  e2e)
    # The bundled model's shapes, one sequence: webgpu (then its GPU time by kernel at 1 and 64 sequences)
    # beside wasm (the machine's CPU cores).
    [ -n "${SKIP_28M_GENERATE:-}" ] || {
    run 150 generate-webgpu bench generate --backend webgpu --model $C/llama-28m-gqa --random-weights 1 --prompt 1024 --gen 128 --kv fp16,kivi2 --repeats 3 --gpu-profile 1,64
    run 90 generate-wasm bench generate --backend wasm --model $C/llama-28m-gqa --random-weights 1 --prompt 1024 --gen 128 --kv fp16,kivi2 --repeats 3
    }
    # The bundled model's shapes, batches 1..64 (decode tokens/s at 1 and 64 sequences).
    run 200 throughput-28m bench throughput --backend webgpu --model $C/llama-28m-gqa --random-weights 1 --kv-budget 4GiB --max-batch 64 --kv fp16,kivi2
    # Llama-2-7B, one sequence: prefill and decode speed (16-bit weights; on the GPU both formats are float16),
    # then the GPU time by kernel at 1 and 16 sequences.
    run 200 generate-7b bench generate --backend webgpu --model $C/llama-2-7b --random-weights 1 --weights native --prompt 160 --gen 64 --kv fp16,kivi2 --repeats 3 --gpu-profile 1,16
    ;;
  paper)
    # The paper's Figure 4 workload at Llama-2-7B shapes under one KV budget.
    run ${PAPER_TIMEOUT:-560} throughput-7b bench throughput --backend webgpu --model $C/llama-2-7b --random-weights 1 --kv-budget ${KV_BUDGET:-4GiB} --max-batch ${MAX_BATCH:-256} --join ${JOIN:-16} --kv fp16,kivi2,kivi:k=2,v=2,g=32,r=32
    ;;
  paper-large)
    # The paper's regime, where the cache budget dwarfs the weights (an 80 GB A100 holds ~60 GB of cache
    # beside 13.5 GB of weights): 56 GiB of pages, batches capped at 224 (fp16's largest) to fit one call
    # (377 s on the H200; 64 GiB capped at 256 did not finish in 400 s).
    run ${PAPER_TIMEOUT:-560} throughput-7b-56g bench throughput --backend webgpu --model $C/llama-2-7b --random-weights 1 --kv-budget 56GiB --max-batch 224 --join ${JOIN:-16} --kv ${LARGE_KV:-fp16,kivi:k=2,v=2,g=32,r=32}
    ;;
  long7b-profile)
    # Where a Llama-2-7B decode step's time goes after 64K cached tokens: GPU time by kernel, span, host wall.
    run 300 long7b-65536-profile bench generate --backend webgpu --model $C/llama-2-7b --random-weights 1 --fill 65536 --gen 17 --kv fp16,kivi2 --repeats 1 --weights native --gpu-profile 1
    ;;
  long7b-passes)
    # fp16's timed decode steps at 64K took twice its profiled ones: the same bench with two repeats, in
    # both spec orders, and with a compute pass per dispatch (KIVI_WEBGPU_PASS=1, as under a profile).
    G="bench generate --backend webgpu --model $C/llama-2-7b --random-weights 1 --fill 65536 --gen 17 --repeats 2 --weights native"
    run 200 long7b-65536-r2 $G --kv fp16,kivi2
    run 200 long7b-65536-r2-rev $G --kv kivi2,fp16
    KIVI_WEBGPU_PASS=1 run 200 long7b-65536-r2-pass $G --kv fp16,kivi2
    ;;
  long-alt)
    # One run a shape with 4 rounds, the specs in alternating order (bench generate reverses them every
    # other round, so each is timed first twice): Llama-2-7B at 64K, Llama-3-8B at 128K (FILLS, MODELS).
    set -- ${MODELS:-llama-2-7b llama-3-8b}
    for n in ${FILLS:-65536 131072}; do
      M=$1
      shift
      run 300 "alt-$M-$n" bench generate --backend webgpu --model $C/$M --random-weights 1 --fill $n --gen 65 --repeats 4 --weights native --kv fp16,kivi2
    done
    ;;
  long7b-orders)
    # The same at 64K (or FILL; MODEL: another config) with 64 timed steps a round (with 16, the first spec
    # of a run decoded 20-25% slower than when it ran second), in both orders (TAG: a suffix for the files).
    N=${FILL:-65536}
    M=${MODEL:-llama-2-7b}
    P=$([ "$M" = llama-2-7b ] && echo long7b || echo "long-$M")
    G="bench generate --backend webgpu --model $C/$M --random-weights 1 --fill $N --gen 65 --repeats 2 --weights native"
    run 240 $P-$N-g65$TAG $G --kv fp16,kivi2
    run 240 $P-$N-g65$TAG-rev $G --kv kivi2,fp16
    ;;
  long7b)
    # Llama-2-7B shapes (32 kv heads), one sequence decoding after 64K and 128K cached tokens (synthetic
    # keys/values); then at 128K with the bulk kernel's float key scores (fk).
    for n in ${FILL:-65536 131072}; do
      run 240 long7b-$n bench generate --backend webgpu --model $C/llama-2-7b --random-weights 1 --fill $n --gen 33 --kv fp16,kivi2 --repeats 1 --weights native
    done
    KIVI_WEBGPU_BULK=fk run 200 long7b-131072-fk bench generate --backend webgpu --model $C/llama-2-7b --random-weights 1 --fill 131072 --gen 33 --kv fp16,kivi2 --repeats 1 --weights native
    ;;
  long)
    # Llama-3-8B shapes, one sequence decoding after 32K..128K cached tokens (caches filled with synthetic
    # keys/values: the decode work of a prompt that long without its quadratic prefill).
    for n in ${FILL:-32768 131072}; do
      run 150 long-$n bench generate --backend webgpu --model $C/llama-3-8b --random-weights 1 --fill $n --gen 33 --kv fp16,kivi2 --repeats 1
    done
    ;;
esac
