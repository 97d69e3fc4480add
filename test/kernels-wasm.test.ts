/**
 * The WebAssembly back end: the op-table conformance suite against the TypeScript reference (on 1 and 2
 * threads), and what is the wasm back end's own: memory growth and reuse, errors on helper threads,
 * the job protocol under load, and threads never changing a bit.
 */

import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { createCache, parseKvSpec } from '../src/cache/spec.js';
import { CacheStepper } from '../src/cache/step.js';
import { OP_ATTEND } from '../src/kernels/wasm/jobs.js';
import type { WasmBackend, WasmTensor } from '../src/kernels/wasm/kernels.js';
import { createWasmBackend } from '../src/kernels/wasm/node.js';
import { fromHalfBits } from '../src/quant/float16.js';
import { ALL_SPECS, backendConformance, randArray, rng, to16 } from './backend-conformance.js';

const made: WasmBackend[] = [];
async function wasm(threads: number): Promise<WasmBackend> {
  const b = await createWasmBackend(threads);
  made.push(b);
  return b;
}
after(() => {
  for (const b of made) b.dispose();
});

// The wasm KIVI kernels round the scaled query (to 1/6553 of its largest element at 2 bits) and the
// attention weights to int16 for their integer dot products (the docs/KIVI.md §6 trick on CPUs). With the
// suite's outlier channels (×12 in queries, keys and values alike) that moves quantized attention by
// up to ~4% of the output's largest element (measured), against ~1e-6 for float kernels.
backendConformance('wasm ×2', () => wasm(2), { kiviRelTol: 5e-2, weightTypes: ['f32', 'bf16', 'f16'] });
backendConformance('wasm ×1', () => wasm(1), { kiviRelTol: 5e-2, specs: ['fp16', 'kivi2'] });

test('wasm: threads never change a bit (matmul)', async () => {
  const [W1, W2] = [await wasm(1), await wasm(2)];
  const r = rng(7);
  const rows = 7,
    inDim = 301,
    outDim = 1030;
  const x = randArray(rows * inDim, r),
    w = randArray(outDim * inDim, r),
    b = randArray(outDim, r);
  const outs: Float32Array[] = [];
  for (const W of [W1, W2]) {
    const [xt, wt, bt, ot] = [W.tensor('f32', x.length), W.tensor('f32', w.length), W.tensor('f32', b.length), W.tensor('f32', rows * outDim)];
    W.write(xt, x);
    W.write(wt, w);
    W.write(bt, b);
    W.matmul(ot, xt, wt, rows, inDim, outDim, bt);
    outs.push(await W.read(ot, 0, rows * outDim));
  }
  assert.deepEqual(outs[0], outs[1]);
});

test('wasm: memory grows and freed blocks are reused; allocations are zeroed', async () => {
  const k = await wasm(1);
  const before = k.memoryStats();
  const big = k.tensor('f32', 20 << 20) as WasmTensor; // 80 MiB: forces growth
  (big.data as Float32Array)[big.length - 1] = 1;
  const grown = k.memoryStats();
  assert.ok(grown.memory > before.memory + (79 << 20), `memory ${before.memory} → ${grown.memory}`);
  assert.ok(grown.memory >= big.addr + big.length * 4 + 64, 'readable past the last block');
  const small = k.tensor('f32', 10) as WasmTensor;
  (small.data as Float32Array).fill(3);
  assert.equal((big.data as Float32Array)[big.length - 1], 1, 'older views stay valid after growth');
  k.release(big);
  const again = k.tensor('f32', 20 << 20) as WasmTensor;
  assert.equal(again.addr, big.addr, 'the freed block is reused');
  assert.equal((again.data as Float32Array)[again.length - 1], 0, 'allocations are zeroed');
  assert.equal(k.memoryStats().memory, grown.memory, 'no growth for a reused block');
  assert.throws(() => k.heap.free(12345), /not an allocated block/);
});

