import assert from 'node:assert/strict';
import { test } from 'node:test';
import { cacheBytes, peakAllocatedBytes } from '../src/cache/budget.js';
import { parseKvSpec } from '../src/cache/spec.js';
import { hostPageBytes } from '../src/kernels/host/memory.js';
import { runCapacity, sequencesThatFit } from '../src/studies/bench/capacity.js';
import { bundledWeightsBytes, MODEL, runCli } from './bench-helpers.js';

const DIMS = { numLayers: 8, numHeads: 4, numKvHeads: 2, headDim: 128 };
const MiB = 2 ** 20;

test('sequencesThatFit: floor of what is left after weights and overhead, never negative', () => {
  assert.equal(sequencesThatFit(100, 20, 10, 7), 10);
  assert.equal(sequencesThatFit(100, 20, 10, 70), 1);
  assert.equal(sequencesThatFit(100, 20, 10, 71), 0);
  assert.equal(sequencesThatFit(10, 20, 10, 1), 0);
});

test('bench capacity: sequences = floor((budget − weights − overhead) / cache bytes), allocated for real', async () => {
  const budget = 256 * MiB;
  // Not a multiple of R = 128: the fill (a prefill, then appends) must leave a partial key residual.
  const context = 1000;
  const specs = ['fp16', 'kivi2', 'kivi:k=2,v=2,g=32,r=128,residual=fp32'];
  const r = await runCapacity({ model: MODEL, budget, context, specs: specs.map((s) => parseKvSpec(s)) });
  assert.equal(r.weights_bytes, bundledWeightsBytes());
  // Overhead is measured: a Node process with a tokenizer and activations, tens of MiB, not zero.
  assert.ok(r.overhead_bytes > 10 * MiB && r.overhead_bytes < 200 * MiB, String(r.overhead_bytes));
  const seq: Record<string, number> = {};
  r.results.forEach((x, i) => {
    assert.deepEqual(Object.keys(x), ['kv', 'sequences', 'peak_rss', 'rss_per_sequence']);
    assert.equal(x.rss_per_sequence, (r.detail[i]!.rss - r.base_rss) / x.sequences, 'RSS with the caches minus without, per sequence');
    const data = cacheBytes(parseKvSpec(x.kv), DIMS, context);
    const sizes = new Set<number>();
    const pageBytes = (b: number) => sizes.add(b) && hostPageBytes(DIMS, b);
    const per = peakAllocatedBytes(parseKvSpec(x.kv), { shape: DIMS, pageBytes }, context, context);
    // Beyond the overhead, one partly used 4 MiB slab per page size (fp16: one size; KIVI: key blocks, value pages, residual pages).
    assert.equal(sizes.size, x.kv === 'fp16' ? 1 : 3);
    const slack = sizes.size * 4 * MiB;
    assert.equal(x.sequences, Math.floor((budget - r.weights_bytes - r.overhead_bytes - slack) / per), x.kv);
    assert.equal(r.detail[i]!.kv_bytes, x.sequences * data, 'the child held exactly that much data');
    assert.equal(r.detail[i]!.allocated_bytes, x.sequences * per, 'in exactly that many pages');
    assert.ok(per >= data);
    // Resident memory grew by the bytes held, give or take the ~10 MiB by which two processes' base RSS
    // differ (worker threads' heaps, measured in separate children).
    assert.ok(
      r.detail[i]!.rss - r.base_rss > r.detail[i]!.kv_bytes - 16 * MiB,
      `${x.kv}: RSS grew ${r.detail[i]!.rss - r.base_rss} for ${r.detail[i]!.kv_bytes}`,
    );
    assert.ok(x.peak_rss > r.weights_bytes + r.detail[i]!.kv_bytes, 'peak RSS covers weights and caches');
    seq[x.kv] = x.sequences;
  });
  assert.ok(seq.fp16! >= 1);
  // fp16: 8 KiB/token/layer; kivi2 at 1000 tokens: 281.75 KiB/layer (232 residual tokens in fp16 are
  // 116 KiB of it) → 3.55× smaller, so at least three times as many sequences whatever the floors.
  assert.equal(cacheBytes(parseKvSpec('fp16'), DIMS, context), 8 * 1000 * 1024);
  assert.equal(cacheBytes(parseKvSpec('kivi2'), DIMS, context), 8 * (896 * 96 + 872 * 96 + 232 * 512));
  assert.ok(seq.kivi2! >= 3 * seq.fp16!, JSON.stringify(seq));
  // The reference's float32 residual costs 116 KiB more per layer: fewer sequences.
  assert.ok(seq['kivi:k=2,v=2,g=32,r=128,residual=fp32']! < seq.kivi2!);
});

test('bench capacity CLI: JSON shape, a budget below the weights admits nothing, bad input is one line', async () => {
  const r = await runCli(['bench', 'capacity', '--model', MODEL, '--budget', '64MiB', '--context', '4096', '--kv', 'fp16,kivi4', '--json']);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  assert.deepEqual(Object.keys(j), ['budget', 'context', 'weights_bytes', 'overhead_bytes', 'results']);
  assert.equal(j.budget, 64 * MiB);
  assert.deepEqual(
    j.results.map((x: { kv: string; sequences: number }) => [x.kv, x.sequences]),
    [
      ['fp16', 0],
      ['kivi4', 0],
    ],
  );
  assert.ok(j.results.every((x: { peak_rss: number }) => x.peak_rss > j.weights_bytes));
  assert.deepEqual(Object.keys(j.results[0]), ['kv', 'sequences', 'peak_rss', 'rss_per_sequence']);
  // No sequence fits: nothing to divide by.
  assert.ok(j.results.every((x: { rss_per_sequence: number | null }) => x.rss_per_sequence === null));
  for (const bad of [
    ['--model', '/nonexistent', '--budget', '1GiB', '--context', '8'],
    ['--model', MODEL, '--budget', 'lots', '--context', '8'],
    ['--model', MODEL, '--budget', '1GiB', '--context', '8', '--kv', 'int8'],
  ]) {
    const e = await runCli(['bench', 'capacity', ...bad]);
    assert.equal(e.code, 1, bad.join(' '));
    assert.equal(
      e.stderr
        .trim()
        .split('\n')
        .filter((l) => !l.startsWith('(run with')).length,
      1,
      e.stderr,
    );
  }
});
