#!/usr/bin/env node
// Decode tokens/s of the browser demo in headless Chromium, per back end and cache, one sequence at a
// time, all in one run (configurations alternate, so machine noise falls on all alike).
//   npm run build && node scripts/web-speed.mjs [--rounds 2] [--tokens 128] [--long 1500]
// Needs /usr/bin/chromium (or KIVI_CHROMIUM). Prints a Markdown table.
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';
import { WebServer } from '../dist/src/web/server.js';

const { values: o } = parseArgs({
  options: { rounds: { type: 'string', default: '2' }, tokens: { type: 'string', default: '128' }, long: { type: 'string', default: '1500' } },
});
const SPECS = ['fp32', 'fp16', 'kivi2', 'kivi:k=2,v=2,g=32,r=128,residual=fp16'];
const BACKENDS = ['wasm', 'ts'];
const short = 'The history of the city';
// About `--long` tokens of prompt (the sentence is 12 tokens).
const long = 'The river runs through the old town and past the market square. '.repeat(Math.ceil(Number(o.long) / 13));

const server = await WebServer.start({ modelDir: 'models/llama-28m-gqa', port: 0 });
const browser = await chromium.launch({
  executablePath: process.env.KIVI_CHROMIUM ?? '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
});
const pages = {};
for (const b of BACKENDS) {
  const page = await browser.newPage();
  await page.goto(`${server.url}?backend=${b}`);
  await page.waitForFunction(() => document.body.dataset.state === 'ready', null, { timeout: 120000 });
  pages[b] = { page, status: await page.textContent('#model-status') };
  await page.uncheck('#compare');
}
const results = new Map();
for (let r = 0; r < Number(o.rounds); r++) {
  for (const [promptName, prompt, tokens] of [
    ['short', short, Number(o.tokens)],
    ['long', long, 64],
  ]) {
    for (const spec of SPECS) {
      for (const b of BACKENDS) {
        const { page } = pages[b];
        await page.fill('#prompt', prompt);
        await page.fill('#max-tokens', String(tokens));
        await page.selectOption('#kv-a', spec);
        await page.evaluate(() => (document.body.dataset.state = 'running'));
        await page.click('#run');
        await page.waitForFunction(() => document.body.dataset.state === 'done', null, { timeout: 600000 });
        const tps = Number(await page.$eval('.run .speed', (e) => e.dataset.value));
        const cached = Number(await page.$eval('.run .cached', (e) => e.textContent));
        const first = await page.$eval('.run .first', (e) => e.textContent);
        const key = `${promptName}|${spec}|${b}`;
        const prev = results.get(key) ?? { tps: [], cached, first };
        prev.tps.push(tps);
        results.set(key, prev);
      }
    }
  }
}
await browser.close();
await server.close();
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
for (const b of BACKENDS) console.log(`- ${b}: ${pages[b].status}`);
console.log(`\n| prompt | cache | ${BACKENDS.map((b) => `${b} tok/s`).join(' | ')} | wasm ÷ ts |`);
console.log(`|---|---|${BACKENDS.map(() => '---|').join('')}---|`);
for (const p of ['short', 'long']) {
  for (const spec of SPECS) {
    const v = BACKENDS.map((b) => median(results.get(`${p}|${spec}|${b}`).tps));
    const cached = results.get(`${p}|${spec}|wasm`).cached;
    console.log(`| ${p} (${cached} tokens at the end) | ${spec} | ${v.map((x) => x.toFixed(1)).join(' | ')} | ${(v[0] / v[1]).toFixed(1)}× |`);
  }
}
