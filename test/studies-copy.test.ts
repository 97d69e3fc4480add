/**
 * `eval copy`: prompts are seeded and in the trained format, words are 3–9 lowercase letters, and the
 * command's exact rate and word accuracy equal a direct greedy check (one cache per prompt, no shared
 * prefill, no batching).
 */

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { test } from 'node:test';
import { createCache, parseKvSpec } from '../src/cache/spec.js';
import { argmax } from '../src/engine/sampling.js';
import { COPY_CUE, COPY_FILLER_SEPARATOR, COPY_INSTRUCTION, CopyPrompter, copyVocabulary, scoreCopy } from '../src/studies/eval/copy.js';
import { bundledModel, expectCliError, MODEL_DIR } from './helpers.js';
import { kiviOk, WIKITEXT } from './studies-helpers.js';

const TEXT = fs.readFileSync(WIKITEXT, 'utf8');

test('copy prompts: seeded words of 3–9 lowercase letters, distinct, in the trained format; depth adds text tokens', async () => {
  const m = await bundledModel();
  const p = new CopyPrompter(m.tokenizer, TEXT);
  assert.deepEqual(copyVocabulary('The cat sat on a mat mat, mat; extraordinarily dogs dogs x\nfish'), ['cat', 'sat', 'mat', 'dogs', 'fish']);
  assert.ok(p.vocabulary.length > 5000);
  for (const trial of [0, 1, 7]) {
    const a = p.prompt(30, 0, 3, trial);
    assert.deepEqual(p.prompt(30, 0, 3, trial), a, 'same seed and trial, same prompt');
    assert.equal(a.words.length, 30);
    assert.equal(new Set(a.words).size, 30);
    for (const w of a.words) assert.match(w, /^[a-z]{3,9}$/);
    assert.equal(m.decode(a.ids), `${COPY_INSTRUCTION}${a.words.join(' ')}${COPY_CUE}`);
    assert.equal(a.ids[0], m.tokenizer.bosId);
    const deep = p.prompt(30, 500, 3, trial);
    assert.deepEqual(deep.words, a.words, 'depth moves the list, not its words');
    assert.equal(deep.ids.length, 1 + 500 + m.encode(`${COPY_FILLER_SEPARATOR}${COPY_INSTRUCTION}${a.words.join(' ')}${COPY_CUE}`, { bos: false }).length);
  }
  assert.notDeepEqual(p.prompt(30, 0, 3, 0).words, p.prompt(30, 0, 4, 0).words, 'another seed, other words');
  assert.notDeepEqual(p.prompt(30, 0, 3, 0).words, p.prompt(30, 0, 3, 1).words, 'another trial, other words');
  assert.deepEqual(scoreCopy('a b c\nd', ['a', 'b', 'c']), { exact: true, correct: 3 });
  assert.deepEqual(scoreCopy(' a x c d', ['a', 'b', 'c']), { exact: false, correct: 2 });
});

test('eval copy --json: exact rate and word accuracy of fp32 equal a direct greedy check', async () => {
  const m = await bundledModel();
  const n = 3;
  const words = 8;
  const seed = 5;
  const out = kiviOk([
    'eval',
    'copy',
    '--model',
    MODEL_DIR,
    '--text',
    WIKITEXT,
    '--n',
    String(n),
    '--words',
    String(words),
    '--seed',
    String(seed),
    '--depth',
    '40',
    '--kv',
    'fp32,kivi2',
    '--json',
  ]);
  const j = JSON.parse(out) as { results: { kv: string; exact: number; word_accuracy: number; n: number }[] };
  assert.deepEqual(Object.keys(j), ['results']);
  for (const r of j.results) assert.deepEqual(Object.keys(r), ['kv', 'exact', 'word_accuracy', 'n']);
  assert.deepEqual(
    j.results.map((r) => [r.kv, r.n]),
    [
      ['fp32', n],
      ['kivi2', n],
    ],
  );
  // Direct: the whole prompt through a fresh cache, then greedy until a newline, EOS or the budget.
  const p = new CopyPrompter(m.tokenizer, TEXT);
  let exact = 0;
  let correct = 0;
  for (let t = 0; t < n; t++) {
    const pr = p.prompt(words, 40, seed, t);
    const cache = createCache(parseKvSpec('fp32'), m.transformer.pool);
    let logits = (await m.transformer.forward([{ tokens: pr.ids, cache, logits: 'last' }]))[0] as Float32Array;
    const ids: number[] = [];
    for (;;) {
      ids.push(argmax(logits));
      if (m.decode(ids).includes('\n') || m.tokenizer.eosIds.includes(ids.at(-1)!) || ids.length >= pr.budget) break;
      logits = (await m.transformer.forward([{ tokens: [ids.at(-1)!], cache, logits: 'last' }]))[0] as Float32Array;
    }
    cache.free();
    const got = m.decode(ids).split('\n')[0]!.trim().split(/\s+/);
    if (got.join(' ') === pr.words.join(' ')) exact++;
    pr.words.forEach((w, i) => {
      correct += got[i] === w ? 1 : 0;
    });
  }
  assert.equal(j.results[0]!.exact, exact / n);
  assert.equal(j.results[0]!.word_accuracy, correct / (n * words));
  assert.ok(j.results[0]!.word_accuracy > 0.5, 'fp32 copies most of a short list');
});

test('eval copy: bad options are one-line errors', () => {
  expectCliError(['eval', 'copy', '--model', MODEL_DIR, '--text', WIKITEXT, '--depth', '2040', '--n', '1'], /longer than the model's context of 2048/);
  expectCliError(['eval', 'copy', '--model', MODEL_DIR, '--text', WIKITEXT, '--words', '0'], /--words/);
  expectCliError(
    ['eval', 'kld', '--model', MODEL_DIR, '--text', WIKITEXT, '--first-window', '999'],
    /first window 999 is outside the text's 384 whole windows/,
  );
  // Options only the TypeScript reference runs are refused elsewhere before any work, naming it.
  expectCliError(
    ['eval', 'kld', '--model', MODEL_DIR, '--text', WIKITEXT, '--backend', 'wasm', '--kv', 'kivi2,kivi:k=4,v=2,gk=128,gv=32,vmeta=8,rot=hadamard'],
    /kivi:k=4,v=2,gk=128,gv=32,vmeta=8,rot=hadamard: vmeta=8 runs on the TypeScript reference back end only \(--backend ts\)/,
  );
  expectCliError(
    ['generate', '--model', MODEL_DIR, '--prompt', 'Hi', '--backend', 'wasm', '--kv', 'kivi:k=2,v=2,vmeta=8'],
    /TypeScript reference back end only/,
  );
});
