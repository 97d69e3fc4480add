// On the GPU machine (after `npm run build` here and `source scripts/gpu/setup.sh` there):
//   node scripts/gpu/attn-check.mjs      (T=9000 SPECS=kivi2,kivi4 HEADS=8 KV=2 D=128 [BIND=bytes ARENAS=n] [VARIANT=v])
// Decode attention on the GPU against the TypeScript reference, after filling a cache of T tokens per spec
// (an outlier channel ×12, as real keys have), for 3 decode steps: the largest error relative to the
// output's largest element must stay under 1e-4 (1e-5 for fp16), as in test/kernels-webgpu.test.ts on
// SwiftShader, but at the sizes and on the hardware the benchmarks use. The default specs cover 2/4-bit keys
// × 2/4-bit values, key groups of 32/64/96, value groups of 32/64, g=16 and fp16. Exit 1 on any failure.
// BIND and ARENAS shrink the arena bindings so one cache's pages spread over several (tiles in one arena
// and tiles across two). SWIFTSHADER=1 runs it on SwiftShader (slow; for kernel changes before a GPU run).
// Prints which attention pipelines ran.
import { createCache, parseKvSpec, splitSpecList } from '../../dist/src/cache/spec.js';
import { CacheStepper } from '../../dist/src/cache/step.js';
import { createBackend } from '../../dist/src/kernels/index.js';
import { TsBackend } from '../../dist/src/kernels/ts/backend.js';

const env = process.env;
const T = Number(env.T ?? 9000);
const specs = splitSpecList(env.SPECS ?? 'kivi2,kivi4,kivi:k=2,v=4,gk=64,gv=32,r=128,kivi:k=4,v=2,gk=96,gv=64,r=96,residual=fp32,kivi:k=2,v=4,g=16,r=32,fp16');
const shape = { numLayers: 1, numHeads: Number(env.HEADS ?? 8), numKvHeads: Number(env.KV ?? 2), headDim: Number(env.D ?? 128) };
const bind = env.BIND ? { maxBindingBytes: Number(env.BIND), maxArenas: Number(env.ARENAS ?? 4) } : {};
const b = await createBackend({ backend: 'webgpu', webgpu: { serialMatmul: false, swiftshader: env.SWIFTSHADER === '1', ...bind } });
// VARIANT: an attention kernel variant that must give the default's results (backend.attnVariant).
b.attnVariant = env.VARIANT ?? '';
console.log(b.description, b.attnVariant ? `variant ${b.attnVariant}` : '');
const ref = new TsBackend();
const qkvDim = (shape.numHeads + 2 * shape.numKvHeads) * shape.headDim;
let seed = 15;
const rnd = () => {
  seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
  return seed / 2 ** 32 - 0.5;
};
const rows = Float32Array.from({ length: T * qkvDim }, (_, i) => rnd() * (i % shape.headDim === 5 ? 24 : 2));
const step = Float32Array.from({ length: 3 * qkvDim }, () => rnd() * 2);
let failed = 0;
for (const spec of specs) {
  const pools = [ref.createPagePool(shape), b.createPagePool(shape)];
  const st = [new CacheStepper(ref, pools[0]), new CacheStepper(b, pools[1])];
  const caches = pools.map((p) => createCache(parseKvSpec(spec), p));
  for (const i of [0, 1]) await st[i].fill(caches[i], rows, T, 1024);
  for (let k = 0; k < 3; k++) {
    const item = (i) => [{ cache: caches[i], rows: step.subarray(k * qkvDim, (k + 1) * qkvDim), n: 1, mode: 'decode' }];
    const exp = await st[0].step(item(0));
    const got = await st[1].step(item(1));
    let mx = 0;
    let err = 0;
    for (let i = 0; i < exp.length; i++) {
      mx = Math.max(mx, Math.abs(exp[i]));
      err = Math.max(err, Math.abs(exp[i] - got[i]));
    }
    const rel = err / mx;
    const ok = rel <= (spec === 'fp16' ? 1e-5 : 1e-4);
    if (!ok) failed++;
    console.log(`${ok ? 'ok  ' : 'FAIL'} ${spec} at ${T + k} tokens: error ${rel.toExponential(2)} of the largest output`);
  }
  if (env.BIND) console.log(`     pages in ${pools[1].slotsInUse} arena(s) of ${env.BIND} bytes`);
  for (const c of caches) c.free();
}
console.log('attention pipelines:', [...b.kernels.keys()].filter((k) => k.startsWith('attend') || k.startsWith('bulk')).join(' '));
b.dispose();
process.exit(failed ? 1 : 0);
