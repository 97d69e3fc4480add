/**
 * The browser bundles: they build (fast, from a clean folder), hold no Node built-in, and the worker
 * bundle itself (the very file a page loads) runs: here in a Node worker thread dressed as a Web
 * Worker, loading the model over HTTP and generating the same greedy ids as the library from disk.
 */

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import * as esbuild from 'esbuild';
import { browserOnly, buildWeb } from '../src/web/build.js';
import type { FromWorker, ToWorker } from '../src/web/protocol.js';
import { WebServer } from '../src/web/server.js';
import { bundledModel, MODEL_DIR, tmpDir } from './helpers.js';

const out = path.join(tmpDir('kivi-web-build-'), 'web');

test('the page, library and worker bundles build into a clean folder, with no Node built-in in them', async () => {
  await buildWeb({ outdir: out });
  for (const f of ['index.html', 'style.css', 'app.js', 'kivi.js', 'kivi-worker.js', 'browser-helper.js', 'kernels.wasm'])
    assert.ok(fs.statSync(path.join(out, f)).size > 0, f);
  const html = fs.readFileSync(path.join(out, 'index.html'), 'utf8');
  assert.match(html, /<script type="module" src="app.js"><\/script>/);
  for (const f of ['app.js', 'kivi.js', 'kivi-worker.js']) {
    const js = fs.readFileSync(path.join(out, f), 'utf8');
    assert.doesNotMatch(js, /["']node:[a-z_/]+["']/, `${f} mentions a node: module`);
  }
  // The worker holds the whole engine; the page script does not (it only draws).
  const bytes = (f: string) => fs.statSync(path.join(out, f)).size;
  assert.ok(bytes('kivi-worker.js') > 4 * bytes('app.js'), `worker ${bytes('kivi-worker.js')} B, app ${bytes('app.js')} B`);
  // The page and the library start the worker from beside themselves.
  for (const f of ['app.js', 'kivi.js']) assert.match(fs.readFileSync(path.join(out, f), 'utf8'), /new URL\("\.\/kivi-worker\.js",import\.meta\.url\)/);
});

test('a browser module that imports a Node built-in fails the build with a clear message', async () => {
  const dir = tmpDir('kivi-web-bad-');
  fs.writeFileSync(path.join(dir, 'entry.ts'), "import * as fs from 'node:fs';\nexport const x = fs.existsSync('.');\n");
  await assert.rejects(
    esbuild.build({
      entryPoints: [path.join(dir, 'entry.ts')],
      bundle: true,
      write: false,
      platform: 'browser',
      format: 'esm',
      logLevel: 'silent',
      plugins: [browserOnly],
    }),
    (e: { errors?: esbuild.Message[] }) => e.errors?.some((m) => /imports the Node built-in "node:fs": it cannot run in a browser/.test(m.text)) === true,
  );
});

/** Run the built worker script in a worker thread with the Web Worker globals it uses. */
function startWebWorker(script: string): {
  send(m: ToWorker): void;
  next(pred: (m: FromWorker) => boolean): Promise<FromWorker>;
  all: FromWorker[];
  stop(): Promise<number>;
} {
  const shim = `
    const { parentPort, workerData } = require('node:worker_threads');
    globalThis.postMessage = (m) => parentPort.postMessage(m);
    globalThis.addEventListener = (type, fn) => { if (type === 'message') parentPort.on('message', (data) => fn({ data })); };
    import(workerData.url);`;
  const w = new Worker(shim, { eval: true, workerData: { url: pathToFileURL(script).href } });
  const all: FromWorker[] = [];
  const waiting: { pred: (m: FromWorker) => boolean; resolve: (m: FromWorker) => void }[] = [];
  w.on('message', (m: FromWorker) => {
    all.push(m);
    const i = waiting.findIndex((x) => x.pred(m));
    if (i >= 0) waiting.splice(i, 1)[0]!.resolve(m);
  });
  return {
    send: (m) => w.postMessage(m),
    next: (pred) =>
      new Promise((resolve, reject) => {
        waiting.push({ pred, resolve });
        w.once('error', reject);
      }),
    all,
    stop: () => w.terminate(),
  };
}

test('the built worker script loads the model over HTTP and streams the same greedy tokens as the library', async () => {
  if (!fs.existsSync(path.join(out, 'kivi-worker.js'))) await buildWeb({ outdir: out });
  const server = await WebServer.start({ modelDir: MODEL_DIR, port: 0 });
  const w = startWebWorker(path.join(out, 'kivi-worker.js'));
  try {
    w.send({ type: 'load', url: server.modelUrl });
    const loaded = await w.next((m) => m.type === 'loaded' || m.type === 'error');
    assert.equal(loaded.type, 'loaded', JSON.stringify(loaded));
    if (loaded.type !== 'loaded') return;
    assert.equal(loaded.info.name, 'llama-28m-gqa');
    assert.deepEqual([loaded.info.numLayers, loaded.info.numHeads, loaded.info.numKvHeads, loaded.info.headDim, loaded.info.vocabSize], [8, 4, 2, 128, 8192]);
    const progress = w.all.filter((m) => m.type === 'progress');
    assert.ok(progress.length > 60);
    const lastP = progress.at(-1)!;
    assert.ok(lastP.type === 'progress' && lastP.done === lastP.total && lastP.total === loaded.info.weightBytes);

    const disk = await bundledModel();
    const prompt = 'The history of the city';
    // Two caches at once, as the page's side-by-side view sends them.
    w.send({ type: 'generate', id: 1, prompt, options: { kv: 'kivi2', maxTokens: 10, ignoreEos: true } });
    w.send({ type: 'generate', id: 2, prompt, options: { kv: 'fp16', maxTokens: 10, ignoreEos: true } });
    const done = await Promise.all([1, 2].map((id) => w.next((m) => (m.type === 'done' || m.type === 'error') && m.id === id)));
    for (const [i, kv] of ['kivi2', 'fp16'].entries()) {
      const d = done[i]!;
      assert.equal(d.type, 'done', JSON.stringify(d));
      if (d.type !== 'done') continue;
      const ref = await disk.complete(prompt, { kv, maxTokens: 10, ignoreEos: true });
      assert.deepEqual(d.result.ids, ref.ids, kv);
      assert.equal(d.result.text, ref.text);
      assert.equal(d.result.kvBytes, ref.kvBytes, `${kv} bytes`);
      assert.equal(d.result.cacheTokens, ref.promptTokens + 9);
      const tokens = w.all.filter((m) => m.type === 'token' && m.id === i + 1);
      assert.equal(tokens.map((m) => (m.type === 'token' ? m.text : '')).join(''), ref.text);
      // Live bytes grow with the cache (one token per step, no key flush this short).
      const live = tokens.map((m) => (m.type === 'token' ? m.stats.kvBytes : 0));
      assert.ok(
        live.every((b, j) => j === 0 || b > live[j - 1]!),
        `live bytes ${live}`,
      );
    }
    // Cancel: a long generation stops at once with finish reason 'abort'.
    w.send({ type: 'generate', id: 3, prompt, options: { kv: 'kivi2', maxTokens: 500, ignoreEos: true } });
    await w.next((m) => m.type === 'token' && m.id === 3);
    w.send({ type: 'cancel', id: 3 });
    const c = await w.next((m) => (m.type === 'done' || m.type === 'error') && m.id === 3);
    assert.ok(c.type === 'done' && c.result.finishReason === 'abort' && c.result.tokens < 500, JSON.stringify(c).slice(0, 200));
    // Bad requests come back as errors for that id; the worker keeps serving.
    w.send({ type: 'generate', id: 4, prompt, options: { kv: 'kivi3' } });
    const bad = await w.next((m) => m.type === 'error' && m.id === 4);
    assert.ok(bad.type === 'error' && bad.kivi && /bad --kv spec "kivi3"/.test(bad.message));
  } finally {
    await w.stop();
    await server.close();
  }
});
