/**
 * The CLI and the server under conditions a user meets: a closed or full output, a model too big for the
 * back end, directories where files belong, odd request bodies, requests without a token limit, a
 * megabyte prompt, the defaults (kivi2 everywhere), and an install that Node 20 accepts.
 */

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { after, before, describe, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { KiviModel } from '../src/api.js';
import { cacheBytes, peakAllocatedBytes } from '../src/cache/budget.js';
import { parseKvSpec } from '../src/cache/spec.js';
import * as kivi from '../src/index.js';
import type { KiviServer } from '../src/server/app.js';
import { FALLBACK_STOP } from '../src/server/chat.js';
import { writeTinyModel } from './fixtures.js';
import { bundledModel, CLI, expectCliError, MODEL_DIR, ROOT, kivi as runKivi, tmpDir } from './helpers.js';
import { MODEL_NAME, metric, postJson, startServer } from './server-helpers.js';

const TINY = { vocab: 8192, hidden: 32, heads: 2, kvHeads: 1, headDim: 16, inter: 32, layers: 1 };
const GEN = ['generate', '--model', MODEL_DIR, '--prompt', 'The history of the city', '--max-tokens', '40', '--ignore-eos', '--threads', '1'];

test('a closed stdout (| head -c 10) ends generate quietly; a full disk (> /dev/full) is one line', () => {
  const cmd = [process.execPath, CLI, ...GEN].map((x) => `'${x}'`).join(' ');
  const err = path.join(tmpDir(), 'stderr');
  const piped = spawnSync('bash', ['-c', `set -o pipefail; ${cmd} 2>'${err}' | head -c 10`], { encoding: 'utf8' });
  assert.equal(piped.stdout.length, 10);
  assert.equal(piped.status, 0, "the pipeline's status (pipefail): kivi exits 0 when its reader goes away");
  assert.equal(fs.readFileSync(err, 'utf8'), '', 'nothing on stderr: no EPIPE trace');
  const full = spawnSync('bash', ['-c', `${cmd} > /dev/full`], { encoding: 'utf8' });
  assert.equal(full.status, 1);
  assert.equal(full.stderr, 'kivi: cannot write to standard output: no space left on device (ENOSPC)\n');
});

test('a model too big for the back end is refused from config.json and the checkpoint headers alone, naming what can hold it', async () => {
  const dir = path.join(tmpDir('kivi-big-'), 'big');
  await writeTinyModel(dir, TINY);
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  // About 1.14B parameters: 4.2 GiB of float32, past wasm's 4 GiB. The weights on disk are the tiny ones:
  // reading them would fail on the first shape, so the message proves nothing was read.
  fs.writeFileSync(
    path.join(dir, 'config.json'),
    JSON.stringify({
      ...cfg,
      hidden_size: 2048,
      intermediate_size: 8192,
      num_hidden_layers: 16,
      num_attention_heads: 16,
      num_key_value_heads: 16,
      head_dim: 128,
      vocab_size: 32000,
    }),
  );
  const params = 32000 * 2048 + 16 * (2 * 2048 + 4 * 2048 * 2048 + 3 * 2048 * 8192) + 2048;
  const gib = ((params * 4) / 2 ** 30).toFixed(2);
  const r = runKivi(['generate', '--model', dir, '--prompt', 'x', '--backend', 'wasm', '--kv', 'fp32']);
  assert.equal(r.status, 1, r.stderr);
  const fitsHost = params * 4 < os.totalmem();
  assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  assert.match(
    r.stderr,
    new RegExp(`^kivi: the model's weights need ${gib} GiB \\(1\\.14B parameters, matrices as float32\\), more than the wasm back end can hold`),
  );
  assert.match(r.stderr, fitsHost ? /the TypeScript back end \(--backend ts\) keeps them in ordinary memory/ : /use a smaller model/);
  // Beyond any machine's memory, on either back end.
  fs.writeFileSync(
    path.join(dir, 'config.json'),
    JSON.stringify({ ...cfg, hidden_size: 1 << 20, intermediate_size: 1 << 24, num_hidden_layers: 4096, num_attention_heads: 8192, num_key_value_heads: 8192 }),
  );
  for (const backend of ['ts', 'wasm']) {
    expectCliError(
      ['generate', '--model', dir, '--prompt', 'x', '--backend', backend, '--kv', 'fp32'],
      /the model's weights need \d+\.\d+ GiB .*(more than this machine's memory|use a smaller model)/,
    );
  }
});

