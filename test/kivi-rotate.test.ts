/**
 * JOB_ROTATE (`rot=hadamard`) on the wasm and WebGPU back ends: the SIMD transform (wasm
 * assembly/hadamard.ts) and the WGSL job (webgpu/rotate.ts) against the TypeScript reference bit for bit,
 * on the rows the job names only; and a rotated KIVI cache decoding on each back end as it does on the
 * reference.
 */

import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { createCache, parseKvSpec } from '../src/cache/spec.js';
import { CacheStepper } from '../src/cache/step.js';
import type { CacheDims } from '../src/cache/types.js';
import { JOB_KEYS, JOB_ROTATE, SEG_ROWS } from '../src/kernels/layout.js';
import { StepPlan } from '../src/kernels/plan.js';
import { TsBackend } from '../src/kernels/ts/backend.js';
import type { AttnShape, Backend } from '../src/kernels/types.js';
import { createWasmBackend } from '../src/kernels/wasm/node.js';
import { fwht } from '../src/quant/hadamard.js';
import { randArray, rng } from './backend-conformance.js';
import { needWebgpu, swiftshaderBackend } from './webgpu-helpers.js';

const made: Backend[] = [];
after(() => {
  for (const b of made) b.dispose();
});

/** Rotate rows [r0, r0 + n) of `rows` qkv rows on backend B through a plan's pre phase; returns every row. */
async function rotateOn(B: Backend, shape: AttnShape, x: Float32Array, rows: number, r0: number, n: number): Promise<Float32Array> {
  const pool = B.createPagePool(shape);
  const qkv = B.tensor('f32', x.length);
  B.write(qkv, x);
  const plan = new StepPlan();
  plan.beginSubstep();
  plan.job('pre', JOB_ROTATE, JOB_KEYS);
  plan.dst(SEG_ROWS, r0, 0, n, 0, 0);
  B.cacheJobs(plan, 0, 'pre', 0, qkv, pool);
  const out = await B.read(qkv, 0, x.length);
  B.release(qkv);
  assert.equal(out.length, rows * (shape.numHeads + 2 * shape.numKvHeads) * shape.headDim);
  return out;
}

/** The expected rotation, by the reference's fwht on each query and key head of rows [r0, r0 + n). */
function expected(shape: AttnShape, x: Float32Array, r0: number, n: number): Float32Array {
  const { numHeads: H, numKvHeads: KV, headDim: d } = shape;
  const y = x.slice();
  const stride = (H + 2 * KV) * d;
  for (let r = r0; r < r0 + n; r++) for (let h = 0; h < H + KV; h++) fwht(y, r * stride + h * d, d);
  return y;
}

async function checkBitExact(B: Backend, dims: number[]): Promise<void> {
  for (const d of dims) {
    const shape: AttnShape = { numLayers: 1, numHeads: 4, numKvHeads: 2, headDim: d };
    const rows = 6;
    const x = randArray(rows * (4 + 4) * d, rng(d));
    // An outlier channel, as keys have: the transform spreads it over every channel.
    for (let r = 0; r < rows; r++) x[r * 8 * d + 4 * d + 1] = 40;
    const exp = expected(shape, x, 1, 4);
    const ref = await rotateOn(new TsBackend(), shape, x, rows, 1, 4);
    assert.deepEqual(ref, exp, `ts d=${d}`);
    const got = await rotateOn(B, shape, x, rows, 1, 4);
    // Bit for bit, values untouched and rows 0 and 5 untouched.
    assert.deepEqual(new Uint32Array(got.buffer), new Uint32Array(exp.buffer), `${B.name} d=${d}`);
    assert.notDeepEqual(got.subarray(8 * d, 9 * d), x.subarray(8 * d, 9 * d), `${B.name} d=${d}: row 1 rotated`);
  }
}

test('wasm: the SIMD Walsh–Hadamard job equals the reference bit for bit (d = 2 … 256), on the named rows only', async () => {
  const B = await createWasmBackend(1);
  made.push(B);
  await checkBitExact(B, [2, 4, 8, 16, 64, 128, 256]);
});

test('webgpu: the WGSL Walsh–Hadamard job equals the reference bit for bit (d = 16 … 256), on the named rows only', async (t) => {
  if (!needWebgpu(t)) return;
  const B = await swiftshaderBackend();
  made.push(B);
  await checkBitExact(B, [16, 32, 64, 128, 256]);
});

/** Decode outputs of a rotated 2-bit cache over a key-block flush, prefill then one token a step. */
async function decodeRotated(B: Backend, spec: string): Promise<Float32Array[]> {
  const dims: CacheDims = { numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 64 };
  const { numHeads: H, numKvHeads: KV, headDim: d } = dims;
  const pool = B.createPagePool(dims);
  const stepper = new CacheStepper(B, pool);
  const r = rng(11);
  const P = 20,
    steps = 30;
  const qkv = randArray((P + steps) * (H + 2 * KV) * d, r);
  const stride = (H + 2 * KV) * d;
  for (let t = 0; t < P + steps; t++) qkv[t * stride + H * d + 3] = 25; // an outlier key channel
  const cache = createCache(parseKvSpec(spec), pool);
  const outs: Float32Array[] = [];
  const first = await stepper.step([{ cache, rows: qkv.subarray(0, P * stride), n: P, mode: 'prefill' }], true);
  outs.push(first!.slice());
  for (let t = P; t < P + steps; t++) {
    const o = await stepper.step([{ cache, rows: qkv.subarray(t * stride, (t + 1) * stride), n: 1 }], true);
    outs.push(o!.slice());
  }
  cache.free();
  stepper.dispose();
  return outs;
}

for (const name of ['wasm', 'webgpu'] as const) {
  test(`${name}: a rot=hadamard cache decodes as on the reference (attention within the kernels' tolerance)`, async (t) => {
    if (name === 'webgpu' && !needWebgpu(t)) return;
    const B = name === 'wasm' ? await createWasmBackend(1) : await swiftshaderBackend({ serialMatmul: false });
    made.push(B);
    // R = 16: the key residual flushes into rotated 2-bit blocks during prefill and again while decoding.
    const spec = 'kivi:k=2,v=2,g=16,r=16,residual=fp32,rot=hadamard';
    const ref = await decodeRotated(new TsBackend(), spec);
    const got = await decodeRotated(B, spec);
    // The unrotated cache differs from both by far more than the kernels do (the test can fail).
    const plain = await decodeRotated(new TsBackend(), 'kivi:k=2,v=2,g=16,r=16,residual=fp32');
    const tol = name === 'wasm' ? 5e-2 : 1e-4;
    let far = 0;
    for (let i = 0; i < ref.length; i++) {
      const scale = Math.max(...ref[i]!.map(Math.abs));
      for (let k = 0; k < ref[i]!.length; k++) {
        assert.ok(Math.abs(got[i]![k]! - ref[i]![k]!) <= tol * scale, `${name} step ${i}[${k}]: ${got[i]![k]} vs ${ref[i]![k]}`);
        far = Math.max(far, Math.abs(plain[i]![k]! - ref[i]![k]!) / scale);
      }
    }
    assert.ok(far > 2 * tol, `rotation changes the 2-bit cache's output (${far})`);
  });
}
