/**
 * Every WebAssembly kernel against the pure-TS reference on random data: odd shapes, 2/4/8 bits, GQA
 * nq = 1..4, odd token counts. Float kernels must agree within float32 rounding bounds; KIVI kernels
 * within the int16 rounding bound the method allows (stated per test). Threads and batch size must not
 * change a bit.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createWasmKernels } from '../src/kernels/wasm/node.js';
import type { WasmKernels } from '../src/kernels/wasm/kernels.js';
import { TsKernels } from '../src/kernels/ts/reference.js';
import { AttentionPlan } from '../src/kernels/plan.js';
import { OP_ATTEND } from '../src/kernels/wasm/jobs.js';
import { type Bits, quantizePerChannel, quantizePerToken, unpackCodes } from '../src/quant/quantizer.js';
import { fromHalfBits, toHalfBits } from '../src/quant/float16.js';

const U = 2 ** -24;
let W: WasmKernels;
let W1: WasmKernels;
const R = new TsKernels();

before(async () => {
  W = await createWasmKernels(2);
  W1 = await createWasmKernels(1);
});
after(() => {
  W.dispose();
  W1.dispose();
});

function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randF32(k: WasmKernels, n: number, r: () => number, scale = 1): Float32Array {
  const a = k.allocF32(n);
  for (let i = 0; i < n; i++) a[i] = (r() * 2 - 1) * scale;
  return a;
}

/** Copy into kernel memory. */
function own<T extends Float32Array | Uint16Array | Uint32Array>(k: WasmKernels, src: T): T {
  const a = (src instanceof Float32Array ? k.allocF32(src.length) : src instanceof Uint16Array ? k.allocU16(src.length) : k.allocU32(src.length)) as T;
  a.set(src);
  return a;
}

function assertClose(actual: Float32Array, expected: Float32Array, tol: (i: number) => number, what: string): void {
  assert.equal(actual.length, expected.length);
  for (let i = 0; i < actual.length; i++) {
    const e = Math.abs(actual[i]! - expected[i]!);
    if (!(e <= tol(i))) assert.fail(`${what}: element ${i}: ${actual[i]} vs reference ${expected[i]} (|Δ| ${e} > ${tol(i)})`);
  }
}

const bytes = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

test('matmul matches the reference within float32 rounding (odd shapes, bias or not)', () => {
  const r = rng(1);
  for (const [rows, inDim, outDim] of [[1, 512, 96], [2, 37, 19], [3, 64, 5], [5, 130, 33], [64, 512, 1030], [1, 7, 13]] as const) {
    for (const withBias of [false, true]) {
      const x = randF32(W, rows * inDim, r), w = randF32(W, outDim * inDim, r);
      const b = withBias ? randF32(W, outDim, r) : undefined;
      const out = W.allocF32(rows * outDim), ref = new Float32Array(rows * outDim);
      W.matmul(out, x, w, rows, inDim, outDim, b);
      R.matmul(ref, x, w, rows, inDim, outDim, b);
      assertClose(out, ref, (i) => {
        const row = Math.floor(i / outDim), o = i % outDim;
        let s = b ? Math.abs(b[o]!) : 0;
        for (let j = 0; j < inDim; j++) s += Math.abs(x[row * inDim + j]! * w[o * inDim + j]!);
        return (inDim + 2) * U * s;
      }, `matmul ${rows}×${inDim}→${outDim}`);
      for (const a of [x, w, out]) W.free(a);
      if (b) W.free(b);
    }
  }
});

test('matmul: a row gives the same bits alone, in any batch, on 1 or 2 threads', () => {
  const r = rng(2);
  const rows = 7, inDim = 301, outDim = 1030;
  const x = randF32(W, rows * inDim, r), w = randF32(W, outDim * inDim, r), b = randF32(W, outDim, r);
  const all = W.allocF32(rows * outDim);
  W.matmul(all, x, w, rows, inDim, outDim, b);
  const x1 = own(W1, x), w1 = own(W1, w), b1 = own(W1, b);
  const single = W1.allocF32(rows * outDim);
  W1.matmul(single, x1, w1, rows, inDim, outDim, b1);
  assert.ok(bytes(all).equals(bytes(single)), '2 threads vs 1 thread');
  const one = W.allocF32(outDim);
  for (let rr = 0; rr < rows; rr++) {
    W.matmul(one, x.subarray(rr * inDim, (rr + 1) * inDim), w, 1, inDim, outDim, b);
    assert.ok(bytes(one).equals(bytes(all.subarray(rr * outDim, (rr + 1) * outDim))), `row ${rr} alone vs in the batch`);
  }
  const three = W.allocF32(3 * outDim);
  W.matmul(three, x.subarray(2 * inDim, 5 * inDim), w, 3, inDim, outDim, b);
  assert.ok(bytes(three).equals(bytes(all.subarray(2 * outDim, 5 * outDim))), 'rows 2..4 as a batch of 3');
});

