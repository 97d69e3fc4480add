import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';
import { MODEL, runCli } from './bench-helpers.js';
import { ROOT } from './helpers.js';

test('bench generate: per-spec prefill/decode tokens/s and the cache a sequence ends with', async () => {
  const r = await runCli([
    'bench',
    'generate',
    '--model',
    MODEL,
    '--prompt',
    '64',
    '--gen',
    '8',
    '--repeats',
    '1',
    '--kv',
    'fp32,fp16,kivi2',
    '--weights',
    'native',
    '--threads',
    '1',
    '--json',
  ]);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout) as {
    results: {
      weights: string;
      kv: string;
      prompt_tokens: number;
      generated: number;
      prefill_tokens_per_s: number;
      decode_tokens_per_s: number;
      kv_bytes: number;
    }[];
  };
  assert.deepEqual(
    j.results.map((x) => x.kv),
    ['fp32', 'fp16', 'kivi2'],
  );
  assert.deepEqual(
    j.results.map((x) => x.weights),
    ['native', 'native', 'native'],
  );
  // After 8 generated tokens the cache holds the prompt and the first 7 (the last is never fed back):
  // 71 tokens × 8 layers × 2 kv heads × 128 channels × (K and V).
  const T = 64 + 8 - 1;
  const dense = T * 8 * 2 * 128 * 2;
  assert.equal(j.results[0]!.kv_bytes, dense * 4);
  assert.equal(j.results[1]!.kv_bytes, dense * 2);
  // kivi2 below R=128 tokens: nothing is quantized yet, keys and values all in the float16 residual.
  assert.equal(j.results[2]!.kv_bytes, dense * 2);
  for (const x of j.results) {
    assert.equal(x.prompt_tokens, 64);
    assert.equal(x.generated, 8);
    assert.ok(x.prefill_tokens_per_s > 0 && Number.isFinite(x.prefill_tokens_per_s));
    assert.ok(x.decode_tokens_per_s > 0 && Number.isFinite(x.decode_tokens_per_s));
  }
});

test('bench generate: every other round runs the specs in reversed order', async () => {
  const { roundOrder } = await import('../src/studies/bench/generate.js');
  const v = ['fp16', 'kivi2', 'kivi4'];
  assert.deepEqual(roundOrder(v, 0), [
    [0, 'fp16'],
    [1, 'kivi2'],
    [2, 'kivi4'],
  ]);
  assert.deepEqual(roundOrder(v, 1), [
    [2, 'kivi4'],
    [1, 'kivi2'],
    [0, 'fp16'],
  ]);
  assert.deepEqual(roundOrder(v, 2), roundOrder(v, 0));
});

test('bench generate: a prompt past the context, or a text too short, is one clear line', async () => {
  const a = await runCli(['bench', 'generate', '--model', MODEL, '--prompt', '2000', '--gen', '100']);
  assert.equal(a.code, 1);
  assert.equal(a.stderr.trim(), "kivi: prompt 2000 + generated 100 tokens exceed the model's context of 2048");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kivi-bench-gen-'));
  const f = path.join(dir, 'short.txt');
  fs.writeFileSync(f, 'Only a few words.');
  const b = await runCli(['bench', 'generate', '--model', MODEL, '--text', f, '--prompt', '100']);
  assert.equal(b.code, 1);
  assert.match(b.stderr.trim(), /^kivi: the text has \d+ tokens, fewer than --prompt 100$/);
  fs.rmSync(dir, { recursive: true });
});

test('bench generate: float32 and 16-bit weights side by side by default, same caches', async () => {
  const r = await runCli([
    'bench',
    'generate',
    '--model',
    MODEL,
    '--prompt',
    '32',
    '--gen',
    '4',
    '--repeats',
    '1',
    '--kv',
    'fp32,kivi2',
    '--threads',
    '1',
    '--json',
  ]);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout) as { results: { weights: string; kv: string; kv_bytes: number; decode_tokens_per_s: number }[] };
  assert.deepEqual(
    j.results.map((x) => `${x.weights}/${x.kv}`),
    ['f32/fp32', 'f32/kivi2', 'native/fp32', 'native/kivi2'],
  );
  assert.equal(j.results[0]!.kv_bytes, j.results[2]!.kv_bytes);
  assert.equal(j.results[1]!.kv_bytes, j.results[3]!.kv_bytes);
  for (const x of j.results) assert.ok(x.decode_tokens_per_s > 0 && Number.isFinite(x.decode_tokens_per_s));
  const md = await runCli(['bench', 'generate', '--model', MODEL, '--prompt', '16', '--gen', '2', '--repeats', '1', '--kv', 'fp32', '--threads', '1']);
  assert.equal(md.code, 0, md.stderr);
  assert.match(md.stdout, /relative to fp32 with f32 weights/);
  assert.match(md.stdout, /\| native \| fp32 \|/);
  // One generated token is the prefill's own: prefill only, decode 0 in JSON (as kivi generate says) and – in the table.
  const one = await runCli([
    'bench',
    'generate',
    '--model',
    MODEL,
    '--prompt',
    '16',
    '--gen',
    '1',
    '--repeats',
    '2',
    '--kv',
    'kivi2',
    '--weights',
    'native',
    '--threads',
    '1',
  ]);
  assert.equal(one.code, 0, one.stderr);
  assert.match(one.stdout, /\| native \| kivi2 \| \d+ \(1\.00×\) \| – \(no decode step\) \|/);
  assert.doesNotMatch(one.stdout, /NaN/);
  const bad = await runCli(['bench', 'generate', '--model', MODEL, '--weights', 'f32,f32']);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /names a format twice/);
});

