/**
 * Hostile models and files: shard names that leave the model directory, headers that would follow a
 * model to another host, `kivi web` serving more than the model, chat templates that never end, and
 * sizes in config.json or safetensors headers that would allocate or alias memory.
 */

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { KiviModel } from '../src/api.js';
import { urlSource } from '../src/io/source-url.js';
import { f32, TsBackend } from '../src/kernels/ts/backend.js';
import { loadModel } from '../src/model/load.js';
import { KiviServer } from '../src/server/app.js';
import { ChatFormatter } from '../src/server/chat.js';
import { TemplateFailed } from '../src/server/prompt-worker.js';
import { KiviError } from '../src/util/errors.js';
import { WebServer } from '../src/web/server.js';
import { safetensorsBytes, writeTinyModel } from './fixtures.js';
import { bundledModel, CLI, expectCliError, MODEL_DIR, tmpDir } from './helpers.js';
import { postJson } from './server-helpers.js';
import { serveDir } from './web-helpers.js';

const TINY = { vocab: 8192, hidden: 32, heads: 2, kvHeads: 1, headDim: 16, inter: 32, layers: 1 };

/** A tiny model whose weights are one shard named by an index. */
async function shardedTiny(dir: string, shard: string): Promise<void> {
  await writeTinyModel(dir, TINY);
  const b = fs.readFileSync(path.join(dir, 'model.safetensors'));
  const header = JSON.parse(b.subarray(8, 8 + Number(b.readBigUInt64LE(0))).toString('utf8')) as Record<string, unknown>;
  const weightMap = Object.fromEntries(Object.keys(header).map((n) => [n, shard]));
  fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: weightMap }));
}

async function loadError(location: string | ReturnType<typeof urlSource>): Promise<string> {
  try {
    await loadModel(location, new TsBackend());
  } catch (e) {
    assert.ok(e instanceof KiviError, `not a KiviError: ${(e as Error).stack}`);
    assert.ok(!e.message.includes('\n'), e.message);
    return e.message;
  }
  assert.fail(`${String(location)} loaded`);
}

test('shard names in model.safetensors.index.json must be plain file names inside the model directory, on disk and over HTTP', async () => {
  const root = tmpDir('kivi-shards-');
  // Something worth stealing beside the model, and a second server that must never be asked.
  fs.writeFileSync(path.join(root, 'secret.safetensors'), safetensorsBytes([]));
  const other = await serveDir(root);
  const served = await serveDir(root);
  try {
    const bad = [
      `${other.url}secret.safetensors`,
      '../secret.safetensors',
      '/etc/passwd',
      '../../../../etc/passwd',
      'sub/model.safetensors',
      'sub\\model.safetensors',
      '',
      '..',
      '.',
      'model\u0000.safetensors',
      'https:evil.example/x',
      '//evil.example/x.safetensors',
    ];
    for (const [i, shard] of bad.entries()) {
      const dir = path.join(root, `m${i}`);
      await shardedTiny(dir, shard);
      const want = new RegExp(
        `model\\.safetensors\\.index\\.json: shard ${JSON.stringify(shard).replace(/[\\^$.*+?()[\]{}|/]/g, '\\$&')} is not a plain file name inside the model directory`,
      );
      assert.match(await loadError(dir), want, `disk: ${JSON.stringify(shard)}`);
      assert.match(await loadError(urlSource(`${served.url}m${i}/`, { headers: { authorization: 'Bearer secret' } })), want, `http: ${JSON.stringify(shard)}`);
    }
    assert.deepEqual(other.log, [], 'no request reached the other host');
    assert.ok(!served.log.some((r) => r.path.includes('secret') || r.path.includes('etc')), JSON.stringify(served.log.map((r) => r.path)));
    // A plain name with URL-special characters is a file of the model, nothing else.
    const odd = path.join(root, 'odd');
    await shardedTiny(odd, 'weights #1 %41?.safetensors');
    fs.renameSync(path.join(odd, 'model.safetensors'), path.join(odd, 'weights #1 %41?.safetensors'));
    const fromDisk = await loadModel(odd, new TsBackend());
    const overHttp = await loadModel(`${served.url}odd/`, new TsBackend());
    assert.equal(overHttp.fingerprint, fromDisk.fingerprint);
    assert.deepEqual(Array.from(f32(overHttp.model.weights.norm)), Array.from(f32(fromDisk.model.weights.norm)));
    // The CLI says the same in one line.
    expectCliError(
      ['generate', '--model', path.join(root, 'm3'), '--prompt', 'x', '--kv', 'fp32'],
      /shard "\.\.\/\.\.\/\.\.\/\.\.\/etc\/passwd" is not a plain file name/,
    );
  } finally {
    await other.close();
    await served.close();
  }
});