test('wasm: a trap on any thread surfaces as an error, and the back end keeps working', async () => {
  const W = await wasm(2);
  // Task records 3 GiB into a memory of a few MiB: every thread's attend_task traps.
  const runner = (W as unknown as { runner: { run(op: number, args: number[], n: number): void } }).runner;
  assert.throws(() => runner.run(OP_ATTEND, [3 * 2 ** 30, 3 * 2 ** 30, 0, 0, 0, 4, 2, 64, 1024, 64], 8), /out of bounds|helper thread/);
  const r = rng(9);
  const x = W.tensor('f32', 64),
    w = W.tensor('f32', 64 * 2048),
    o = W.tensor('f32', 2048);
  W.write(x, randArray(64, r));
  W.write(w, randArray(64 * 2048, r));
  W.matmul(o, x, w, 1, 64, 2048);
  assert.ok((await W.read(o, 0, 2048)).every((v) => Number.isFinite(v)));
});

test('wasm: thousands of back-to-back parallel jobs of varying item counts: no lost or double-counted item', async () => {
  const [W, W1] = [await wasm(2), await wasm(1)];
  const r = rng(10);
  const inDim = 256,
    maxOut = 1200;
  const wd = randArray(maxOut * inDim, r),
    xd = randArray(inDim, r);
  const w = W.tensor('f32', wd.length),
    x = W.tensor('f32', inDim),
    w1 = W1.tensor('f32', wd.length),
    x1 = W1.tensor('f32', inDim);
  W.write(w, wd);
  W.write(x, xd);
  W1.write(w1, wd);
  W1.write(x1, xd);
  const out = W.tensor('f32', maxOut) as WasmTensor,
    ref = W1.tensor('f32', maxOut);
  const o = out.data as Float32Array;
  for (let job = 0; job < 3000; job++) {
    const outDim = 512 + Math.floor(r() * (maxOut - 512)); // ≥ 131072 multiply-adds: split over threads
    o.fill(NaN);
    W.matmul(out, x, w, 1, inDim, outDim);
    if (job % 100 === 0) {
      W1.matmul(ref, x1, w1, 1, inDim, outDim);
      assert.deepEqual(o.subarray(0, outDim), await W1.read(ref, 0, outDim), `job ${job}`);
    } else {
      for (let i = 0; i < outDim; i++) if (Number.isNaN(o[i]!)) assert.fail(`job ${job}: output ${i} not written`);
    }
  }
});

/** Random 16-bit weights: bf16 or f16 patterns, with tiny values, f16 subnormals and signed zeros among them. */
function rand16(dtype: 'bf16' | 'f16', n: number, r: () => number): Uint16Array {
  const w = new Float32Array(n);
  for (let i = 0; i < n; i++) w[i] = (r() * 2 - 1) * (r() < 0.1 ? 1e-6 : 0.5);
  const bits = to16(w, dtype);
  if (dtype === 'f16') for (let i = 0; i < n; i++) if (r() < 0.02) bits[i] = (r() < 0.5 ? 0x8000 : 0) | Math.floor(r() * 0x400);
  return bits;
}

/** The exact float32 value of each 16-bit pattern. */
function widen(bits: Uint16Array, dtype: 'bf16' | 'f16'): Float32Array {
  const out = new Float32Array(bits.length);
  const u = new Uint32Array(out.buffer);
  for (let i = 0; i < bits.length; i++) {
    if (dtype === 'f16') out[i] = fromHalfBits(bits[i]!);
    else u[i] = bits[i]! << 16;
  }
  return out;
}

const MATMUL16_SHAPES = [
  [1, 512, 96],
  [1, 7, 13],
  [1, 9, 17],
  [1, 12, 8],
  [1, 1030, 41],
  [1, 2048, 300],
  [2, 37, 19],
  [3, 64, 5],
  [4, 130, 33],
  [5, 131, 34],
  [6, 66, 18],
  [7, 20, 9],
  [16, 9, 7],
  [17, 13, 22],
  [33, 130, 9],
  [64, 512, 1030],
  [70, 36, 9],
  // Prefill-sized batches: 128-row panel blocks, the last one of 14 rows (the few-rows path) or of 44.
  [270, 33, 21],
  [300, 20, 10],
  // Panels over several blocks of 512 inputs (accumulators kept between blocks), with tails of 3, 2, 1 inputs.
  [17, 2051, 6],
  [40, 1030, 13],
  [131, 1301, 9],
  [1, 3, 2],
  // Inputs a multiple of 8: matrices tiled (whole 8-row tiles; the last rows row-major).
  [1, 64, 21],
  [2, 128, 37],
  [4, 1024, 19],
  [5, 256, 16],
  [16, 1024, 13],
  [200, 64, 27],
  [7, 8, 8],
] as const;

