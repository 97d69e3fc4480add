/**
 * The KIVI cache's streaming semantics (docs/KIVI.md §5) and its attention on packed codes (§6), checked
 * against an independent model (test/kivi-reference.ts): explicitly dequantized keys/values and plain float64
 * attention.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { cacheBytes } from '../src/cache/budget.js';
import { type KiviCache, VALUE_PAGE } from '../src/cache/kivi.js';
import { createCache, parseKvSpec } from '../src/cache/spec.js';
import { CacheStepper, qkvRows } from '../src/cache/step.js';
import type { CacheDims } from '../src/cache/types.js';
import { createBackend } from '../src/kernels/index.js';
import { TsBackend } from '../src/kernels/ts/backend.js';
import type { Backend } from '../src/kernels/types.js';
import type { Bits } from '../src/quant/quantizer.js';
import { KiviError } from '../src/util/errors.js';
import { decodeStep, expectedAttention, maxRelErr, rng } from './kivi-reference.js';

/** Random token rows [T][kv·d] with a few outlier key channels, like real models. */
function rows(T: number, kv: number, d: number, r: () => number, outliers = false): Float32Array {
  const x = new Float32Array(T * kv * d);
  for (let i = 0; i < x.length; i++) {
    const c = i % d;
    x[i] = (r() * 2 - 1) * (outliers && c % 37 === 3 ? 20 : 1);
  }
  return x;
}

const shapes: [string, CacheDims][] = [
  ['MHA', { numLayers: 1, numHeads: 2, numKvHeads: 2, headDim: 64 }],
  ['GQA', { numLayers: 1, numHeads: 4, numKvHeads: 2, headDim: 64 }],
  ['MQA', { numLayers: 1, numHeads: 4, numKvHeads: 1, headDim: 32 }],
];

async function backends(): Promise<Backend[]> {
  const dflt = await createBackend();
  return dflt.name === 'ts' ? [new TsBackend()] : [new TsBackend(), dflt];
}

for (const [name, dims] of shapes) {
  for (const bits of [2, 4] as Bits[]) {
    test(`${name} ${bits}-bit: prefill splits, flush at R, value window R, attention on codes = dequantized attention`, async () => {
      for (const backend of await backends()) {
        const pool = backend.createPagePool(dims);
        const stepper = new CacheStepper(backend, pool);
        const R = 32;
        const G = 16;
        // A float32 residual: the expected attention below is computed in float32.
        const spec = parseKvSpec(`kivi:k=${bits},v=${bits},g=${G},r=${R},residual=fp32`);
        const { numKvHeads: kv, headDim: d, numHeads: H } = dims;
        // T < R, T = R, T = kR, T = kR + r, and a decode run through several flushes.
        for (const P of [5, 31, 32, 64, 70]) {
          const r = rng(P * 7 + bits);
          const steps = 75;
          const K = rows(P + steps, kv, d, r, true);
          const V = rows(P + steps, kv, d, r);
          const cache = createCache(spec, pool) as KiviCache;
          await stepper.step([{ cache, rows: qkvRows(dims, P, null, K, V), n: P, mode: 'prefill' }], false);
          const l0 = cache.layout();
          const rk = P < R ? P : P % R;
          assert.deepEqual(
            l0,
            { sink: 0, keyQuantized: P - rk, keyResidual: rk, valueQuantized: Math.max(0, P - R), valueResidual: Math.min(P, R) },
            `prefill split at T=${P}`,
          );
          assert.equal(cache.bytes(), cacheBytes(spec, dims, P));
          let prevKq = l0.keyQuantized;
          for (let s = 0; s < steps; s++) {
            const T = P + s + 1;
            const q = rows(1, H, d, r);
            // Attention reads the state before this step's token is folded in, plus the token itself.
            const before = cache.layout();
            const out = await decodeStep(stepper, cache, dims, q, K, V, T - 1);
            const exp = expectedAttention(K, V, T, q, dims, before.keyQuantized, before.valueQuantized, {
              kBits: bits,
              vBits: bits,
              Gk: G,
              Gv: G,
              rot: false,
              vmeta8: false,
            });
            const err = maxRelErr(out, exp);
            // The wasm back end rounds the scaled query and the attention weights to int16 for its integer
            // dot products (the docs/KIVI.md §6 trick on CPUs; exact bounds in test/kernels-wasm.test.ts): on these
            // outlier-heavy keys that moves the output by up to ~1e-3 of its largest element.
            const tol = backend.name === 'wasm' ? 2e-3 : 2e-4;
            assert.ok(err < tol, `${backend.name} T=${T}: attention error ${err}`);
            const l = cache.layout();
            // Keys: the residual is flushed as one block exactly when it reaches R, never token by token.
            assert.equal(l.keyResidual, T % R, `key residual at T=${T}`);
            assert.ok(l.keyQuantized === prevKq || l.keyQuantized === prevKq + R, `key flush of ${l.keyQuantized - prevKq} tokens`);
            assert.ok(l.keyResidual < R);
            prevKq = l.keyQuantized;
            // Values: a sliding window of exactly R full-precision tokens.
            assert.equal(l.valueResidual, Math.min(T, R));
            assert.equal(l.valueQuantized, T - Math.min(T, R));
            assert.equal(cache.bytes(), cacheBytes(spec, dims, T));
          }
          cache.free();
          assert.equal(cache.bytes(), 0);
          assert.equal(pool.allocatedBytes, 0, 'every page back in the pool');
        }
        stepper.dispose();
      }
    });
  }
}

