/**
 * Bad input never crashes: each case gives one clear line on stderr and exit code 1, no stack trace.
 */

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { safetensorsBytes, writeTinyModel } from './fixtures.js';
import { expectCliError, kivi, MODEL_DIR, tmpDir } from './helpers.js';

const expectError = (args: string[], pattern: RegExp) => expectCliError(args, pattern);

const tmp = tmpDir();
// The tiny fixtures have head_dim 16, which the default kivi2 (G = 32) cannot group: they run fp32.
const gen = (model: string, ...rest: string[]) => ['generate', '--model', model, '--prompt', 'Hello', '--max-tokens', '2', '--kv', 'fp32', ...rest];

/** A tiny valid model whose safetensors we then break in one way. */
async function broken(name: string, mutate: (file: string, bytes: Buffer) => Buffer | undefined): Promise<string> {
  const dir = path.join(tmp, name);
  await writeTinyModel(dir, { vocab: 8192, hidden: 32, heads: 2, kvHeads: 1, headDim: 16, inter: 32, layers: 1 });
  const file = path.join(dir, 'model.safetensors');
  const out = mutate(file, fs.readFileSync(file));
  if (out) fs.writeFileSync(file, out);
  return dir;
}

test('the tiny fixture model itself loads and generates', async () => {
  const dir = await broken('ok', () => undefined);
  const r = kivi([...gen(dir), '--json']);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).ids.length, 2);
});

test('missing model directory, file, or config', () => {
  expectError(gen(path.join(tmp, 'nope')), /does not exist/);
  fs.mkdirSync(path.join(tmp, 'empty'), { recursive: true });
  expectError(gen(path.join(tmp, 'empty')), /missing config\.json/);
  const f = path.join(tmp, 'afile');
  fs.writeFileSync(f, 'x');
  expectError(gen(f), /not a directory/);
});

test('malformed config.json, unsupported architecture, rope scaling', async () => {
  const dir = await broken('cfg', () => undefined);
  const cfgFile = path.join(dir, 'config.json');
  const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8'));
  fs.writeFileSync(cfgFile, '{"architectures": [');
  expectError(gen(dir), /config\.json: malformed JSON/);
  fs.writeFileSync(cfgFile, JSON.stringify({ ...cfg, architectures: ['GPT2LMHeadModel'] }));
  expectError(gen(dir), /unsupported architecture "GPT2LMHeadModel"/);
  fs.writeFileSync(cfgFile, JSON.stringify({ ...cfg, rope_scaling: { rope_type: 'yarn', factor: 4 } }));
  expectError(gen(dir), /unsupported rope scaling type "yarn"/);
  fs.writeFileSync(cfgFile, JSON.stringify({ ...cfg, num_key_value_heads: 3 }));
  expectError(gen(dir), /not a multiple of num_key_value_heads/);
});

test('truncated and malformed safetensors', async () => {
  expectError(gen(await broken('trunc', (_f, b) => b.subarray(0, 5))), /truncated safetensors/);
  expectError(
    gen(
      await broken('hdrlen', (_f, b) => {
        const c = Buffer.from(b);
        c.writeBigUInt64LE(BigInt(b.length + 100), 0);
        return c;
      }),
    ),
    /header length \d+ runs past the end/,
  );
  expectError(
    gen(
      await broken('badjson', (_f, b) => {
        const c = Buffer.from(b);
        c.write('{"model.embed', 8, 'utf8');
        c[8] = 0x5b; // '[' breaks the JSON
        c[9] = 0x7b;
        return c;
      }),
    ),
    /malformed safetensors header \(bad JSON\)|not an object/,
  );
  // Re-serialize with tampered headers.
  const retamper = (tamper: (h: Record<string, Record<string, unknown>>) => void) => (_f: string, b: Buffer) => {
    const n = Number(b.readBigUInt64LE(0));
    const header = JSON.parse(b.subarray(8, 8 + n).toString()) as Record<string, Record<string, unknown>>;
    const data = b.subarray(8 + n);
    tamper(header);
    let json = JSON.stringify(header);
    while ((json.length + 8) % 8) json += ' ';
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    return Buffer.concat([len, Buffer.from(json), data]);
  };
  expectError(
    gen(
      await broken(
        'offsets',
        retamper((h) => {
          h['model.norm.weight'].data_offsets = [0, 1e9];
        }),
      ),
    ),
    /data \[0, 1000000000\) lies outside the file/,
  );
  expectError(
    gen(
      await broken(
        'dtype',
        retamper((h) => {
          h['model.norm.weight'].dtype = 'I8';
        }),
      ),
    ),
    /unsupported dtype "I8"/,
  );
  expectError(
    gen(
      await broken(
        'shape',
        retamper((h) => {
          h['model.norm.weight'].shape = [16];
        }),
      ),
    ),
    /does not match shape|config\.json implies/,
  );
  expectError(
    gen(
      await broken(
        'missing',
        retamper((h) => {
          delete h['model.norm.weight'];
        }),
      ),
    ),
    /missing tensor model\.norm\.weight/,
  );
});

test('shapes that disagree with config.json', async () => {
  const dir = await broken('cfgshape', () => undefined);
  const cfgFile = path.join(dir, 'config.json');
  const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8'));
  fs.writeFileSync(cfgFile, JSON.stringify({ ...cfg, intermediate_size: 48 }));
  expectError(gen(dir), /tensor model\.layers\.0\.mlp\.gate_proj\.weight has shape \[32, 32\], config\.json implies \[48, 32\]/);
});

