/**
 * The WebGPU back end on SwiftShader (a Vulkan driver on the CPU; CI has no GPU): the op-table
 * conformance suite against the TypeScript reference with the GPU's kernels, for every cache kind the
 * GPU runs and every weight type; then what is the GPU's own: the software adapter's matmul giving the
 * same bits, weights and cache arenas split over several bindings, bit-exact quantized pages, fake
 * specs refused, the random fill.
 */

import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { createCache, parseKvSpec } from '../src/cache/spec.js';
import { CacheStepper } from '../src/cache/step.js';
import { TsBackend } from '../src/kernels/ts/backend.js';
import { attendWgsl, attnGeometry } from '../src/kernels/webgpu/attention.js';
import { parseAttnVariant } from '../src/kernels/webgpu/attn-variant.js';
import type { WebGpuBackend } from '../src/kernels/webgpu/backend.js';
import {
  BULK_ITEMS_GQA,
  BULK_ITEMS_MHA,
  BULK_LONG_MHA,
  BULK_MIN_DEFAULT,
  BULK_MIN_GQA,
  type BulkBuild,
  bulkGeometry,
  bulkWgsl,
  parseBulkSetting,
  resolveBulk,
} from '../src/kernels/webgpu/bulk.js';
import type { WebGpuOptions } from '../src/kernels/webgpu/device.js';
import type { WebGpuPagePool } from '../src/kernels/webgpu/pool.js';
import { KiviError } from '../src/util/errors.js';
import { ALL_SPECS, assertClose, backendConformance, randArray, rng, to16 } from './backend-conformance.js';
import { reportMissing, swiftshaderBackend } from './webgpu-helpers.js';

const made: WebGpuBackend[] = [];
async function gpu(o: Omit<WebGpuOptions, 'swiftshader'> = {}): Promise<WebGpuBackend> {
  const b = await swiftshaderBackend(o);
  made.push(b);
  return b;
}
after(() => {
  for (const b of made) b.dispose();
});

if (!reportMissing('kernels-webgpu')) {
  // The kernels a GPU runs (SwiftShader would otherwise take the one-thread-per-output matmul).
  // Quantized attention reads a code c as the float 1 + c·2^-b and takes the 1's away through the folded
  // sums, which costs a few bits of float32 against the reference's double sums: measured up to ~2e-5
  // of the output's largest element on this suite's outlier channels (float kernels: < 1e-5).
  backendConformance('webgpu (SwiftShader)', () => gpu({ serialMatmul: false }), {
    specs: ALL_SPECS.filter((s) => !s.startsWith('fake')),
    weightTypes: ['f32', 'f16', 'bf16'],
    kiviRelTol: 1e-4,
  });
}

/** A random float tensor on a back end (weights in `dtype`). */
function upload(b: { tensor: WebGpuBackend['tensor']; write: WebGpuBackend['write'] }, data: Float32Array, dtype: 'f32' | 'f16' | 'bf16' = 'f32') {
  const t = b.tensor(dtype, data.length);
  b.write(t, dtype === 'f32' ? data : to16(data, dtype));
  return t;
}

/** A 16-bit tensor from its bits. */
function upload16(b: { tensor: WebGpuBackend['tensor']; write: WebGpuBackend['write'] }, bits: Uint16Array) {
  const t = b.tensor('f16', bits.length);
  b.write(t, bits);
  return t;
}

/** A random matmul with bias gives the same bits through the GPU kernels (GEMV/GEMM) as through the serial one. */
async function assertSerialBits(b: WebGpuBackend, rows: number, inDim: number, outDim: number, wt: 'f32' | 'f16' | 'bf16', r: () => number) {
  const x = upload(b, randArray(rows * inDim, r)),
    w = upload(b, randArray(outDim * inDim, r), wt),
    bias = upload(b, randArray(outDim, r));
  const out = b.tensor('f32', rows * outDim);
  const res: Float32Array[] = [];
  for (const serial of [false, true]) {
    b.serialMatmul = serial;
    b.matmul(out, x, w, rows, inDim, outDim, bias);
    res.push(await b.read(out, 0, rows * outDim));
  }
  b.serialMatmul = false;
  assert.deepEqual(res[1], res[0], `${wt} ${rows}×${inDim}→${outDim}`);
  for (const t of [x, w, bias, out]) b.release(t);
}

