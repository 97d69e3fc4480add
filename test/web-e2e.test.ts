/**
 * End to end in headless Chromium (skipped, saying why, where /usr/bin/chromium is absent, except under
 * CI=true, where a missing browser fails the test: .ci/run installs it): `kivi web`'s
 * page loads the model into its worker, generates with two caches side by side, and shows the same text
 * and KV bytes as the library computes in Node.
 */

import assert from 'node:assert/strict';
import * as path from 'node:path';
import { test } from 'node:test';
import { KiviModel } from '../src/api.js';
import { WebServer } from '../src/web/server.js';
import { bundledModel, MODEL_DIR, ROOT, tmpDir } from './helpers.js';
import { CHROMIUM, noChromium, serveDir } from './web-helpers.js';

const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

test('the demo page generates in Chromium: same text and KV bytes as the library, side by side', { timeout: 300_000 }, async (t) => {
  if (noChromium(t)) return;
  const { chromium } = await import('playwright-core');
  const server = await WebServer.start({ modelDir: MODEL_DIR, port: 0 });
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS });
  try {
    const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
    const problems: string[] = [];
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => m.type() === 'error' && problems.push(`console: ${m.text()}`));
    const t0 = Date.now();
    await page.goto(server.url);
    await page.waitForFunction(() => ['ready', 'error'].includes(document.body.dataset.state ?? ''), null, { timeout: 120_000 });
    const loadSeconds = (Date.now() - t0) / 1000;
    assert.equal(await page.getAttribute('body', 'data-state'), 'ready', (await page.textContent('#error')) ?? '');
    const status = (await page.textContent('#model-status'))!;
    assert.match(status, /^llama-28m-gqa: 8 layers, hidden 512, 4 query \/ 2 KV heads of 128, context 2048 · 53\.02 MiB of weights/);
    // kivi web's COOP/COEP headers make the page cross-origin isolated, so the threaded wasm kernels load.
    assert.match(status, /kernels: wasm \(\d+ threads?\)$/);
    // The table of exact bytes: fp16 at 2048 tokens is 2048 · 2 (K,V) · 2 heads · 128 · 2 B · 8 layers = 16 MiB.
    assert.match((await page.textContent('#projection-body tr:nth-child(2)'))!, /^fp16.*16\.00 MiB \(1\.00× fp16\)$/);

    const prompt = 'The history of the city';
    const maxTokens = 12;
    await page.fill('#prompt', prompt);
    await page.fill('#max-tokens', String(maxTokens));
    await page.selectOption('#kv-a', 'kivi2');
    await page.check('#compare');
    await page.selectOption('#kv-b', 'fp16');
    const t1 = Date.now();
    await page.click('#run');
    await page.waitForFunction(() => document.body.dataset.state === 'done', null, { timeout: 240_000 });
    const genSeconds = (Date.now() - t1) / 1000;
    assert.equal(await page.isHidden('#error'), true, (await page.textContent('#error')) ?? '');

    const model = await bundledModel();
    const panes = await page.$$('.run');
    assert.equal(panes.length, 2);
    const speeds: string[] = [];
    for (const [i, kv] of ['kivi2', 'fp16'].entries()) {
      const ref = await model.complete(prompt, { kv, maxTokens, temperature: 0, seed: 1 });
      const pane = panes[i]!;
      assert.equal(await pane.$eval('.spec', (e) => e.textContent), kv);
      assert.equal(await pane.$eval('.prompt-text', (e) => e.textContent), prompt);
      assert.equal(await pane.$eval('.output', (e) => e.textContent), ref.text, `${kv} text`);
      assert.equal(Number(await pane.$eval('.kv', (e) => (e as HTMLElement).dataset.bytes)), ref.kvBytes, `${kv} KV bytes`);
      assert.equal(Number(await pane.$eval('.tokens', (e) => e.textContent)), ref.ids.length);
      assert.equal(Number(await pane.$eval('.cached', (e) => e.textContent)), ref.promptTokens + ref.ids.length - 1);
      const tps = Number(await pane.$eval('.speed', (e) => (e as HTMLElement).dataset.value));
      assert.ok(tps > 0, `${kv} tokens/s ${tps}`);
      speeds.push(`${kv} ${tps.toFixed(1)} tok/s`);
    }
    const summary = (await page.textContent('#summary'))!;
    assert.match(summary, /kivi2 holds .* of KV cache, .* fp16/);
    assert.deepEqual(problems, []);
    await page.screenshot({ path: path.join(tmpDir('kivi-e2e-'), 'page.png'), fullPage: true });

    // The library straight on the page's main thread, as the README shows: a relative URL, one thread.
    const direct = await page.evaluate(
      async ([p, libUrl]) => {
        const lib = (await import(libUrl!)) as typeof import('../src/web/lib.js');
        const m = await lib.KiviModel.load('/models/llama-28m-gqa/', { kv: 'kivi2' });
        const r = await m.complete(p, { maxTokens: 6 });
        return { backend: m.backend.name, threads: m.backend.threads, text: r.text, kvBytes: r.kvBytes };
      },
      [prompt, '/kivi.js'],
    );
    const ref = await model.complete(prompt, { kv: 'kivi2', maxTokens: 6 });
    assert.deepEqual(direct, { backend: 'wasm', threads: 1, text: ref.text, kvBytes: ref.kvBytes });
    t.diagnostic(
      `Chromium: model loaded in ${loadSeconds.toFixed(1)} s; ${maxTokens} tokens × 2 caches in ${genSeconds.toFixed(1)} s; ${speeds.join(', ')} (decode, batched; provisional)`,
    );
  } finally {
    await browser.close();
    await server.close();
  }
});