function halfOf(a: Float32Array): Uint16Array {
  const h = new Uint16Array(a.length);
  for (let i = 0; i < a.length; i++) h[i] = toHalfBits(a[i]!);
  return h;
}

test('dense scores and accumulation (float32 and float16) match the reference, nq = 1..4, odd n and d', () => {
  const r = rng(3);
  for (const half of [false, true]) {
    for (const nq of [1, 2, 3, 4]) {
      for (const [n, d] of [[1, 128], [7, 64], [33, 20], [5, 6], [130, 128]] as const) {
        const q = randF32(W, nq * d + 5, r);
        const kf = randF32(W, n * d + 3, r);
        const k = half ? own(W, halfOf(kf)) : kf;
        const kv = (i: number) => (half ? fromHalfBits((k as Uint16Array)[i]!) : kf[i]!);
        const sStride = n + 5, sOff = 2, scale = 1 / Math.sqrt(d);
        const s = W.allocF32(nq * sStride + 4), ref = new Float32Array(s.length);
        W.scoresDense(s, sOff, sStride, q, 5, nq, k, 3, n, d, scale);
        R.scoresDense(ref, sOff, sStride, q, 5, nq, k, 3, n, d, scale);
        assertClose(s, ref, (i) => {
          const j = Math.floor(i / sStride), t = (i % sStride) - sOff;
          if (t < 0 || t >= n || j >= nq) return 0;
          let m = 0;
          for (let c = 0; c < d; c++) m += Math.abs(q[5 + j * d + c]! * kv(3 + t * d + c));
          return (d + 3) * U * m * scale;
        }, `scores ${half ? 'f16' : 'f32'} nq=${nq} n=${n} d=${d}`);

        const p = W.allocF32(nq * sStride + 4);
        for (let i = 0; i < p.length; i++) p[i] = r();
        const out = randF32(W, nq * d + 7, r), outRef = out.slice();
        W.accumDense(out, 7, p, sOff, sStride, nq, k, 3, n, d);
        R.accumDense(outRef, 7, p, sOff, sStride, nq, k, 3, n, d);
        const out0 = outRef.slice(); // only for the tolerance: reference output minus its contributions is the start value
        assertClose(out, outRef, (i) => {
          const j = Math.floor((i - 7) / d), c = (i - 7) % d;
          if (i < 7 || j >= nq) return 0;
          let m = Math.abs(out0[i]!);
          for (let t = 0; t < n; t++) m += Math.abs(p[j * sStride + sOff + t]! * kv(3 + t * d + c));
          return (n + 3) * U * 2 * m;
        }, `accum ${half ? 'f16' : 'f32'} nq=${nq} n=${n} d=${d}`);
      }
    }
  }
});

test('swiglu matches the reference to a few float32 ulps (exp included)', () => {
  const r = rng(8);
  const rows = 3, I = 37; // I % 4 != 0: vector body and scalar tail
  const gu = W.allocF32(rows * 2 * I);
  for (let i = 0; i < gu.length; i++) gu[i] = (r() * 2 - 1) * (i % 5 === 0 ? 100 : 6);
  const act = W.allocF32(rows * I), ref = new Float32Array(rows * I);
  W.swiglu(act, gu, rows, I);
  R.swiglu(ref, gu, rows, I);
  assertClose(act, ref, (i) => {
    const row = Math.floor(i / I), c = i % I;
    return 8 * U * Math.abs(gu[row * 2 * I + c]! * gu[row * 2 * I + I + c]!) + 1e-30;
  }, 'swiglu');
});

/** Keys/values like a real model's: unit noise with a few large-magnitude channels. */
function kvData(n: number, d: number, r: () => number): Float32Array {
  const x = new Float32Array(n * d);
  for (let t = 0; t < n; t++) for (let c = 0; c < d; c++) x[t * d + c] = (r() * 2 - 1) * (c % 17 === 3 ? 12 : 1) + (c % 29 === 5 ? 6 : 0);
  return x;
}

