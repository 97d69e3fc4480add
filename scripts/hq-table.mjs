#!/usr/bin/env node
// The results table of issue 14 (docs/results/hq/results.md) from the run logs that scripts/hq.sh writes
// under docs/results/hq/runs/: each log holds the command, then the command's one JSON line.
//   node scripts/hq-table.mjs > docs/results/hq/results.md
import * as fs from 'node:fs';

const RUNS = 'docs/results/hq/runs';
function results(name) {
  const f = `${RUNS}/${name}.txt`;
  if (!fs.existsSync(f)) return null;
  const line = fs.readFileSync(f, 'utf8').split('\n').find((l) => l.startsWith('{'));
  return line ? new Map(JSON.parse(line).results.map((r) => [r.kv, r])) : null;
}
const command = (name) => fs.readFileSync(`${RUNS}/${name}.txt`, 'utf8').split('\n')[0].replace(/^\$ /, '');

const golden = results('kld-final-golden');
const wide = results('kld-final-16w');
const copies = [['copy-final-d0', 'depth 0'], ['copy-final-d512', 'depth 512']].map(([n, label]) => [results(n), label]);
const sign = (x, d) => (Number(Math.abs(x).toFixed(d)) === 0 ? (0).toFixed(d) : (x < 0 ? '−' : '+') + Math.abs(x).toFixed(d));
const pct = (x) => `${(100 * x).toFixed(1)}%`;

const rows = [];
for (const [kv, g] of golden) {
  const w = wide?.get(kv);
  const f0 = golden.get('fp32');
  const fw = wide?.get('fp32');
  const cells = [
    kv === 'kivi2-hq' ? '**kivi2-hq**' : `\`${kv}\``,
    g.bits_per_element.toFixed(3).replace(/\.?0+$/, ''),
    g.kld.toFixed(5), g.top1_agree.toFixed(4), sign(g.mean_nll - f0.mean_nll, 4),
    w ? w.kld.toFixed(5) : '—', w ? w.top1_agree.toFixed(4) : '—', w ? sign(w.ppl - fw.ppl, 2) : '—',
  ];
  for (const [c, label] of copies) {
    const r = c?.get(kv);
    const base = c?.get('fp32');
    if (!r) cells.push('—');
    else if (label === 'depth 0') cells.push(`${Math.round(r.exact * r.n)}/${r.n} (${pct(r.exact / base.exact)})`);
    else cells.push(`${pct(r.word_accuracy)} (${Math.round(r.exact * r.n)}/${r.n})`);
  }
  rows.push(`| ${cells.join(' | ')} |`);
}
const head = ['kv cache', 'bits/elem', 'KLD, golden', 'top-1, golden', 'Δ NLL, golden', 'KLD, 16 w.', 'top-1, 16 w.', 'Δ ppl, 16 w.',
  'copy exact, depth 0 (vs fp32)', 'copy words, depth 512 (exact)'];
process.stdout.write(`| ${head.join(' | ')} |\n|:--|${head.slice(1).map(() => '--:').join('|')}|\n${rows.join('\n')}\n\n`);
process.stdout.write('Commands (each row of a column comes from one run):\n\n');
for (const n of ['kld-final-golden', 'kld-final-16w', 'copy-final-d0', 'copy-final-d512', 'copy-final-d1024']) {
  if (fs.existsSync(`${RUNS}/${n}.txt`)) process.stdout.write(`- \`${n}\`: \`kivi ${command(n).replace(/^kivi /, '')}\`\n`);
}

// The charts, from the same logs.
const { kldFrontierChart } = await import('../dist/src/studies/eval/kld-report.js');
const { writeChart } = await import('../dist/src/studies/plot.js');
for (const [name, base, what] of [['kld-final-golden', 'kld-frontier-golden', 'the 2 golden windows (0–1)'], ['kld-final-16w', 'kld-frontier', '16 windows (26–41)']]) {
  const r = results(name);
  if (!r) continue;
  await writeChart(kldFrontierChart([...r.values()], `${what} of 1024 tokens, prefill 512; fp16: KLD ${r.get('fp16')?.kld.toExponential(1)} at 16 bits (not shown); dashed: the frontier`), `docs/results/hq/${base}`);
}