test('bad flag values', () => {
  expectError(['generate', '--model', MODEL_DIR, '--prompt', 'x', '--max-tokens', '0'], /--max-tokens.*\[1,/);
  expectError(['generate', '--model', MODEL_DIR, '--prompt', 'x', '--max-tokens', 'ten'], /expected an integer/);
  expectError(['generate', '--model', MODEL_DIR, '--prompt', 'x', '--temperature', '-1'], /--temperature/);
  expectError(['generate', '--model', MODEL_DIR, '--prompt', 'x', '--top-p', '0'], /--top-p/);
  expectError(['generate', '--model', MODEL_DIR, '--prompt', 'x', '--kv', 'kivi3'], /bad --kv spec "kivi3".*valid forms/);
  expectError(['generate', '--model', MODEL_DIR, '--prompt', 'x', '--kv', 'kivi:k=2,v=2,g=32,r=48'], /R=48 must be a multiple of the group size G=32/);
  expectError(['generate', '--prompt', 'x'], /required option '--model <dir>'/);
  expectError(['generate', '--model', MODEL_DIR], /exactly one of --prompt TEXT or --prompt-ids FILE/);
  expectError(['generate', '--model', MODEL_DIR, '--prompt', 'x', '--frobnicate'], /unknown option '--frobnicate'/);
  expectError(['frobnicate'], /unknown command 'frobnicate'/);
});

test('prompt files and prompts too long for the context', () => {
  const ids = path.join(tmp, 'ids.json');
  fs.writeFileSync(ids, JSON.stringify(Array.from({ length: 2049 }, (_, i) => 100 + (i % 50))));
  expectError(['generate', '--model', MODEL_DIR, '--prompt-ids', ids], /prompt of 2049 tokens is longer than the model's context of 2048/);
  fs.writeFileSync(ids, JSON.stringify(Array.from({ length: 2000 }, (_, i) => 100 + (i % 50))));
  expectError(
    ['generate', '--model', MODEL_DIR, '--prompt-ids', ids, '--max-tokens', '100'],
    /2000 tokens \+ 100 new tokens exceeds the model's context of 2048/,
  );
  fs.writeFileSync(ids, '[1, 2, "three"]');
  expectError(['generate', '--model', MODEL_DIR, '--prompt-ids', ids], /expected a JSON array of token ids/);
  fs.writeFileSync(ids, '[1, 2');
  expectError(['generate', '--model', MODEL_DIR, '--prompt-ids', ids], /malformed JSON/);
  expectError(['generate', '--model', MODEL_DIR, '--prompt-ids', path.join(tmp, 'none.json')], /does not exist/);
  fs.writeFileSync(ids, '[1, 99999]');
  expectError(['generate', '--model', MODEL_DIR, '--prompt-ids', ids], /token id 99999 outside the vocabulary/);
});

test('eval nll input errors', () => {
  const w = path.join(tmp, 'windows.json');
  fs.writeFileSync(w, JSON.stringify([[1, 2, 3]]));
  expectError(['eval', 'nll', '--model', MODEL_DIR, '--windows', w, '--prefill', '512'], /prefill 512 must be ≥ 1 and leave at least 2 tokens/);
  fs.writeFileSync(w, JSON.stringify([Array.from({ length: 3000 }, () => 5)]));
  expectError(['eval', 'nll', '--model', MODEL_DIR, '--windows', w, '--prefill', '512'], /window 0 has 3000 tokens, longer than the model's context of 2048/);
  fs.writeFileSync(w, JSON.stringify({ not: 'windows' }));
  expectError(['eval', 'nll', '--model', MODEL_DIR, '--windows', w, '--prefill', '2'], /expected a JSON array of token-id arrays/);
  expectError(['eval', 'nll', '--model', MODEL_DIR, '--windows', w, '--prefill', 'x'], /expected an integer/);
});

test('safetensors writer in the fixture produces what the reader reads (F32, F16, BF16 exactly)', async () => {
  const { readHeader, readTensorChunks, toFloat32 } = await import('../src/model/safetensors.js');
  const readTensorInto = (f: Parameters<typeof readTensorChunks>[0], info: Parameters<typeof readTensorChunks>[1], out: Float32Array) =>
    readTensorChunks(f, info, (bytes, first) => toFloat32(bytes, info.dtype, out, first));
  const { fsSource } = await import('../src/io/source-fs.js');
  const vals = [0, 1, -2.5, 65504, 2 ** -24, -0.1];
  const f32 = new Float32Array(vals);
  const f16 = new Uint16Array([0x0000, 0x3c00, 0xc100, 0x7bff, 0x0001, 0xae66]);
  const bf16 = new Uint16Array(Array.from(new Uint32Array(f32.buffer), (u) => u >>> 16));
  const file = path.join(tmp, 't.safetensors');
  fs.writeFileSync(
    file,
    safetensorsBytes([
      { name: 'a', dtype: 'F32', shape: [2, 3], data: new Uint8Array(f32.buffer) },
      { name: 'b', dtype: 'F16', shape: [6], data: new Uint8Array(f16.buffer) },
      { name: 'c', dtype: 'BF16', shape: [3, 2], data: new Uint8Array(bf16.buffer) },
    ]),
  );
  const f = (await fsSource(tmp).open('t.safetensors'))!;
  const h = await readHeader(f, 't.safetensors');
  const out = new Float32Array(6);
  await readTensorInto(f, h.get('a')!, out);
  assert.deepEqual(Array.from(out), Array.from(f32));
  await readTensorInto(f, h.get('b')!, out);
  assert.deepEqual(Array.from(out), [0, 1, -2.5, 65504, 2 ** -24, -0.0999755859375]);
  await readTensorInto(f, h.get('c')!, out);
  const bfExpect = Array.from(new Float32Array(new Uint32Array(Array.from(bf16, (x) => x << 16)).buffer));
  assert.deepEqual(Array.from(out), bfExpect);
  await f.close();
});
