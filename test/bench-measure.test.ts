import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { formatBytes, formatRatio, markdownTable } from '../src/studies/bench/markdown.js';
import { OUTLIER_EVERY, syntheticKV, timeRepeated } from '../src/studies/bench/measure.js';
import { median } from '../src/studies/numbers.js';

test('median: middle element, or the mean of the two middle ones', () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.throws(() => median([]));
  fc.assert(
    fc.property(fc.array(fc.double({ noNaN: true, min: -1e6, max: 1e6 }), { minLength: 1 }), (xs) => {
      const m = median(xs);
      const below = xs.filter((x) => x < m).length;
      const above = xs.filter((x) => x > m).length;
      return below <= xs.length / 2 && above <= xs.length / 2;
    }),
  );
});

test('timeRepeated: warm-up runs untimed, repeats bounded by min/max counts', () => {
  let calls = 0;
  const a = timeRepeated(() => calls++, { warmup: 3, minRepeats: 4, minSeconds: 0, maxRepeats: 10 });
  assert.equal(a.samples.length, 4);
  assert.equal(calls, 7);
  const b = timeRepeated(() => undefined, { warmup: 0, minRepeats: 1, minSeconds: 1e9, maxRepeats: 6 });
  assert.equal(b.samples.length, 6);
  assert.equal(b.seconds, median(b.samples));
});

test('syntheticKV: seeded, with large-magnitude key channels fixed across tokens', () => {
  const T = 256,
    kv = 2,
    d = 64;
  const a = syntheticKV(T, kv, d, 5);
  const b = syntheticKV(T, kv, d, 5);
  assert.deepEqual(a.k, b.k);
  assert.deepEqual(a.v, b.v);
  assert.notDeepEqual(syntheticKV(T, kv, d, 6).k, a.k);
  const meanAbs = (x: Float32Array, c: number) => {
    let s = 0;
    for (let t = 0; t < T; t++) s += Math.abs(x[t * kv * d + c]!);
    return s / T;
  };
  const outlier = 3; // channel 3 of head 0 (every OUTLIER_EVERY-th channel from 3)
  assert.ok(OUTLIER_EVERY > outlier);
  assert.ok(meanAbs(a.k, outlier) > 5 * meanAbs(a.k, 0), 'outlier key channel is large');
  assert.ok(meanAbs(a.k, d + outlier) > 5 * meanAbs(a.k, d + 1), 'each head has outliers');
  assert.ok(meanAbs(a.v, outlier) < 2 * meanAbs(a.v, 0), 'values have no outlier channels');
  // Normal(0,1) elsewhere: mean |x| = sqrt(2/π) ≈ 0.80.
  assert.ok(Math.abs(meanAbs(a.v, 0) - 0.8) < 0.15);
});

test('markdown table and number formats', () => {
  const t = markdownTable(
    ['kv', 'bytes', 'ratio'],
    [
      ['fp16', 1024, formatRatio(1)],
      ['kivi2', 205, formatRatio(5)],
    ],
  );
  assert.equal(t, '| kv | bytes | ratio |\n|:---|---:|---:|\n| fp16 | 1024 | 1.00× |\n| kivi2 | 205 | 5.00× |\n');
  assert.equal(formatBytes(512), '512 B');
  assert.equal(formatBytes(1536), '1.50 KiB');
  assert.equal(formatBytes(3 * 2 ** 30), '3.00 GiB');
  assert.equal(formatRatio(Infinity), '–');
});