const kiviShapes: [Bits, number, number][] = [
  [2, 32, 128], [2, 16, 48], [2, 128, 128], [4, 32, 128], [4, 8, 40], [8, 32, 128], [8, 4, 36],
];

test('KIVI scores match the reference within the int16 query rounding bound', () => {
  const r = rng(4);
  for (const [bits, G, d] of kiviShapes) {
    for (const nq of [1, 2, 3, 4]) {
      const n = 2 * G;
      const blk = quantizePerChannel(kvData(n, d, r), n, d, G, bits);
      const codes = own(W, blk.codes), scales = own(W, blk.scales), mins = own(W, blk.mins);
      const q = randF32(W, nq * d, r);
      const sStride = n + 3, scale = 1 / Math.sqrt(d);
      const s = W.allocF32(nq * sStride + 1), ref = new Float32Array(s.length);
      W.scoresKivi(s, 1, sStride, q, 0, nq, codes, 0, scales, mins, 0, n, d, bits, G, scale);
      R.scoresKivi(ref, 1, sStride, q, 0, nq, codes, 0, scales, mins, 0, n, d, bits, G, scale);
      const code = new Uint8Array(d);
      assertClose(s, ref, (i) => {
        const j = Math.floor(i / sStride), t = (i % sStride) - 1;
        if (t < 0 || t >= n || j >= nq) return 0;
        const g = Math.floor(t / G);
        unpackCodes(blk.codes, t * (d * bits / 32), d, bits, code, 0);
        // α/2 per channel of the int16 query (α = max|q·s| / qmax for this head and group), plus float rounding;
        // qmax = 32767/5 at 2 bits (the kernel telescopes the code planes), 32767 at 4 and 8.
        let amax = 0, sumCode = 0, mag = 0;
        for (let c = 0; c < d; c++) {
          const sc = fromHalfBits(blk.scales[g * d + c]!), mn = fromHalfBits(blk.mins[g * d + c]!), qc = q[j * d + c]!;
          amax = Math.max(amax, Math.abs(qc * sc));
          sumCode += code[c]!;
          mag += Math.abs(qc) * (sc * code[c]! + Math.abs(mn));
        }
        const qmax = bits === 2 ? 6553 : 32767;
        return scale * ((amax / qmax / 2) * sumCode + 2 ** -19 * mag);
      }, `scoresKivi b=${bits} G=${G} d=${d} nq=${nq}`);
    }
  }
});

test('KIVI value accumulation matches the reference within the int16 weight rounding bound', () => {
  const r = rng(5);
  for (const [bits, G, d] of kiviShapes) {
    for (const nq of [1, 2, 4]) {
      for (const n of [1, 7, 256, 300]) {
        const blk = quantizePerToken(kvData(n, d, r), n, d, G, bits);
        const codes = own(W, blk.codes), scales = own(W, blk.scales), mins = own(W, blk.mins);
        const pStride = n + 2;
        const p = W.allocF32(nq * pStride);
        for (let i = 0; i < p.length; i++) p[i] = r() < 0.1 ? 0 : r() ** 4;
        const out = randF32(W, nq * d, r), ref = out.slice(), start = out.slice();
        W.accumKivi(out, 0, p, 1, pStride, nq, codes, 0, scales, mins, 0, n, d, bits, G);
        R.accumKivi(ref, 0, p, 1, pStride, nq, codes, 0, scales, mins, 0, n, d, bits, G);
        const code = new Uint8Array(d);
        const codeAt = (t: number, c: number) => {
          unpackCodes(blk.codes, t * (d * bits / 32), d, bits, code, 0);
          return code[c]!;
        };
        assertClose(out, ref, (i) => {
          const j = Math.floor(i / d), c = i % d, g = Math.floor(c / G), ng = d / G;
          let bound = 0, mag = Math.abs(start[i]!);
          // Weights a_t·s_tg are rounded to int16 per chunk of ≤ 256 tokens with α_g = max|a|·max s_g / 32767:
          // α_g/2 per token and code unit.
          for (let t0 = 0; t0 < n; t0 += 256) {
            let amax = 0, smax = 0, sumCode = 0;
            for (let t = t0; t < Math.min(n, t0 + 256); t++) {
              const a = p[j * pStride + 1 + t]!, sc = fromHalfBits(blk.scales[t * ng + g]!), mn = fromHalfBits(blk.mins[t * ng + g]!);
              amax = Math.max(amax, Math.abs(a));
              smax = Math.max(smax, sc);
              const k = codeAt(t, c);
              sumCode += k;
              mag += Math.abs(a) * (sc * k + Math.abs(mn));
            }
            bound += ((amax * smax) / 32767 / 2) * sumCode;
          }
          return bound + (n + 8) * U * 2 * mag;
        }, `accumKivi b=${bits} G=${G} d=${d} nq=${nq} n=${n}`);
      }
    }
  }
});

