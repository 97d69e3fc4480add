/**
 * KIVI options beyond the paper (issue 14): key and value group sizes apart (gk, gv), the Walsh–Hadamard
 * rotation of keys and queries (rot=hadamard), sink tokens kept in full precision (sink=S) and 8-bit value
 * metadata (vmeta=8). The cache's attention on its pages is checked against an independent model
 * (test/kivi-reference.ts: keys and values dequantized explicitly, plain float64 attention), its bytes against the budget formula and the bits per element, and the options the wasm and
 * WebGPU kernels do not read are refused there.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { bitsPerElement } from '../src/cache/bits.js';
import { cacheBytes, peakCacheBytes } from '../src/cache/budget.js';
import type { KiviCache } from '../src/cache/kivi.js';
import { type CacheSpec, createCache, formatKvSpec, KIVI2_HQ, parseKvSpec } from '../src/cache/spec.js';
import { CacheStepper, qkvRows } from '../src/cache/step.js';
import type { CacheDims } from '../src/cache/types.js';
import { createBackend } from '../src/kernels/index.js';
import { TsBackend } from '../src/kernels/ts/backend.js';
import { fwht } from '../src/quant/hadamard.js';
import type { Bits } from '../src/quant/quantizer.js';
import { decodeStep, dequantizeMeta8, expectedAttention, hadamardMatrix, maxRelErr, type Opts, rng } from './kivi-reference.js';

/** Random rows [T][kv·d] with a few outlier channels, like real keys. */
function rows(T: number, kv: number, d: number, r: () => number, outliers = false): Float32Array {
  const x = new Float32Array(T * kv * d);
  for (let i = 0; i < x.length; i++) x[i] = (r() * 2 - 1) * (outliers && i % d === 3 ? 20 : 1);
  return x;
}

test('fwht is the orthonormal Sylvester Hadamard transform: equals the explicit matrix, is its own inverse, keeps dot products', () => {
  const d = 64;
  const r = rng(1);
  const x = Float32Array.from({ length: d }, () => r() * 2 - 1);
  const y = Float32Array.from({ length: d }, () => r() * 2 - 1);
  const Hm = hadamardMatrix(d);
  const fx = x.slice();
  fwht(fx, 0, d);
  for (let i = 0; i < d; i++) {
    let want = 0;
    for (let j = 0; j < d; j++) want += Hm[i * d + j]! * x[j]!;
    assert.ok(Math.abs(fx[i]! - want) < 1e-6, `row ${i}: ${fx[i]} vs ${want}`);
  }
  const back = fx.slice();
  fwht(back, 0, d);
  for (let i = 0; i < d; i++) assert.ok(Math.abs(back[i]! - x[i]!) < 1e-6);
  const fy = y.slice();
  fwht(fy, 0, d);
  let a = 0,
    b = 0;
  for (let i = 0; i < d; i++) {
    a += x[i]! * y[i]!;
    b += fx[i]! * fy[i]!;
  }
  assert.ok(Math.abs(a - b) < 1e-5, `${a} vs ${b}`);
});

test('8-bit value metadata: every value within half a step of its group, steps at most (range + 2Δ)/(2^b − 1)', () => {
  const d = 64,
    G = 16,
    T = 20;
  const r = rng(2);
  for (const bits of [2, 4] as Bits[]) {
    const x = rows(T, 1, d, r, true);
    const y = dequantizeMeta8(x, T, d, G, bits);
    for (let t = 0; t < T; t++) {
      let lo = Infinity,
        hi = -Infinity;
      for (let c = 0; c < d; c++) [lo, hi] = [Math.min(lo, x[t * d + c]!), Math.max(hi, x[t * d + c]!)];
      const delta = (hi - lo) / 255;
      for (let g = 0; g < d / G; g++) {
        let gl = Infinity,
          gh = -Infinity;
        for (let c = g * G; c < (g + 1) * G; c++) [gl, gh] = [Math.min(gl, x[t * d + c]!), Math.max(gh, x[t * d + c]!)];
        const step = (gh - gl + 2 * delta) / ((1 << bits) - 1);
        for (let c = g * G; c < (g + 1) * G; c++) {
          const err = Math.abs(y[t * d + c]! - x[t * d + c]!);
          assert.ok(err <= step / 2 + 1e-3 * (hi - lo), `${bits}-bit t=${t} c=${c}: error ${err}, step ${step}`);
        }
      }
    }
  }
});

