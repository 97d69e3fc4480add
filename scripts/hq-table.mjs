#!/usr/bin/env node
// The results table of issue 14 (docs/results/hq/results.md) and the KLD chart, from the run logs that
// scripts/hq.sh writes under docs/results/hq/runs/: a log holds one or more runs, each its command line
// (`$ kivi ...`) followed by its one JSON line; rows of one kind of run are merged by spec.
//   node scripts/hq-table.mjs > docs/results/hq/results.md
import * as fs from 'node:fs';

const { KIVI2_HQ } = await import('../dist/src/cache/spec.js');
const RUNS = 'docs/results/hq/runs';
/** The preset kivi2-hq was until it had to run on every back end (the runs before that name it so). */
const FORMER_HQ = 'kivi:k=4,v=2,gk=128,gv=32,vmeta=8,rot=hadamard';
/** Logs that name `kivi2-hq` meaning FORMER_HQ (run before the preset changed). */
const FORMER_LOGS = new Set(['kld-golden']);

/** Every run of a log: its command and results by spec, or [] where the log is missing. */
function runs(name) {
  const f = `${RUNS}/${name}.txt`;
  if (!fs.existsSync(f)) return [];
  const out = [];
  let cmd = null;
  for (const l of fs.readFileSync(f, 'utf8').split('\n')) {
    if (l.startsWith('$ ')) cmd = l.slice(2);
    else if (l.startsWith('{') && cmd) {
      // One row per configuration: the preset's name means the spec it stood for when the run was made.
      const rows = JSON.parse(l).results.map((r) => (r.kv === 'kivi2-hq' ? { ...r, kv: FORMER_LOGS.has(name) ? FORMER_HQ : KIVI2_HQ } : r));
      out.push({ name, cmd, rows });
      cmd = null;
    }
  }
  return out;
}
/** Results by spec over the given logs (the first run that has a spec gives its row). */
function merged(names) {
  const m = new Map();
  for (const n of names) for (const r of runs(n)) for (const row of r.rows) if (!m.has(row.kv)) m.set(row.kv, row);
  return m;
}

const golden = merged(['kld-golden', 'kld-golden-2']);
if (golden.size === 0) throw new Error(`${RUNS}/kld-golden.txt has no results`);
const wasm = merged(['kld-golden-wasm', 'kld-golden-sink']);
const copies = [
  ['copy-d0', 'depth 0'],
  ['copy-d512', 'depth 512'],
  ['copy-d512-n256', 'depth 512, n = 256'],
  ['copy-d1024', 'depth 1024'],
].map(([n, label]) => [merged([n]), label]);
const sign = (x, d) => (Number(Math.abs(x).toFixed(d)) === 0 ? (0).toFixed(d) : (x < 0 ? '−' : '+') + Math.abs(x).toFixed(d));
const pct = (x) => `${(100 * x).toFixed(0)}%`;
const label = (kv) =>
  kv === KIVI2_HQ || kv === 'kivi2-hq' ? `**kivi2-hq** = \`${KIVI2_HQ}\`` : kv === FORMER_HQ ? `\`${kv}\` (the former kivi2-hq)` : `\`${kv}\``;

const f0 = golden.get('fp32');
const w0 = wasm.get('fp32');
const rows = [];
// Every spec any run measured: the golden runs' order first.
const specs = [...new Set([...golden.keys(), ...wasm.keys(), ...copies.flatMap(([c]) => [...c.keys()])])];
for (const kv of specs) {
  const g = golden.get(kv);
  const bits = (g ?? wasm.get(kv))?.bits_per_element;
  const cells = [
    label(kv),
    bits === undefined ? '—' : bits.toFixed(3).replace(/\.?0+$/, ''),
    g ? g.kld.toFixed(5) : '—',
    g ? g.top1_agree.toFixed(4) : '—',
    g && f0 ? sign(g.mean_nll - f0.mean_nll, 4) : '—',
  ];
  if (wasm.size > 0) {
    const w = wasm.get(kv);
    cells.push(w ? w.kld.toFixed(5) : '—', w ? w.top1_agree.toFixed(4) : '—', w && w0 ? sign(w.mean_nll - w0.mean_nll, 4) : '—');
  }
  for (const [c] of copies) {
    if (c.size === 0) continue;
    const r = c.get(kv);
    const base = c.get('fp32');
    cells.push(r ? `${Math.round(r.exact * r.n)}/${r.n}${base && base.exact > 0 ? ` (${pct(r.exact / base.exact)})` : ''}` : '—');
  }
  rows.push(`| ${cells.join(' | ')} |`);
}
const head = ['kv cache', 'bits/elem', 'KLD, golden, ts', 'top-1, golden, ts', 'Δ NLL, golden, ts'];
if (wasm.size > 0) head.push('KLD, golden, wasm', 'top-1, golden, wasm', 'Δ NLL, golden, wasm');
for (const [c, l] of copies) if (c.size > 0) head.push(`copy exact, ${l}, wasm (of fp32's)`);
process.stdout.write(
  `| ${head.join(' | ')} |\n|:--|${head
    .slice(1)
    .map(() => '--:')
    .join('|')}|\n${rows.join('\n')}\n\n`,
);
process.stdout.write('Commands (logs in runs/; each JSON line there comes from the command above it):\n\n');
for (const n of ['kld-golden', 'kld-golden-2', 'kld-golden-wasm', 'kld-golden-sink', 'copy-d0', 'copy-d512', 'copy-d512-n256', 'copy-d1024']) {
  for (const r of runs(n)) process.stdout.write(`- \`${n}\`: \`${r.cmd}\`\n`);
}

// The chart, from the golden runs on the TypeScript reference, and on wasm for the specs only it ran (the two
// agree within 0.1% where both ran: kivi2, kivi4, g=64).
const { kldFrontierChart } = await import('../dist/src/studies/eval/kld-report.js');
const { writeChart } = await import('../dist/src/studies/plot.js');
await writeChart(
  kldFrontierChart(
    [...golden.values(), ...[...wasm.values()].filter((r) => !golden.has(r.kv))].map((r) => (r.kv === KIVI2_HQ ? { ...r, kv: 'kivi2-hq' } : r)),
    'the 2 golden windows (0–1) of 1024 tokens, prefill 512, --backend ts (wasm where only it ran); dashed: the frontier',
  ),
  'docs/results/hq/kld-frontier-golden',
);