test('wasm: 16-bit matmul (bf16, f16) is bit for bit the float32 matmul of the widened weights (GEMV, few rows, panels; plain and tiled matrices; 1 and 2 threads)', async () => {
  const [W1, W2] = [await wasm(1), await wasm(2)];
  const r = rng(21);
  for (const dtype of ['bf16', 'f16'] as const) {
    for (const [rows, inDim, outDim] of MATMUL16_SHAPES) {
      for (const withBias of [false, true]) {
        const what = `${dtype} ${rows}×${inDim}→${outDim}${withBias ? ' +bias' : ''}`;
        const xd = randArray(rows * inDim, r),
          bits = rand16(dtype, outDim * inDim, r);
        const bd = withBias ? randArray(outDim, r) : undefined;
        const results: Float32Array[] = [];
        for (const W of [W1, W2]) {
          const x = W.tensor('f32', xd.length),
            w16 = W.tensor(dtype, bits.length),
            wt = W.matrix(dtype, outDim, inDim),
            w32 = W.tensor('f32', bits.length);
          const b = bd ? W.tensor('f32', outDim) : undefined;
          W.write(x, xd);
          W.write(w16, bits);
          // The tiled matrix written in two pieces that split a tile's row.
          const cut = Math.floor(bits.length / 3);
          W.write(wt, bits.subarray(0, cut));
          W.write(wt, bits.subarray(cut), cut);
          assert.equal((wt as WasmTensor).tiled, inDim % 8 === 0 ? outDim - (outDim % 8) : 0, `${what}: tiled rows`);
          W.write(w32, widen(bits, dtype));
          if (b) W.write(b, bd!);
          const o16 = W.tensor('f32', rows * outDim),
            ot = W.tensor('f32', rows * outDim),
            o32 = W.tensor('f32', rows * outDim);
          W.matmul(o16, x, w16, rows, inDim, outDim, b);
          W.matmul(ot, x, wt, rows, inDim, outDim, b);
          W.matmul(o32, x, w32, rows, inDim, outDim, b);
          const [v16, vt, v32] = [await W.read(o16, 0, rows * outDim), await W.read(ot, 0, rows * outDim), await W.read(o32, 0, rows * outDim)];
          assert.deepEqual(v16, v32, `${what} on ${W.threads} thread(s): 16-bit vs float32 weights`);
          assert.deepEqual(vt, v32, `${what} on ${W.threads} thread(s): tiled 16-bit vs float32 weights`);
          results.push(v16);
          for (const t of [x, w16, wt, w32, o16, ot, o32, ...(b ? [b] : [])]) W.release(t);
        }
        assert.deepEqual(results[0], results[1], `${what}: 1 thread vs 2`);
      }
    }
  }
});

