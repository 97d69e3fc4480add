import assert from 'node:assert/strict';
import { test } from 'node:test';
import { peakAllocatedBytes } from '../src/cache/budget.js';
import { parseKvSpec } from '../src/cache/spec.js';
import { hostPageBytes } from '../src/kernels/host/memory.js';
import { joinPerStep, largestStepRows, PREFILL_ROWS, runThroughput, throughputMarkdown } from '../src/studies/bench/throughput.js';
import { bundledWeightsBytes, MODEL, runCli } from './bench-helpers.js';

const DIMS = { numLayers: 8, numHeads: 4, numKvHeads: 2, headDim: 128 };
const MiB = 2 ** 20;

test('joinPerStep bounds the prefill rows of a step; largestStepRows adds the decode rows of a full batch', () => {
  assert.equal(joinPerStep(160), Math.floor(PREFILL_ROWS / 160));
  assert.equal(joinPerStep(PREFILL_ROWS + 1), 1);
  assert.equal(largestStepRows(160, 64), 3 * 160 + 61);
  assert.equal(largestStepRows(1000, 2), 1000 + 1);
  assert.equal(largestStepRows(8, 3), 3 * 8);
});

test('bench throughput: admitted batch from the budget, capped batch runs generate batch × gen tokens', async () => {
  const prompt = 12,
    gen = 5,
    maxBatch = 3;
  const specs = ['fp16', 'kivi2'];
  // Budgets relative to weights (106 MiB) + overhead (~75–105 MiB): one that admits nothing, two that admit some.
  // The last one is headroom above whatever weights + overhead measure.
  const budgets = [64 * MiB, 300 * MiB, 600 * MiB, { headroom: MiB }];
  const r = await runThroughput({ model: MODEL, budgets, prompt, gen, specs, maxBatch, repeats: 2 });
  assert.equal(r.weights_bytes, bundledWeightsBytes());
  assert.equal(r.results.length, budgets.length * specs.length);
  assert.ok(r.results.slice(-2).every((x) => x.budget === r.weights_bytes + r.overhead_bytes + MiB));
  for (const x of r.results) {
    // Pages: what a budget counts (exact, from the caches' own page bookkeeping).
    const peak = peakAllocatedBytes(parseKvSpec(x.kv), { shape: DIMS, pageBytes: (b) => hostPageBytes(DIMS, b) }, prompt + gen, prompt);
    assert.equal(x.admitted, Math.max(0, Math.floor((x.budget - r.weights_bytes - r.overhead_bytes) / peak)), `${x.kv} ${x.budget}`);
    assert.equal(x.batch, Math.min(x.admitted, maxBatch));
    assert.equal(x.generated_tokens, x.batch * gen, 'ignoreEos: every sequence generates exactly gen tokens');
    assert.equal(x.runs, x.batch === 0 ? 0 : 2);
    if (x.batch === 0) {
      assert.equal(x.tokens_per_second, 0);
      assert.equal(x.peak_rss, null);
    } else {
      assert.ok(Math.abs(x.tokens_per_second - x.generated_tokens / x.seconds) < 1e-9 * x.tokens_per_second);
      assert.ok(x.peak_rss! > r.weights_bytes);
    }
  }
  const at = (kv: string, b: number) => r.results.find((x) => x.kv === kv && x.budget === b)!;
  assert.equal(at('fp16', 64 * MiB).admitted, 0);
  // Admission grows with the budget.
  assert.ok(at('fp16', 600 * MiB).admitted > at('fp16', 300 * MiB).admitted);
  assert.ok(at('kivi2', 600 * MiB).admitted > at('kivi2', 300 * MiB).admitted);
  // The same (spec, batch) point runs once and is reported for every budget that admits it.
  assert.equal(at('fp16', 300 * MiB).seconds, at('fp16', 600 * MiB).seconds);
  assert.match(throughputMarkdown(r), /\| 600\.00 MiB \| [\d.]+ MiB \| fp16 \| \d+ \| 3 \(capped\) \|/);
});

test('bench throughput CLI: context and flag errors are one line', async () => {
  const e = await runCli(['bench', 'throughput', '--model', MODEL, '--budget', '1GiB', '--prompt', '2000', '--gen', '100']);
  assert.equal(e.code, 1);
  assert.match(e.stderr, /^kivi: --prompt 2000 \+ --gen 100 exceeds the model's context of 2048\n$/);
  for (const budget of ['1GiB,', '+x', '-5MiB']) {
    const f = await runCli(['bench', 'throughput', '--model', MODEL, '--budget', budget, '--json']);
    assert.equal(f.code, 1, budget);
    assert.equal(f.stdout, '');
  }
});