if (!reportMissing('kernels-webgpu: own')) {
  test('webgpu: the one-thread-per-output matmul gives the bits of GEMV and GEMM (1 to 100 rows, odd widths)', async () => {
    const b = await gpu({ serialMatmul: false });
    const r = rng(11);
    for (const wt of ['f32', 'bf16', 'f16'] as const) {
      // Every GEMV shape (1, 2, 4 rows; blocks of 4 to 8 rows; blocks of 8 to 512), rows past a block's end, GEMM past 512.
      for (const [rows, inDim, outDim] of [
        [1, 301, 67],
        [2, 264, 33],
        [5, 256, 130],
        [8, 264, 67],
        [9, 37, 5],
        [16, 256, 70],
        [20, 256, 70],
        [33, 301, 19],
        [64, 264, 17],
        [65, 256, 70],
        [100, 37, 67],
        [513, 37, 9],
      ] as const) {
        await assertSerialBits(b, rows, inDim, outDim, wt, r);
      }
    }
  });

  test('webgpu: any GEMV table (KIVI_WEBGPU_GEMV) gives the same bits; a bad one is refused in one line', async () => {
    // Odd shapes: 3 outputs a thread, 3 chunks in flight, blocks of 2 and of 16 rows, 2 warps, x staged in
    // workgroup memory (to 20 rows) or not; GEMM past 40.
    const b = await gpu({ serialMatmul: false, gemvTable: '3:2,3,3,2,x;20:16,2,1,2,x;40:16,2,1,2' });
    const r = rng(17);
    for (const [rows, inDim, outDim] of [
      [3, 301, 37],
      [17, 264, 20],
      [33, 264, 20],
      [41, 256, 9],
    ] as const) {
      await assertSerialBits(b, rows, inDim, outDim, 'f16', r);
    }
    for (const [table, why] of [
      ['8:8,2,2', /"8:8,2,2" is not maxRows:R,OT,U,G\[,x\]/],
      ['8:8,2,2,4;4:4,1,1,1', /maxRows must rise from 1/],
      ['8:8,9,1,4', /8,9,1,4 is out of range/],
      ['8:32,2,1,2,x', /32,2,1,2 is out of range/],
    ] as const) {
      await assert.rejects(gpu({ gemvTable: table }), (e: Error) => e instanceof KiviError && !e.message.includes('\n') && why.test(e.message));
    }
  });

  test('webgpu: GEMV and GEMM with float16 weights match the reference at every row count the dispatch tells apart', async () => {
    const b = await gpu({ serialMatmul: false });
    const ref = new TsBackend();
    const r = rng(16);
    // 1–8 rows: one or two blocks; 9–512: blocks of 8 (a partial last one at 33 and 100); 520: the tiled GEMM.
    for (const [rows, inDim, outDim] of [
      [1, 264, 67],
      [8, 301, 33],
      [9, 264, 70],
      [16, 256, 17],
      [33, 301, 67],
      [64, 264, 33],
      [100, 256, 67],
      [520, 64, 17],
    ] as const) {
      const xd = randArray(rows * inDim, r),
        wd = to16(randArray(outDim * inDim, r), 'f16'),
        bd = randArray(outDim, r);
      const o = b.tensor('f32', rows * outDim),
        oRef = ref.tensor('f32', rows * outDim);
      b.matmul(o, upload(b, xd), upload16(b, wd), rows, inDim, outDim, upload(b, bd));
      const wRef = upload16(ref, wd);
      ref.matmul(oRef, upload(ref, xd), wRef, rows, inDim, outDim, upload(ref, bd));
      // Widened weights, read back through an embedding of the whole matrix as one row.
      const wide = ref.tensor('f32', outDim * inDim);
      ref.embed(wide, wRef, Int32Array.of(0), outDim * inDim);
      const wv = await ref.read(wide, 0, outDim * inDim);
      const exp = await ref.read(oRef, 0, rows * outDim);
      assertClose(
        await b.read(o, 0, rows * outDim),
        exp,
        (i) => {
          const row = Math.floor(i / outDim),
            oo = i % outDim;
          let s = Math.abs(bd[oo]!);
          for (let j = 0; j < inDim; j++) s += Math.abs(xd[row * inDim + j]! * wv[oo * inDim + j]!);
          return (inDim + 2) * 2 ** -24 * s;
        },
        `f16 matmul ${rows}×${inDim}→${outDim}`,
      );
    }
  });
}