test('wasm: a tiled matrix is the plain one to embed and to fillRandom, and is stored in 8-row tiles', async () => {
  const W = await wasm(1);
  const r = rng(23);
  for (const [rows, cols] of [
    [21, 64],
    [16, 8],
    [13, 12],
  ] as const) {
    const bits = rand16('bf16', rows * cols, r);
    const plain = W.tensor('bf16', bits.length),
      tiled = W.matrix('bf16', rows, cols) as WasmTensor;
    W.write(plain, bits);
    W.write(tiled, bits);
    if (cols >= 24) {
      // Row 9, inputs 16..23: tile 1 (rows 8..15), third 8-input block, second row of the tile.
      assert.deepEqual([...tiled.data.subarray(8 * cols + 2 * 64 + 8, 8 * cols + 2 * 64 + 16)], [...bits.subarray(9 * cols + 16, 9 * cols + 24)]);
    }
    assert.equal(tiled.tiled, cols % 8 === 0 ? rows - (rows % 8) : 0);
    const ids = Int32Array.from([rows - 1, 0, 9, 3, rows - 1]);
    const [ep, et] = [W.tensor('f32', ids.length * cols), W.tensor('f32', ids.length * cols)];
    W.embed(ep, plain, ids, cols);
    W.embed(et, tiled, ids, cols);
    assert.deepEqual(await W.read(et, 0, ids.length * cols), await W.read(ep, 0, ids.length * cols), `${rows}×${cols}: embed`);
    W.fillRandom(plain, 5, 0.02);
    W.fillRandom(tiled, 5, 0.02);
    const x = W.tensor('f32', cols);
    W.write(x, randArray(cols, r));
    const [mp, mt] = [W.tensor('f32', rows), W.tensor('f32', rows)];
    W.matmul(mp, x, plain, 1, cols, rows);
    W.matmul(mt, x, tiled, 1, cols, rows);
    assert.deepEqual(await W.read(mt, 0, rows), await W.read(mp, 0, rows), `${rows}×${cols}: fillRandom`);
    for (const t of [plain, tiled, ep, et, x, mp, mt]) W.release(t);
  }
});

test('wasm: every bf16 pattern and every finite f16 pattern converts exactly inside matmul', async () => {
  // 65536 outputs of a 1-input matmul with x = 1: out[o] is weight o as float32.
  const W = await wasm(1);
  const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
  for (const dtype of ['bf16', 'f16'] as const) {
    const x = W.tensor('f32', 1),
      w = W.tensor(dtype, 65536),
      o = W.tensor('f32', 65536);
    W.write(x, new Float32Array([1]));
    W.write(w, all);
    W.matmul(o, x, w, 1, 1, 65536);
    const got = await W.read(o, 0, 65536);
    const want = widen(all, dtype);
    for (let i = 0; i < 65536; i++) {
      if (dtype === 'f16' && (i & 0x7c00) === 0x7c00) continue; // ±Inf/NaN f16 weights: the loader refuses them
      if (Number.isNaN(want[i]!) && Number.isNaN(got[i]!)) continue;
      // The sum starts at +0, so a −0 weight gives +0 (as a float32 −0 weight does).
      if (got[i] !== want[i]) assert.fail(`${dtype} bits 0x${i.toString(16)}: ${got[i]} vs ${want[i]}`);
    }
    for (const t of [x, w, o]) W.release(t);
  }
});

test('wasm: RMSNorm (f32, bf16, f16 weights), RoPE and add are bit for bit the reference, and SwiGLU the same on any thread count (1 row and 300)', async () => {
  const { TsBackend } = await import('../src/kernels/ts/backend.js');
  const ref = new TsBackend();
  const [W1, W2] = [await wasm(1), await wasm(2)];
  const r = rng(41);
  const shape = { numLayers: 1, numHeads: 4, numKvHeads: 2, headDim: 64 };
  const D = 132;
  const stride = (4 + 2 * 2) * 64;
  for (const rows of [1, 300]) {
    const x = randArray(rows * D, r, 3);
    x[5] = 1e-30; // tiny and large values: float64 sums and products
    x[7] = 3e4;
    const y = randArray(rows * D, r);
    const q = randArray(rows * stride, r, 2);
    const positions = Int32Array.from({ length: rows }, (_, i) => (i * 7) % 400);
    const cos = randArray(400 * 32, r),
      sin = randArray(400 * 32, r);
    const gu = randArray(rows * 2 * D, r, 4);
    const norms = [randArray(D, r, 2), randArray(D, r, 2), randArray(D, r, 2)];
    const outs: Float32Array[][] = [];
    for (const B of [ref, W1, W2]) {
      const got: Float32Array[] = [];
      const put = (data: Float32Array | Uint16Array, dtype: 'f32' | 'bf16' | 'f16' = 'f32') => {
        const t = B.tensor(dtype, data.length);
        B.write(t, data);
        return t;
      };
      for (const [k, dtype] of (['f32', 'bf16', 'f16'] as const).entries()) {
        const wf = norms[k]!;
        const w = dtype === 'f32' ? put(wf) : put(to16(wf, dtype), dtype);
        const [xt, ot] = [put(x), B.tensor('f32', rows * D)];
        B.rmsnorm(ot, xt, w, rows, D, 1e-5);
        got.push(await B.read(ot, 0, rows * D));
        B.rmsnorm(xt, xt, w, rows, D, 1e-6); // in place, as the output head runs it
        got.push(await B.read(xt, 0, rows * D));
      }
      const qt = put(q);
      B.rope(qt, rows, positions, put(cos), put(sin), shape);
      got.push(await B.read(qt, 0, rows * stride));
      const [xt, yt] = [put(x), put(y)];
      B.add(xt, yt, rows * D - 3);
      got.push(await B.read(xt, 0, rows * D));
      const at = B.tensor('f32', rows * D);
      B.swiglu(at, put(gu), rows, D);
      got.push(await B.read(at, 0, rows * D));
      outs.push(got);
    }
    const swi = outs[0]!.length - 1;
    for (let i = 0; i < swi; i++) {
      assert.deepEqual(outs[1]![i], outs[0]![i], `${rows} row(s), op ${i}: 1 thread vs reference`);
      assert.deepEqual(outs[2]![i], outs[0]![i], `${rows} row(s), op ${i}: 2 threads vs reference`);
    }
    assert.deepEqual(outs[2]![swi], outs[1]![swi], `${rows} row(s): swiglu on 2 threads vs 1`);
  }
});