test("the URL loader sends the caller's headers to the model's origin only, redirects included", async () => {
  const root = tmpDir('kivi-redirect-');
  await writeTinyModel(path.join(root, 'm'), TINY);
  const cdn = await serveDir(root);
  // The model's host sends its weights elsewhere (as a hub sends them to a CDN), and a copy of the config on itself.
  const hub = await serveDir(root, 'ranges', {
    redirect: (p) => (p === '/m/model.safetensors' ? `${cdn.url}m/model.safetensors` : p === '/m/config.json' ? '/m/copy/config.json' : undefined),
  });
  fs.mkdirSync(path.join(root, 'm/copy'));
  fs.copyFileSync(path.join(root, 'm/config.json'), path.join(root, 'm/copy/config.json'));
  try {
    const headers = { authorization: 'Bearer secret-token', 'x-api-key': 'secret-key' };
    const viaRedirect = await loadModel(urlSource(`${hub.url}m/`, { headers }), new TsBackend());
    const fromDisk = await loadModel(path.join(root, 'm'), new TsBackend());
    assert.deepEqual(Array.from(f32(viaRedirect.model.weights.norm)), Array.from(f32(fromDisk.model.weights.norm)));
    assert.ok(cdn.log.length > 0, 'the weights came from the other origin');
    for (const r of cdn.log) {
      assert.equal(r.headers.authorization, undefined, `${r.path} got the authorization header`);
      assert.equal(r.headers['x-api-key'], undefined, `${r.path} got the x-api-key header`);
    }
    // On the model's own origin, redirected or not, the headers go along.
    const own = hub.log.filter((r) => r.status !== 404);
    assert.ok(own.some((r) => r.path === '/m/copy/config.json'));
    for (const r of own) assert.equal(r.headers.authorization, 'Bearer secret-token', r.path);
  } finally {
    await hub.close();
    await cdn.close();
  }
});

/** A Hugging Face cache: snapshots/<rev>/<file> are relative links into blobs/<hash>. */
function hfCacheLayout(root: string, name: string): string {
  const repo = path.join(root, `models--test--${name}`);
  const snap = path.join(repo, 'snapshots', name);
  fs.mkdirSync(path.join(repo, 'blobs'), { recursive: true });
  fs.mkdirSync(snap, { recursive: true });
  for (const [i, f] of fs.readdirSync(MODEL_DIR).entries()) {
    const blob = path.join(repo, 'blobs', `blob${i}`);
    fs.copyFileSync(path.join(MODEL_DIR, f), blob);
    fs.symlinkSync(path.relative(snap, blob), path.join(snap, f));
  }
  return snap;
}