const OPTION_SPECS: [string, Opts][] = [
  ['kivi:k=4,v=2,gk=32,gv=16,r=32,residual=fp32', { kBits: 4, vBits: 2, Gk: 32, Gv: 16, rot: false, vmeta8: false }],
  ['kivi:k=2,v=2,g=16,r=32,residual=fp32,rot=hadamard', { kBits: 2, vBits: 2, Gk: 16, Gv: 16, rot: true, vmeta8: false }],
  ['kivi:k=2,v=4,g=16,r=32,residual=fp32,vmeta=8', { kBits: 2, vBits: 4, Gk: 16, Gv: 16, rot: false, vmeta8: true }],
  ['kivi:k=4,v=2,gk=32,gv=16,r=32,residual=fp32,vmeta=8,rot=hadamard', { kBits: 4, vBits: 2, Gk: 32, Gv: 16, rot: true, vmeta8: true }],
  // Sinks that a prefill fills, overfills or leaves part empty (P = 5, 40, 64), over one and two pages.
  ['kivi:k=2,v=2,g=16,r=32,residual=fp32,sink=4', { kBits: 2, vBits: 2, Gk: 16, Gv: 16, rot: false, vmeta8: false, sink: 4 }],
  ['kivi:k=4,v=2,gk=32,gv=16,r=32,residual=fp32,rot=hadamard,sink=37', { kBits: 4, vBits: 2, Gk: 32, Gv: 16, rot: true, vmeta8: false, sink: 37 }],
  ['kivi:k=2,v=4,g=16,r=32,residual=fp32,vmeta=8,sink=70', { kBits: 2, vBits: 4, Gk: 16, Gv: 16, rot: false, vmeta8: true, sink: 70 }],
];

for (const [s, o] of OPTION_SPECS) {
  test(`${s}: prefill and decode through flushes, attention on the pages = dequantized attention; bytes exact`, async () => {
    const dims: CacheDims = { numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 64 };
    const { numKvHeads: kv, headDim: d, numHeads: H } = dims;
    const spec = parseKvSpec(s);
    // gk/gv and rot run on every back end; vmeta=8 on the TypeScript reference only.
    const dflt = await createBackend();
    const backends = !o.vmeta8 && dflt.name !== 'ts' ? [new TsBackend(), dflt] : [new TsBackend()];
    for (const backend of backends) {
      const pool = backend.createPagePool(dims);
      const stepper = new CacheStepper(backend, pool);
      const R = 32;
      for (const P of [5, 40, 64]) {
        const r = rng(P * 13 + o.kBits);
        const steps = 80;
        const K = rows(P + steps, kv, d, r, true);
        const V = rows(P + steps, kv, d, r);
        const cache = createCache(spec, pool) as KiviCache;
        await stepper.step([{ cache, rows: qkvRows(dims, P, null, K, V), n: P, mode: 'prefill' }], false);
        assert.equal(cache.bytes(), cacheBytes(spec, dims, P));
        for (let step = 0; step < steps; step++) {
          const T = P + step + 1;
          const q = rows(1, H, d, r);
          const before = cache.layout();
          const out = await decodeStep(stepper, cache, dims, q, K, V, T - 1);
          const exp = expectedAttention(K, V, T, q, dims, before.keyQuantized, before.valueQuantized, o);
          const tol = backend.name === 'wasm' ? 2e-3 : 2e-4;
          const err = maxRelErr(out, exp);
          assert.ok(err < tol, `${backend.name} P=${P} T=${T}: attention error ${err}`);
          const S = o.sink ?? 0;
          assert.equal(cache.layout().sink, Math.min(T, S));
          assert.equal(cache.layout().keyResidual, Math.max(0, T - S) % R);
          assert.equal(cache.bytes(), cacheBytes(spec, dims, T), `bytes at T=${T}`);
        }
        cache.free();
        assert.equal(pool.allocatedBytes, 0);
      }
      stepper.dispose();
    }
  });
}

