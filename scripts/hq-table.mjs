#!/usr/bin/env node
// The results table of issue 14 (docs/results/hq/results.md) and the KLD chart, from the run logs that
// scripts/hq.sh writes under docs/results/hq/runs/: each log holds the command, then its one JSON line.
//   node scripts/hq-table.mjs > docs/results/hq/results.md
import * as fs from 'node:fs';

const RUNS = 'docs/results/hq/runs';
function results(name) {
  const f = `${RUNS}/${name}.txt`;
  if (!fs.existsSync(f)) return null;
  const line = fs
    .readFileSync(f, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('{'));
  return line ? new Map(JSON.parse(line).results.map((r) => [r.kv, r])) : null;
}
const command = (name) => fs.readFileSync(`${RUNS}/${name}.txt`, 'utf8').split('\n')[0].replace(/^\$ /, '');

const golden = results('kld-golden');
if (!golden) throw new Error(`${RUNS}/kld-golden.txt has no results`);
const wide = results('kld-16w');
const copies = [
  ['copy-d0', 'depth 0'],
  ['copy-d1024', 'depth 1024'],
].map(([n, label]) => [results(n), label]);
const sign = (x, d) => (Number(Math.abs(x).toFixed(d)) === 0 ? (0).toFixed(d) : (x < 0 ? '−' : '+') + Math.abs(x).toFixed(d));
const pct = (x) => `${(100 * x).toFixed(1)}%`;

const f0 = golden.get('fp32');
const fw = wide?.get('fp32');
const rows = [];
for (const [kv, g] of golden) {
  const w = wide?.get(kv);
  const cells = [
    kv === 'kivi2-hq' ? '**kivi2-hq**' : `\`${kv}\``,
    g.bits_per_element.toFixed(3).replace(/\.?0+$/, ''),
    g.kld.toFixed(5),
    g.top1_agree.toFixed(4),
    f0 ? sign(g.mean_nll - f0.mean_nll, 4) : '—',
  ];
  if (wide) cells.push(w ? w.kld.toFixed(5) : '—', w && fw ? sign(w.ppl - fw.ppl, 2) : '—');
  for (const [c] of copies) {
    if (!c) continue;
    const r = c.get(kv);
    const base = c.get('fp32');
    cells.push(r ? `${Math.round(r.exact * r.n)}/${r.n}${base && base.exact > 0 ? ` (${pct(r.exact / base.exact)} of fp32)` : ''}` : '—');
  }
  rows.push(`| ${cells.join(' | ')} |`);
}
const head = ['kv cache', 'bits/elem', 'KLD, golden', 'top-1, golden', 'Δ NLL, golden'];
if (wide) head.push('KLD, 16 w.', 'Δ ppl, 16 w.');
for (const [c, label] of copies) if (c) head.push(`copy exact, ${label}`);
process.stdout.write(
  `| ${head.join(' | ')} |\n|:--|${head
    .slice(1)
    .map(() => '--:')
    .join('|')}|\n${rows.join('\n')}\n\n`,
);
process.stdout.write('Commands (each column comes from one run; logs in runs/):\n\n');
for (const n of ['kld-golden', 'kld-16w', 'copy-d0', 'copy-d1024']) {
  if (results(n)) process.stdout.write(`- \`${n}\`: \`${command(n)}\`\n`);
}

// The chart, from the same log.
const { kldFrontierChart } = await import('../dist/src/studies/eval/kld-report.js');
const { writeChart } = await import('../dist/src/studies/plot.js');
await writeChart(
  kldFrontierChart([...golden.values()], 'the 2 golden windows (0–1) of 1024 tokens, prefill 512, --backend ts; dashed: the frontier'),
  'docs/results/hq/kld-frontier-golden',
);