test("kivi web serves the model's own files only, following links for those (a Hugging Face cache works), and names needing URL-encoding", async () => {
  const root = tmpDir('kivi-web-sec-');
  const name = 'my model #1 %41+é';
  const dir = hfCacheLayout(root, name);
  // What must never be served: VCS metadata, other files, links out of the folder.
  fs.mkdirSync(path.join(dir, '.git'));
  fs.writeFileSync(path.join(dir, '.git/config'), '[remote "origin"]\n\turl = https://user:token@example.org/x\n');
  fs.writeFileSync(path.join(dir, 'notes.txt'), 'private');
  fs.symlinkSync('/etc', path.join(dir, 'etc'));
  fs.symlinkSync('/etc/passwd', path.join(dir, 'passwd.json'));
  const server = await WebServer.start({ modelDir: dir, port: 0 });
  try {
    const models = (await (await fetch(new URL('models.json', server.url))).json()) as { name: string; url: string }[];
    assert.deepEqual(models, [{ name, url: `models/${encodeURIComponent(name)}/` }]);
    assert.equal(server.modelUrl, new URL(models[0]!.url, server.url).href);
    const get = (rel: string) => fetch(server.modelUrl + rel);
    for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors.index.json', 'model-00001-of-00004.safetensors']) {
      const r = await get(f);
      assert.equal(r.status, 200, f);
      assert.ok(Buffer.from(await r.arrayBuffer()).equals(fs.readFileSync(path.join(MODEL_DIR, f))), f);
    }
    for (const rel of [
      '.git/config',
      '.git%2Fconfig',
      'notes.txt',
      'etc/passwd',
      'etc%2Fpasswd',
      'passwd.json',
      '..%2F..%2F..%2Fblobs%2Fblob0',
      '%2e%2e/%2e%2e/blobs/blob0',
      'model-00005-of-00004.safetensors',
      '',
    ]) {
      const r = await get(rel);
      // 404 (not a model file) or 403 (the page's static server refuses dot files): never served.
      assert.ok(r.status === 404 || r.status === 403, `${rel}: ${r.status}`);
      assert.doesNotMatch(await r.text(), /root:|token@|private/, rel);
    }
    for (const abs of ['/etc/passwd', '/models/../etc/passwd', `/models/${encodeURIComponent(name)}/..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd`]) {
      const r = await fetch(new URL(abs, server.url));
      assert.notEqual(r.status, 200, abs);
      assert.doesNotMatch(await r.text(), /root:/, abs);
    }
    // The browser's loader reads it all through the server: the same model as from disk.
    const web = await KiviModel.load(server.modelUrl, { kv: 'fp32' });
    const disk = await bundledModel();
    assert.deepEqual(web.config, disk.config);
    const a = await web.complete('The history of the city', { maxTokens: 6, kv: 'kivi2', ignoreEos: true });
    const b = await disk.complete('The history of the city', { maxTokens: 6, kv: 'kivi2', ignoreEos: true });
    assert.deepEqual(a.ids, b.ids);
    web.dispose();
  } finally {
    await server.close();
  }
});

// Runs until V8 gives up without a bound: 1e8 iterations, each building a string.
const ENDLESS = "{% for i in range(100000000) %}{{ messages[0]['content'] }}{% endfor %}";