/** qkv rows of T tokens: outlier channels, tiny and large values, and groups of zeros of either sign. */
function jobRows(T: number, qkvDim: number, d: number, r: () => number): Float32Array {
  const rows = new Float32Array(T * qkvDim);
  for (let t = 0; t < T; t++) {
    for (let i = 0; i < qkvDim; i++) {
      const c = i % d;
      let v = (r() * 2 - 1) * (c === 5 ? 12 : 1);
      if (c === 7) v = 0; // a key channel / value group with float16 scale 0
      if (c === 9) v = t % 3 === 0 ? -0 : 0; // a zero minimum whose sign depends on the order
      if (c >= 40 && c < 48) v *= 1e-6; // float16-subnormal scales
      if (t % 17 === 3 && c < 32) v = (t & 1 ? -0 : 0) * v; // whole value groups of zeros
      if (t % 23 === 5 && c === 11) v = 3e4; // large
      rows[t * qkvDim + i] = v;
    }
  }
  return rows;
}

test('wasm: cache jobs (store, key blocks, value pages) write the reference pages byte for byte, and fail as it does', async () => {
  const { TsBackend } = await import('../src/kernels/ts/backend.js');
  const ref = new TsBackend();
  const shape = { numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 64 };
  const { numHeads: H, numKvHeads: KV, headDim: d } = shape;
  const qkvDim = (H + 2 * KV) * d;
  const specs = [...ALL_SPECS, 'kivi:k=4,v=2,gk=64,gv=16,r=128,rot=hadamard', 'kivi:k=2,v=4,g=32,r=128,residual=fp32', 'kivi:k=4,v=4,g=8,r=16'];
  for (const threads of [1, 2]) {
    const W = await wasm(threads);
    const pools = [ref.createPagePool(shape), W.createPagePool(shape)] as const;
    const steppers = pools.map((p, i) => new CacheStepper(i === 0 ? ref : W, p));
    const rows = jobRows(300, qkvDim, d, rng(31));
    for (const name of specs) {
      const spec = parseKvSpec(name);
      const caches = pools.map((p) => createCache(spec, p));
      let at = 0;
      // A prefill, a chunk continuing it, then decode steps (keys quantized from the residual pages).
      for (const n of [150, 37, ...Array<number>(70).fill(1)]) {
        for (const [i, st] of steppers.entries()) {
          await st.step([{ cache: caches[i]!, rows: rows.subarray(at * qkvDim, (at + n) * qkvDim), n, mode: n === 1 ? 'decode' : 'prefill' }]);
        }
        at += n;
        if (n > 1 || at % 10 === 0) {
          const [a, b] = [await caches[0]!.save(), await caches[1]!.save()];
          assert.deepEqual(b.state, a.state, `${name} at ${at}`);
          assert.equal(b.pages.length, a.pages.length, `${name} at ${at}: pages`);
          for (let p = 0; p < a.pages.length; p++) assert.deepEqual(b.pages[p]!.bytes, a.pages[p]!.bytes, `${name} at ${at}: page ${p} (${threads} thread(s))`);
        }
      }
      for (const c of caches) c.free();
    }
    // A non-finite key in a quantized block, and a value range past float16: the reference's errors.
    for (const [what, at, i] of [
      ['non-finite', 2, H * d + 3],
      ['past float16', 40, (H + KV) * d + 1],
    ] as const) {
      const bad = rows.slice(0, 250 * qkvDim);
      bad[at * qkvDim + i] = what === 'non-finite' ? Infinity : 3e5;
      const msgs: string[] = [];
      for (const [k, st] of steppers.entries()) {
        const cache = createCache(parseKvSpec('kivi2'), pools[k]);
        await assert.rejects(st.step([{ cache, rows: bad, n: 250 }]), (e: Error) => {
          msgs.push(e.message);
          return true;
        });
        cache.free();
      }
      assert.equal(msgs[1], msgs[0], what);
      assert.match(msgs[0]!, what === 'non-finite' ? /non-finite/ : /float16/);
    }
    for (const s of steppers) s.dispose();
  }
});