test('directories where files belong, and other files that cannot be read, are one line naming the file', async () => {
  const root = tmpDir('kivi-eisdir-');
  expectCliError(['generate', '--model', MODEL_DIR, '--prompt-ids', root], new RegExp(`--prompt-ids ${root} is not a file \\(it is a directory\\)`));
  const w = path.join(root, 'w');
  fs.mkdirSync(w);
  expectCliError(['eval', 'nll', '--model', MODEL_DIR, '--windows', w, '--prefill', '2'], /is not a file \(it is a directory\)/);
  for (const f of ['config.json', 'tokenizer.json', 'model.safetensors']) {
    const dir = path.join(root, f.replace('.', '-'));
    await writeTinyModel(dir, TINY);
    fs.rmSync(path.join(dir, f));
    fs.mkdirSync(path.join(dir, f));
    expectCliError(
      ['generate', '--model', dir, '--prompt', 'x', '--kv', 'fp32'],
      new RegExp(`${path.join(dir, f).replace(/[.]/g, '\\.')} is not a file \\(it is a directory\\)`),
    );
  }
});

test('defaults: kivi2 is the cache of generate, eval nll and the library; serve --help shows its budget as 2GiB', async () => {
  const r = runKivi(['generate', '--model', MODEL_DIR, '--prompt', 'Hello', '--max-tokens', '3', '--ignore-eos', '--json']);
  assert.equal(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout) as { kv: string; kv_bytes: number; prompt_tokens: number };
  assert.equal(j.kv, 'kivi2');
  const dims = { numLayers: 8, numHeads: 4, numKvHeads: 2, headDim: 128 };
  assert.equal(j.kv_bytes, cacheBytes(parseKvSpec('kivi2'), dims, j.prompt_tokens + 2));
  const w = path.join(tmpDir(), 'w.json');
  fs.writeFileSync(w, JSON.stringify([[1, 450, 3681, 310, 278]]));
  const e = runKivi(['eval', 'nll', '--model', MODEL_DIR, '--windows', w, '--prefill', '2', '--json']);
  assert.equal(e.status, 0, e.stderr);
  assert.equal(JSON.parse(e.stdout).kv, 'kivi2');
  const m = await KiviModel.load(MODEL_DIR, { backend: 'ts' });
  assert.equal(m.kv.name, 'kivi2');
  assert.deepEqual(parseKvSpec('kivi2'), { kind: 'kivi', kBits: 2, vBits: 2, groupSize: 32, residual: 128, residualDtype: 'fp16', name: 'kivi2' });
  const help = runKivi(['serve', '--help']);
  assert.match(help.stdout, /--kv-budget <size>[\s\S]*\(default: 2GiB\)/);
  assert.doesNotMatch(help.stdout, /2147483648/);
  assert.match(help.stdout, /--kv <spec>[\s\S]*\(default: kivi2\)/);
});

test('serve refuses a KV budget that cannot hold one sequence of one token', () => {
  expectCliError(['serve', '--model', MODEL_DIR, '--kv-budget', '0.5', '--port', '0'], /--kv-budget.*expected a whole number of bytes, got "0\.5"/);
  // kivi2, one token: a key and a value residual page of 8 float16 slots, 8 layers × 2 kv heads × 8 × 128 × 2 bytes each = 64 KiB.
  expectCliError(
    ['serve', '--model', MODEL_DIR, '--kv-budget', '65535', '--port', '0'],
    /the KV budget of 64\.0 KiB cannot hold even one sequence of one token \(kivi2 needs 64\.0 KiB of cache pages\)/,
  );
});

test("the Node entry exports urlSource (as the README's browser section shows)", () => {
  assert.equal(typeof kivi.urlSource, 'function');
  const s = kivi.urlSource('http://127.0.0.1:1/m', { headers: { authorization: 'x' } });
  assert.ok(s instanceof kivi.UrlSource);
  assert.equal(s.where, 'http://127.0.0.1:1/m/');
});

