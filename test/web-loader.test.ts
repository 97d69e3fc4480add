/**
 * The fetch loader in Node against local HTTP servers: the same config, tokenizer and weights (bit for
 * bit) as the filesystem loader, the same greedy ids, Range requests used where offered, whole files
 * where not, and the same one-line errors for malformed models.
 */

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { KiviModel } from '../src/api.js';
import { type HostTensor, TsBackend } from '../src/kernels/ts/backend.js';
import type { Tensor } from '../src/kernels/types.js';
import type { WasmTensor } from '../src/kernels/wasm/kernels.js';
import { loadModel } from '../src/model/load.js';
import type { ModelWeights } from '../src/model/weights.js';
import { KiviError } from '../src/util/errors.js';
import { WebServer } from '../src/web/server.js';
import { writeTinyModel } from './fixtures.js';
import { bundledModel, MODEL_DIR, tmpDir } from './helpers.js';
import { type RangeMode, serveDir } from './web-helpers.js';

/** A host back end's tensor data (both host back ends keep it as a typed array). */
const dataOf = (t: Tensor | undefined) => (t as HostTensor | WasmTensor | undefined)?.data;

function weightArrays(w: ModelWeights): [string, (ArrayBufferView & { length: number }) | undefined][] {
  const out: [string, (ArrayBufferView & { length: number }) | undefined][] = [
    ['embed', dataOf(w.embed)],
    ['norm', dataOf(w.norm)],
    ['lmHead', dataOf(w.lmHead)],
  ];
  w.layers.forEach((l, i) => {
    for (const [k, v] of Object.entries(l)) out.push([`layers.${i}.${k}`, dataOf(v as Tensor | undefined)]);
  });
  return out;
}

function assertSameWeights(a: ModelWeights, b: ModelWeights): void {
  const wa = weightArrays(a);
  const wb = weightArrays(b);
  assert.deepEqual(
    wa.map(([k]) => k),
    wb.map(([k]) => k),
  );
  for (let i = 0; i < wa.length; i++) {
    const [name, x] = wa[i]!;
    const y = wb[i]![1];
    if (x === undefined || y === undefined) {
      assert.equal(x, y, name);
      continue;
    }
    assert.equal(x.length, y.length, name);
    // Bit-for-bit: compare the raw words (NaN-safe, -0-safe).
    assert.ok(Buffer.from(x.buffer, x.byteOffset, x.byteLength).equals(Buffer.from(y.buffer, y.byteOffset, y.byteLength)), `${name} differs`);
  }
}

const PROMPT = 'The history of the city';

test('bundled model over HTTP (kivi web server, Range requests): same config, tokenizer, weights and greedy ids as from disk', async () => {
  const server = await WebServer.start({ modelDir: MODEL_DIR, port: 0 });
  try {
    const disk = await bundledModel();
    let last = [0, 0];
    const progress: number[] = [];
    const web = await KiviModel.load(server.modelUrl, {
      onProgress: (done, total) => {
        assert.ok(done >= last[0]! && done <= total, `progress ${done}/${total}`);
        last = [done, total];
        progress.push(done);
      },
    });
    assert.equal(web.dir, server.modelUrl);
    assert.deepEqual(web.config, disk.config);
    assert.equal(last[0], last[1]);
    assert.ok(last[1]! > 50e6 && progress.length > 60, `progress reached ${last[1]} bytes in ${progress.length} calls`);
    const text = 'Hello, world! The 2-bit KV cache: ünïcödé and numbers 12345.';
    assert.deepEqual(web.encode(text), disk.encode(text));
    assert.deepEqual(web.tokenizer.eosIds, disk.tokenizer.eosIds);
    assert.equal(web.tokenizer.bosId, disk.tokenizer.bosId);
    assertSameWeights(web.transformer.weights, disk.transformer.weights);
    for (const kv of ['fp32', 'kivi2']) {
      const a = await web.complete(PROMPT, { maxTokens: 12, kv, ignoreEos: true });
      const b = await disk.complete(PROMPT, { maxTokens: 12, kv, ignoreEos: true });
      assert.equal(a.ids.length, 12);
      assert.deepEqual(a.ids, b.ids, kv);
      assert.equal(a.text, b.text);
      assert.equal(a.kvBytes, b.kvBytes);
    }
  } finally {
    await server.close();
  }
});

