#!/usr/bin/env node
/**
 * Kernel measurements (run after `npm run build`): GEMV against a measured read-bandwidth bound, and
 * decode attention per spec and context (one layer: 4 heads, 2 kv heads, head_dim 128), each spec
 * timed side by side in one process. Usage: node scripts/kernels-perf.mjs [gemv|attention|attention-hot|all] [threads...]
 * Wall-clock numbers on a shared machine are noisy: compare the ratios within one run.
 */
import { createWasmKernels } from '../dist/src/kernels/wasm/node.js';
import { TsKernels } from '../dist/src/kernels/ts/reference.js';
import { createCache } from '../dist/src/cache/spec.js';
import { AttnScratch } from '../dist/src/cache/types.js';

const what = process.argv[2] ?? 'all';
const threadList = process.argv.slice(3).map(Number);
if (threadList.length === 0) threadList.push(1, 2);

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function time(fn, reps, warm = 2) { // median seconds of fn after `warm` untimed calls
  for (let i = 0; i < warm; i++) fn();
  const ts = [];
  for (let i = 0; i < reps; i++) {
    const t = performance.now();
    fn();
    ts.push((performance.now() - t) / 1000);
  }
  return median(ts);
}

async function gemv(threads) {
  const k = await createWasmKernels(threads);
  // Bound: sum a 512 MiB buffer (16× the 32 MiB L3), 64 bytes per step; best of 5.
  const big = k.allocF32(128 << 20);
  for (let i = 0; i < big.length; i += 1024) big[i] = 1;
  let best = Infinity;
  for (let i = 0; i < 5; i++) {
    const t = performance.now();
    k.readSum(big);
    best = Math.min(best, (performance.now() - t) / 1000);
  }
  const bw = big.byteLength / best / 1e9;
  k.free(big);
  // The bundled model's linear layers for one token: 8 × (qkv 1024×512, o 512×512, gate|up 2816×512,
  // down 512×1408) + head 8192×512 = 110 MB of float32 weights: much larger than L3, read once per token.
  const shapes = [];
  for (let l = 0; l < 8; l++) shapes.push([512, 1024], [512, 512], [512, 2816], [1408, 512]);
  shapes.push([512, 8192]);
  const ws = shapes.map(([i, o]) => {
    const w = k.allocF32(i * o);
    for (let j = 0; j < w.length; j++) w[j] = Math.random() - 0.5;
    return w;
  });
  const x = k.allocF32(1408), out = k.allocF32(8192);
  for (let j = 0; j < x.length; j++) x[j] = Math.random();
  let bytes = 0, flops = 0;
  for (const [i, o] of shapes) {
    bytes += i * o * 4;
    flops += 2 * i * o;
  }
  const s = time(() => shapes.forEach(([i, o], n) => k.matmul(out, x, ws[n], 1, i, o)), 15);
  const gbs = bytes / s / 1e9;
  console.log(JSON.stringify({ bench: 'gemv', threads, weights_mb: +(bytes / 1e6).toFixed(1), seconds: +s.toFixed(5),
    gflops: +(flops / s / 1e9).toFixed(2), gb_per_s: +gbs.toFixed(1), read_bound_gb_per_s: +bw.toFixed(1), fraction_of_bound: +(gbs / bw).toFixed(2) }));
  k.dispose();
}

function kvData(T, kv, d) {
  const x = new Float32Array(T * kv * d);
  for (let i = 0; i < x.length; i++) {
    const c = i % d;
    x[i] = (Math.random() * 2 - 1) * (c % 17 === 3 ? 12 : 1);
  }
  return x;
}

async function attention(threads, contexts = [4096, 65536], hot = false) {
  const k = threads === 0 ? new TsKernels() : await createWasmKernels(threads);
  const dims = { numLayers: 1, numHeads: 4, numKvHeads: 2, headDim: 128 };
  const row = dims.numKvHeads * dims.headDim;
  const q = k.allocF32(dims.numHeads * dims.headDim), out = k.allocF32(dims.numHeads * dims.headDim);
  for (let i = 0; i < q.length; i++) q[i] = Math.random() - 0.5;
  const kn = kvData(64, 2, 128), vn = kvData(64, 2, 128);
  const scratch = new AttnScratch();
  const specs = ['fp32', 'fp16', 'kivi2', 'kivi4'];
  for (const T of contexts) {
    const kk = kvData(T, 2, 128), vv = kvData(T, 2, 128);
    const caches = specs.map((kv) => {
      const c = createCache(kv, dims, k).layers[0];
      c.prefill(kk, 0, vv, 0, T);
      return c;
    });
    // Default: specs interleaved step by step, so machine noise hits them alike and each step finds its
    // cache out of L1/L2 as inside a model (other layers run in between). `hot`: one spec at a time, its
    // cache staying in cache between steps. Median per spec after warm-up.
    const times = specs.map(() => []);
    const reps = T > 30000 ? 25 : 61;
    const step = (cache, i, rep) => {
      const j = (rep + 3) % 64;
      const t = performance.now();
      cache.append(kn, j * row, vn, j * row);
      cache.attend(q, 0, out, 0, scratch);
      if (rep >= 0) times[i].push((performance.now() - t) / 1000);
    };
    if (hot) caches.forEach((cache, i) => { for (let rep = -3; rep < reps; rep++) step(cache, i, rep); });
    else for (let rep = -3; rep < reps; rep++) caches.forEach((cache, i) => step(cache, i, rep));
    const res = Object.fromEntries(specs.map((kv, i) => [kv, median(times[i])]));
    caches.forEach((c) => c.free());
    console.log(JSON.stringify({ bench: hot ? 'attention-hot' : 'attention', backend: k.name, threads: k.threads, context: T,
      ms: Object.fromEntries(Object.entries(res).map(([a, b]) => [a, +(b * 1e3).toFixed(3)])),
      kivi2_speedup_vs_fp32: +(res.fp32 / res.kivi2).toFixed(2), kivi4_speedup_vs_fp32: +(res.fp32 / res.kivi4).toFixed(2) }));
  }
  k.dispose();
}

for (const t of threadList) {
  if (what === 'gemv' || what === 'all') await gemv(t);
  if (what === 'attention' || what === 'all') await attention(t);
  if (what === 'attention-hot' || what === 'all') await attention(t, undefined, true);
}