test('float16 residual (the default): smaller, and attention stays within float16 rounding of the float32 residual', async () => {
  assert.equal(
    parseKvSpec('kivi:k=2,v=2,g=32,r=64').kind === 'kivi' && (parseKvSpec('kivi:k=2,v=2,g=32,r=64') as { residualDtype: string }).residualDtype,
    'fp16',
  );
  const dims: CacheDims = { numLayers: 1, numHeads: 4, numKvHeads: 2, headDim: 64 };
  const { numKvHeads: kv, headDim: d, numHeads: H } = dims;
  const backend = new TsBackend();
  const pool = backend.createPagePool(dims);
  const stepper = new CacheStepper(backend, pool);
  const r = rng(3);
  const T = 150;
  const K = rows(T + 1, kv, d, r, true);
  const V = rows(T + 1, kv, d, r);
  const sa = parseKvSpec('kivi:k=2,v=2,g=32,r=64,residual=fp32');
  const sb = parseKvSpec('kivi:k=2,v=2,g=32,r=64');
  const a = createCache(sa, pool);
  const b = createCache(sb, pool);
  await stepper.step([{ cache: a, rows: qkvRows(dims, T, null, K, V), n: T }], false);
  await stepper.step([{ cache: b, rows: qkvRows(dims, T, null, K, V), n: T }], false);
  assert.ok(b.bytes() < a.bytes());
  assert.equal(b.bytes(), cacheBytes(sb, dims, T));
  const q = rows(1, H, d, r);
  const oa = await decodeStep(stepper, a, dims, q, K, V, T);
  const ob = await decodeStep(stepper, b, dims, q, K, V, T);
  for (let i = 0; i < oa.length; i++) assert.ok(Math.abs(oa[i]! - ob[i]!) < 5e-3, `${oa[i]} vs ${ob[i]}`);
});

