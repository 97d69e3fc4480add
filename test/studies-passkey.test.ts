/**
 * `eval passkey`: the prompt generator reproduces the golden prompts token for token, the batched answer
 * path reproduces the golden answers, and the command's counts, JSON and heat-maps are consistent.
 */

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { parseKvSpec } from '../src/cache/spec.js';
import { answerIds, isCorrect, type PasskeyStudy } from '../src/studies/eval/passkey.js';
import { DEFAULT_FILLER, HEADER, PasskeyPrompter, QUESTION } from '../src/studies/eval/passkey-prompt.js';
import { bundledModel, golden, MODEL_DIR, tmpDir } from './helpers.js';
import { assertCharts, kiviOk, WIKITEXT } from './studies-helpers.js';

const G = golden();
/** Where each golden prompt's filler starts in the WikiText tokens, and where its needle sits (found by search). */
const GOLDEN_OFFSETS = [298426, 133729, 235662, 199027, 49209, 204372, 1104, 139633];
const GOLDEN_NEEDLE_AT = [867, 120, 483, 807, 999, 886, 1425, 1477];

test('pass-key prompts: the generator rebuilds all 8 golden prompts exactly from (key, filler offset, depth)', async () => {
  const m = await bundledModel();
  const p = new PasskeyPrompter(m.tokenizer, fs.readFileSync(WIKITEXT, 'utf8'));
  G.passkey.forEach((g, i) => {
    const F = p.fillerLength(g.prompt.length, g.key);
    const built = p.build(g.prompt.length, g.key, GOLDEN_NEEDLE_AT[i]! / F, GOLDEN_OFFSETS[i]!);
    assert.deepEqual(built.ids, g.prompt, `golden prompt ${i}`);
    assert.equal(built.needleAt, GOLDEN_NEEDLE_AT[i]);
  });
});

test('pass-key prompts: seeded, exact length, key hidden at round(depth · filler)', async () => {
  const m = await bundledModel();
  const p = new PasskeyPrompter(m.tokenizer, DEFAULT_FILLER);
  const header = m.encode(HEADER, { bos: false });
  const question = m.encode(QUESTION, { bos: false });
  for (const depth of [0, 0.3, 1]) {
    const a = p.sample(700, depth, 2, 11);
    assert.deepEqual(p.sample(700, depth, 2, 11), a, 'same seed, same prompt');
    assert.equal(a.ids.length, 700);
    assert.match(a.key, /^[1-9]\d{4}$/);
    assert.deepEqual(a.ids.slice(1, 1 + header.length), header);
    assert.deepEqual(a.ids.slice(-question.length), question);
    const F = p.fillerLength(700, a.key);
    assert.equal(a.needleAt, Math.round(depth * F));
    const text = m.decode(a.ids);
    assert.equal((text.match(new RegExp(a.key, 'g')) ?? []).length, 2, 'the needle states the key twice');
  }
  // Only the needle moves with depth: same key and filler for one (length, trial, seed).
  assert.equal(p.sample(700, 0, 2, 11).key, p.sample(700, 1, 2, 11).key);
  assert.notEqual(p.sample(700, 0, 2, 11).key, p.sample(700, 0, 2, 12).key);
  // The default filler is shorter than a prompt: it repeats.
  assert.ok(m.encode(DEFAULT_FILLER, { bos: false }).length < 100);
});

test('pass-key answers: batched decoding of several specs gives the golden fp32 ids and the key under each spec', async () => {
  const m = await bundledModel();
  const g = G.passkey[1]!;
  const specs = ['fp32', 'kivi2', 'fake2-kT-vT'];
  const ids = await answerIds(
    m.transformer,
    g.prompt,
    specs.map((s) => parseKvSpec(s)),
  );
  assert.deepEqual(ids[0], g.out.fp32);
  specs.forEach((kv, j) => {
    assert.ok(isCorrect(m.decode(ids[j]!), g.key), `${kv}: ${m.decode(ids[j]!)}`);
  });
  assert.equal(isCorrect(' 18271.', '18271'), true);
  assert.equal(isCorrect(' 1827', '18271'), false);
});

test('eval passkey: accuracy per cell and spec agrees with the answers; a valid heat-map per spec', () => {
  const out = tmpDir();
  const stdout = kiviOk([
    'eval',
    'passkey',
    '--model',
    MODEL_DIR,
    '--lengths',
    '128,200',
    '--depths',
    '0,1',
    '--n',
    '1',
    '--kv',
    'fp32,kivi:k=2,v=2,g=32,r=32',
    '--seed',
    '5',
    '--out',
    out,
    '--json',
  ]);
  const j = JSON.parse(stdout) as PasskeyStudy & { files: string[] };
  assert.deepEqual(
    j.results.map((r) => r.kv),
    ['fp32', 'kivi:k=2,v=2,g=32,r=32'],
  );
  assert.equal(j.trials.length, 4);
  for (const r of j.results) {
    assert.equal(r.cells.length, 4);
    for (const c of r.cells) {
      const ts = j.trials.filter((t) => t.length === c.length && t.depth === c.depth);
      assert.equal(c.n, 1);
      assert.equal(c.correct, ts.filter((t) => isCorrect(t.answers[r.kv]!, t.key)).length);
    }
    assert.equal(
      r.correct,
      r.cells.reduce((a, c) => a + c.correct, 0),
    );
    assert.equal(r.accuracy, r.correct / 4);
  }
  // Measured: at these short lengths both caches find every key.
  assert.deepEqual(
    j.results.map((r) => r.correct),
    [4, 4],
  );
  assert.deepEqual(JSON.parse(fs.readFileSync(path.join(out, 'passkey.json'), 'utf8')).results, j.results);
  assert.match(fs.readFileSync(path.join(out, 'passkey.md'), 'utf8'), /\| fp32 \| 4\/4 \| 100\.0% \|/);
  assertCharts(j.files, 2);
  assert.deepEqual(j.files.map((f) => path.basename(f)).sort(), [
    'passkey-fp32.png',
    'passkey-fp32.svg',
    'passkey-kivi_k_2_v_2_g_32_r_32.png',
    'passkey-kivi_k_2_v_2_g_32_r_32.svg',
  ]);
});