test('rot=hadamard changes nothing in full precision: with every token in the residual, attention equals the unrotated cache', async () => {
  const dims: CacheDims = { numLayers: 1, numHeads: 4, numKvHeads: 2, headDim: 64 };
  const { numKvHeads: kv, headDim: d, numHeads: H } = dims;
  const backend = new TsBackend();
  const pool = backend.createPagePool(dims);
  const stepper = new CacheStepper(backend, pool);
  const r = rng(5);
  const T = 60;
  const K = rows(T + 1, kv, d, r, true);
  const V = rows(T + 1, kv, d, r);
  const a = createCache(parseKvSpec('kivi:k=2,v=2,r=128,residual=fp32'), pool);
  const b = createCache(parseKvSpec('kivi:k=2,v=2,r=128,residual=fp32,rot=hadamard'), pool);
  for (const c of [a, b]) await stepper.step([{ cache: c, rows: qkvRows(dims, T, null, K, V), n: T }], false);
  const q = rows(1, H, d, r);
  const oa = await decodeStep(stepper, a, dims, q, K, V, T);
  const ob = await decodeStep(stepper, b, dims, q, K, V, T);
  for (let i = 0; i < oa.length; i++) assert.ok(Math.abs(oa[i]! - ob[i]!) < 1e-5, `${oa[i]} vs ${ob[i]}`);
});

test('bits per element: kivi2 3, kivi4 5, kivi2-hq 3.5, and the bytes a cache adds per token say the same', () => {
  const dims: CacheDims = { numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 128 };
  const d = dims.headDim;
  const cases: [string, number][] = [
    ['kivi2', 3],
    ['kivi4', 5],
    ['kivi:k=4,v=2,g=64', 3.5],
    ['kivi:k=4,v=2,gk=128,gv=32', 3.625],
    ['kivi:k=4,v=2,gk=128,gv=64,rot=hadamard', 3.375],
    ['kivi:k=4,v=2,gk=128,gv=32,vmeta=8,rot=hadamard', 3.5],
    ['kivi:k=2,v=2,vmeta=8', 2.875],
    ['kivi2-hq', 3.5],
    ['kivi:k=2,v=2,rot=hadamard', 3],
    // Sink tokens are a bounded full-precision part, like the residual: not counted.
    ['kivi:k=2,v=2,sink=32', 3],
  ];
  for (const [s, bits] of cases) {
    const spec = parseKvSpec(s);
    assert.equal(bitsPerElement(spec, d), bits, s);
    // Between two lengths with the same residual state (T ≡ 0 mod R, both ≥ R), only quantized tokens are added.
    const added = cacheBytes(spec, dims, 1024) - cacheBytes(spec, dims, 512);
    assert.equal((added * 8) / (2 * dims.numLayers * dims.numKvHeads * d * 512), bits, `${s}: bytes per token`);
  }
});

test('peakCacheBytes is the largest cacheBytes over [from, T], with and without sink tokens', () => {
  const dims: CacheDims = { numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 64 };
  for (const s of ['kivi:k=2,v=2,r=32', 'kivi:k=2,v=2,r=32,sink=4', 'kivi:k=4,v=2,g=16,r=32,sink=37', 'kivi:k=2,v=2,r=128,sink=200']) {
    const spec = parseKvSpec(s);
    for (const from of [1, 3, 40, 90]) {
      for (let T = from; T < 300; T += 7) {
        let want = 0;
        for (let t = from; t <= T; t++) want = Math.max(want, cacheBytes(spec, dims, t));
        assert.equal(peakCacheBytes(spec, dims, T, from), want, `${s} from ${from} to ${T}`);
      }
    }
  }
});

