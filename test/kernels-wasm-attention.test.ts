/**
 * The WebAssembly KIVI decode attention (assembly/task.ts: one fused pass with an online softmax over
 * chunks of keys and values, assembly/kivi.ts: integer dot products on the codes) against the TypeScript
 * reference back end: 2- and 4-bit keys and values, the group sizes in use (32, 128, a key group larger
 * than a fused chunk), GQA ratios 1 to 4, contexts that end inside a key group and inside the residual,
 * scores that rise along the context (the running maximum grows chunk after chunk: the output is
 * rescaled) and that fall (the maximum is in the first chunk), on 1 and 2 threads.
 */

import { test } from 'node:test';
import { createCache, parseKvSpec } from '../src/cache/spec.js';
import { CacheStepper } from '../src/cache/step.js';
import { TsBackend } from '../src/kernels/ts/backend.js';
import type { AttnShape, Backend } from '../src/kernels/types.js';
import type { WasmBackend } from '../src/kernels/wasm/kernels.js';
import { createWasmBackend } from '../src/kernels/wasm/node.js';
import { assertClose, rng } from './backend-conformance.js';

// The wasm kernels round the scaled query to int16 per key group (to 1/6553 of its largest element at 2
// bits, 1/32767 otherwise) and the value weights to int16 per chunk (docs/KIVI.md §6 on CPUs). On this
// data (one outlier channel ×8) the largest difference measured is 0.8% of the output's largest element
// (2-bit keys; 4-bit keys: 0.2%), prefill (float keys) 3e-6; KIVI's own error (half a code step) is far larger.
const REL_TOL = 1.5e-2;

const SHAPES: [string, AttnShape][] = [
  ['GQA 1', { numLayers: 1, numHeads: 2, numKvHeads: 2, headDim: 128 }],
  ['GQA 2', { numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 128 }],
  ['GQA 3', { numLayers: 1, numHeads: 6, numKvHeads: 2, headDim: 64 }],
  ['GQA 4', { numLayers: 1, numHeads: 4, numKvHeads: 1, headDim: 128 }],
];

const SPECS = [
  'kivi2',
  'kivi4',
  'kivi:k=2,v=2,g=128,r=128',
  'kivi:k=4,v=2,g=32,r=64,residual=fp16',
  'kivi:k=2,v=4,g=16,r=32,residual=fp32',
  'kivi:k=2,v=2,g=32,r=512,gk=512',
];

/** Rows with one outlier channel; `trend` > 0: scores grow along the context, < 0: they shrink. */
function rowsFor(shape: AttnShape, T: number, trend: number, seed: number): Float32Array {
  const { numHeads: H, numKvHeads: KV, headDim: d } = shape;
  const qkvDim = (H + 2 * KV) * d;
  const r = rng(seed);
  const rows = new Float32Array(T * qkvDim);
  for (let t = 0; t < T; t++) {
    // Keys are scaled by a factor that moves with t (queries and values are not).
    const f = trend > 0 ? 0.5 + (2 * t) / T : trend < 0 ? 2.5 - (2 * t) / T : 1;
    for (let i = 0; i < qkvDim; i++) {
      const isKey = i >= H * d && i < (H + KV) * d;
      rows[t * qkvDim + i] = (r() * 2 - 1) * (i % d === 5 ? 8 : 1) * (isKey ? f : 1);
    }
  }
  return rows;
}

function maxAbs(a: Float32Array): number {
  let m = 0;
  for (const x of a) m = Math.max(m, Math.abs(x));
  return m;
}

async function compare(b: Backend, threads: number): Promise<void> {
  const ref = new TsBackend();
  for (const [shapeName, shape] of SHAPES) {
    const qkvDim = (shape.numHeads + 2 * shape.numKvHeads) * shape.headDim;
    for (const specName of SPECS) {
      const spec = parseKvSpec(specName);
      if (spec.kind !== 'kivi' || shape.headDim % spec.groupSize !== 0) continue;
      for (const trend of [1, -1]) {
        // A prefill that leaves a partial key group in the residual, then decode steps across a key flush.
        const prefill = spec.residual === 512 ? 1100 : 300 + (spec.residual >> 1) + 5;
        const decode = spec.residual === 512 ? 6 : spec.residual + 3;
        const rows = rowsFor(shape, prefill + decode, trend, 17 + trend);
        const pools = [ref.createPagePool(shape), b.createPagePool(shape)] as const;
        const steppers = pools.map((p, i) => new CacheStepper(i === 0 ? ref : b, p));
        const caches = pools.map((p) => createCache(spec, p));
        const what = `${shapeName}, ${specName}, ${trend > 0 ? 'rising' : 'falling'} scores, ${threads} thread(s)`;
        for (const [at, n, mode] of [
          [0, prefill, 'prefill'],
          [prefill, decode, 'decode'],
        ] as const) {
          const item = (i: number) => ({ cache: caches[i]!, rows: rows.subarray(at * qkvDim, (at + n) * qkvDim), n, mode });
          const exp = (await steppers[0]!.step([item(0)]))!;
          const got = (await steppers[1]!.step([item(1)]))!;
          const tol = REL_TOL * maxAbs(exp) + 1e-6;
          assertClose(got, exp, () => tol, `${what}: ${mode} of ${n} at ${at}`);
        }
        for (const c of caches) c.free();
        for (const s of steppers) s.dispose();
      }
    }
  }
}

const made: WasmBackend[] = [];
test.after(() => {
  for (const b of made) b.dispose();
});

for (const threads of [1, 2]) {
  test(`wasm KIVI attention matches the TypeScript reference (bits, group sizes, GQA ratios, partial groups, residual), ${threads} thread(s)`, async () => {
    const b = await createWasmBackend(threads);
    made.push(b);
    await compare(b, threads);
  });
}