/** A plan over every segment kind: KIVI keys + float32 residual; KIVI values + float16 ring. */
function mixedPlan(k: WasmKernels, r: () => number, tasks: number, foreign = false) {
  const d = 128, nq = 2, G = 32;
  const kq = quantizePerChannel(kvData(64, d, r), 64, d, G, 2);
  const vq = quantizePerToken(kvData(40, d, r), 40, d, G, 4);
  const kRes = randF32(k, 13 * d, r), vRing = own(k, halfOf(randF32(k, 37 * d, r)));
  const kc = own(k, kq.codes), ks = own(k, kq.scales), km = own(k, kq.mins);
  const vc = own(k, vq.codes), vs = own(k, vq.scales), vm = own(k, vq.mins);
  const q = foreign ? new Float32Array(tasks * nq * d) : k.allocF32(tasks * nq * d);
  for (let i = 0; i < q.length; i++) q[i] = (r() * 2 - 1) * 0.5;
  const out = foreign ? new Float32Array(tasks * nq * d) : k.allocF32(tasks * nq * d);
  const plan = new AttentionPlan();
  for (let i = 0; i < tasks; i++) {
    plan.task(q, i * nq * d, nq, out, i * nq * d, d, 1 / Math.sqrt(d));
    plan.keysKivi(kc, 0, ks, km, 0, 64, 2, G);
    plan.keys(kRes, 0, 13);
    plan.valuesKivi(vc, 0, vs, vm, 0, 40, 4, G);
    plan.values(vRing, 0, 37);
  }
  return { plan, out };
}

test('attend(plan) over mixed segments matches the reference; threads and foreign arrays change nothing', () => {
  const { plan, out } = mixedPlan(W, rng(6), 6);
  const ref = new Float32Array(out.length);
  const refPlan = new AttentionPlan();
  // Same tasks, reference output array.
  for (let i = 0; i < plan.tasks; i++) {
    const o = plan.t.subarray(i * 12, (i + 1) * 12);
    refPlan.task(plan.refs[o[0]!] as Float32Array, o[1]!, o[2]!, ref, o[4]!, o[5]!, plan.scale[i]!);
    for (let s = o[6]!; s < o[6]! + o[7]! + o[9]!; s++) {
      const g = plan.s.subarray(s * 9, (s + 1) * 9);
      const data = plan.refs[g[2]!]!;
      const key = s < o[6]! + o[7]!;
      if (g[0] === 2) {
        const args = [data as Uint32Array, g[3]!, plan.refs[g[4]!] as Uint16Array, plan.refs[g[5]!] as Uint16Array, g[6]!, g[1]!, g[7]! as Bits, g[8]!] as const;
        if (key) refPlan.keysKivi(...args);
        else refPlan.valuesKivi(...args);
      } else if (key) refPlan.keys(data as Float32Array | Uint16Array, g[3]!, g[1]!);
      else refPlan.values(data as Float32Array | Uint16Array, g[3]!, g[1]!);
    }
  }
  W.attend(plan);
  R.attend(refPlan);
  let maxAbs = 0;
  for (const v of ref) maxAbs = Math.max(maxAbs, Math.abs(v));
  assert.ok(maxAbs > 0.05, 'a non-trivial output');
  // int16 rounding of queries and weights moves the output by far less than a 4-bit value step.
  assertClose(out, ref, () => 2e-3, 'attend(plan) mixed');

  const one = mixedPlan(W1, rng(6), 6);
  W1.attend(one.plan);
  assert.ok(bytes(out).equals(bytes(one.out)), '2 threads vs 1 thread');
  const foreign = mixedPlan(W, rng(6), 6, true);
  W.attend(foreign.plan);
  assert.ok(bytes(out).equals(bytes(foreign.out)), 'q/out outside the kernels memory');
});

