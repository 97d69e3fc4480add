// The functions of a V8 CPU profile (node --cpu-prof) by self time, most first:
//   node scripts/gpu/cpu-top.mjs PROFILE.cpuprofile [N]
import fs from 'node:fs';

const [file, n = '30'] = process.argv.slice(2);
if (!file) {
  console.error('usage: node scripts/gpu/cpu-top.mjs PROFILE.cpuprofile [N]');
  process.exit(2);
}
const p = JSON.parse(fs.readFileSync(file, 'utf8'));
const byId = new Map(p.nodes.map((x) => [x.id, x]));
const us = new Map();
for (let i = 0; i < p.samples.length; i++) us.set(p.samples[i], (us.get(p.samples[i]) ?? 0) + (p.timeDeltas[i] ?? 0));
const self = new Map();
for (const [id, t] of us) {
  const f = byId.get(id).callFrame;
  const k = `${f.functionName || '(anonymous)'} ${f.url.split('/').slice(-2).join('/')}:${f.lineNumber + 1}`;
  self.set(k, (self.get(k) ?? 0) + t);
}
const total = [...self.values()].reduce((a, b) => a + b, 0);
console.log(`${(total / 1e6).toFixed(2)} s sampled`);
for (const [k, t] of [...self].sort((a, b) => b[1] - a[1]).slice(0, Number(n))) {
  console.log(`${(t / 1000).toFixed(0).padStart(7)} ms ${((100 * t) / total).toFixed(1).padStart(5)}%  ${k}`);
}
