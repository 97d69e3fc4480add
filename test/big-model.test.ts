/**
 * Real-size models on the default back end. A TinyLlama-shaped bf16 checkpoint of 1.12B parameters (a
 * sparse 2.2 GB file generated here: random embedding and final norm, zero layers) loads through the
 * loader with its matrices in 16 bits and generates tokens. With zero layers every layer adds nothing to
 * the residual, so the logits are the tied head times the normed embedding of the last token: computed
 * here independently from the file's values. Models the back end cannot hold fail with one line before
 * any weight is read.
 */

import assert from 'node:assert/strict';
import * as path from 'node:path';
import { test } from 'node:test';
import { KiviModel } from '../src/api.js';
import type { ByteSource } from '../src/io/source.js';
import { fsSource } from '../src/io/source-fs.js';
import { createBackend } from '../src/kernels/index.js';
import type { WasmBackend } from '../src/kernels/wasm/kernels.js';
import { modelParameters } from '../src/model/footprint.js';
import { loadModel } from '../src/model/load.js';
import { KiviError } from '../src/util/errors.js';
import { randomBf16, TINYLLAMA_SHAPED, writeBigModel } from './big-model.js';
import { expectCliError, tmpDir } from './helpers.js';

/** The filesystem source, counting the bytes read from model.safetensors. */
function countingSource(dir: string): { source: ByteSource; read: () => number } {
  const fsrc = fsSource(dir);
  let n = 0;
  const source: ByteSource = {
    where: fsrc.where,
    locate: (name) => fsrc.locate(name),
    readText: (name) => fsrc.readText(name),
    open: async (name) => {
      const f = await fsrc.open(name);
      if (!f) return f;
      return {
        where: f.where,
        size: f.size,
        close: () => f.close(),
        read: (dst, pos) => {
          n += dst.length;
          return f.read(dst, pos);
        },
      };
    },
  };
  return { source, read: () => n };
}

/** The float32 values of bf16 patterns. */
function widen(bits: Uint16Array): Float32Array {
  const u = new Uint32Array(bits.length);
  for (let i = 0; i < bits.length; i++) u[i] = bits[i]! << 16;
  return new Float32Array(u.buffer);
}

test('a 1.12B-parameter bf16 checkpoint loads in 16 bits on the default back end and generates the tokens its weights imply', async () => {
  const s = TINYLLAMA_SHAPED,
    D = s.hidden,
    V = s.vocab;
  const embed = randomBf16(V * D, 0.5, 11),
    norm = randomBf16(D, 2, 12);
  const dir = path.join(tmpDir('kivi-big-'), 'tinyllama-shaped');
  const written = writeBigModel(dir, s, { 'model.embed_tokens.weight': embed, 'model.norm.weight': norm });
  assert.ok(written.parameters >= 1.1e9, `${written.parameters} parameters`);

  const m = await KiviModel.load(dir, { kv: 'fp16' });
  try {
    const p = modelParameters(m.config);
    assert.equal(p.matrix + p.vector, written.parameters);
    const w = m.transformer.weights;
    for (const a of [w.embed, w.layers[0]!.wqkv, w.layers[23]!.wdown]) assert.notEqual(a.dtype, 'f32');
    if (m.backend.name === 'wasm') {
      // Weights past 2 GiB of wasm memory: the caches' pages live above them.
      assert.ok((m.backend as WasmBackend).memoryStats().top > 2 ** 31, 'weights and caches span 2 GiB');
    }
    const prompt = [1, 5000, 17000];
    const ids = (await m.complete(prompt, { maxTokens: 4, ignoreEos: true })).ids;
    assert.equal(ids.length, 4);

    // Each token's logits: embed · (norm ∘ rmsnorm(embed[previous token])), in float64.
    const E = widen(embed),
      g = widen(norm);
    const context = [...prompt, ...ids];
    for (let j = 0; j < ids.length; j++) {
      const prev = context[prompt.length - 1 + j]!;
      let ss = 0;
      for (let i = 0; i < D; i++) ss += E[prev * D + i]! ** 2;
      const r = 1 / Math.sqrt(ss / D + 1e-5);
      const h = Float64Array.from({ length: D }, (_, i) => E[prev * D + i]! * r * g[i]!);
      let best = -Infinity,
        scale = 0;
      const logit = new Float64Array(V);
      for (let v = 0; v < V; v++) {
        let dot = 0;
        for (let i = 0, o = v * D; i < D; i++) dot += E[o + i]! * h[i]!;
        logit[v] = dot;
        best = Math.max(best, dot);
        scale = Math.max(scale, Math.abs(dot));
      }
      // The generated token is the most likely one (within float32 rounding, for a near tie).
      assert.ok(logit[ids[j]!]! >= best - 1e-4 * scale, `token ${j} after ${prev}: ${ids[j]} has logit ${logit[ids[j]!]}, the best is ${best}`);
    }
  } finally {
    m.dispose();
  }
});

test('a model the wasm back end cannot hold fails before any weight is read, in one line naming what can hold it', async () => {
  const root = tmpDir('kivi-big-');
  // The 1.12B model in float32 (4.5 GB): the checkpoint's own bf16 fits.
  const fits = path.join(root, 'fits');
  writeBigModel(fits, TINYLLAMA_SHAPED);
  // 2.7B parameters: 5.4 GB even in bf16.
  const tooBig = path.join(root, 'too-big');
  writeBigModel(tooBig, { ...TINYLLAMA_SHAPED, hidden: 2560, layers: 32, inter: 6912, kvHeads: 32, tie: false });
  const b = await createBackend({ backend: 'wasm', threads: 1 });
  try {
    const a = countingSource(fits);
    await assert.rejects(
      loadModel(a.source, b, { weights: 'f32' }),
      (e: unknown) =>
        e instanceof KiviError &&
        !e.message.includes('\n') &&
        /^the model's weights need 4\.\d\d GiB \(1\.12B parameters, matrices as float32\), more than the wasm back end can hold .*; with the checkpoint's bf16 matrices \(--weights native\) they need 2\.\d\d GiB and fit$/.test(
          e.message,
        ),
    );
    assert.ok(a.read() < 1 << 20, `${a.read()} bytes read before the error`);
    const c = countingSource(tooBig);
    await assert.rejects(
      loadModel(c.source, b),
      (e: unknown) =>
        e instanceof KiviError &&
        !e.message.includes('\n') &&
        /^the model's weights need 5\.\d\d GiB \(2\.\d\dB parameters, matrices as bf16\), more than the wasm back end can hold .*the TypeScript back end \(--backend ts\)/.test(
          e.message,
        ),
    );
    assert.ok(c.read() < 1 << 20, `${c.read()} bytes read before the error`);
  } finally {
    b.dispose();
  }
  expectCliError(['generate', '--model', tooBig, '--prompt', 'x', '--backend', 'wasm'], /more than the wasm back end can hold .*--backend ts/);
  expectCliError(
    ['generate', '--model', fits, '--prompt', 'x', '--backend', 'wasm', '--weights', 'f32'],
    /\(--weights native\) they need 2\.\d\d GiB and fit$/,
  );
});