test('attend(plan) on dense segments is exact to float32 rounding (softmax included)', () => {
  const r = rng(7);
  const d = 64, nq = 4, n1 = 100, n2 = 27;
  const k1 = randF32(W, n1 * d, r, 2), k2 = own(W, halfOf(randF32(W, n2 * d, r, 2)));
  const v1 = randF32(W, n1 * d, r), v2 = randF32(W, n2 * d, r);
  const q = randF32(W, nq * d, r);
  const out = W.allocF32(nq * d), ref = new Float32Array(nq * d);
  for (const [k, o] of [[W, out], [R, ref]] as const) {
    const plan = new AttentionPlan();
    plan.task(q, 0, nq, o, 0, d, 1 / 8);
    plan.keys(k1, 0, n1);
    plan.keys(k2, 0, n2);
    plan.values(v1, 0, 60);
    plan.values(v1, 60 * d, 40);
    plan.values(v2, 0, n2);
    k.attend(plan);
  }
  assertClose(out, ref, () => 2e-6, 'dense attend');
  const bad = new AttentionPlan();
  bad.task(q, 0, nq, out, 0, d, 1);
  bad.keys(k1, 0, 5);
  bad.values(v1, 0, 4);
  assert.throws(() => W.attend(bad), /5 key tokens and 4 value tokens/);
});

test('memory grows and freed blocks are reused; foreign frees are refused', async () => {
  const k = await createWasmKernels(1);
  try {
    const before = k.memoryStats();
    const big = k.allocF32(20 << 20); // 80 MiB: forces growth
    big[big.length - 1] = 1;
    const grown = k.memoryStats();
    assert.ok(grown.memory > before.memory + (79 << 20), `memory ${before.memory} → ${grown.memory}`);
    assert.ok(grown.memory >= big.byteOffset + big.byteLength + 64, "readable past the last block");
    const small = k.allocF32(10);
    small.fill(3);
    assert.equal(big[big.length - 1], 1, 'older views stay valid after growth');
    k.free(big);
    const again = k.allocF32(20 << 20);
    assert.equal(again.byteOffset, big.byteOffset, 'the freed block is reused');
    assert.equal(again[again.length - 1], 0, 'allocations are zeroed');
    assert.equal(k.memoryStats().memory, grown.memory, 'no growth for a reused block');
    assert.throws(() => k.free(new Float32Array(4)), /not allocated by these kernels/);
  } finally {
    k.dispose();
  }
});

test('a trap on any thread surfaces as an error, and the pool keeps working', () => {
  // Task records 3 GiB into a memory of a few MiB: every thread's attend_task traps.
  const runner = (W as unknown as { runner: { run(op: number, args: number[], n: number): void } }).runner;
  assert.throws(() => runner.run(OP_ATTEND, [3 * 2 ** 30, 3 * 2 ** 30, 1024, 64], 8), /out of bounds|helper thread/);
  const { plan, out } = mixedPlan(W, rng(9), 4);
  W.attend(plan);
  const { plan: plan1, out: out1 } = mixedPlan(W1, rng(9), 4);
  W1.attend(plan1);
  assert.ok(bytes(out).equals(bytes(out1)));
});

test('thousands of back-to-back parallel jobs of varying item counts: no lost or double-counted item', () => {
  const r = rng(10);
  const inDim = 256, maxOut = 1200;
  const w = randF32(W, maxOut * inDim, r), x = randF32(W, inDim, r);
  const w1 = own(W1, w), x1 = own(W1, x);
  const out = W.allocF32(maxOut), ref = W1.allocF32(maxOut);
  for (let job = 0; job < 3000; job++) {
    const outDim = 512 + Math.floor(r() * (maxOut - 512)); // ≥ 131072 multiply-adds: split over threads
    out.fill(NaN);
    W.matmul(out.subarray(0, outDim), x, w, 1, inDim, outDim);
    if (job % 100 === 0) {
      W1.matmul(ref.subarray(0, outDim), x1, w1, 1, inDim, outDim);
      assert.ok(bytes(out.subarray(0, outDim)).equals(bytes(ref.subarray(0, outDim))), `job ${job}`);
    } else {
      for (let i = 0; i < outDim; i++) if (Number.isNaN(out[i]!)) assert.fail(`job ${job}: output ${i} not written`);
    }
  }
});
