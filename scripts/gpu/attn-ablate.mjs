// On the GPU machine (after `npm run build` here and `source scripts/gpu/setup.sh` there):
//   node scripts/gpu/attn-ablate.mjs     (HEADS=8 KV=2 D=128 T=1048576 SPECS=fp16,kivi2 REPLAYS=20)
// What each part of the decode attention kernel costs, on a GPU whose WebGPU gives no profiler: the cache is
// filled once per spec, one decode step is planned, then attend is replayed with parts of the kernel left
// out or tuned (backend.attnVariant; see parseAttnVariant in src/kernels/webgpu/attn-variant.ts). The outputs of
// a variant with parts left out are wrong and only timed; a tuning variant's outputs are compared with the
// default kernel's (scripts/gpu/attn-check.mjs checks the default against the reference).
import { createCache, parseKvSpec, splitSpecList } from '../../dist/src/cache/spec.js';
import { CacheStepper, qkvRows } from '../../dist/src/cache/step.js';
import { endStep } from '../../dist/src/cache/types.js';
import { createBackend } from '../../dist/src/kernels/index.js';
import { StepPlan } from '../../dist/src/kernels/plan.js';
import { ATTN_PARTS } from '../../dist/src/kernels/webgpu/attn-variant.js';
import { syntheticKV } from '../../dist/src/studies/bench/measure.js';

const env = process.env;
const T = Number(env.T ?? 1048576);
const REPLAYS = Number(env.REPLAYS ?? 20);
const specs = splitSpecList(env.SPECS ?? 'fp16,kivi2');
// BULKS: instead of variants of the general kernel, settings of the bulk kernel (backend.bulk, '|' between
// them: e.g. "0|cw8|cw8,-values"; '0' is the general kernel alone, and the first is the reference).
const bulks = env.BULKS ? env.BULKS.split('|') : null;
const variants = bulks ?? (env.VARIANTS ?? ',values,ti+values,keys,fold,fold+keys,max,ti+fold+keys+max+values').split(',').map((v) => v.replaceAll('+', ','));
const shape = { numLayers: 1, numHeads: Number(env.HEADS ?? 8), numKvHeads: Number(env.KV ?? 2), headDim: Number(env.D ?? 128) };
const b = await createBackend({ backend: 'webgpu', webgpu: { serialMatmul: false } });
console.log(b.description, JSON.stringify(shape), `T=${T}`);
const pool = b.createPagePool(shape);
const stepper = new CacheStepper(b, pool);
const FILL = Math.min(T, 4096);
const src = syntheticKV(FILL, shape.numKvHeads, shape.headDim, 1);
const fill = qkvRows(shape, FILL, null, src.k, src.v);
const rowLen = (shape.numHeads + 2 * shape.numKvHeads) * shape.headDim;
const row = new Float32Array(rowLen).map((_, i) => Math.sin(i * 0.37));
const qkv = b.tensor('f32', rowLen);
const att = b.tensor('f32', shape.numHeads * shape.headDim);
b.write(qkv, row);
const median = (xs) => [...xs].sort((x, y) => x - y)[xs.length >> 1];
// KEEP=1: every spec's cache is filled first, in SPECS order, and all stay in the pool while each is timed.
const kept = [];
if (env.KEEP === '1') {
  for (const spec of specs) {
    const c = createCache(parseKvSpec(spec), pool);
    await stepper.fillCycled(c, fill, FILL, T);
    kept.push(c);
  }
}
for (const [si, spec] of specs.entries()) {
  const cache = kept[si] ?? createCache(parseKvSpec(spec), pool);
  if (!kept[si]) await stepper.fillCycled(cache, fill, FILL, T);
  const plan = new StepPlan();
  plan.pageRuns = b.pageRuns === true;
  plan.clear();
  plan.beginSubstep();
  cache.plan(plan, 0, 1);
  plan.validate();
  const line = [];
  let ref = null;
  for (const [vi, v] of variants.entries()) {
    if (bulks) b.bulk = v;
    else b.attnVariant = v;
    const times = [];
    for (let r = 0; r < 7; r++) {
      const t0 = performance.now();
      for (let i = 0; i < REPLAYS; i++) b.attend(plan, 0, 0, qkv, att, pool);
      await b.sync();
      times.push((performance.now() - t0) / REPLAYS);
    }
    // Variants that leave nothing out must give the default kernel's outputs (up to summation order).
    const out = await b.read(att, 0, shape.numHeads * shape.headDim);
    let check = '';
    const partial = bulks ? v.includes('-') : v.split(',').some((w) => ATTN_PARTS.includes(w));
    if (vi === 0) ref = out;
    else if (ref && !partial) {
      let mx = 0,
        err = 0;
      for (let i = 0; i < out.length; i++) {
        mx = Math.max(mx, Math.abs(ref[i]));
        err = Math.max(err, Math.abs(ref[i] - out[i]));
      }
      // attn-check.mjs's bounds: summation order moves KIVI outputs by up to ~5e-5 of the largest.
      const bound = spec === 'fp16' ? 1e-5 : 1e-4;
      check = ` (${err / mx <= bound ? 'same' : 'DIFFERS'}: error ${(err / mx).toExponential(1)})`;
    }
    line.push(`${v || (bulks ? 'bulk' : 'full')}: ${(median(times.slice(2)) * 1000).toFixed(1)} µs${check}`);
  }
  b.attnVariant = '';
  b.bulk = '';
  console.log(`${spec} at ${T} tokens, ${cache.bytes()} bytes: ${line.join(' | ')}`);
  b.cacheJobs(plan, 0, 'post', 0, qkv, pool);
  await b.sync();
  endStep(plan, pool);
  cache.free();
}
b.dispose();