test('wasm: prefill blocks match the one-task-at-a-time attention up to float32 summation order (every cache kind, two sequences per step, chunks over a cache, 1 and 2 threads)', async () => {
  const shape = { numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 64 };
  const { numHeads: H, numKvHeads: KV, headDim: d } = shape;
  const qkvDim = (H + 2 * KV) * d;
  const perTask = await wasm(1);
  perTask.prefillBlocks = false;
  for (const threads of [1, 2]) {
    const blocks = await wasm(threads);
    const pools = [perTask.createPagePool(shape), blocks.createPagePool(shape)] as const;
    const steppers = pools.map((p, i) => new CacheStepper(i === 0 ? perTask : blocks, p));
    const r = rng(11);
    for (const name of ALL_SPECS) {
      const spec = parseKvSpec(name);
      // Two sequences each: chunks of 70 and 45 rows in one step (two blocks runs), then 37 and 1 (a chunk
      // over the cache next to a decoded token), then a chunk of 100 and of 17.
      const caches = pools.map((p) => [createCache(spec, p), createCache(spec, p)]);
      for (const [na, nb] of [
        [70, 45],
        [37, 1],
        [100, 17],
      ] as const) {
        const rows = [randArray(na * qkvDim, r, 3), randArray(nb * qkvDim, r, 3)];
        const items = (i: number) => [
          { cache: caches[i]![0]!, rows: rows[0]!, n: na, mode: 'prefill' as const },
          { cache: caches[i]![1]!, rows: rows[1]!, n: nb, mode: nb === 1 ? ('decode' as const) : ('prefill' as const) },
        ];
        const exp = (await steppers[0]!.step(items(0)))!;
        const got = (await steppers[1]!.step(items(1)))!;
        assert.ok(exp.some((v) => v !== 0));
        // The per-task path is the fused online-softmax pass, blocks the scores-softmax-values pass: float32
        // sums in another order (~1e-6), and the KIVI value kernels' 16-bit integer weights rounded from
        // differently scaled probabilities (up to ~2e-4 of the largest output; each path is ~5e-4 from the TS
        // reference there).
        let scale = 0;
        for (const v of exp) scale = Math.max(scale, Math.abs(v));
        let worst = 0;
        for (let i = 0; i < exp.length; i++) worst = Math.max(worst, Math.abs(got[i]! - exp[i]!));
        assert.equal(got.length, exp.length);
        assert.ok(worst <= 1e-3 * scale, `${name}, ${threads} threads: chunks of ${na} and ${nb}: error ${worst} of ${scale}`);
      }
      for (const c of caches.flat()) c.free();
    }
    for (const s of steppers) s.dispose();
  }
});