if (!reportMissing('kernels-webgpu: bindings, pages, batches')) {
  test("webgpu: weights and cache arenas larger than one binding are split over several, with the reference's results", async () => {
    const b = await gpu({ maxBindingBytes: 64 * 1024, maxArenas: 4, serialMatmul: false });
    const ref = new TsBackend();
    const r = rng(12);
    // Matmul weights of 150 KiB (bf16) and 300 KiB (f32): three and five windows; GEMV and GEMM.
    for (const wt of ['bf16', 'f32'] as const) {
      for (const rows of [1, 12, 70, 530]) {
        const inDim = 256,
          outDim = 300;
        const xd = randArray(rows * inDim, r),
          wd = randArray(outDim * inDim, r);
        const o = b.tensor('f32', rows * outDim),
          oRef = ref.tensor('f32', rows * outDim);
        b.matmul(o, upload(b, xd), upload(b, wd, wt), rows, inDim, outDim);
        ref.matmul(oRef, upload(ref, xd), upload(ref, wd, wt), rows, inDim, outDim);
        const exp = await ref.read(oRef, 0, rows * outDim);
        assertClose(await b.read(o, 0, rows * outDim), exp, () => 1e-5 * 16, `${wt} matmul over windows, ${rows} rows`);
      }
    }
    // An embedding table of 94 KiB (bf16): rows from both windows.
    const D = 96,
      V = 500;
    const td = randArray(V * D, r);
    const ids = Int32Array.from([0, 499, 250, 341, 1, 340]);
    const e = b.tensor('f32', ids.length * D),
      eRef = ref.tensor('f32', ids.length * D);
    b.embed(e, upload(b, td, 'bf16'), ids, D);
    ref.embed(eRef, upload(ref, td, 'bf16'), ids, D);
    assert.deepEqual(await b.read(e, 0, ids.length * D), await ref.read(eRef, 0, ids.length * D));
    // Cache pages spread over several arena bindings: the attention shader for 2–4 arenas takes minutes to
    // compile on SwiftShader (and GiBs of memory), so this part runs with KIVI_WEBGPU_SLOW=1 or on a GPU.
    if (b.fallback && !process.env.KIVI_WEBGPU_SLOW) return;
    // Cache pages of 32 KiB per layer: one per 64 KiB arena slot, so four pages fill the four slots.
    const shape = { numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 64 };
    const qkvDim = 8 * 64;
    const pools = [ref.createPagePool(shape), b.createPagePool(shape)] as const;
    const st = [new CacheStepper(ref, pools[0]), new CacheStepper(b, pools[1])];
    const caches = pools.map((p) => createCache(parseKvSpec('fp32'), p));
    const rows = randArray(140 * qkvDim, r);
    let at = 0;
    for (const n of [70, 20, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]) {
      const item = (i: number) => ({
        cache: caches[i]!,
        rows: rows.subarray(at * qkvDim, (at + n) * qkvDim),
        n,
        mode: n > 1 ? ('prefill' as const) : ('decode' as const),
      });
      const exp = (await st[0]!.step([item(0)]))!;
      assertClose((await st[1]!.step([item(1)]))!, exp, () => 1e-5 * Math.max(...exp.map(Math.abs)), `fp32 at ${at}`);
      at += n;
    }
    assert.equal(pools[1].slotsInUse, 4, 'four arena slots in use');
    // A fifth page has nowhere to go: one clear line.
    await assert.rejects(
      st[1]!.step([{ cache: caches[1]!, rows: rows.subarray(0, 40 * qkvDim), n: 40, mode: 'decode' }]),
      (err: Error) =>
        err instanceof KiviError && err.status === 503 && /the KV cache needs more than 4 × 64\.00 KiB per layer of GPU buffers/.test(err.message),
    );
    for (const c of caches) c.free();
  });

  test('webgpu: cache arena slots grow in steps, keep every page across the copies, and leave at most a step unused', async () => {
    // Bindings of 64 KiB: a slot doubles up to 4 KiB (1/16), then grows 4 KiB at a time; pages of 1 KiB a layer.
    const b = await gpu({ maxBindingBytes: 64 * 1024, maxArenas: 4, serialMatmul: false });
    const shape = { numLayers: 3, numHeads: 4, numKvHeads: 2, headDim: 64 };
    const pool = b.createPagePool(shape) as WebGpuPagePool;
    const section = 512;
    const r = rng(31);
    const pages: { page: number; bytes: Uint8Array }[] = [];
    for (let i = 0; i < 100; i++) {
      const page = pool.alloc(section);
      const bytes = Uint8Array.from({ length: shape.numLayers * shape.numKvHeads * section }, () => Math.floor(r() * 256));
      pool.writePage(page, section, bytes);
      pages.push({ page, bytes });
      // Every slot holds at most one step (4 KiB a layer) that no page has reached yet.
      assert.ok(pool.unusedBytes <= pool.slotsInUse * 4096 * shape.numLayers, `${pool.unusedBytes} bytes unused after ${i + 1} pages`);
    }
    assert.equal(pool.slotsInUse, 2, '63 pages fill the first 64 KiB slot');
    for (const { page, bytes } of pages) assert.deepEqual(await pool.readPage(page, section), bytes, `page ${page} after the slots grew`);
    for (const { page } of pages) pool.free(page);
    pool.dispose();
  });

  test("webgpu: quantized pages hold the host back ends' bytes exactly; writePage restores them", async () => {
    const b = await gpu();
    const ref = new TsBackend();
    const r = rng(13);
    // Heads of 64, and of 256 (more channels than a job's 128 threads: each keeps two channels' ranges).
    const cases = [
      [
        { numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 64 },
        ['kivi:k=2,v=2,g=16,r=16', 'kivi:k=4,v=2,g=16,r=32,residual=fp16', 'kivi:k=8,v=8,g=32,r=32', 'kivi:k=2,v=4,g=64,r=64', 'fp16'],
      ],
      [{ numLayers: 1, numHeads: 2, numKvHeads: 1, headDim: 256 }, ['kivi:k=2,v=2,g=32,r=32', 'kivi:k=4,v=4,g=64,r=64,residual=fp16']],
    ] as const;
    for (const [shape, specs] of cases)
      for (const spec of specs) {
        const qkvDim = (shape.numHeads + 2 * shape.numKvHeads) * shape.headDim;
        const d = shape.headDim;
        // Outlier channels, tiny values and a constant channel: scales of every magnitude, float16 subnormals, zero ranges.
        const rows = randArray(120 * qkvDim, r).map((v, i) => (i % d === 5 ? v * 12 : i % d === 9 ? v * 1e-6 : i % d === 11 ? 0.5 : v));
        const pools = [ref.createPagePool(shape), b.createPagePool(shape)] as const;
        const st = [new CacheStepper(ref, pools[0]), new CacheStepper(b, pools[1])];
        const caches = pools.map((p) => createCache(parseKvSpec(spec), p));
        let at = 0;
        for (const n of [40, 25, 1, 1, 1, 50]) {
          for (const i of [0, 1])
            await st[i]!.step([{ cache: caches[i]!, rows: rows.subarray(at * qkvDim, (at + n) * qkvDim), n, mode: n === 1 ? 'decode' : 'prefill' }], false);
          at += n;
        }
        // Every page the caches hold, compared byte for byte (page lists are the caches' own bookkeeping).
        const pagesOf = (c: object): [number, number][] => {
          const o = c as Record<string, unknown>;
          const out: [number, number][] = [];
          if (spec === 'fp16')
            for (const rowsOf of ['k', 'v'])
              for (const p of (o[rowsOf] as { pages: number[]; sectionBytes: number }).pages)
                out.push([p, (o[rowsOf] as { sectionBytes: number }).sectionBytes]);
          else {
            for (const p of o.keyBlocks as number[]) out.push([p, o.keySection as number]);
            for (const p of o.valuePages as number[]) out.push([p, o.valueSection as number]);
            for (const res of ['keyResidual', 'valueResidual'])
              for (const p of (o[res] as { pages: number[] }).pages) out.push([p, (o[res] as { sectionBytes: number }).sectionBytes]);
          }
          return out;
        };
        const [pa, pb] = [pagesOf(caches[0]!), pagesOf(caches[1]!)];
        assert.equal(pb.length, pa.length);
        assert.ok(pa.length >= 4, `${spec}: ${pa.length} pages`);
        for (let k = 0; k < pa.length; k++) {
          const bytes = await pools[1].readPage(pb[k]![0], pb[k]![1]);
          assert.deepEqual(bytes, await pools[0].readPage(pa[k]![0], pa[k]![1]), `${spec}: page ${k}`);
          pools[1].writePage(pb[k]![0], pb[k]![1], new Uint8Array(bytes.length));
          assert.ok((await pools[1].readPage(pb[k]![0], pb[k]![1])).every((x) => x === 0));
          pools[1].writePage(pb[k]![0], pb[k]![1], bytes);
          assert.deepEqual(await pools[1].readPage(pb[k]![0], pb[k]![1]), bytes);
        }
        for (const c of caches) c.free();
        assert.equal(pools[1].allocatedBytes, 0);
      }
  });

  test('webgpu: simulated-quantization (fake) caches are refused in one line', async () => {
    const b = await gpu();
    const pool = b.createPagePool({ numLayers: 1, numHeads: 2, numKvHeads: 1, headDim: 32 });
    assert.throws(
      () => createCache(parseKvSpec('fake2-kC-vT'), pool),
      (e: Error) =>
        e instanceof KiviError &&
        !e.message.includes('\n') &&
        /fake2-kC-vT: simulated-quantization \(fake\) caches run on the CPU back ends only \(--backend ts or wasm\), not on webgpu/.test(e.message),
    );
  });

  test("webgpu: fillRandom gives the TypeScript back end's values bit for bit (mean 0, standard deviation as asked)", async () => {
    const b = await gpu();
    const ref = new TsBackend();
    for (const dtype of ['f32', 'f16', 'bf16'] as const) {
      const n = 20001;
      const [t, tRef] = [b.tensor(dtype, n), ref.tensor(dtype, n)];
      b.fillRandom(t, 77, 0.02);
      ref.fillRandom(tRef, 77, 0.02);
      // Widen both through an embedding row (exact) and compare.
      const [o, oRef] = [b.tensor('f32', n), ref.tensor('f32', n)];
      b.embed(o, t, Int32Array.of(0), n);
      ref.embed(oRef, tRef, Int32Array.of(0), n);
      const got = await b.read(o, 0, n);
      assert.deepEqual(got, await ref.read(oRef, 0, n), dtype);
      let s = 0,
        s2 = 0;
      for (const v of got) {
        s += v;
        s2 += v * v;
      }
      assert.ok(Math.abs(s / n) < 0.001, `${dtype} mean ${s / n}`);
      assert.ok(Math.abs(Math.sqrt(s2 / n) - 0.02) < 0.001, `${dtype} std ${Math.sqrt(s2 / n)}`);
    }
  });

  test('webgpu: 16 sequences decode in a bounded number of dispatches; a decode chunk (one sub-step per token) matches the reference', async () => {
    const b = await gpu();
    const ref = new TsBackend();
    const shape = { numLayers: 1, numHeads: 4, numKvHeads: 2, headDim: 64 };
    const qkvDim = 8 * 64;
    const r = rng(14);
    const pools = [ref.createPagePool(shape), b.createPagePool(shape)] as const;
    const st = [new CacheStepper(ref, pools[0]), new CacheStepper(b, pools[1])];
    const specs = ['kivi:k=2,v=2,g=16,r=16', 'fp16'];
    // 16, not more: on SwiftShader a 64-sequence version took 8 minutes (the dispatch bound does not depend on it).
    const S = 16;
    const caches = pools.map((p) => Array.from({ length: S }, (_, i) => createCache(parseKvSpec(specs[i % 2]!), p)));
    const rows = randArray(S * 24 * qkvDim, r);
    const items = (i: number, from: number, n: number, mode: 'prefill' | 'decode') =>
      caches[i]!.map((cache, s) => ({ cache, rows: rows.subarray((s * 24 + from) * qkvDim, (s * 24 + from + n) * qkvDim), n, mode }));
    for (const i of [0, 1]) await st[i]!.step(items(i, 0, 19, 'prefill'), false);
    // One decode token for all of them: the jobs, one attention dispatch, its merge at most.
    const before = b.core.dispatched;
    const exp1 = (await st[0]!.step(items(0, 19, 1, 'decode')))!;
    const got1 = (await st[1]!.step(items(1, 19, 1, 'decode')))!;
    assert.ok(b.core.dispatched - before <= 3, `${b.core.dispatched - before} dispatches for a step of ${S} sequences`);
    assertClose(got1, exp1, () => 1e-4 * Math.max(...exp1.map(Math.abs)), 'one token each');
    // Two tokens each through the caches (two sub-steps): the attention of all of them in one dispatch.
    const exp = (await st[0]!.step(items(0, 20, 2, 'decode')))!;
    const got = (await st[1]!.step(items(1, 20, 2, 'decode')))!;
    assertClose(got, exp, () => 1e-4 * Math.max(...exp.map(Math.abs)), 'two tokens each, decoded');
    for (const c of caches.flat()) c.free();
  });
}

