/**
 * `eval ppl`: windows cut from the WikiText file are the golden windows, and the streaming NLL of the first
 * two reproduces the reference for fp32 and kivi2; teacher-forced fp32 agrees with streaming fp32.
 */

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { test } from 'node:test';
import type { PplJson } from '../src/studies/eval/ppl-report.js';
import { textWindows } from '../src/studies/eval/windows.js';
import { bundledModel, golden, MODEL_DIR } from './helpers.js';
import { kiviOk, WIKITEXT } from './studies-helpers.js';

const G = golden();

test('text windows: [BOS] + consecutive 1023-token slices reproduce the golden windows', async () => {
  const m = await bundledModel();
  const windows = textWindows(m.tokenizer, fs.readFileSync(WIKITEXT, 'utf8'), { window: 1024, context: 2048, maxWindows: 3 });
  assert.equal(windows.length, 3);
  assert.deepEqual(windows.slice(0, 2), G.windows);
  assert.ok(windows.every((w) => w.length === 1024 && w[0] === 1));
  // Every whole window of the text (393,163 tokens / 1023), the partial last slice dropped.
  assert.equal(textWindows(m.tokenizer, fs.readFileSync(WIKITEXT, 'utf8'), { window: 1024, context: 2048 }).length, 384);
  assert.deepEqual(
    textWindows(m.tokenizer, 'one two three four five', { window: 3, context: 2048 }).map((w) => w.length),
    [3, 3],
  );
});

test('eval ppl --max-windows 2: golden streaming NLL for fp32 and kivi2, teacher-forced reference, changes vs fp32', () => {
  const out = kiviOk(['eval', 'ppl', '--model', MODEL_DIR, '--text', WIKITEXT, '--max-windows', '2', '--kv', 'fp32,kivi2', '--json']);
  assert.equal(out.trim().split('\n').length, 1, 'one JSON line');
  const j = JSON.parse(out) as PplJson;
  assert.deepEqual(
    j.results.map((r) => r.kv),
    ['fp32', 'kivi2'],
  );
  assert.equal(j.baseline, 'fp32');
  assert.deepEqual([j.windows, j.window, j.prefill], [2, 1024, 512]);
  for (const r of j.results) {
    const tol = r.kv === 'fp32' ? 2e-3 : 5e-3;
    r.nll.forEach((x, w) => {
      assert.ok(Math.abs(x - G.nll[r.kv]![w]!) <= tol, `${r.kv} window ${w}: ${x} vs reference ${G.nll[r.kv]![w]}`);
    });
    assert.ok(Math.abs(r.mean_nll - (r.nll[0]! + r.nll[1]!) / 2) < 1e-12);
    assert.ok(Math.abs(r.ppl - Math.exp(r.mean_nll)) < 1e-9);
    assert.ok(Math.abs(r.delta_nll - (r.mean_nll - j.results[0]!.mean_nll)) < 1e-12);
    assert.ok(Math.abs(r.delta_ppl - (r.ppl - j.results[0]!.ppl)) < 1e-9);
  }
  // Golden table (docs/KIVI.md): fp32 ppl 89.50, kivi2 91.92.
  assert.ok(Math.abs(j.results[0]!.ppl - 89.5) < 0.1 && Math.abs(j.results[1]!.ppl - 91.92) < 0.5);
  // Streaming through an fp32 cache is exact attention: the teacher-forced forward scores the same tokens the same.
  const tf = j.teacher_forced;
  tf.nll.forEach((x, w) => {
    assert.ok(Math.abs(x - j.results[0]!.nll[w]!) < 1e-5, `teacher-forced ${x} vs streaming ${j.results[0]!.nll[w]}`);
  });
  // Over all 1023 predictions (measured: 4.3801, 4.8903): the early, short-context tokens are harder on window 0.
  assert.ok(Math.abs(tf.nll_all[0]! - 4.3801) < 2e-3 && Math.abs(tf.nll_all[1]! - 4.8903) < 2e-3, `${tf.nll_all}`);
});

test('eval ppl --md: a Markdown table with a row per spec and the teacher-forced reference', () => {
  const out = kiviOk([
    'eval',
    'ppl',
    '--model',
    MODEL_DIR,
    '--text',
    WIKITEXT,
    '--window',
    '160',
    '--prefill',
    '128',
    '--max-windows',
    '1',
    '--kv',
    'fp32,kivi:k=4,v=2,g=32,r=32',
    '--md',
  ]);
  const lines = out.split('\n');
  assert.equal(lines[0], '| kv cache | mean NLL | ppl | Δ NLL | Δ ppl |');
  assert.match(lines[2]!, /^\| fp32 \| \d\.\d{4} \| \d+\.\d\d \| 0\.0000 \| 0\.00 \|$/);
  assert.match(lines[3]!, /^\| kivi:k=4,v=2,g=32,r=32 \| \d\.\d{4} \| \d+\.\d\d \| [+−]\d\.\d{4} \| [+−]\d+\.\d\d \|$/);
  assert.match(lines[4]!, /^\| fp32 \(teacher-forced\) \| .* \| 0\.0000 \| 0\.00 \|$/);
  assert.match(out, /1 window\(s\) of 160 tokens, prefill 128, 31 decode predictions each; Δ vs fp32/);
});

test('eval ppl --prefill-chunk: through fp32 a chunked prefill scores as one exact chunk; through kivi2, whose later chunks read earlier ones quantized, it differs (slightly)', () => {
  const args = [
    'eval',
    'ppl',
    '--model',
    MODEL_DIR,
    '--text',
    WIKITEXT,
    '--window',
    '192',
    '--prefill',
    '160',
    '--max-windows',
    '1',
    '--kv',
    'fp32,kivi2',
    '--json',
  ];
  const one = JSON.parse(kiviOk(args)) as PplJson;
  const chunked = JSON.parse(kiviOk([...args, '--prefill-chunk', '64'])) as PplJson;
  assert.equal(one.prefill_chunk, null);
  assert.equal(chunked.prefill_chunk, 64);
  assert.ok(Math.abs(chunked.results[0]!.mean_nll - one.results[0]!.mean_nll) < 1e-5, `fp32: ${chunked.results[0]!.mean_nll} vs ${one.results[0]!.mean_nll}`);
  // The teacher-forced reference does not depend on the prefill.
  assert.equal(chunked.teacher_forced.mean_nll, one.teacher_forced.mean_nll);
  assert.notEqual(chunked.results[1]!.mean_nll, one.results[1]!.mean_nll);
  // A sanity band (measured: 5.0555 one chunk, 5.0565 in chunks of 64), not a claim.
  assert.ok(Math.abs(chunked.results[1]!.mean_nll - one.results[1]!.mean_nll) < 0.05);
});
