import assert from 'node:assert/strict';
import { test } from 'node:test';
import { cacheBytes } from '../src/cache/budget.js';
import { parseKvSpec } from '../src/cache/spec.js';
import { TsBackend } from '../src/kernels/ts/backend.js';
import { runAttentionBench } from '../src/studies/bench/attention.js';
import { runCli } from './bench-helpers.js';

const FAST = { warmup: 1, minRepeats: 2, minSeconds: 0, maxRepeats: 2 };
/** KIVI-2 with the reference's float32 residual; the named kivi2 keeps it in float16. */
const FULL_RES = 'kivi:k=2,v=2,g=32,r=128,residual=fp32';

/** KIVI bytes for one layer written out by hand (docs/KIVI.md §5, §7), independent of cache/budget.ts. */
function kiviBytes(T: number, kv: number, d: number, bits: number, G: number, R: number, resBytes: number): number {
  const rk = T % R,
    kq = T - rk; // keys: whole blocks of R, the rest full precision (all of it while T < R)
  const rv = Math.min(T, R),
    vq = T - rv; // values: a window of the newest R
  const codes = (n: number) => (n * kv * (d * bits)) / 8;
  return codes(kq) + (kq / G) * kv * d * 4 + codes(vq) + vq * kv * (d / G) * 4 + (rk + rv) * kv * d * resBytes;
}

test('bench attention: kv_bytes are the exact cache sizes, for every spec and context', async () => {
  const backend = new TsBackend();
  const specs = ['fp32', 'fp16', 'kivi2', 'kivi4', FULL_RES];
  const contexts = [300, 1, 129];
  const r = await runAttentionBench({ contexts, specs: specs.map((s) => parseKvSpec(s)), heads: 4, kvHeads: 2, headDim: 64, backend, repeats: FAST });
  assert.equal(r.length, specs.length * contexts.length);
  // Sorted by context, specs in the order given.
  assert.deepEqual(
    r.map((x) => x.context),
    [1, 1, 1, 1, 1, 129, 129, 129, 129, 129, 300, 300, 300, 300, 300],
  );
  assert.deepEqual(
    r.slice(0, 5).map((x) => x.kv),
    specs,
  );
  const expected: Record<string, (T: number) => number> = {
    fp32: (T) => T * 2 * 2 * 64 * 4,
    fp16: (T) => T * 2 * 2 * 64 * 2,
    kivi2: (T) => kiviBytes(T, 2, 64, 2, 32, 128, 2),
    kivi4: (T) => kiviBytes(T, 2, 64, 4, 32, 128, 2),
    [FULL_RES]: (T) => kiviBytes(T, 2, 64, 2, 32, 128, 4),
  };
  for (const x of r) {
    assert.equal(x.kv_bytes, expected[x.kv]!(x.context), `${x.kv} at ${x.context}`);
    assert.ok(Number.isFinite(x.seconds) && x.seconds > 0);
    assert.deepEqual(Object.keys(x), ['kv', 'context', 'seconds', 'kv_bytes']);
  }
  assert.equal(kiviBytes(300, 2, 64, 2, 32, 128, 4), 108608); // worked by hand: 8192 + 4096 + 8256 + 88064
});

test('cache bytes targets: kivi2 (float16 residual) ≥ 5× smaller than fp16 at 32K, ≥ 4× at 4K', () => {
  const dims = { numLayers: 1, numHeads: 4, numKvHeads: 2, headDim: 128 };
  const ratio = (spec: string, T: number) => cacheBytes(parseKvSpec('fp16'), dims, T) / cacheBytes(parseKvSpec(spec), dims, T);
  assert.ok(ratio('kivi2', 32768) >= 5, String(ratio('kivi2', 32768)));
  assert.ok(ratio('kivi2', 4096) >= 4, String(ratio('kivi2', 4096)));
  assert.ok(ratio('kivi2', 4096) > 4.99 && ratio('kivi2', 4096) < 5.01);
  // With the reference's float32 residual: 4.63× at 4K, ~5.2× at 32K.
  assert.ok(ratio(FULL_RES, 4096) > 4.6 && ratio(FULL_RES, 4096) < 4.7);
  // The limit without residual: 16 bits vs 2 + 32/G bits per element = 5.33×.
  assert.ok(ratio('kivi2', 1 << 22) < 16 / 3 && ratio('kivi2', 1 << 22) > 5.3);
});

test("bench attention CLI: --json prints one line of the issue's shape; bad input is one line", async () => {
  const r = await runCli([
    'bench',
    'attention',
    '--context',
    '64,256',
    '--kv',
    'fp32,kivi:k=2,v=4,g=32,r=128',
    '--head-dim',
    '64',
    '--repeats',
    '1',
    '--warmup',
    '0',
    '--json',
  ]);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  assert.equal(lines.length, 1);
  const j = JSON.parse(lines[0]!);
  assert.deepEqual(
    j.results.map((x: { kv: string; context: number }) => [x.kv, x.context]),
    [
      ['fp32', 64],
      ['kivi:k=2,v=4,g=32,r=128', 64],
      ['fp32', 256],
      ['kivi:k=2,v=4,g=32,r=128', 256],
    ],
  );
  assert.equal(j.results[2].kv_bytes, 256 * 2 * 2 * 64 * 4);
  const md = await runCli(['bench', 'attention', '--context', '64', '--kv', 'fp32,fp16', '--head-dim', '64', '--repeats', '1']);
  assert.equal(md.code, 0, md.stderr);
  assert.match(md.stdout, /^Decode attention per step.*\n\n\| context \| fp32 \| fp16 \|\n/);
  assert.match(md.stdout, /\| 64 \| [\d.]+ [µm]s \(1\.00×\) \| [\d.]+ [µm]s \([\d.]+×\) \|\n/);
  // Bytes per token: fp32 is 2 × 2 kv heads × 64 × 4 bytes, twice fp16.
  assert.match(md.stdout, /\| 64 \| 1024\.0 \(0\.50×\) \| 512\.0 \(1\.00×\) \|\n$/);
  for (const bad of [
    ['--heads', '3'],
    ['--kv', 'kivi3'],
    ['--context', '12,x'],
    ['--kv', 'kivi:g=48'],
  ]) {
    const e = await runCli(['bench', 'attention', ...bad]);
    assert.equal(e.code, 1, bad.join(' '));
    assert.equal(e.stdout, '');
    assert.ok(!/\n\s+at /.test(e.stderr), 'no stack trace');
  }
});