/** Load the tiny fixture from disk and over a server in `mode`; return both models and the request log. */
async function tinyOver(mode: RangeMode) {
  const root = tmpDir('kivi-web-');
  const dir = path.join(root, 'tiny');
  await writeTinyModel(dir, { vocab: 8192, hidden: 64, heads: 4, kvHeads: 2, headDim: 16, inter: 96, layers: 2, dtype: 'BF16', tie: false });
  const served = await serveDir(root, mode);
  try {
    const k = new TsBackend();
    const web = await loadModel(`${served.url}tiny`, k);
    const disk = await loadModel(dir, k);
    return { web, disk, log: served.log, size: fs.statSync(path.join(dir, 'model.safetensors')).size };
  } finally {
    await served.close();
  }
}

test('Range requests: only ranges of the safetensors file travel, each byte at most once', async () => {
  const { web, disk, log, size } = await tinyOver('ranges');
  assertSameWeights(web.model.weights, disk.model.weights);
  const st = log.filter((r) => r.path.endsWith('.safetensors'));
  assert.ok(st.length > 5, `${st.length} requests`);
  assert.ok(
    st.every((r) => r.method === 'GET' && r.range !== undefined && r.status === 206),
    JSON.stringify(st.slice(0, 3)),
  );
  const sent = st.reduce((a, r) => a + r.bytes, 0);
  assert.ok(sent <= size, `sent ${sent} bytes of a ${size}-byte file`);
  assert.ok(sent >= size - 64 * 1024, `sent ${sent} bytes of a ${size}-byte file`);
});

test('a server without Range support: the file comes whole, once, and loads the same', async () => {
  const { web, disk, log, size } = await tinyOver('no-ranges');
  assertSameWeights(web.model.weights, disk.model.weights);
  const st = log.filter((r) => r.path.endsWith('.safetensors'));
  assert.equal(st.length, 1);
  assert.equal(st[0]!.status, 200);
  assert.equal(st[0]!.bytes, size);
});

test('206 without a readable Content-Range (cross-origin, header not exposed): size from HEAD, then ranges', async () => {
  const { web, disk, log } = await tinyOver('no-content-range');
  assertSameWeights(web.model.weights, disk.model.weights);
  const st = log.filter((r) => r.path.endsWith('.safetensors'));
  assert.equal(st.filter((r) => r.method === 'HEAD').length, 1);
  assert.ok(st.filter((r) => r.method === 'GET').every((r) => r.status === 206));
});

/** The error a load gives, as text; paths under `root` become `<root>` and the server's URL too. */
async function loadError(location: string, root: string, base: string): Promise<string> {
  try {
    await loadModel(location, new TsBackend());
  } catch (e) {
    assert.ok(e instanceof KiviError, `not a KiviError: ${(e as Error).stack}`);
    assert.ok(!e.message.includes('\n'), e.message);
    return e.message
      .split(base)
      .join('<root>/')
      .split(root + path.sep)
      .join('<root>/')
      .split(root)
      .join('<root>');
  }
  assert.fail(`${location} loaded`);
}