if (!reportMissing('kernels-webgpu: long attention')) {
  test('webgpu: 4 query heads per kv head of 128 over long caches (many tiles, split items, the merge) match the reference', async () => {
    const b = await gpu();
    const ref = new TsBackend();
    const shape = { numLayers: 1, numHeads: 8, numKvHeads: 2, headDim: 128 };
    const qkvDim = 12 * 128;
    const r = rng(15);
    // 9000 tokens: 71 items of one tile per kv head, so the merge runs its four-at-a-time loop and its tail.
    const T = 9000;
    const rows = randArray(T * qkvDim, r).map((v, i) => (i % 128 === 5 ? v * 12 : v));
    const step = randArray(3 * qkvDim, r);
    for (const spec of ['kivi2', 'kivi4', 'fp16', 'kivi:k=2,v=4,g=16,r=32', 'kivi:k=8,v=8,g=32,r=64', 'kivi:k=4,v=2,g=64,rot=hadamard,sink=4']) {
      const pools = [ref.createPagePool(shape), b.createPagePool(shape)] as const;
      const st = [new CacheStepper(ref, pools[0]), new CacheStepper(b, pools[1])];
      const caches = pools.map((p) => createCache(parseKvSpec(spec), p));
      for (const i of [0, 1]) await st[i]!.fill(caches[i]!, rows, T, 1024);
      for (let k = 0; k < 3; k++) {
        // Steps 1 and 2 by variants of the kernel (scripts/gpu/attn-ablate.mjs) that must give the
        // reference's outputs too: rows and value scales staged in workgroup memory, with key scores in 4
        // partial sums; 1 value token in flight a lane and 4 channels a thread.
        b.attnVariant = ['', 'stage,kp4', 'u1,ch4'][k]!;
        const item = (i: number) => [{ cache: caches[i]!, rows: step.subarray(k * qkvDim, (k + 1) * qkvDim), n: 1, mode: 'decode' as const }];
        const exp = (await st[0]!.step(item(0)))!;
        const got = (await st[1]!.step(item(1)))!;
        const tol = (spec === 'fp16' ? 1e-5 : 1e-4) * Math.max(...exp.map(Math.abs));
        assertClose(got, exp, () => tol, `${spec}, decode step ${k} at ${T + k} tokens${b.attnVariant ? ` (variant ${b.attnVariant})` : ''}`);
      }
      b.attnVariant = '';
      for (const c of caches) c.free();
    }
    assert.throws(() => parseAttnVariant('u2,fast'), /unknown part "fast"/);
    assert.equal(parseAttnVariant('na3,u2').na, 3);
    assert.deepEqual(parseAttnVariant('b2,b4').bits, [2, 4]);
    assert.equal(parseAttnVariant('wacc,u2').wacc, true);
    assert.equal(parseAttnVariant('u2').wacc, false);
    assert.equal(parseAttnVariant('stage,u2').stage, true);
    assert.equal(parseAttnVariant('ku2,fkeys').ku, 2);
    assert.ok(parseAttnVariant('ku2,fkeys').skip.has('fkeys'));
    assert.throws(() => parseAttnVariant('ku3'), /unknown part "ku3"/);
    assert.equal(parseAttnVariant('kp4').kp, 4);
    assert.throws(() => parseAttnVariant('na17'), /unknown part "na17"/);
  });

  test('webgpu: the bulk kernel (the quantized prefix, bulk.ts) matches the reference at 1, 2 and 4 query heads per kv head, in every build, and with sink tokens', async () => {
    const b = await gpu();
    const ref = new TsBackend();
    const cases: [number, number, number, string[]][] = [
      [2, 2, 64, ['kivi2', 'kivi4']],
      [4, 2, 128, ['kivi2', 'kivi:k=2,v=2,g=64,r=64,sink=3']],
      [8, 2, 128, ['kivi4']],
    ];
    const pipelines = () => [...(b as unknown as { kernels: Map<string, unknown> }).kernels.keys()];
    for (const [H, KV, D, specs] of cases) {
      const shape = { numLayers: 1, numHeads: H, numKvHeads: KV, headDim: D };
      const qkvDim = (H + 2 * KV) * D;
      const r = rng(H * 100 + D);
      // 1300 tokens: a quantized prefix of 36-39 blocks, several bulk items a kv head, the merge.
      const T = 1300;
      const rows = randArray(T * qkvDim, r).map((v, i) => (i % D === 5 ? v * 12 : v));
      // One decode row a build (`builds` below).
      const step = randArray(9 * qkvDim, r);
      for (const spec of specs) {
        const pools = [ref.createPagePool(shape), b.createPagePool(shape)] as const;
        const st = [new CacheStepper(ref, pools[0]), new CacheStepper(b, pools[1])];
        const caches = pools.map((p) => createCache(parseKvSpec(spec), p));
        for (const i of [0, 1]) await st[i]!.fill(caches[i]!, rows, T, 512);
        // The bulk kernel's default build (forced on: by default it runs at 1 query head a kv head only),
        // the general kernel alone, then 8 channels a thread, rounds of 2 tokens, the weights
        // exponentiated by every thread and 4 value tokens in flight, float key scores, and split in two
        // kernels (the keys' scores through the scratch), also with 8 channels a values thread (half the
        // lanes of the keys' kernel, so its items take several passes), and the partial key scores summed
        // by subgroup shuffles (SwiftShader's subgroups have 4 invocations: lanes of 4 threads; at 4:1, 32
        // channels a thread do not fit its workgroup memory, and the general kernel takes every token), and
        // with the arenas bound as 16-byte vectors instead of words (av), and the value codes as the general
        // kernel's magic floats instead of exact ones (vm).
        const sg = D === 64 ? 'split,sg,vcw8' : 'cw32,sg';
        const builds = ['on', '0', 'cw8,noex,u4,sb2', 'on,fk', 'split', 'split,vcw8', sg, 'split,vcw8,av', 'on,vm'];
        assert.equal(step.length, builds.length * qkvDim);
        for (const [k, setting] of builds.entries()) {
          b.bulk = setting;
          const item = (i: number) => [{ cache: caches[i]!, rows: step.subarray(k * qkvDim, (k + 1) * qkvDim), n: 1, mode: 'decode' as const }];
          const exp = (await st[0]!.step(item(0)))!;
          const got = (await st[1]!.step(item(1)))!;
          const tol = 1e-4 * Math.max(...exp.map(Math.abs));
          assertClose(got, exp, () => tol, `${spec} at ${H}:${KV} heads, d ${D}, bulk '${setting}'`);
        }
        b.bulk = '';
        for (const c of caches) c.free();
      }
    }
    const ran = pipelines().filter((k) => k.startsWith('bulk'));
    for (const want of [
      'bulk1-2-16-sb8-u8-ik:2:2:64',
      'bulk1-2-16-sb8-u8-ik-keys:2:2:64',
      'bulk1-2-16-sb8-u8-ik-values:2:2:64',
      'bulk1-4-16-sb4-u8-ik-values:8:2:128',
      'bulk1-2-16-sb4-u8-ik-values-vcw8:4:2:128',
      'bulk1-2-16-sb8-u8-ik-sg-keys:2:2:64',
      'bulk1-2-16-sb8-u8-ik-sg-values-vcw8:2:2:64',
      'bulk1-2-16-sb8-u8-ik-av-values-vcw8:2:2:64',
      'bulk1-2-16-sb8-u8-ik-vm:2:2:64',
      'bulk1-4-16-sb4-u8-ik-vm:8:2:128',
      'bulk1-4-16-sb8-u8-ik-sg-keys:2:2:64',
      'bulk1-2-32-sb4-u8-ik-sg:4:2:128',
      'bulk1-4-16-sb8-u8-ik:2:2:64',
      'bulk1-2-16-sb4-u8-ik:4:2:128',
      'bulk1-4-16-sb4-u8-ik:8:2:128',
      'bulk1-2-8-sb2-u4-noex-ik:4:2:128',
      'bulk1-2-16-sb8-u8:2:2:64',
      'bulk1-4-16-sb4-u8:8:2:128',
    ]) {
      assert.ok(ran.includes(want), `${want} ran (ran: ${ran.join(' ')})`);
    }
    // When it runs: by default only past BULK_MIN_DEFAULT quantized tokens a task (at one query head a kv
    // head), forced on from one block, or from minN: a step's dispatches count its bulk dispatch.
    {
      const pool = b.createPagePool({ numLayers: 1, numHeads: 2, numKvHeads: 2, headDim: 64 });
      const st = new CacheStepper(b, pool);
      const c = createCache(parseKvSpec('kivi2'), pool);
      await st.fill(c, randArray(1300 * 6 * 64, rng(5)), 1300, 512);
      const dispatches = async (setting: string) => {
        b.bulk = setting;
        const before = b.core.dispatched;
        await st.step([{ cache: c, rows: randArray(6 * 64, rng(6)), n: 1, mode: 'decode' as const }]);
        return b.core.dispatched - before;
      };
      const [auto, on, min1024, min2048, off, long1024, long2048, long1024split] = [
        await dispatches(''),
        await dispatches('on'),
        await dispatches('min1024'),
        await dispatches('min2048'),
        await dispatches('0'),
        // The build for long steps (split in two, subgroup shuffles; here lanes of 4 threads fit SwiftShader's
        // subgroups) from longN bulk tokens of a task, unless the setting names the split or the shuffles.
        await dispatches('min1024,long1024'),
        await dispatches('min1024,long2048'),
        await dispatches('min1024,long1024,fused'),
      ];
      assert.deepEqual(
        [on - auto, min1024 - auto, min2048 - auto, off - auto, long1024 - auto, long2048 - auto, long1024split - auto],
        [1, 1, 0, 0, 2, 1, 1],
        'the bulk dispatches: default, on, min1024, min2048, 0, min1024 with long1024 and long2048, long1024 with fused',
      );
      assert.ok(pipelines().includes('bulk1-2-16-sb8-u8-ik-sg-keys:2:2:64'));
      assert.ok(BULK_MIN_DEFAULT > 1300);
      // itemsN cuts a step's bulk prefix into that many items where whole passes of the lanes allow: one a
      // kv head with items1, two (of the 1024 tokens a pass of 32 lanes takes, at most) with items100.
      const partials = async (setting: string) => {
        await dispatches(setting);
        return (b as unknown as { planOf: { gp: { partials: number } } }).planOf.gp.partials;
      };
      const [one, hundred] = [await partials('on,items1'), await partials('on,items100')];
      assert.equal(hundred - one, 2, `partials with items1 ${one}, with items100 ${hundred}`);
      c.free();
      assert.throws(() => parseBulkSetting('min0'), /KIVI_WEBGPU_BULK: unknown part "min0"/);
      // Integer key scores by default where WGSL has packed dot products; fk and ik choose, and leave on alone.
      assert.deepEqual(
        [parseBulkSetting('').ik, parseBulkSetting('', false).ik, parseBulkSetting('fk').ik, parseBulkSetting('fk').on],
        [true, false, false, null],
      );
      assert.throws(() => parseBulkSetting('ik', false), /KIVI_WEBGPU_BULK: ik needs WGSL packed_4x8_integer_dot_product/);
      assert.throws(() => parseBulkSetting('sg', true, false), /KIVI_WEBGPU_BULK: sg needs WebGPU subgroups/);
      // The defaults a shape and device get: the fused kernel at MHA from BULK_MIN_DEFAULT; at 4:1 the split
      // subgroup build from BULK_MIN_GQA where a lane of 8 fits a subgroup (the H200's have 32), else none.
      const wg = 32768;
      const mha = { numLayers: 1, numHeads: 32, numKvHeads: 32, headDim: 128 };
      const gqa = { numLayers: 1, numHeads: 8, numKvHeads: 2, headDim: 128 };
      const pick = (b: BulkBuild) => [b.on, b.split, b.sg, b.cw, b.vcw, b.min];
      assert.deepEqual(pick(resolveBulk(parseBulkSetting(''), mha, 32, wg)), [true, false, false, 16, 16, BULK_MIN_DEFAULT]);
      assert.deepEqual(pick(resolveBulk(parseBulkSetting(''), gqa, 32, wg)), [true, true, true, 16, 8, BULK_MIN_GQA]);
      assert.deepEqual(pick(resolveBulk(parseBulkSetting(''), gqa, 4, wg)).slice(0, 3), [false, false, false]);
      assert.deepEqual(pick(resolveBulk(parseBulkSetting('on'), gqa, 4, wg)), [true, false, false, 16, 16, 32]);
      assert.deepEqual(pick(resolveBulk(parseBulkSetting('fused,wg,min100'), gqa, 32, wg)), [true, false, false, 16, 8, 100]);
      assert.deepEqual(pick(resolveBulk(parseBulkSetting('cw8'), mha, 32, wg)), [true, false, false, 8, 8, 32]);
      assert.ok(BULK_MIN_GQA > BULK_MIN_DEFAULT);
      // At MHA, steps with a task of BULK_LONG_MHA bulk tokens take the split subgroup build where a lane fits
      // a subgroup, unless the setting chooses split or shuffles itself; longN moves the threshold.
      const long = (setting: string, shape: typeof mha, sub: number) => {
        const l = resolveBulk(parseBulkSetting(setting), shape, sub, wg).long;
        return l && [...pick(l), l.long];
      };
      assert.deepEqual(long('', mha, 32), [true, true, true, 16, 16, BULK_LONG_MHA, null]);
      assert.deepEqual(long('long5000,u4', mha, 32), [true, true, true, 16, 16, 5000, null]);
      assert.equal(resolveBulk(parseBulkSetting('long5000,u4'), mha, 32, wg).long?.u, 4);
      assert.deepEqual(
        [long('', mha, 4), long('split', mha, 32), long('wg', mha, 32), long('', gqa, 32), long('cw8', mha, 32)],
        [null, null, null, null, null],
      );
      assert.ok(BULK_LONG_MHA > BULK_MIN_DEFAULT);
      assert.equal(parseBulkSetting('long5000').on, null, 'longN leaves on open');
      // Bulk items a step is cut into: the shape's default, or itemsN (which leaves on open).
      const items = (setting: string, shape: typeof mha) => resolveBulk(parseBulkSetting(setting), shape, 32, wg).items;
      assert.deepEqual([items('', mha), items('', gqa), items('items500', mha), items('items500,split', gqa)], [BULK_ITEMS_MHA, BULK_ITEMS_GQA, 500, 500]);
      assert.equal(parseBulkSetting('items500').on, null, 'itemsN leaves on open');
      assert.throws(() => parseBulkSetting('items0'), /KIVI_WEBGPU_BULK: unknown part "items0"/);
    }
    // A bad setting, and sg where a lane (8 threads at d 128) does not fit SwiftShader's subgroups of 4:
    // one line when the kernel is first needed.
    for (const [setting, D, why] of [
      ['cw8,fast', 64, /KIVI_WEBGPU_BULK: unknown part "fast"/],
      ['on,sg', 128, /KIVI_WEBGPU_BULK: sg needs a lane's 8 threads in one subgroup/],
    ] as const) {
      b.bulk = setting;
      await assert.rejects(
        (async () => {
          const pool = b.createPagePool({ numLayers: 1, numHeads: 2, numKvHeads: 2, headDim: D });
          const st = new CacheStepper(b, pool);
          const c = createCache(parseKvSpec('kivi2'), pool);
          try {
            await st.fill(c, randArray(200 * 6 * D, rng(3)), 200, 200);
            await st.step([{ cache: c, rows: randArray(6 * D, rng(4)), n: 1, mode: 'decode' as const }]);
          } finally {
            c.free();
          }
        })(),
        (e: Error) => e instanceof KiviError && !e.message.includes('\n') && why.test(e.message),
      );
    }
    b.bulk = '';
  });

  test('webgpu: the attention kernel built for 2-4 arena bindings is valid WGSL, with one direct copy of the hot loops per arena', async () => {
    // SwiftShader cannot compile these builds into pipelines within CI's memory (scripts/gpu/attn-check.mjs
    // with BIND checks their results on a GPU), but Dawn's WGSL front end validates them in a second.
    const b = await gpu();
    const dev = b.core.device;
    for (const shape of [
      { numLayers: 1, numHeads: 8, numKvHeads: 2, headDim: 128 },
      { numLayers: 1, numHeads: 4, numKvHeads: 4, headDim: 64 },
    ]) {
      const g = attnGeometry(shape, dev.limits.maxComputeWorkgroupStorageSize);
      for (const na of [1, 2, 4]) {
        const code = attendWgsl(shape, g, na);
        const module = dev.createShaderModule({ code });
        const errors = (await module.getCompilationInfo()).messages.filter((m) => m.type === 'error');
        assert.deepEqual(
          errors.map((m) => `${m.lineNum}: ${m.message}`),
          [],
          `${na} arena(s), ${shape.numHeads}/${shape.numKvHeads} heads`,
        );
        // Per arena k: the key codes, the key scales and the value codes load from a<k> directly.
        for (let k = 0; k < na && na > 1; k++) {
          const direct = code.split(`ld4_${k}(`).length - 1 + code.split(`ldw_${k}(`).length - 1;
          assert.ok(direct >= 10, `${na} arenas: ${direct} direct loads from arena ${k}`);
        }
        if (na === 1) assert.ok(!code.includes('ld4_0(') && !code.includes('mixed'), 'one arena: no per-tile switch');
        // The bulk kernel: every load of pages (key scales, key codes, value codes and scales) goes to the
        // block's arena directly; none through the per-load switch.
        for (const bits of [2, 4]) {
          const bg = bulkGeometry(shape, bits, dev.limits.maxComputeWorkgroupStorageSize);
          assert.ok(bg, `a bulk layout for ${bits} bits`);
          const bulk = bulkWgsl(shape, bg, na);
          const berrors = (await dev.createShaderModule({ code: bulk }).getCompilationInfo()).messages.filter((m) => m.type === 'error');
          assert.deepEqual(
            berrors.map((m) => `${m.lineNum}: ${m.message}`),
            [],
            `bulk, ${bits} bits, ${na} arena(s)`,
          );
          // (The switch's default case, a slot past the bound arenas, keeps the per-load switch: `sl`.)
          if (na > 1) assert.equal(/ld(w|4)\((kslot|vslot|us), /.test(bulk.split('fn main')[1]!), false, `bulk, ${na} arenas: no switched load in the kernel`);
          if (na > 1) assert.ok(bulk.split(`ldw_${na - 1}(`).length - 1 >= 10, `bulk, ${na} arenas: direct loads from arena ${na - 1}`);
        }
      }
    }
  });

  test("webgpu: page lists kept on the GPU grow past their table's region while decoding and match the reference; a freed cache's region is reused", async () => {
    const b = await gpu();
    const ref = new TsBackend();
    const shape = { numLayers: 1, numHeads: 4, numKvHeads: 2, headDim: 64 };
    const qkvDim = 8 * 64;
    const r = rng(16);
    // A region first holds 64 pages (pagetables.ts): fp16 pages of 64 tokens reach a 65th at token 4096,
    // KIVI value pages (64 quantized tokens, R = 128 kept) at token 4097 + 128; decoding crosses both.
    for (const [spec, T] of [
      ['fp16', 4094],
      ['kivi2', 4222],
      ['fp16', 100],
    ] as const) {
      const rows = randArray((T + 4) * qkvDim, r);
      const pools = [ref.createPagePool(shape), b.createPagePool(shape)] as const;
      const st = [new CacheStepper(ref, pools[0]), new CacheStepper(b, pools[1])];
      const caches = pools.map((p) => createCache(parseKvSpec(spec), p));
      for (const i of [0, 1]) await st[i]!.fill(caches[i]!, rows, T, 2048);
      for (let k = 0; k < 4; k++) {
        const item = (i: number) => [{ cache: caches[i]!, rows: rows.subarray((T + k) * qkvDim, (T + k + 1) * qkvDim), n: 1, mode: 'decode' as const }];
        const exp = (await st[0]!.step(item(0)))!;
        const got = (await st[1]!.step(item(1)))!;
        const tol = (spec === 'fp16' ? 1e-5 : 1e-4) * Math.max(...exp.map(Math.abs));
        assertClose(got, exp, () => tol, `${spec}, decode step ${k} at ${T + k} tokens`);
      }
      for (const c of caches) c.free();
      assert.equal((b as unknown as { tables: { lists: number } }).tables.lists, 0, `${spec}: freed caches hold no page table`);
    }
  });
}