test('no dequantized copy: every byte the cache holds is a page of codes, scales, minimums or residual', async () => {
  const dims: CacheDims = { numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 128 };
  const { numKvHeads: kv, headDim: d, numHeads: H, numLayers: L } = dims;
  const backend = new TsBackend();
  const pool = backend.createPagePool(dims);
  const stepper = new CacheStepper(backend, pool);
  const r = rng(9);
  const T = 2000;
  const K = rows(T + 300, kv, d, r, true);
  const V = rows(T + 300, kv, d, r);
  const spec = parseKvSpec('kivi:k=2,v=2,g=32,r=128,residual=fp16');
  const cache = createCache(spec, pool);
  await stepper.step([{ cache, rows: qkvRows(dims, T, null, K, V), n: T }], false);
  for (let t = T; t < T + 300; t++) await decodeStep(stepper, cache, dims, rows(1, H, d, r), K, V, t);
  // Pages are the cache's only storage, and they hold its bytes up to partly filled pages: one value
  // page (VALUE_PAGE − 1 slots) and the residual pages' unused slots (< 8 at each end of the value
  // window, < 8 after the key residual: pages of gcd(R, 8) slots).
  assert.equal(pool.allocatedBytes, cache.allocatedBytes());
  const codesPerToken = (d * 2) / 8 + (d / 32) * 4;
  const slack = L * kv * ((VALUE_PAGE - 1) * codesPerToken + 3 * 7 * d * 2) + 64 * 8;
  assert.ok(cache.allocatedBytes() <= cache.bytes() + slack, `${cache.allocatedBytes()} > ${cache.bytes()} + ${slack}`);
  const fp32Bytes = L * (T + 300) * 2 * kv * d * 4;
  assert.ok(cache.bytes() < fp32Bytes / 4, `KIVI holds ${cache.bytes()} bytes for ${fp32Bytes} of fp32 K/V`);
  cache.free();
  assert.equal(pool.allocatedBytes, 0);
});

test('invalid KIVI settings are clear errors', () => {
  const dims: CacheDims = { numLayers: 1, numHeads: 4, numKvHeads: 2, headDim: 128 };
  const pool = new TsBackend().createPagePool(dims);
  const make = (s: string) => createCache(parseKvSpec(s), pool);
  assert.throws(() => make('kivi:k=2,v=2,g=32,r=48'), /multiple of the group size/);
  assert.throws(() => make('kivi:k=2,v=2,g=48,r=96'), /must divide the model's head_dim/);
  assert.throws(() => make('kivi:k=2,v=8,g=8,r=32'), /multiple of 16/);
  assert.throws(() => make('kivi:k=3,v=2'), KiviError);
  assert.throws(() => make('kivi:k=2,v=2,x=1'), /unknown key "x"/);
  assert.throws(() => make('kivi2-q7'), /valid forms/);
  assert.throws(() => make('fake3-kC-vT'), /bits must be 2, 4 or 8/);
});

test('fillCycled (rows sent once, storage jobs in chunks) leaves the cache fill() leaves: same pages, same attention', async () => {
  const backend = new TsBackend();
  const dims: CacheDims = { numLayers: 1, numHeads: 4, numKvHeads: 2, headDim: 32 };
  const qkvDim = (4 + 2 * 2) * 32;
  const n = 48,
    T = 200;
  const rows = new Float32Array(n * qkvDim);
  for (let i = 0; i < rows.length; i++) rows[i] = Math.sin(i * 0.37) * (i % 32 === 3 ? 9 : 1);
  const step = new Float32Array(qkvDim).map((_, i) => Math.cos(i * 0.11));
  const outs: Float32Array[] = [];
  for (const cycled of [false, true]) {
    const pool = backend.createPagePool(dims);
    const stepper = new CacheStepper(backend, pool);
    const cache = createCache(parseKvSpec('kivi:k=2,v=2,g=16,r=32'), pool);
    if (cycled) await stepper.fillCycled(cache, rows, n, T);
    else for (let t = 0; t < T; t += n) await stepper.fill(cache, rows, Math.min(n, T - t), n);
    assert.equal(cache.length, T);
    outs.push((await stepper.step([{ cache, rows: step, n: 1, mode: 'decode' }]))!);
    cache.free();
  }
  assert.deepEqual(outs[1], outs[0]);
});