test('malformed models give the same one-line errors over HTTP as from disk', async () => {
  const root = tmpDir('kivi-web-bad-');
  const served = await serveDir(root);
  const cases: [string, (dir: string) => void, RegExp][] = [];
  const st = (dir: string) => path.join(dir, 'model.safetensors');
  const retamper = (tamper: (h: Record<string, Record<string, unknown>>) => void) => (dir: string) => {
    const b = fs.readFileSync(st(dir));
    const n = Number(b.readBigUInt64LE(0));
    const header = JSON.parse(b.subarray(8, 8 + n).toString()) as Record<string, Record<string, unknown>>;
    tamper(header);
    const json = Buffer.from(JSON.stringify(header));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    fs.writeFileSync(st(dir), Buffer.concat([len, json, b.subarray(8 + n)]));
  };
  cases.push(['trunc', (d) => fs.writeFileSync(st(d), fs.readFileSync(st(d)).subarray(0, 5)), /truncated safetensors file \(5 bytes\)/]);
  cases.push(['empty', (d) => fs.writeFileSync(st(d), ''), /truncated safetensors file \(0 bytes\)/]);
  cases.push([
    'hdrlen',
    (d) => {
      const b = fs.readFileSync(st(d));
      b.writeBigUInt64LE(BigInt(b.length + 100), 0);
      fs.writeFileSync(st(d), b);
    },
    /header length \d+ runs past the end of the file/,
  ]);
  cases.push([
    'badjson',
    (d) => {
      const b = fs.readFileSync(st(d));
      b[8] = 0x5b;
      fs.writeFileSync(st(d), b);
    },
    /malformed safetensors header \(bad JSON\)/,
  ]);
  cases.push(['offsets', retamper((h) => (h['model.norm.weight'].data_offsets = [0, 1e9])), /data \[0, 1000000000\) lies outside the file/]);
  cases.push(['dtype', retamper((h) => (h['model.norm.weight'].dtype = 'I8')), /unsupported dtype "I8"/]);
  cases.push(['shape', retamper((h) => (h['model.norm.weight'].shape = [16])), /does not match shape/]);
  cases.push(['missing', retamper((h) => delete h['model.norm.weight']), /missing tensor model\.norm\.weight/]);
  cases.push(['noconfig', (d) => fs.rmSync(path.join(d, 'config.json')), /<root>\/noconfig\/?: missing config\.json/]);
  cases.push(['badconfig', (d) => fs.writeFileSync(path.join(d, 'config.json'), '{"architectures": ['), /config\.json: malformed JSON/]);
  cases.push(['notok', (d) => fs.rmSync(path.join(d, 'tokenizer.json')), /missing <root>\/notok\/tokenizer\.json/]);
  cases.push(['nosafetensors', (d) => fs.rmSync(st(d)), /no model\.safetensors or model\.safetensors\.index\.json/]);
  cases.push(['badindex', (d) => fs.writeFileSync(path.join(d, 'model.safetensors.index.json'), '{'), /model\.safetensors\.index\.json: malformed JSON/]);
  cases.push([
    'noshard',
    (d) =>
      fs.writeFileSync(
        path.join(d, 'model.safetensors.index.json'),
        JSON.stringify({ weight_map: { 'model.norm.weight': 'model-00001-of-00002.safetensors' } }),
      ),
    /missing shard <root>\/noshard\/model-00001-of-00002\.safetensors \(named in model\.safetensors\.index\.json\)/,
  ]);
  try {
    for (const [name, breakIt, pattern] of cases) {
      const dir = path.join(root, name);
      await writeTinyModel(dir, { vocab: 8192, hidden: 32, heads: 2, kvHeads: 1, headDim: 16, inter: 32, layers: 1 });
      breakIt(dir);
      const fromDisk = await loadError(dir, root, served.url);
      const overHttp = await loadError(`${served.url}${name}/`, root, served.url);
      assert.match(fromDisk, pattern, name);
      // Directory paths end without a slash on disk and with one as a URL base.
      assert.equal(overHttp.replace(`<root>/${name}/:`, `<root>/${name}:`), fromDisk, name);
    }
    assert.match(await loadError(`${served.url}nowhere/`, root, served.url), /<root>\/nowhere\/: missing config\.json/);
  } finally {
    await served.close();
  }
});

test('unreachable servers and bad URLs are one-line errors', async () => {
  // A port nothing listens on: bind one, then close it.
  const served = await serveDir(tmpDir());
  const url = served.url;
  await served.close();
  await assert.rejects(
    loadModel(`${url}m/`, new TsBackend()),
    (e: unknown) => e instanceof KiviError && /^cannot fetch http:\/\/127\.0\.0\.1:\d+\/m\/config\.json: /.test(e.message),
  );
  const { urlSource } = await import('../src/io/source-url.js');
  assert.throws(
    () => urlSource('http://'),
    (e: unknown) => e instanceof KiviError && /bad model URL "http:\/\/"/.test(e.message),
  );
});