test('on a plain static server (no COOP/COEP), the page loads ?model=URL and runs on the TypeScript kernels', { timeout: 300_000 }, async (t) => {
  if (noChromium(t)) return;
  const { chromium } = await import('playwright-core');
  // The repository root: the page at /dist/web/, the model at /models/llama-28m-gqa/.
  const served = await serveDir(ROOT);
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS });
  try {
    const page = await browser.newPage();
    await page.goto(`${served.url}dist/web/index.html?model=/models/llama-28m-gqa/`);
    await page.waitForFunction(() => ['ready', 'error'].includes(document.body.dataset.state ?? ''), null, { timeout: 120_000 });
    assert.equal(await page.getAttribute('body', 'data-state'), 'ready', (await page.textContent('#error')) ?? '');
    assert.match((await page.textContent('#model-status'))!, /^llama-28m-gqa: .*kernels: ts$/);
    await page.fill('#max-tokens', '4');
    await page.uncheck('#compare');
    await page.selectOption('#kv-a', 'kivi:k=2,v=2,g=32,r=128,residual=fp32');
    await page.click('#run');
    await page.waitForFunction(() => document.body.dataset.state === 'done', null, { timeout: 240_000 });
    assert.equal(await page.$$eval('.run', (r) => r.length), 1);
    // The same kernels in Node as in the page, so every float matches.
    const tsModel = await KiviModel.load(MODEL_DIR, { backend: 'ts' });
    const ref = await tsModel.complete('The history of the city', { kv: 'kivi:k=2,v=2,g=32,r=128,residual=fp32', maxTokens: 4 });
    assert.equal(await page.$eval('.run .output', (e) => e.textContent), ref.text);
    assert.equal(Number(await page.$eval('.run .kv', (e) => (e as HTMLElement).dataset.bytes)), ref.kvBytes);
    // Without a model URL and without models.json, the page says what to do.
    await page.goto(`${served.url}dist/web/index.html`);
    await page.waitForFunction(() => document.body.dataset.state === 'error', null, { timeout: 60_000 });
    assert.match((await page.textContent('#error'))!, /no model to load: open this page with \?model=/);
  } finally {
    await browser.close();
    await served.close();
  }
});
