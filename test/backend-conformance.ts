/**
 * The op table of a back end against the TypeScript reference, op by op, on random data (llama.cpp's
 * test-backend-ops, for our ops): dense ops within float32 rounding bounds, and the cache jobs plus
 * attention through real caches of every kind, prefill and decode, within a per-back-end bound for
 * quantized attention. Every back end's test file runs this suite on itself.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createCache, parseKvSpec } from '../src/cache/spec.js';
import { CacheStepper } from '../src/cache/step.js';
import { TsBackend } from '../src/kernels/ts/backend.js';
import type { AttnShape, Backend, DType, HostArray, Tensor } from '../src/kernels/types.js';
import { toHalfBits } from '../src/quant/float16.js';

const U = 2 ** -24;

export function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randArray(n: number, r: () => number, scale = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (r() * 2 - 1) * scale;
  return a;
}

/** Bit patterns of a float32 array in a 16-bit type (bf16 by rounding to nearest even). */
export function to16(a: Float32Array, dtype: 'f16' | 'bf16'): Uint16Array {
  const out = new Uint16Array(a.length);
  const u = new Uint32Array(a.buffer, a.byteOffset, a.length);
  for (let i = 0; i < a.length; i++) {
    if (dtype === 'f16') out[i] = toHalfBits(a[i]!);
    else out[i] = (u[i]! + 0x7fff + ((u[i]! >>> 16) & 1)) >>> 16;
  }
  return out;
}

/** The same tensor on two back ends. */
function both(a: Backend, b: Backend, dtype: DType, data: HostArray): [Tensor, Tensor] {
  const ta = a.tensor(dtype, data.length);
  const tb = b.tensor(dtype, data.length);
  a.write(ta, data);
  b.write(tb, data);
  return [ta, tb];
}

export function assertClose(actual: Float32Array, expected: Float32Array, tol: (i: number) => number, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < actual.length; i++) {
    const e = Math.abs(actual[i]! - expected[i]!);
    if (!(e <= tol(i))) assert.fail(`${what}: element ${i}: ${actual[i]} vs reference ${expected[i]} (|Δ| ${e} > ${tol(i)})`);
  }
}

function maxAbs(a: Float32Array): number {
  let m = 0;
  for (const x of a) m = Math.max(m, Math.abs(x));
  return m;
}

export interface ConformanceOptions {
  /** Cache specs to run (a back end may not support all: the GPU has no simulated-quantization caches). */
  specs?: string[];
  /** Largest error of quantized attention relative to the output's largest element (integer dot products round). */
  kiviRelTol?: number;
  /** Weight types of matmul and embedding to check. */
  weightTypes?: ('f32' | 'f16' | 'bf16')[];
}

export const ALL_SPECS = [
  'fp32',
  'fp16',
  'kivi2',
  'kivi4',
  'kivi:k=8,v=8,g=32,r=64',
  'kivi:k=4,v=2,g=16,r=64,residual=fp16',
  'kivi:k=2,v=2,g=32,r=32,residual=fp16',
  // Sink tokens (issue 14): full-precision rows listed between the residual and the step's own rows.
  'kivi:k=2,v=2,g=16,r=32,sink=5',
  'fake2-kC-vT',
  'fake4-kT-vC',
];

