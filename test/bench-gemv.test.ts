import assert from 'node:assert/strict';
import { test } from 'node:test';
import { TsBackend } from '../src/kernels/ts/backend.js';
import { measureReadBandwidth } from '../src/studies/bench/bandwidth.js';
import { gemvMarkdown, runGemvBench } from '../src/studies/bench/gemv.js';
import { runCli } from './bench-helpers.js';
import { needWebgpu, swiftshaderBackend } from './webgpu-helpers.js';

test('read bandwidth: whole pages split over threads; the workers exit', async () => {
  const b = await measureReadBandwidth(8 * 2 ** 20 + 123, 2, 3);
  assert.equal(b.bytes, 8 * 2 ** 20);
  assert.equal(b.threads, 2);
  assert.ok(Number.isFinite(b.gbps) && b.gbps > 0);
});

test('bench gemv: GFLOP/s and GB/s follow from the shape, the weight bytes and the median time', async () => {
  const r = await runGemvBench({
    backend: new TsBackend(),
    inDim: 96,
    outDim: 40,
    rows: [1, 3],
    weights: ['f32', 'bf16', 'f16'],
    threads: 1,
    bandwidthBytes: 4 * 2 ** 20,
    repeats: { warmup: 1, minRepeats: 3, minSeconds: 0, maxRepeats: 3 },
  });
  assert.equal(r.backend, 'ts');
  assert.equal(r.bound_1_thread, null);
  assert.equal(r.compute, null, 'a compute bound only where the wasm kernels run');
  assert.deepEqual(
    r.results.map((x) => `${x.weights}×${x.rows}`),
    ['f32×1', 'f32×3', 'bf16×1', 'bf16×3', 'f16×1', 'f16×3'],
  );
  for (const x of r.results) {
    const close = (a: number, b: number) => Math.abs(a - b) <= 1e-9 * Math.abs(b);
    const perWeight = x.weights === 'f32' ? 4 : 2;
    assert.ok(close(x.gflops, (2 * x.rows * 96 * 40) / x.seconds / 1e9));
    assert.ok(close(x.gbps, (perWeight * 96 * 40 + 4 * x.rows * (96 + 40)) / x.seconds / 1e9));
    assert.ok(close(x.of_bound, x.gbps / r.bound.gbps));
    assert.equal(x.of_compute, null);
  }
});

test('bench gemv CLI: --json has the bound and the results', async () => {
  const r = await runCli(['bench', 'gemv', '--in', '64', '--out', '32', '--rows', '1', '--bandwidth-bytes', '4MiB', '--threads', '1', '--json']);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  assert.ok(j.bound.gbps > 0);
  assert.deepEqual(Object.keys(j.results[0]), ['weights', 'rows', 'in', 'out', 'seconds', 'gflops', 'gbps', 'of_bound', 'of_compute']);
  // The default back end here is wasm: its compute bound is timed in the same turns, and each result's
  // share of it follows from its GFLOP/s (one thread).
  assert.equal(j.backend, 'wasm');
  assert.ok(j.compute.gflops > 0 && j.compute.repeats >= 1);
  for (const x of j.results) assert.ok(Math.abs(x.of_compute - x.gflops / j.compute.gflops) <= 1e-9 * x.of_compute);
  assert.deepEqual(
    j.results.map((x: { weights: string }) => x.weights),
    ['f32', 'bf16', 'f16'],
    'the three weight types side by side by default',
  );
  const bad = await runCli(['bench', 'gemv', '--weights', 'f32,int8']);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /"int8" is not one of f32, bf16, f16/);
});

test('bench gemv on webgpu: the bound is a streaming read of the GPU; a sample is several calls in one submission', async (t) => {
  if (!needWebgpu(t)) return;
  const backend = await swiftshaderBackend({ serialMatmul: false });
  try {
    const r = await runGemvBench({
      backend,
      inDim: 64,
      outDim: 40,
      rows: [1, 9],
      weights: ['f16'],
      threads: 0,
      bandwidthBytes: 2 ** 20,
      repeats: { warmup: 1, minRepeats: 2, minSeconds: 0, maxRepeats: 2 },
    });
    assert.equal(r.backend, 'webgpu');
    assert.equal(r.bound.threads, 0);
    assert.equal(r.bound.bytes, 2 ** 20);
    assert.ok(r.bound.gbps > 0);
    assert.match(gemvMarkdown(r), /reading 1\.00 MiB on the GPU \(a streaming read\)/);
    assert.deepEqual(
      r.results.map((x) => x.rows),
      [1, 9],
    );
    for (const x of r.results) {
      assert.ok(x.seconds > 0);
      assert.ok(Math.abs(x.gflops - (2 * x.rows * 64 * 40) / x.seconds / 1e9) <= 1e-9 * x.gflops);
    }
  } finally {
    backend.dispose();
  }
});
