/** The capacity study at a small scale: the server runs exactly as many sequences as the budget admits. */

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { test } from 'node:test';
import { peakAllocatedBytes } from '../src/cache/budget.js';
import { parseKvSpec } from '../src/cache/spec.js';
import { measureCapacity, textPrompts } from '../src/studies/serve/capacity.js';
import { MODEL, runCli } from './bench-helpers.js';
import { bundledModel, WIKITEXT } from './helpers.js';

test('running at once = floor(budget / reservation), the budget is never exceeded, every request completes', async () => {
  const m = await bundledModel();
  const text = fs.readFileSync(WIKITEXT, 'utf8');
  const [P, N, clients] = [24, 4, 7];
  const prompts = textPrompts(m, text, clients, P);
  assert.equal(prompts.length, clients);
  assert.ok(prompts.every((p) => p.length === P && p[0] === m.tokenizer.bosId));
  assert.notDeepEqual(prompts[0], prompts[1]);
  const specs = ['fp16', 'kivi:k=2,v=2,g=16,r=16,residual=fp16'];
  const { budget, rows } = await measureCapacity(m, { prompt: P, gen: N, clients, fp16Seqs: 2, specs, prompts });
  const reserve = (kv: string) => peakAllocatedBytes(parseKvSpec(kv), m.transformer.pool, P + N - 1, P);
  assert.equal(budget, 2 * reserve('fp16'));
  for (const r of rows) {
    assert.equal(r.reservation, reserve(r.kv));
    assert.equal(r.runningMax, Math.min(clients, Math.floor(budget / r.reservation)), r.kv);
    assert.equal(r.completed, clients);
    // The running sequences really held their caches together, within the budget.
    assert.ok(r.kvPagesMax <= budget);
    assert.ok(r.kvPagesMax > (r.runningMax - 1) * r.reservation, r.kv);
  }
  assert.ok(rows[1]!.runningMax > rows[0]!.runningMax);
});

test('kivi bench serve: the study from the CLI, JSON rows as measured, one-line errors', async () => {
  const r = await runCli([
    'bench',
    'serve',
    '--model',
    MODEL,
    '--text',
    WIKITEXT,
    '--prompt',
    '24',
    '--gen',
    '4',
    '--clients',
    '5',
    '--fp16-seqs',
    '2',
    '--kv',
    'fp16,kivi:k=2,v=2,g=16,r=16,residual=fp16',
    '--threads',
    '1',
    '--json',
  ]);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout) as { budget: number; clients: number; rows: { kv: string; reservation: number; runningMax: number; completed: number }[] };
  assert.equal(j.clients, 5);
  assert.deepEqual(
    j.rows.map((x) => x.kv),
    ['fp16', 'kivi:k=2,v=2,g=16,r=16,residual=fp16'],
  );
  assert.equal(j.budget, 2 * j.rows[0]!.reservation);
  for (const x of j.rows) {
    assert.equal(x.completed, 5);
    assert.equal(x.runningMax, Math.min(5, Math.floor(j.budget / x.reservation)), x.kv);
  }
  const e = await runCli(['bench', 'serve', '--model', MODEL, '--text', WIKITEXT, '--kv', 'kivi2']);
  assert.equal(e.code, 1);
  assert.equal(e.stderr.trim(), 'kivi: --kv must include fp16: the budget and the ratios are set by it');
});