/** Register the suite for the back end `make` creates (one instance for the whole suite). */
export function backendConformance(label: string, make: () => Promise<Backend>, o: ConformanceOptions = {}): void {
  const ref = new TsBackend();
  let B: Backend;
  const get = async () => (B ??= await make());

  test(`${label}: matmul matches the reference within float32 rounding (odd shapes, bias or not, weight types)`, async () => {
    const b = await get();
    const r = rng(1);
    for (const wt of o.weightTypes ?? ['f32']) {
      for (const [rows, inDim, outDim] of [
        [1, 512, 96],
        [2, 37, 19],
        [3, 64, 5],
        [5, 130, 33],
        [64, 512, 1030],
        [1, 7, 13],
      ] as const) {
        for (const withBias of [false, true]) {
          const xd = randArray(rows * inDim, r),
            wf = randArray(outDim * inDim, r);
          const wd = wt === 'f32' ? wf : to16(wf, wt);
          const [xa, xb] = both(ref, b, 'f32', xd);
          const [wa, wb] = both(ref, b, wt, wd);
          const bias = withBias ? both(ref, b, 'f32', randArray(outDim, r)) : undefined;
          const oa = ref.tensor('f32', rows * outDim),
            ob = b.tensor('f32', rows * outDim);
          ref.matmul(oa, xa, wa, rows, inDim, outDim, bias?.[0]);
          b.matmul(ob, xb, wb, rows, inDim, outDim, bias?.[1]);
          const exp = await ref.read(oa, 0, rows * outDim);
          const got = await b.read(ob, 0, rows * outDim);
          const wv = await readWeights(ref, wa, outDim * inDim);
          const bv = bias ? await ref.read(bias[0], 0, outDim) : undefined;
          assertClose(
            got,
            exp,
            (i) => {
              const row = Math.floor(i / outDim),
                oo = i % outDim;
              let s = bv ? Math.abs(bv[oo]!) : 0;
              for (let j = 0; j < inDim; j++) s += Math.abs(xd[row * inDim + j]! * wv[oo * inDim + j]!);
              return (inDim + 2) * U * s;
            },
            `${wt} matmul ${rows}×${inDim}→${outDim}`,
          );
          for (const t of [xb, wb, ob, ...(bias ? [bias[1]] : [])]) b.release(t);
        }
      }
    }
  });

  test(`${label}: matmulAdd gives the bits of its own matmul then add (the residual add fused)`, async () => {
    const b = await get();
    const r = rng(11);
    for (const wt of o.weightTypes ?? ['f32']) {
      for (const [rows, inDim, outDim] of [
        [1, 512, 96],
        [3, 37, 19],
        [64, 512, 1030],
      ] as const) {
        const wf = randArray(outDim * inDim, r);
        const [, x] = both(ref, b, 'f32', randArray(rows * inDim, r));
        const [, w] = both(ref, b, wt, wt === 'f32' ? wf : to16(wf, wt));
        const start = randArray(rows * outDim, r, 3);
        const [, fused] = both(ref, b, 'f32', start);
        const [, twoStep] = both(ref, b, 'f32', start);
        const product = b.tensor('f32', rows * outDim);
        b.matmulAdd(fused, x, w, rows, inDim, outDim);
        b.matmul(product, x, w, rows, inDim, outDim);
        b.add(twoStep, product, rows * outDim);
        const got = await b.read(fused, 0, rows * outDim);
        assert.deepEqual(got, await b.read(twoStep, 0, rows * outDim), `${wt} matmulAdd ${rows}×${inDim}→${outDim}`);
        assert.notDeepEqual(got, start, 'the product was added');
        for (const t of [x, w, fused, twoStep, product]) b.release(t);
      }
    }
  });

  test(`${label}: a matmul row gives the same bits alone and in any batch`, async () => {
    const b = await get();
    const r = rng(2);
    const rows = 7,
      inDim = 301,
      outDim = 1030;
    const x = randArray(rows * inDim, r);
    const [, w] = both(ref, b, 'f32', randArray(outDim * inDim, r));
    const all = b.tensor('f32', rows * outDim);
    const xt = b.tensor('f32', rows * inDim);
    b.write(xt, x);
    b.matmul(all, xt, w, rows, inDim, outDim);
    const allv = await b.read(all, 0, rows * outDim);
    const x1 = b.tensor('f32', inDim),
      one = b.tensor('f32', outDim);
    for (let rr = 0; rr < rows; rr++) {
      b.write(x1, x.subarray(rr * inDim, (rr + 1) * inDim));
      b.matmul(one, x1, w, 1, inDim, outDim);
      const v = await b.read(one, 0, outDim);
      assert.deepEqual(v, allv.subarray(rr * outDim, (rr + 1) * outDim), `row ${rr} alone vs in the batch`);
    }
  });

  test(`${label}: embedding, RMSNorm, RoPE, SwiGLU, add, gather and argmax match the reference`, async () => {
    const b = await get();
    const r = rng(3);
    const D = 96,
      rows = 5,
      V = 50;
    for (const wt of o.weightTypes ?? ['f32']) {
      const tf = randArray(V * D, r);
      const [ta, tb] = both(ref, b, wt, wt === 'f32' ? tf : to16(tf, wt));
      const ids = Int32Array.from([3, 0, 49, 3, 17]);
      const ea = ref.tensor('f32', rows * D),
        eb = b.tensor('f32', rows * D);
      ref.embed(ea, ta, ids, D);
      b.embed(eb, tb, ids, D);
      assert.deepEqual(await b.read(eb, 0, rows * D), await ref.read(ea, 0, rows * D), `${wt} embedding`);
    }
    const xd = randArray(rows * D, r, 3);
    const [xa, xb] = both(ref, b, 'f32', xd);
    const [wa, wb] = both(ref, b, 'f32', randArray(D, r));
    const na = ref.tensor('f32', rows * D),
      nb = b.tensor('f32', rows * D);
    ref.rmsnorm(na, xa, wa, rows, D, 1e-5);
    b.rmsnorm(nb, xb, wb, rows, D, 1e-5);
    const nexp = await ref.read(na, 0, rows * D);
    assertClose(await b.read(nb, 0, rows * D), nexp, (i) => 8 * D * U * (Math.abs(nexp[i]!) + 1e-6), 'rmsnorm');

    const shape: AttnShape = { numLayers: 1, numHeads: 4, numKvHeads: 2, headDim: 16 };
    const qkvDim = (4 + 4) * 16;
    const [qa, qb] = both(ref, b, 'f32', randArray(rows * qkvDim, r));
    const pos = Int32Array.from([0, 1, 7, 100, 2047]);
    const half = 8,
      P = 2048;
    const cos = new Float32Array(P * half),
      sin = new Float32Array(P * half);
    for (let p = 0; p < P; p++)
      for (let i = 0; i < half; i++) {
        const a = Math.fround(p * Math.fround(1 / 10000 ** ((2 * i) / 16)));
        cos[p * half + i] = Math.cos(a);
        sin[p * half + i] = Math.sin(a);
      }
    const [ca, cb] = both(ref, b, 'f32', cos);
    const [sa, sb] = both(ref, b, 'f32', sin);
    ref.rope(qa, rows, pos, ca, sa, shape);
    b.rope(qb, rows, pos, cb, sb, shape);
    assertClose(await b.read(qb, 0, rows * qkvDim), await ref.read(qa, 0, rows * qkvDim), () => 4 * U * 4, 'rope');

    const I = 40;
    const [ga, gb] = both(ref, b, 'f32', randArray(rows * 2 * I, r, 4));
    const aa = ref.tensor('f32', rows * I),
      ab = b.tensor('f32', rows * I);
    ref.swiglu(aa, ga, rows, I);
    b.swiglu(ab, gb, rows, I);
    const sexp = await ref.read(aa, 0, rows * I);
    assertClose(await b.read(ab, 0, rows * I), sexp, (i) => 16 * U * Math.max(1, Math.abs(sexp[i]!)) * 4, 'swiglu');

    const [ya, yb] = both(ref, b, 'f32', randArray(rows * D, r));
    ref.add(xa, ya, rows * D);
    b.add(xb, yb, rows * D);
    assert.deepEqual(await b.read(xb, 0, rows * D), await ref.read(xa, 0, rows * D), 'add');

    const sel = Int32Array.from([4, 0, 2]);
    const oa = ref.tensor('f32', 3 * D),
      ob = b.tensor('f32', 3 * D);
    ref.gather(oa, xa, sel, D);
    b.gather(ob, xb, sel, D);
    assert.deepEqual(await b.read(ob, 0, 3 * D), await ref.read(oa, 0, 3 * D), 'gather');
    const logits = randArray(3 * 1000, r);
    logits[1000 + 17] = 50;
    logits[2000 + 999] = 60;
    const [la, lb] = both(ref, b, 'f32', logits);
    assert.deepEqual(await b.argmax(lb, 3, 1000), await ref.argmax(la, 3, 1000), 'argmax');
  });

  for (const [name, shape] of [
    ['GQA', { numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 64 }],
    ['MQA', { numLayers: 1, numHeads: 4, numKvHeads: 1, headDim: 32 }],
  ] as [string, AttnShape][]) {
    test(`${label}: cache jobs and attention, every cache kind, ${name}: prefill chunks and decode steps match the reference`, async () => {
      const b = await get();
      const { numHeads: H, numKvHeads: KV, headDim: d } = shape;
      const qkvDim = (H + 2 * KV) * d;
      const pools = [ref.createPagePool(shape), b.createPagePool(shape)] as const;
      const steppers = [new CacheStepper(ref, pools[0]), new CacheStepper(b, pools[1])];
      const r = rng(4);
      const specs = (o.specs ?? ALL_SPECS).filter((s) => !(s.includes('g=32') && d < 32) && !(d % 32 !== 0 && /kivi[248]$/.test(s)));
      for (const name of specs) {
        const spec = parseKvSpec(name);
        if (spec.kind === 'kivi' && d % spec.groupSize !== 0) continue;
        const caches = pools.map((p) => createCache(spec, p));
        // Keys with outlier channels, as real models have.
        const T = 200;
        const rows = new Float32Array(T * qkvDim);
        for (let t = 0; t < T; t++) for (let i = 0; i < qkvDim; i++) rows[t * qkvDim + i] = (r() * 2 - 1) * (i % d === 5 ? 12 : 1);
        // Float attention: float32 sums over ≤ 200 tokens and 64 channels against the reference's float64
        // sums (~1e-5 of the output's largest element measured); quantized attention: the back end's bound.
        const tol = (out: Float32Array) => {
          const m = maxAbs(out);
          const rel = spec.kind === 'kivi' ? (o.kiviRelTol ?? 1e-4) : 1e-4;
          return () => rel * m + 1e-6;
        };
        // A prefill (exact causal attention), a continued prefill chunk, then decode steps.
        let at = 0;
        for (const n of [70, 37, ...Array<number>(60).fill(1)]) {
          const item = (i: number) => ({
            cache: caches[i]!,
            rows: rows.subarray(at * qkvDim, (at + n) * qkvDim),
            n,
            mode: n === 1 ? ('decode' as const) : ('prefill' as const),
          });
          const exp = (await steppers[0]!.step([item(0)]))!;
          const got = (await steppers[1]!.step([item(1)]))!;
          assertClose(got, exp, tol(exp), `${name}: ${n === 1 ? 'decode' : 'prefill'} at ${at}`);
          assert.equal(caches[1]!.bytes(), caches[0]!.bytes());
          assert.equal(caches[1]!.allocatedBytes(), caches[0]!.allocatedBytes());
          at += n;
        }
        for (const c of caches) c.free();
      }
      assert.equal(pools[1].allocatedBytes, 0, 'every page returned');
      for (const s of steppers) s.dispose();
    });
  }
}

/** A weight tensor's values as float32 (16-bit patterns widened), from the reference back end. */
async function readWeights(ref: TsBackend, w: Tensor, n: number): Promise<Float32Array> {
  if (w.dtype === 'f32') return ref.read(w, 0, n);
  const o = ref.tensor('f32', n);
  const ids = Int32Array.from({ length: 1 }, () => 0);
  // Embedding row 0 of an [1][n] table widens exactly.
  ref.embed(o, w, ids, n);
  return ref.read(o, 0, n);
}