test('a chat template is bounded in time, output and memory; the server keeps serving and answers with a JSON error', async () => {
  const m = await bundledModel();
  const slow = new ChatFormatter(m.tokenizer, ENDLESS, { renderDeadlineMs: 1000 });
  const t0 = Date.now();
  await assert.rejects(
    slow.prompt([{ role: 'user', content: 'x' }]),
    (e: unknown) => e instanceof TemplateFailed && e.status === 500 && /did not finish rendering within 1 s|ran out of memory/.test(e.message),
  );
  assert.ok(Date.now() - t0 < 20_000, `took ${Date.now() - t0} ms`);
  // The thread is replaced: the next job runs there (a text long enough not to be tokenized inline).
  const long = 'Hello there. '.repeat(1000);
  assert.deepEqual(await slow.encode(long), m.encode(long));
  await slow.close();
  // Jobs waiting for the thread are bounded: past the bound, a 429; closing answers the rest with a 503.
  const busy = new ChatFormatter(m.tokenizer, ENDLESS, { renderDeadlineMs: 60_000, maxWaiting: 1 });
  const shutDown = (e: unknown) => e instanceof KiviError && e.status === 503;
  const first = assert.rejects(busy.prompt([{ role: 'user', content: 'x' }]), shutDown);
  const second = assert.rejects(busy.prompt([{ role: 'user', content: 'y' }]), shutDown);
  await assert.rejects(busy.prompt([{ role: 'user', content: 'z' }]), (e: unknown) => e instanceof KiviError && e.status === 429);
  await busy.close();
  await first;
  await second;
  // One huge allocation past the heap limit ends the prompt process alone, never the server (V8 aborts
  // the whole process when that happens in a worker thread): a 500 naming memory, and the next job runs.
  const hungry = new ChatFormatter(m.tokenizer, '{% set r = range(100000000) %}{{ r | length }}', { renderDeadlineMs: 60_000, heapMiB: 64 });
  await assert.rejects(
    hungry.prompt([{ role: 'user', content: 'x' }]),
    (e: unknown) => e instanceof TemplateFailed && e.status === 500 && /ran out of memory \(the prompt process's limit is 64 MiB\)/.test(e.message),
  );
  assert.deepEqual(await hungry.encode(long), m.encode(long));
  await hungry.close();
  const big = new ChatFormatter(m.tokenizer, "{% for i in range(200) %}{{ messages[0]['content'] }}{% endfor %}", { maxRenderChars: 1000 });
  await assert.rejects(
    big.prompt([{ role: 'user', content: 'abcdefghij' }]),
    (e: unknown) => e instanceof TemplateFailed && /produced a prompt of 2000 characters, more than the limit of 1000/.test(e.message),
  );
  await big.close();

  // Over HTTP: a JSON 500 naming the template, while other requests keep being served.
  const dir = tmpDir('kivi-endless-');
  for (const f of fs.readdirSync(MODEL_DIR)) fs.symlinkSync(path.resolve(MODEL_DIR, f), path.join(dir, f), 'file');
  fs.unlinkSync(path.join(dir, 'tokenizer_config.json'));
  const cfg = JSON.parse(fs.readFileSync(path.join(MODEL_DIR, 'tokenizer_config.json'), 'utf8'));
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ ...cfg, chat_template: ENDLESS }));
  const server = await KiviServer.start(m, { port: 0, kv: 'kivi2' });
  const em = await KiviModel.load(dir, { kv: 'kivi2', threads: 1 });
  const endless = await KiviServer.start(em, { port: 0, kv: 'kivi2', modelName: 'endless' });
  try {
    const chat = postJson(endless, '/v1/chat/completions', { model: 'endless', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 });
    // While the template runs, the event loop answers.
    const h0 = Date.now();
    assert.equal((await fetch(`${endless.url}/health`)).status, 200);
    assert.ok(Date.now() - h0 < 1500, `health took ${Date.now() - h0} ms`);
    const done = await postJson(endless, '/v1/completions', { model: 'endless', prompt: 'Hello', max_tokens: 2 });
    assert.equal(done.status, 200);
    const r = await chat;
    assert.equal(r.status, 500);
    assert.equal(r.json.error.type, 'server_error');
    assert.equal(r.json.error.code, 'chat_template_error');
    assert.match(r.json.error.message, /chat template (did not finish rendering within 2 s|ran out of memory)/);
    assert.equal((await postJson(server, '/v1/completions', { model: 'llama-28m-gqa', prompt: 'Hello', max_tokens: 2 })).status, 200);
  } finally {
    await endless.close();
    await server.close();
    em.dispose();
  }

  // The process: SIGTERM during a render still shuts the server down.
  const child = spawn(process.execPath, [CLI, 'serve', '--model', dir, '--port', '0', '--threads', '1'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  try {
    const url = await new Promise<string>((resolve, reject) => {
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
        const mm = /at (http:\/\/\S+) /.exec(stderr);
        if (mm) resolve(mm[1]!);
      });
      child.on('exit', () => reject(new Error(`serve exited: ${stderr}`)));
    });
    const pending = fetch(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: path.basename(dir), messages: [{ role: 'user', content: 'hi' }] }),
    }).catch(() => undefined);
    await new Promise((r) => setTimeout(r, 300));
    const t1 = Date.now();
    child.kill('SIGTERM');
    assert.equal(await exited, 0, stderr);
    assert.ok(Date.now() - t1 < 10_000, `SIGTERM took ${Date.now() - t1} ms`);
    await pending;
  } finally {
    child.kill('SIGKILL');
  }
});