test('bench generate --fill: decode after caches filled with synthetic keys/values; the cache holds fill + generated tokens exactly', async () => {
  const { cacheBytes } = await import('../src/cache/budget.js');
  const { parseKvSpec } = await import('../src/cache/spec.js');
  const dims = { numLayers: 8, numHeads: 4, numKvHeads: 2, headDim: 128 };
  // Random weights of the bundled model's shapes lift its 2048-position limit: 3000 cached tokens.
  const cfg = path.join(ROOT, 'models/configs/llama-28m-gqa');
  const r = await runCli([
    'bench',
    'generate',
    '--model',
    cfg,
    '--random-weights',
    '7',
    '--fill',
    '3000',
    '--gen',
    '5',
    '--repeats',
    '2',
    '--kv',
    'fp16,kivi2,kivi4',
    '--threads',
    '1',
    '--json',
  ]);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout) as {
    results: {
      kv: string;
      prompt_tokens: number;
      prefill_tokens_per_s: number;
      decode_tokens_per_s: number;
      decode_range: [number, number];
      decode_rounds: number[];
      kv_bytes: number;
    }[];
  };
  for (const x of j.results) {
    assert.equal(x.prompt_tokens, 3000);
    // Two rounds: the median is their mean, between the slower and the faster.
    const [lo, hi] = x.decode_range;
    assert.equal(x.decode_rounds.length, 2);
    assert.deepEqual([Math.min(...x.decode_rounds), Math.max(...x.decode_rounds)], x.decode_range);
    assert.ok(lo > 0 && lo <= hi, `${x.kv} range ${lo}–${hi}`);
    assert.ok(Math.abs(x.decode_tokens_per_s - (lo + hi) / 2) <= 1e-9 * hi, `${x.kv} median of two rounds`);
    assert.equal(x.prefill_tokens_per_s, 0, 'no prefill ran');
    assert.ok(x.decode_tokens_per_s > 0 && Number.isFinite(x.decode_tokens_per_s));
    assert.equal(x.kv_bytes, cacheBytes(parseKvSpec(x.kv), dims, 3005), x.kv);
  }
  // 3005 tokens: kivi2 holds 2944 quantized key tokens (23 blocks of 128) and 61 in the residual.
  assert.ok(j.results[1]!.kv_bytes < j.results[0]!.kv_bytes / 4);
  const a = await runCli(['bench', 'generate', '--model', MODEL, '--fill', '2040', '--gen', '10']);
  assert.equal(a.code, 1);
  assert.equal(a.stderr.trim(), "kivi: --fill 2040 + generated 10 tokens exceed the model's context of 2048");
  const b = await runCli(['bench', 'generate', '--model', MODEL, '--fill', '100', '--gen', '1']);
  assert.equal(b.code, 1);
  assert.equal(b.stderr.trim(), 'kivi: --fill needs --gen 2 or more (the first step is untimed)');
});

test('bench generate --prefill-attention: blocks and one row at a time side by side (wasm), same caches; elsewhere one clear line', async () => {
  const args = ['bench', 'generate', '--model', MODEL, '--prompt', '48', '--gen', '3', '--repeats', '1', '--kv', 'fp16,kivi2', '--weights', 'native'];
  const r = await runCli([...args, '--prefill-attention', 'rows,blocks', '--backend', 'wasm', '--threads', '1', '--json']);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout) as { results: { kv: string; prefill_attention: string; kv_bytes: number; prefill_tokens_per_s: number }[] };
  assert.deepEqual(
    j.results.map((x) => `${x.kv}/${x.prefill_attention}`),
    ['fp16/rows', 'fp16/blocks', 'kivi2/rows', 'kivi2/blocks'],
  );
  assert.equal(j.results[0]!.kv_bytes, j.results[1]!.kv_bytes);
  assert.equal(j.results[2]!.kv_bytes, j.results[3]!.kv_bytes);
  for (const x of j.results) assert.ok(x.prefill_tokens_per_s > 0 && Number.isFinite(x.prefill_tokens_per_s));
  const ts = await runCli([...args, '--prefill-attention', 'blocks', '--backend', 'ts']);
  assert.equal(ts.code, 1);
  assert.equal(ts.stderr.trim(), 'kivi: --prefill-attention applies to the wasm back end');
  const bad = await runCli([...args, '--prefill-attention', 'tiles']);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /"tiles" is not one of blocks, rows/);
});
