import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MODEL, runCli } from './bench-helpers.js';

// The bundled model: 8 layers, 2 kv heads, head_dim 128.
const [L, KV, D] = [8, 2, 128];

/** KIVI bytes of the whole model written out by hand (docs/KIVI.md §5, §7), independent of cache/budget.ts. */
function kiviBytes(T: number, bits: number, G: number, R: number, resBytes: number): number {
  const rk = T % R,
    kq = T - rk;
  const rv = Math.min(T, R),
    vq = T - rv;
  const codes = (n: number) => (n * KV * D * bits) / 8;
  return L * (codes(kq) + (kq / G) * KV * D * 4 + codes(vq) + vq * KV * (D / G) * 4 + (rk + rv) * KV * D * resBytes);
}

test('bench kv-bytes: whole-model cache bytes per spec match the KIVI layout, with ratios vs fp16/fp32', async () => {
  // The named presets keep the residual in float16; the reference's float32 residual is the general form.
  const full = 'kivi:k=2,v=2,g=32,r=128,residual=fp32';
  const r = await runCli([
    'bench',
    'kv-bytes',
    '--model',
    MODEL,
    '--context',
    '4096,1000',
    '--kv',
    `kivi2,kivi4,kivi2-r32,kivi2-g128,${full},fake2-kC-vT,fp16,fp32`,
    '--json',
    '--backend',
    'ts',
  ]);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout) as {
    layers: number;
    results: { kv: string; context: number; kv_bytes: number; bytes_per_token: number; vs_fp16: number; vs_fp32: number }[];
  };
  assert.equal(j.layers, L);
  const expected: Record<string, (T: number) => number> = {
    kivi2: (T) => kiviBytes(T, 2, 32, 128, 2),
    kivi4: (T) => kiviBytes(T, 4, 32, 128, 2),
    'kivi2-r32': (T) => kiviBytes(T, 2, 32, 32, 2),
    'kivi2-g128': (T) => kiviBytes(T, 2, 128, 128, 2),
    [full]: (T) => kiviBytes(T, 2, 32, 128, 4),
    // Analysis-only: full-precision K/V plus their dequantized float32 shadows.
    'fake2-kC-vT': (T) => T * L * 4 * KV * D * 4,
    fp16: (T) => T * L * 2 * KV * D * 2,
    fp32: (T) => T * L * 2 * KV * D * 4,
  };
  assert.equal(j.results.length, 16);
  assert.deepEqual(
    j.results.map((x) => x.context),
    [...Array(8).fill(1000), ...Array(8).fill(4096)],
  );
  for (const x of j.results) {
    const want = expected[x.kv]!(x.context);
    assert.equal(x.kv_bytes, want, `${x.kv} at ${x.context}`);
    assert.equal(x.bytes_per_token, want / x.context);
    assert.ok(Math.abs(x.vs_fp16 - expected.fp16!(x.context) / want) < 1e-12);
    assert.ok(Math.abs(x.vs_fp32 - expected.fp32!(x.context) / want) < 1e-12);
  }
  // The numbers the README's method table shows: kivi2 at 4K, 1640 bytes/token, 5.00× smaller than fp16;
  // with the float32 residual 1768 bytes/token, 4.63×.
  const k2 = j.results.find((x) => x.kv === 'kivi2' && x.context === 4096)!;
  assert.equal(k2.bytes_per_token, 1640);
  assert.ok(k2.vs_fp16 > 4.99 && k2.vs_fp16 < 5.01);
  const k2full = j.results.find((x) => x.kv === full && x.context === 4096)!;
  assert.equal(k2full.bytes_per_token, 1768);
  assert.ok(k2full.vs_fp16 > 4.6 && k2full.vs_fp16 < 4.65);
});

test('bench kv-bytes: bad spec and missing model are one-line errors', async () => {
  const a = await runCli(['bench', 'kv-bytes', '--model', MODEL, '--kv', 'kivi3']);
  assert.equal(a.code, 1);
  assert.match(a.stderr, /bad --kv spec "kivi3"/);
  assert.equal(a.stderr.trim().split('\n').length, 1);
  const b = await runCli(['bench', 'kv-bytes', '--model', '/nonexistent/model']);
  assert.equal(b.code, 1);
  assert.equal(b.stderr.trim().split('\n').length, 1);
  assert.doesNotMatch(b.stderr, /at .*\.js/);
});
