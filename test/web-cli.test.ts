/** `kivi web` as a process: serves the page, the model (with ranges) and models.json; one-line errors; SIGTERM exits 0. */

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { WebServer } from '../src/web/server.js';
import { CLI, expectCliError, MODEL_DIR, tmpDir } from './helpers.js';

const oneLineError = (args: string[], pattern: RegExp) => expectCliError(args, pattern, 60_000);

test('kivi web: bad flags, bad model directories and a busy port are one-line errors', async () => {
  oneLineError(['web'], /required option '--model <dir>'/);
  oneLineError(['web', '--model', MODEL_DIR, '--port', '70000'], /integer in \[0, 65535\]/);
  oneLineError(['web', '--model', '/nonexistent/model'], /model directory \/nonexistent\/model does not exist/);
  const empty = tmpDir();
  oneLineError(['web', '--model', empty], /missing config\.json/);
  fs.copyFileSync(path.join(MODEL_DIR, 'config.json'), path.join(empty, 'config.json'));
  oneLineError(['web', '--model', empty], /missing .*tokenizer\.json/);
  const busy = await WebServer.start({ modelDir: MODEL_DIR, port: 0 });
  try {
    const port = new URL(busy.url).port;
    oneLineError(['web', '--model', MODEL_DIR, '--port', port], new RegExp(`port ${port} .*already in use`));
  } finally {
    await busy.close();
  }
});

test('kivi web: serves the page, models.json and the model with Range, cross-origin isolated; SIGTERM exits 0', async () => {
  const child = spawn(process.execPath, [CLI, 'web', '--model', MODEL_DIR, '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const url = await new Promise<string>((resolve, reject) => {
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      const m = /the browser demo for "llama-28m-gqa" is at (http:\/\/\S+) \(the model is served from \S+\)/.exec(stderr);
      if (m) resolve(m[1]!);
    });
    child.on('exit', () => reject(new Error(`web exited: ${stderr}`)));
  });
  try {
    const page = await fetch(url);
    assert.equal(page.status, 200);
    assert.match(page.headers.get('content-type') ?? '', /text\/html/);
    assert.equal(page.headers.get('cross-origin-opener-policy'), 'same-origin');
    assert.equal(page.headers.get('cross-origin-embedder-policy'), 'require-corp');
    assert.match(await page.text(), /<script type="module" src="app.js">/);
    const worker = await fetch(new URL('kivi-worker.js', url));
    assert.equal(worker.status, 200);
    assert.match(worker.headers.get('content-type') ?? '', /javascript/);
    const models = (await (await fetch(new URL('models.json', url))).json()) as { name: string; url: string }[];
    assert.deepEqual(models, [{ name: 'llama-28m-gqa', url: 'models/llama-28m-gqa/' }]);
    const shard = 'model-00002-of-00004.safetensors';
    const r = await fetch(new URL(models[0]!.url + shard, url), { headers: { Range: 'bytes=100-163' } });
    assert.equal(r.status, 206);
    const size = fs.statSync(path.join(MODEL_DIR, shard)).size;
    assert.equal(r.headers.get('content-range'), `bytes 100-163/${size}`);
    assert.deepEqual(Buffer.from(await r.arrayBuffer()), fs.readFileSync(path.join(MODEL_DIR, shard)).subarray(100, 164));
    assert.equal((await fetch(new URL(`${models[0]!.url}nope.json`, url))).status, 404);
  } finally {
    child.kill('SIGTERM');
  }
  assert.equal(await exited, 0);
  assert.match(stderr, /SIGTERM: shutting down/);
});