const pool0 = () => new TsBackend().createPagePool({ numLayers: 1, numHeads: 2, numKvHeads: 1, headDim: 64 });

test('the spec grammar: options parse, print canonically and round-trip; kivi2-hq is its preset; bad values are clear', () => {
  const hq = parseKvSpec('kivi2-hq') as CacheSpec & { kind: 'kivi' };
  assert.equal(hq.name, 'kivi2-hq');
  assert.deepEqual({ ...hq, name: '' }, { ...parseKvSpec(KIVI2_HQ), name: '' });
  assert.equal(formatKvSpec(hq), 'kivi:k=4,v=2,g=64,r=128,rot=hadamard');
  for (const s of [
    'kivi:k=4,v=2,gk=128,gv=16,rot=hadamard,vmeta=8',
    'kivi:k=2,v=2,rot=none,vmeta=16',
    'kivi:k=4,v=2,g=64,rot=hadamard,sink=4',
    'kivi:k=2,v=2,sink=0',
  ]) {
    const a = parseKvSpec(s);
    assert.deepEqual({ ...parseKvSpec(formatKvSpec(a)), name: '' }, { ...a, name: '' }, s);
  }
  assert.throws(() => parseKvSpec('kivi:k=2,v=2,rot=fourier'), /rot must be hadamard or none/);
  assert.throws(() => parseKvSpec('kivi:k=2,v=2,vmeta=4'), /vmeta must be 16 or 8/);
  assert.throws(() => parseKvSpec('kivi:k=2,v=2,gk=0'), /gk must be a positive integer/);
  assert.equal(formatKvSpec(parseKvSpec('kivi:k=2,v=2,sink=8')), 'kivi:k=2,v=2,g=32,r=128,sink=8');
  assert.equal(formatKvSpec(parseKvSpec('kivi:k=2,v=2,sink=0')), 'kivi:k=2,v=2,g=32,r=128');
  assert.throws(() => parseKvSpec('kivi:k=2,v=2,sink=-1'), /sink must be a whole number of tokens/);
  assert.throws(() => parseKvSpec('kivi:k=2,v=2,sink=four'), /sink must be a whole number of tokens/);
  assert.throws(() => createCache(parseKvSpec('kivi:k=2,v=2,sink=5000'), pool0()), /sink must be a whole number of tokens from 0 to 4096/);
  const pool = new TsBackend().createPagePool({ numLayers: 1, numHeads: 2, numKvHeads: 1, headDim: 96 });
  assert.throws(() => createCache(parseKvSpec('kivi:k=2,v=2,rot=hadamard'), pool), /needs head_dim to be a power of two, got 96/);
  assert.throws(() => createCache(parseKvSpec('kivi:k=2,v=2,gk=24,r=96'), pool), /multiple of 16/);
});

test('vmeta=8 is refused off the TypeScript reference, naming it; gk/gv and rot are not', async () => {
  const dims: CacheDims = { numLayers: 1, numHeads: 2, numKvHeads: 1, headDim: 64 };
  const dflt = await createBackend();
  if (dflt.name === 'ts') return; // no other back end loads here
  const pool = dflt.createPagePool(dims);
  for (const s of ['kivi:k=2,v=2,vmeta=8', 'kivi:k=4,v=2,gk=128,gv=32,vmeta=8,rot=hadamard']) {
    assert.throws(() => createCache(parseKvSpec(s), pool), /vmeta=8 runs on the TypeScript reference back end only \(--backend ts\)/, s);
  }
  for (const s of ['kivi2-hq', 'kivi:k=4,v=2,gk=64,gv=16', 'kivi:k=2,v=2,rot=hadamard']) createCache(parseKvSpec(s), pool).free();
});
