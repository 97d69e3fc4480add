/**
 * `eval table`: the spec set is the paper's, every row equals the streaming NLL computed directly, and the
 * generated reading follows the numbers (it flips when they flip).
 */

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { parseKvSpec } from '../src/cache/spec.js';
import { streamingNll } from '../src/studies/eval/nll.js';
import { type PplStudy, specNll } from '../src/studies/eval/ppl.js';
import { ABLATION, FAKE_ROWS, kivi2Name, TABLE_SPECS } from '../src/studies/eval/table.js';
import { type TableJson, tableReading } from '../src/studies/eval/table-report.js';
import { textWindows } from '../src/studies/eval/windows.js';
import { bundledModel, MODEL_DIR, tmpDir } from './helpers.js';
import { kiviOk, WIKITEXT } from './studies-helpers.js';

test('table specs: fp32, 8 simulated axis combinations, kivi2/kivi4, and the 6 valid G × R cells, each once', () => {
  assert.equal(TABLE_SPECS.length, 16);
  assert.equal(new Set(TABLE_SPECS).size, 16);
  assert.deepEqual(FAKE_ROWS.map((r) => r.kv).sort(), [
    'fake2-kC-vC',
    'fake2-kC-vT',
    'fake2-kT-vC',
    'fake2-kT-vT',
    'fake4-kC-vC',
    'fake4-kC-vT',
    'fake4-kT-vC',
    'fake4-kT-vT',
  ]);
  assert.deepEqual(
    ABLATION.map((c) => [c.groupSize, c.residual]),
    [
      [32, 32],
      [32, 64],
      [32, 128],
      [64, 64],
      [64, 128],
      [128, 128],
    ],
  );
  assert.equal(kivi2Name(32, 128), 'kivi2');
  assert.equal(kivi2Name(32, 32), 'kivi2-r32');
  assert.equal(kivi2Name(128, 128), 'kivi2-g128');
  for (const c of ABLATION)
    assert.deepEqual(parseKvSpec(c.kv), { kind: 'kivi', kBits: 2, vBits: 2, groupSize: c.groupSize, residual: c.residual, residualDtype: 'fp16', name: c.kv });
});

test('eval table: every row is the streaming NLL of its spec, with its Markdown and JSON forms', async () => {
  const out = tmpDir();
  const stdout = kiviOk([
    'eval',
    'table',
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
    '--json',
    '--out',
    out,
  ]);
  const j = JSON.parse(stdout) as TableJson;
  assert.deepEqual(
    j.results.map((r) => r.kv),
    TABLE_SPECS,
  );
  assert.deepEqual(JSON.parse(fs.readFileSync(path.join(out, 'table.json'), 'utf8')), j);
  const m = await bundledModel();
  const windows = textWindows(m.tokenizer, fs.readFileSync(WIKITEXT, 'utf8'), { window: 160, context: 2048, maxWindows: 1 });
  for (const kv of ['fp32', 'kivi2-g64-r64', 'fake2-kT-vC']) {
    const direct = await streamingNll(m.transformer, windows, parseKvSpec(kv), { prefill: 128 });
    assert.deepEqual(j.results.find((r) => r.kv === kv)!.nll, direct, kv);
  }
  const fp32 = j.results[0]!;
  for (const r of [...j.main, ...j.ablation]) {
    const res = j.results.find((x) => x.kv === r.kv)!;
    assert.equal(r.ppl, res.ppl);
    assert.ok(Math.abs(r.delta_ppl - (res.ppl - fp32.ppl)) < 1e-9);
  }
  assert.equal(j.main.length, 11);
  assert.equal(j.ablation.length, 6);
  const md = fs.readFileSync(path.join(out, 'table.md'), 'utf8');
  const k2 = j.results.find((r) => r.kv === 'kivi2')!;
  assert.ok(md.includes(`| kivi2 | 2 | per-channel | per-token | R = 128 | ${k2.mean_nll.toFixed(4)} | ${k2.ppl.toFixed(2)} |`), md);
  assert.match(md, /\| 64 \| — \| \d+\.\d\d \([+−]\d+\.\d\d\) \| \d+\.\d\d \([+−]\d+\.\d\d\) \|/);
  assert.ok(md.includes(j.reading));
});

/** A study whose perplexities are given per spec (NLL = ln ppl, one window). */
function fakeStudy(ppl: Record<string, number>): PplStudy {
  const results = TABLE_SPECS.map((kv) => specNll(kv, [Math.log(ppl[kv] ?? 100)]));
  const tf = specNll('fp32 (teacher-forced)', [Math.log(100)]);
  return { windows: 1, window: 1024, prefill: 512, results, teacherForced: { ...tf, nll_all: tf.nll, mean_nll_all: tf.mean_nll, ppl_all: tf.ppl } };
}

test('table reading: names the axis that hurts keys most, and flips with the numbers', () => {
  const base = {
    fp32: 100,
    'fake4-kT-vT': 101,
    'fake4-kT-vC': 101.5,
    'fake4-kC-vT': 100.5,
    'fake4-kC-vC': 101,
    kivi4: 100.2,
    kivi2: 103,
    'kivi2-r32': 106,
    'kivi2-r64': 104,
    'kivi2-g64': 105,
    'kivi2-g64-r64': 107,
    'kivi2-g128': 109,
  };
  const a = tableReading(fakeStudy({ ...base, 'fake2-kT-vT': 140, 'fake2-kT-vC': 130, 'fake2-kC-vT': 110, 'fake2-kC-vC': 120 }));
  assert.match(a, /quantizing keys per token costs \+35\.00 ppl on average \(over both value axes\) against \+15\.00 per channel/);
  assert.match(a, /so per-token grouping hurts keys most; for values, per-token costs \+25\.00 against \+25\.00 per channel/);
  assert.match(a, /best 2-bit combination is per-channel keys with per-token values \(fake2-kC-vT, \+10\.00\)/);
  assert.match(a, /At 4 bits every combination stays within \+1\.50/);
  assert.match(a, /cost \+3\.00 ppl \(kivi2, \+3\.0% over fp32's 100\.00\) and \+0\.20 \(kivi4\): against fake2-kC-vT, the residual recovers 70% of the loss/);
  assert.match(a, /group size at R = 128 gives G = 32: \+3\.00, G = 64: \+5\.00, G = 128: \+9\.00/);
  assert.match(a, /residual length at G = 32 gives R = 32: \+6\.00, R = 64: \+4\.00, R = 128: \+3\.00/);
  const b = tableReading(fakeStudy({ ...base, 'fake2-kT-vT': 110, 'fake2-kT-vC': 112, 'fake2-kC-vT': 150, 'fake2-kC-vC': 140 }));
  assert.match(b, /so per-channel grouping hurts keys most/);
  assert.match(b, /best 2-bit combination is per-token keys with per-token values \(fake2-kT-vT, \+10\.00\)/);
});
