/**
 * `analyze kv`: statistics on planted data are exact; the captured K/V/queries are the model's real
 * post-RoPE tensors; and on the bundled model the keys show outlier channels the values do not.
 */

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { createCache, parseKvSpec } from '../src/cache/spec.js';
import { TsBackend } from '../src/kernels/ts/backend.js';
import { rmsnorm } from '../src/kernels/ts/ops.js';
import type { Tensor } from '../src/kernels/types.js';
import { untiled } from '../src/kernels/wasm/tiles.js';
import { RopeTable, ropeInvFreq } from '../src/model/rope.js';
import { captureKv } from '../src/studies/analysis/capture.js';
import type { KvAnalysis } from '../src/studies/analysis/kv.js';
import { fakeQuantize, magnitudeStats, quantErrors, relativeError } from '../src/studies/analysis/kv-stats.js';
import { median } from '../src/studies/numbers.js';
import { bundledModel, MODEL_DIR, tmpDir } from './helpers.js';
import { assertCharts, kiviOk, WIKITEXT } from './studies-helpers.js';

test('magnitude statistics of a planted outlier channel', () => {
  const T = 4;
  const d = 8;
  const x = new Float32Array(T * d).fill(1);
  for (let t = 0; t < T; t++) x[t * d + 5] = -10; // channel 5: outlier in every token
  x[2 * d + 1] = 4; // channel 1: 4× the median, token 2's only spike
  const s = magnitudeStats(x, T, d, 3);
  assert.deepEqual(s.channelMagnitude, [1, 4, 1, 1, 1, 10, 1, 1]);
  assert.deepEqual(s.tokenMagnitude, [10, 10, 10, 10]);
  assert.equal(s.channelSpread, 10);
  assert.equal(s.tokenSpread, 1);
  assert.deepEqual(s.outlierChannels, [5, 1]);
  assert.deepEqual(magnitudeStats(x, T, d, 5).outlierChannels, [5]);
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 2, 3]), 2.5);
});

test('quantization error: per-channel groups isolate an outlier channel, per-token groups spread it', () => {
  const T = 64;
  const d = 32;
  const x = new Float32Array(T * d);
  for (let i = 0; i < x.length; i++) x[i] = Math.sin(i * 0.7) * 0.5;
  for (let t = 0; t < T; t++) x[t * d + 3] = 20 + Math.cos(t);
  const perToken = relativeError(fakeQuantize(x, T, d, 32, 2, 'token'), x);
  const perChannel = relativeError(fakeQuantize(x, T, d, 32, 2, 'channel'), x);
  assert.ok(perChannel < perToken / 4, `per-channel ${perChannel} vs per-token ${perToken}`);
  assert.equal(relativeError(x, x), 0);
  assert.ok(Math.abs(relativeError(Float32Array.from([3, 4]), Float32Array.from([0, 4])) - 0.75) < 1e-12);
});

/** A weight tensor's values as float32, through the reference back end (16-bit types widen exactly). */
async function weightValues(t: Tensor, data: Float32Array | Uint16Array): Promise<Float32Array> {
  if (t.dtype === 'f32') return data as Float32Array;
  const ref = new TsBackend();
  const w = ref.tensor(t.dtype, t.length);
  ref.write(w, data);
  const out = ref.tensor('f32', t.length);
  ref.embed(out, w, Int32Array.of(0), t.length);
  return ref.read(out, 0, t.length);
}