test('every installed package accepts Node 20 (npm ci warns of no engine)', () => {
  const semver = createRequire(import.meta.url)('semver') as { satisfies(v: string, range: string): boolean };
  const lock = JSON.parse(fs.readFileSync(path.join(ROOT, 'package-lock.json'), 'utf8')) as {
    packages: Record<string, { engines?: unknown; version?: string }>;
  };
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { engines: { node: string } };
  assert.equal(pkg.engines.node, '>=20');
  const refuse: string[] = [];
  for (const [name, p] of Object.entries(lock.packages)) {
    const range = (p.engines as { node?: unknown } | undefined)?.node;
    if (typeof range === 'string' && !semver.satisfies('20.0.0', range) && !semver.satisfies('20.20.0', range)) refuse.push(`${name}@${p.version}: ${range}`);
  }
  assert.deepEqual(refuse, []);
});

describe('kivi serve: odd bodies, unsent limits, seeds, a megabyte prompt', () => {
  let server: KiviServer;
  before(async () => {
    server = await startServer({ kv: 'kivi2', budgetBytes: 64 * 1024 ** 2, bodyLimit: 2 * 1024 ** 2 });
  });
  after(() => server.close());

  const raw = async (body: Buffer | string, headers: Record<string, string>) => {
    const r = await fetch(`${server.url}/v1/completions`, { method: 'POST', headers, body: typeof body === 'string' ? body : new Uint8Array(body) });
    return { status: r.status, json: (await r.json()) as { error: { message: string; type: string; param: string | null } } };
  };

  test('each malformed body says what is wrong', async () => {
    const json = { 'content-type': 'application/json' };
    const ok = JSON.stringify({ model: MODEL_NAME, prompt: 'hi', max_tokens: 1 });
    const cases: [string, Buffer | string, Record<string, string>, number, RegExp][] = [
      [
        'invalid UTF-8',
        Buffer.concat([Buffer.from('{"model": "'), Buffer.from([0xff, 0xfe, 0xc3]), Buffer.from('", "prompt": "x"}')]),
        json,
        400,
        /not valid UTF-8/,
      ],
      ['gzip', gzipSync(ok), { ...json, 'content-encoding': 'gzip' }, 415, /Content-Encoding "gzip" is not supported/],
      ['UTF-16 with a BOM', Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(ok, 'utf16le')]), json, 400, /not UTF-8 \(it looks like UTF-16\)/],
      ['UTF-16 without a BOM', Buffer.from(ok, 'utf16le'), json, 400, /not UTF-8 \(it looks like UTF-16\)/],
      ['charset=utf-16', Buffer.from(ok, 'utf16le'), { 'content-type': 'application/json; charset=utf-16' }, 415, /charset "utf-16" is not supported/],
      ['text/plain', ok, { 'content-type': 'text/plain' }, 415, /text\/plain/],
      [
        'temperature 1e400',
        `{"model": "${MODEL_NAME}", "prompt": "x", "temperature": 1e400}`,
        json,
        400,
        /^temperature: the number is out of range \(it must be finite\)$/,
      ],
      ['__proto__', `{"model": "${MODEL_NAME}", "prompt": "x", "__proto__": {"admin": true}}`, json, 400, /"__proto__" key, which is not a parameter/],
      ['empty', '', json, 400, /empty/],
      ['bad JSON', '{"model": ', json, 400, /not valid JSON/],
    ];
    for (const [what, body, headers, status, pattern] of cases) {
      const r = await raw(body, headers);
      assert.equal(r.status, status, `${what}: ${JSON.stringify(r.json)}`);
      assert.match(r.json.error.message, pattern, what);
      assert.doesNotMatch(r.json.error.message, /Content-Length|expected number, received number|Body is not valid JSON/, what);
      assert.equal(r.json.error.type, 'invalid_request_error', what);
    }
    assert.equal((await raw(ok, json)).status, 200);
    assert.equal(({} as Record<string, unknown>).admin, undefined);
  });

  test('seeds outside [0, 2^32 − 1] are refused, not reduced', async () => {
    for (const seed of [-1, 4294967296, 4294967297, 1e20]) {
      const r = await postJson(server, '/v1/completions', { model: MODEL_NAME, prompt: 'x', max_tokens: 2, temperature: 1, seed });
      assert.equal(r.status, 400, String(seed));
      assert.equal(r.json.error.param, 'seed');
      assert.match(r.json.error.message, /seed: must be an integer in \[0, 4294967295\]/);
    }
    const a = await postJson(server, '/v1/completions', { model: MODEL_NAME, prompt: 'x', max_tokens: 4, temperature: 1, seed: 4294967295 });
    assert.equal(a.status, 200);
  });

  test('a megabyte prompt is tokenized off the event loop', async () => {
    const prompt = 'The history of the city begins with a river crossing. '.repeat(19_000);
    assert.ok(prompt.length > 1_000_000);
    const h = monitorEventLoopDelay({ resolution: 10 });
    h.enable();
    const t0 = performance.now();
    const r = await postJson(server, '/v1/completions', { model: MODEL_NAME, prompt, max_tokens: 1 });
    const took = performance.now() - t0;
    h.disable();
    // Far over the context: refused, after tokenizing 200K+ tokens.
    assert.equal(r.status, 400);
    assert.match(r.json.error.message, /prompt of \d{6,} tokens is longer than the model's context of 2048/);
    const worst = h.max / 1e6;
    assert.ok(worst < 400, `the event loop stalled for ${worst.toFixed(0)} ms while the prompt tokenized (${took.toFixed(0)} ms in all)`);
  });
});