test('sizes from config.json and safetensors headers are checked before anything is allocated', async () => {
  const root = tmpDir('kivi-sizes-');
  const gen = (dir: string, backend: string) => ['generate', '--model', dir, '--prompt', 'x', '--max-tokens', '1', '--kv', 'fp32', '--backend', backend];
  // An absurd intermediate_size: the shape check, not "out of WebAssembly memory" or "Invalid typed array length".
  const absurd = path.join(root, 'absurd');
  await writeTinyModel(absurd, TINY);
  const cfg = JSON.parse(fs.readFileSync(path.join(absurd, 'config.json'), 'utf8'));
  fs.writeFileSync(path.join(absurd, 'config.json'), JSON.stringify({ ...cfg, intermediate_size: 3_000_000 }));
  for (const backend of ['ts', 'wasm']) {
    expectCliError(gen(absurd, backend), /tensor model\.layers\.0\.mlp\.gate_proj\.weight has shape \[32, 32\], config\.json implies \[3000000, 32\]/);
  }
  // Overlapping byte ranges in one file: two tensors would alias each other's data.
  const overlap = path.join(root, 'overlap');
  await writeTinyModel(overlap, TINY);
  const st = path.join(overlap, 'model.safetensors');
  const b = fs.readFileSync(st);
  const n = Number(b.readBigUInt64LE(0));
  const header = JSON.parse(b.subarray(8, 8 + n).toString()) as Record<string, { data_offsets: number[] }>;
  const norm = header['model.norm.weight']!;
  const q = header['model.layers.0.self_attn.q_proj.weight']!;
  const len = norm.data_offsets[1]! - norm.data_offsets[0]!;
  norm.data_offsets = [q.data_offsets[0]! + 4, q.data_offsets[0]! + 4 + len];
  const json = Buffer.from(JSON.stringify(header));
  const lenBuf = Buffer.alloc(8);
  lenBuf.writeBigUInt64LE(BigInt(json.length));
  fs.writeFileSync(st, Buffer.concat([lenBuf, json, b.subarray(8 + n)]));
  expectCliError(gen(overlap, 'ts'), /tensors "model\.layers\.0\.self_attn\.q_proj\.weight" and "model\.norm\.weight" overlap/);
  // An 8-layer checkpoint whose config says 3 layers must not run silently on the first 3.
  const eight = path.join(root, 'eight');
  await writeTinyModel(eight, { ...TINY, layers: 8 });
  const c8 = JSON.parse(fs.readFileSync(path.join(eight, 'config.json'), 'utf8'));
  fs.writeFileSync(path.join(eight, 'config.json'), JSON.stringify({ ...c8, num_hidden_layers: 3 }));
  expectCliError(gen(eight, 'ts'), /the checkpoint has tensors of layer [3-7] .*but config\.json says num_hidden_layers 3/);
  // Tokenizers the library would misread.
  const tok = path.join(root, 'tok');
  await writeTinyModel(tok, TINY);
  const tj = JSON.parse(fs.readFileSync(path.join(tok, 'tokenizer.json'), 'utf8'));
  fs.writeFileSync(path.join(tok, 'tokenizer.json'), JSON.stringify({ ...tj, model: { ...tj.model, type: 'SentencePieceMagic' } }));
  expectCliError(gen(tok, 'ts'), /tokenizer\.json: unsupported tokenizer model type "SentencePieceMagic" \(supported: BPE, Unigram, WordPiece\)/);
  fs.writeFileSync(path.join(tok, 'tokenizer.json'), JSON.stringify({ ...tj, model: { ...tj.model, merges: [['a', 'b'], 42, 'x y'] } }));
  expectCliError(gen(tok, 'ts'), /tokenizer\.json: model\.merges\[1\] must be a string "a b" or a pair of strings, got 42/);
  fs.writeFileSync(path.join(tok, 'tokenizer.json'), JSON.stringify({ ...tj, model: { ...tj.model, merges: 'garbage' } }));
  expectCliError(gen(tok, 'ts'), /tokenizer\.json: model\.merges must be an array/);
});
