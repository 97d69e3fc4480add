/**
 * The demo page on WebGPU in headless Chromium, whose WebGPU adapter here is SwiftShader (a Vulkan driver
 * on the CPU; CI has no GPU): `?backend=webgpu` loads the model onto the GPU in the page's worker, the
 * page says it runs on webgpu, and the text it generates with two caches side by side is the wasm back
 * end's in Node; left to choose (auto), the page does not take the software adapter. Skipped, saying
 * why, where /usr/bin/chromium is absent, except under CI=true, where a missing browser fails (.ci/run
 * installs it). Few tokens: SwiftShader is ~100× slower than a GPU.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KiviModel } from '../src/api.js';
import { WebServer } from '../src/web/server.js';
import { MODEL_DIR } from './helpers.js';
import { CHROMIUM, noChromium } from './web-helpers.js';

/*
 * WebGPU without a GPU: --enable-unsafe-webgpu exposes navigator.gpu on Linux, and with no GPU driver
 * Chromium offers SwiftShader as its (fallback) adapter; --use-webgpu-adapter=swiftshader asks for it
 * by name. (No --disable-gpu, which would remove WebGPU.)
 */
const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--enable-unsafe-webgpu',
  '--use-webgpu-adapter=swiftshader',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

test("the demo page generates on WebGPU (SwiftShader) in Chromium: the wasm back end's text, side by side", { timeout: 540_000 }, async (t) => {
  if (noChromium(t)) return;
  const { chromium } = await import('playwright-core');
  const server = await WebServer.start({ modelDir: MODEL_DIR, port: 0 });
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS });
  const wasm = await KiviModel.load(MODEL_DIR, { backend: 'wasm', threads: 1 });
  try {
    const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
    const problems: string[] = [];
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => m.type() === 'error' && problems.push(`console: ${m.text()}`));
    await page.goto(`${server.url}?backend=webgpu`);
    await page.waitForFunction(() => ['ready', 'error'].includes(document.body.dataset.state ?? ''), null, { timeout: 180_000 });
    assert.equal(await page.getAttribute('body', 'data-state'), 'ready', (await page.textContent('#error')) ?? '');
    const status = (await page.textContent('#model-status'))!;
    assert.match(status, /^llama-28m-gqa: 8 layers, hidden 512, /);
    // It says it runs on webgpu, on the adapter Chromium gave it (SwiftShader, a software one).
    assert.match(status, /kernels: webgpu \(.*swiftshader.*\(software adapter: for tests, not for speed\)\)$/i);

    const prompt = 'The history of the city';
    const maxTokens = 8;
    await page.fill('#prompt', prompt);
    await page.fill('#max-tokens', String(maxTokens));
    await page.selectOption('#kv-a', 'kivi2');
    await page.check('#compare');
    await page.selectOption('#kv-b', 'fp16');
    await page.click('#run');
    await page.waitForFunction(() => document.body.dataset.state === 'done', null, { timeout: 300_000 });
    assert.equal(await page.isHidden('#error'), true, (await page.textContent('#error')) ?? '');

    const panes = await page.$$('.run');
    assert.equal(panes.length, 2);
    for (const [i, kv] of ['kivi2', 'fp16'].entries()) {
      const ref = await wasm.complete(prompt, { kv, maxTokens, temperature: 0, seed: 1 });
      const pane = panes[i]!;
      assert.equal(await pane.$eval('.spec', (e) => e.textContent), kv);
      assert.equal(await pane.$eval('.output', (e) => e.textContent), ref.text, `${kv}: webgpu text in the page vs wasm in Node`);
      assert.equal(Number(await pane.$eval('.tokens', (e) => e.textContent)), ref.ids.length);
      assert.equal(Number(await pane.$eval('.kv', (e) => (e as HTMLElement).dataset.bytes)), ref.kvBytes, `${kv} KV bytes`);
    }
    assert.deepEqual(problems, []);

    // The same browser with the same SwiftShader adapter, the page left to choose (auto): not a software adapter.
    await page.goto(server.url);
    await page.waitForFunction(() => ['ready', 'error'].includes(document.body.dataset.state ?? ''), null, { timeout: 180_000 });
    assert.equal(await page.getAttribute('body', 'data-state'), 'ready', (await page.textContent('#error')) ?? '');
    assert.match((await page.textContent('#model-status'))!, /kernels: wasm \(\d+ threads?\)$/);
    assert.equal(await page.evaluate(async () => !!(await navigator.gpu?.requestAdapter())), true, 'an adapter was there to refuse');
  } finally {
    wasm.dispose();
    await browser.close();
    await server.close();
  }
});
