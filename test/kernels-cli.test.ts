/** --backend and --threads on the command line: results, clear errors, prompt exit with helper threads. */

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';
import { golden, kivi } from './helpers.js';

const G = golden();

test('generate --backend wasm --threads 2 gives the golden greedy ids and exits', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kivi-cli-'));
  const ids = path.join(dir, 'prompt.json');
  fs.writeFileSync(ids, JSON.stringify(G.greedy.prompt));
  const r = kivi([
    'generate',
    '--model',
    'models/llama-28m-gqa',
    '--prompt-ids',
    ids,
    '--max-tokens',
    '8',
    '--ignore-eos',
    '--json',
    '--backend',
    'wasm',
    '--threads',
    '2',
    '--kv',
    'fp32',
  ]);
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { ids: number[] };
  assert.deepEqual(out.ids, G.greedy.out.fp32!.slice(0, 8));
  fs.rmSync(dir, { recursive: true });
});

test('bad --threads and --backend values are one-line errors', () => {
  for (const [flag, value] of [
    ['--threads', '0'],
    ['--threads', 'two'],
    ['--threads', '1.5'],
    ['--backend', 'gpu'],
  ]) {
    const r = kivi(['generate', '--model', 'models/llama-28m-gqa', '--prompt', 'hi', flag!, value!]);
    assert.equal(r.status, 1, `${flag} ${value}`);
    assert.match(r.stderr, /error: option|kivi:/);
    assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
  }
});