describe('kivi serve: a request without max_tokens gets what fits', () => {
  const KV = 'fp16';
  let server: KiviServer;
  let m: KiviModel;
  let promptIds: number[];
  const content =
    'Tell me about the river that runs through the old town, its bridges, its mills, and the people who live along its banks in spring and in autumn, and about the fish.';
  const messages = [{ role: 'user', content }];
  /** Tokens generated until the cache fills its first fp16 page (64 tokens: prompt + N − 1 = 64). */
  let N: number;
  before(async () => {
    m = await bundledModel();
    promptIds = m.encode(`User: ${content}\nAssistant:`);
    N = 65 - promptIds.length;
    assert.ok(N >= 2 && N <= 16, `${N} tokens to generate`);
    // The budget holds exactly one page of keys and one of values: N tokens fit, N + 1 would need more.
    server = await startServer({ kv: KV, budgetBytes: peakAllocatedBytes(parseKvSpec(KV), m.transformer.pool, 64, promptIds.length) });
  });
  after(() => server.close());

  test('chat: admitted with the tokens that fit the budget, ending with finish_reason "length"', async () => {
    const ref = await m.complete(promptIds, { maxTokens: N, kv: KV, stop: [FALLBACK_STOP] });
    assert.equal(ref.finishReason, 'length');
    const r = await postJson(server, '/v1/chat/completions', { model: MODEL_NAME, messages, temperature: 0 });
    assert.equal(r.status, 200, JSON.stringify(r.json));
    assert.equal(r.json.choices[0].finish_reason, 'length');
    assert.equal(r.json.choices[0].message.content, ref.text);
    assert.deepEqual(r.json.usage, { prompt_tokens: promptIds.length, completion_tokens: N, total_tokens: promptIds.length + N });
    assert.equal(await metric(server, 'kivi_kv_bytes_used'), 0);
  });

  test('errors quote only what the client sent', async () => {
    // A prompt that alone overflows the budget: no max_tokens in the message, since none was sent.
    const long = [{ role: 'user', content: 'word '.repeat(80) }];
    const r = await postJson(server, '/v1/chat/completions', { model: MODEL_NAME, messages: long });
    assert.equal(r.status, 400);
    assert.match(r.json.error.message, /^a prompt of \d+ tokens needs .* of KV cache, more than the server's whole budget of .*; shorten the prompt$/);
    assert.doesNotMatch(r.json.error.message, /max_tokens/);
    // One the client sent is quoted as sent.
    const s = await postJson(server, '/v1/chat/completions', { model: MODEL_NAME, messages, max_tokens: 50 });
    assert.equal(s.status, 400);
    assert.match(s.json.error.message, /max_tokens 50 /);
    // A context-filling prompt without a limit: no invented number of new tokens.
    const c = await postJson(server, '/v1/completions', { model: MODEL_NAME, prompt: new Array(2048).fill(450) });
    assert.equal(c.status, 400);
    assert.match(c.json.error.message, /^the prompt is 2048 tokens, which leaves no room to generate in the model's context of 2048$/);
  });
});