test("captured K/V/queries: a prefill's equal a token-by-token decode's, and layer-0 q and k are RoPE(W · rmsnorm(embedding))", async () => {
  const m = await bundledModel();
  const ids = m.encode('The pass key is hidden somewhere in this short text, find it.');
  const T = ids.length;
  const cap = await captureKv(m.transformer, ids);
  const { numHeads: H, numKvHeads: KV, headDim: d } = m.dims;
  const qkvDim = (H + 2 * KV) * d;
  // The same tokens decoded one by one through an fp32 cache (exact attention): the same tensors.
  const cache = createCache(parseKvSpec('fp32'), m.transformer.pool);
  const first: Float32Array[] = [];
  const rest: Float32Array[] = [];
  await m.forward([{ tokens: ids.slice(0, 1), cache, logits: 'none' }], { capture: first });
  await m.forward([{ tokens: ids.slice(1), cache, logits: 'none', mode: 'decode' }], { capture: rest });
  cache.free();
  for (let l = 0; l < cap.layers.length; l++) {
    for (let t = 0; t < T; t++) {
      const row = t === 0 ? first[l]!.subarray(0, qkvDim) : rest[l]!.subarray((t - 1) * qkvDim, t * qkvDim);
      for (let h = 0; h < KV; h++) {
        for (let c = 0; c < d; c += 7) {
          assert.ok(Math.abs(cap.layers[l]!.k[(h * T + t) * d + c]! - row[(H + h) * d + c]!) < 1e-4);
          assert.ok(Math.abs(cap.layers[l]!.v[(h * T + t) * d + c]! - row[(H + KV + h) * d + c]!) < 1e-4);
        }
      }
      if (t > 0) for (let j = 0; j < H * d; j += 5) assert.ok(Math.abs(cap.layers[l]!.q[(t - 1) * H * d + j]! - row[j]!) < 1e-4);
    }
  }
  // Recompute layer 0's q and k from the weights, independently of the forward pass.
  const cfg = m.config;
  const w = m.transformer.weights;
  const D = cfg.hiddenSize;
  // The weights' values in row-major order, whatever layout the back end keeps matrices in (wasm: tiles).
  const data = (t: Tensor) => {
    const w = t as unknown as { data: Float32Array | Uint16Array; cols?: number; tiled?: number };
    return w.tiled ? untiled(w.data as Uint16Array, w.cols!, w.tiled) : w.data;
  };
  const embed = await weightValues(w.embed, data(w.embed));
  const wqkv = await weightValues(w.layers[0]!.wqkv, data(w.layers[0]!.wqkv));
  const norm = data(w.layers[0]!.attnNorm) as Float32Array;
  const bias = w.layers[0]!.bqkv ? (data(w.layers[0]!.bqkv) as Float32Array) : undefined;
  const rope = new RopeTable(ropeInvFreq(cfg));
  const xn = new Float32Array(D);
  for (const t of [1, 5, T - 1]) {
    rmsnorm(xn, embed.subarray(ids[t]! * D, (ids[t]! + 1) * D), norm, 'f32', 1, D, cfg.rmsNormEps);
    const qk = new Float32Array((H + KV) * d);
    for (let o = 0; o < qk.length; o++) {
      let s = 0;
      for (let i = 0; i < D; i++) s += wqkv[o * D + i]! * xn[i]!;
      qk[o] = s + (bias?.[o] ?? 0);
    }
    rope.apply(qk, 0, H + KV, t);
    for (let j = 0; j < H * d; j++) assert.ok(Math.abs(cap.layers[0]!.q[(t - 1) * H * d + j]! - qk[j]!) < 1e-3, `q[${t}][${j}]`);
    for (let h = 0; h < KV; h++) {
      for (let c = 0; c < d; c++) assert.ok(Math.abs(cap.layers[0]!.k[(h * T + t) * d + c]! - qk[H * d + h * d + c]!) < 1e-3);
    }
  }
  // Unquantized, the attention-output error is zero; quantized at 2 bits it is not.
  const errs = quantErrors(cap.layers[3]!, m.dims, T, 1, 32, [
    { bits: 8, axis: 'token' },
    { bits: 2, axis: 'channel' },
  ]);
  assert.ok(errs[0]!.error.attnK < 0.02 && errs[1]!.error.attnK > 0.05, JSON.stringify(errs));
});

test("analyze kv on WikiText: key outlier channels, value none; per-channel grouping is the keys' better axis; valid plots", () => {
  const out = tmpDir();
  const stdout = kiviOk(['analyze', 'kv', '--model', MODEL_DIR, '--text', WIKITEXT, '--tokens', '256', '--out', out]);
  const a = JSON.parse(fs.readFileSync(path.join(out, 'kv-analysis.json'), 'utf8')) as KvAnalysis & { model: string };
  assert.equal(a.tokens, 256);
  assert.equal(a.heads.length, 16);
  const s = a.summary;
  // Measured on the first 256 tokens: key spread 3.40× vs value 1.61×; 15 of 16 heads (all but layer 0, head 0).
  assert.ok(s.keyChannelSpread > 2 * s.valueChannelSpread, `${s.keyChannelSpread} vs ${s.valueChannelSpread}`);
  assert.equal(s.headsKeySpreadAbove, 15);
  assert.ok(s.keyOutlierChannels >= 10, `${s.keyOutlierChannels} key outlier channels`);
  assert.equal(s.valueOutlierChannels, 0);
  // Per channel beats per token for keys in every head, at 2 and 4 bits, in K and in the attention output.
  for (const h of a.heads) {
    for (const bits of [2, 4]) {
      const e = (axis: string) => h.errors.find((x) => x.bits === bits && x.axis === axis)!.error;
      assert.ok(e('channel').k < e('token').k, `layer ${h.layer} head ${h.kvHead} ${bits}-bit K`);
      assert.ok(e('channel').attnK < e('token').attnK, `layer ${h.layer} head ${h.kvHead} ${bits}-bit attention`);
    }
  }
  const e2 = s.errors.find((x) => x.bits === 2 && x.axis === 'channel')!;
  assert.ok(e2.k > 0.2 && e2.k < 0.3, `2-bit per-channel K error ${e2.k} (measured 0.248)`);
  assert.match(stdout, /keys favour per-channel grouping/);
  const md = fs.readFileSync(path.join(out, 'kv-analysis.md'), 'utf8');
  assert.match(md, /\| 2 \| 1 \| 5\.\d\d \| 109 \| 1\.\d\d \| — \|/, 'layer 2, head 1: channel 109 is the outlier');
  const files = fs.readdirSync(out).map((f) => path.join(out, f));
  assertCharts(files, 8 + 3);
});
