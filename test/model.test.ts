/**
 * Architecture coverage on small random models: MHA/GQA/MQA, Qwen2 biases, untied heads, F16/BF16
 * weights, RoPE variants. The invariant: prefilling T tokens and decoding the last one through the
 * cache give the same logits, for every layout.
 */

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { KiviModel } from '../src/api.js';
import type { WasmTensor } from '../src/kernels/wasm/kernels.js';
import { parseConfig } from '../src/model/config.js';
import { checkFootprint, modelParameters, weightBytes } from '../src/model/footprint.js';
import { RopeTable, ropeInvFreq } from '../src/model/rope.js';
import { weightsBytes } from '../src/studies/bench/probe.js';
import { KiviError } from '../src/util/errors.js';
import { type TinyConfig, writeTinyModel } from './fixtures.js';
import { MODEL_DIR, tmpDir } from './helpers.js';

const tmp = tmpDir();
let n = 0;

async function tiny(c: TinyConfig): Promise<KiviModel> {
  const dir = path.join(tmp, `m${n++}`);
  await writeTinyModel(dir, c);
  // head_dim 16: fp32 by default (kivi2's G = 32 does not divide it).
  return KiviModel.load(dir, { kv: 'fp32' });
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** Logits of the last token: all-at-once prefill vs prefill T−1 then one decode step. */
async function prefillVsDecode(m: KiviModel, tokens: number[], kv = 'fp32'): Promise<number> {
  const a = m.newCache(kv);
  const [full] = await m.forward([{ tokens, cache: a, logits: 'last' }]);
  a.free();
  const b = m.newCache(kv);
  await m.forward([{ tokens: tokens.slice(0, -1), cache: b, logits: 'none' }]);
  const [step] = await m.forward([{ tokens: tokens.slice(-1), cache: b, logits: 'last' }]);
  b.free();
  return maxAbsDiff(full as Float32Array, step as Float32Array);
}

const TOKENS = Array.from({ length: 40 }, (_, i) => 100 + ((i * 37) % 900));

const variants: [string, TinyConfig][] = [
  ['Llama MHA', { heads: 4, kvHeads: 4 }],
  ['Llama GQA', { heads: 4, kvHeads: 2 }],
  ['Llama MQA', { heads: 4, kvHeads: 1 }],
  ['Qwen2 with q/k/v biases, untied head', { architecture: 'Qwen2ForCausalLM', bias: true, tie: false }],
  ['Mistral, BF16 weights', { architecture: 'MistralForCausalLM', dtype: 'BF16' }],
  ['F16 weights, head_dim derived', { dtype: 'F16', headDim: 16, extra: { head_dim: undefined } }],
  [
    'llama3 rope scaling',
    { extra: { rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 } } },
  ],
  ['linear rope scaling', { extra: { rope_scaling: { type: 'linear', factor: 2 } } }],
];

for (const [name, c] of variants) {
  test(`${name}: prefill and decode agree`, async () => {
    const m = await tiny(c);
    // fp32 agrees to float rounding; fp16 decode reads float16-rounded K/V, the prefill exact ones.
    for (const [kv, tol] of [
      ['fp32', 2e-4],
      ['fp16', 5e-3],
    ] as const) {
      const diff = await prefillVsDecode(m, TOKENS, kv);
      assert.ok(diff < tol, `${kv}: max logit difference ${diff}`);
    }
  });
}

test('batched forward of different-length sequences equals running each alone', async () => {
  const m = await tiny({ heads: 4, kvHeads: 2 });
  const seqs = [TOKENS.slice(0, 7), TOKENS.slice(3, 30), TOKENS.slice(10, 11)];
  const alone: (Float32Array | number | null)[] = [];
  for (const s of seqs) {
    const c = m.newCache();
    alone.push((await m.forward([{ tokens: s, cache: c, logits: 'all' }]))[0]!);
    c.free();
  }
  const caches = seqs.map(() => m.newCache());
  const together = await m.forward(seqs.map((s, i) => ({ tokens: s, cache: caches[i]!, logits: 'all' as const })));
  seqs.forEach((_, i) => {
    assert.deepEqual(together[i], alone[i]);
  });
});

test('config: rope θ from rope_theta or rope_parameters; head_dim given or derived; Qwen2 implies biases', () => {
  const base = {
    architectures: ['LlamaForCausalLM'],
    hidden_size: 64,
    intermediate_size: 96,
    num_hidden_layers: 1,
    num_attention_heads: 4,
    vocab_size: 10,
  };
  assert.equal(parseConfig({ ...base, rope_theta: 500000 }).ropeTheta, 500000);
  assert.equal(parseConfig({ ...base, rope_parameters: { rope_theta: 1e6, rope_type: 'default' } }).ropeTheta, 1e6);
  assert.equal(parseConfig(base).headDim, 16);
  assert.equal(parseConfig({ ...base, head_dim: 32 }).headDim, 32);
  assert.equal(parseConfig(base).numKvHeads, 4);
  assert.equal(parseConfig({ ...base, architectures: ['Qwen2ForCausalLM'] }).attentionBias, true);
  assert.equal(parseConfig(base).attentionBias, false);
  assert.equal(parseConfig({ ...base, architectures: ['MistralForCausalLM'], sliding_window: 256, max_position_embeddings: 4096 }).maxPositions, 256);
  const l3 = parseConfig({
    ...base,
    rope_parameters: { rope_type: 'llama3', rope_theta: 500000, factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
  });
  assert.deepEqual(l3.ropeScaling, { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 });
});

test('RoPE frequencies: θ^(−2i/d), llama3 keeps high frequencies and divides low ones by the factor', () => {
  const none = ropeInvFreq({ headDim: 128, ropeTheta: 500000, ropeScaling: { type: 'none' } });
  assert.equal(none[0], 1);
  assert.ok(Math.abs(none[32]! - 500000 ** -0.5) / 500000 ** -0.5 < 1e-6);
  const l3 = ropeInvFreq({
    headDim: 128,
    ropeTheta: 500000,
    ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 },
  });
  // wavelength 2π/f < 8192/4 → unchanged; > 8192 → divided by 8; in between → a blend.
  for (let i = 0; i < 64; i++) {
    const wl = (2 * Math.PI) / none[i]!;
    if (wl < 2048) assert.equal(l3[i], none[i]);
    else if (wl > 8192) assert.equal(l3[i], Math.fround(none[i]! / 8));
    else assert.ok(l3[i]! <= none[i]! && l3[i]! >= none[i]! / 8);
  }
  const lin = ropeInvFreq({ headDim: 128, ropeTheta: 10000, ropeScaling: { type: 'linear', factor: 4 } });
  assert.equal(lin[5], Math.fround(ropeInvFreq({ headDim: 128, ropeTheta: 10000, ropeScaling: { type: 'none' } })[5]! / 4));
});

test("RoPE tables grow by doubling but never past the model's context, and hold cos/sin of each position", () => {
  const inv = ropeInvFreq({ headDim: 8, ropeTheta: 10000, ropeScaling: { type: 'none' } });
  const rope = new RopeTable(inv, 300);
  const held = (t: Float32Array) => t.buffer.byteLength / 4 / inv.length;
  assert.equal(held(rope.tables(200).cos), 256);
  // Doubling from 256 would hold 512 positions; the context is 300.
  const { cos, sin } = rope.tables(257);
  assert.equal(held(cos), 300);
  assert.equal(held(rope.tables(300).sin), 300);
  for (const p of [0, 199, 256, 299]) {
    const t = rope.tables(300);
    for (let i = 0; i < inv.length; i++) {
      const a = Math.fround(p * inv[i]!);
      assert.equal(t.cos[p * inv.length + i], Math.fround(Math.cos(a)));
      assert.equal(t.sin[p * inv.length + i], Math.fround(Math.sin(a)));
    }
  }
  assert.equal(rope.reserve(10), 300, 'reserve says how many positions the tables hold');
  assert.equal(cos.length, 257 * inv.length);
  assert.equal(sin.length, 257 * inv.length);
});

test('16-bit weights (bf16, f16) stay 16-bit and give bit for bit the logits of weights: f32, on the wasm and ts back ends', async () => {
  for (const dtype of ['BF16', 'F16', 'F32'] as const) {
    const dir = path.join(tmp, `m${n++}`);
    // 40 prefill rows (the batch path: float32 panels on wasm), then single-row decode steps (GEMV).
    await writeTinyModel(dir, { dtype, hidden: 96, heads: 4, kvHeads: 2, headDim: 24, inter: 136, tie: false });
    for (const backend of ['wasm', 'ts'] as const) {
      const logits: Float32Array[][] = [];
      for (const weights of ['native', 'f32'] as const) {
        const m = await KiviModel.load(dir, { backend, threads: 2, weights, kv: 'fp32' });
        const w = m.transformer.weights;
        const want = weights === 'f32' || dtype === 'F32' ? 'f32' : dtype.toLowerCase();
        for (const a of [w.embed, w.lmHead, w.layers[0]!.wqkv, w.layers[1]!.wgu, w.layers[1]!.wdown, w.layers[0]!.wo]) assert.equal(a.dtype, want);
        const c = m.newCache();
        const [prefill] = await m.forward([{ tokens: TOKENS, cache: c, logits: 'all' }]);
        const [step] = await m.forward([{ tokens: [7], cache: c, logits: 'last' }]);
        c.free();
        m.dispose();
        logits.push([prefill as Float32Array, step as Float32Array]);
      }
      for (let i = 0; i < 2; i++) assert.deepEqual(logits[0]![i], logits[1]![i], `${dtype} on ${backend}: ${i ? 'decode' : 'prefill'} logits differ`);
    }
  }
});

test('f16 weights holding ±Inf or NaN are refused in 16 bits with one line; weights: f32 loads them', async () => {
  const dir = path.join(tmp, `m${n++}`);
  await writeTinyModel(dir, { dtype: 'F16' });
  const file = path.join(dir, 'model.safetensors');
  const buf = fs.readFileSync(file);
  const headerLen = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + headerLen).toString()) as Record<string, { data_offsets: [number, number] }>;
  buf.writeUInt16LE(0x7c00, 8 + headerLen + header['model.layers.1.mlp.down_proj.weight']!.data_offsets[0] + 10);
  fs.writeFileSync(file, buf);
  await assert.rejects(
    KiviModel.load(dir, { backend: 'wasm', threads: 1, kv: 'fp32' }),
    (e: unknown) =>
      e instanceof KiviError &&
      /model\.safetensors: f16 tensor model\.layers\.1\.mlp\.down_proj\.weight holds ±Inf or NaN values, which 16-bit weights do not support \(--weights f32 loads them as float32\)$/.test(
        e.message,
      ),
  );
  const m = await KiviModel.load(dir, { backend: 'wasm', threads: 1, weights: 'f32', kv: 'fp32' });
  assert.equal(((m.transformer.weights.layers[1]!.wdown as WasmTensor).data as Float32Array)[5], Infinity);
  m.dispose();
});

test('footprint: the weight bytes of the bundled model as the loader allocates them, 16-bit and float32', async () => {
  for (const [weights, dtype] of [
    ['native', 'bf16'],
    ['f32', 'f32'],
  ] as const) {
    const m = await KiviModel.load(MODEL_DIR, { backend: 'wasm', threads: 1, weights });
    const p = modelParameters(m.config);
    // 8192×512 tied embedding + 8 layers of (q,k,v,o: 512×(512+2·256+512)) + MLP (3×512×1408); norms 17×512.
    assert.equal(p.matrix, 8192 * 512 + 8 * (512 * 1536 + 3 * 512 * 1408));
    assert.equal(p.vector, 17 * 512);
    assert.equal(m.transformer.weights.layers[0]!.wqkv.dtype, dtype);
    assert.equal(weightBytes(m.config, dtype), weightsBytes(m.transformer.weights));
    m.dispose();
  }
});

test('footprint: wasm admits ~2B parameters in 16 bits and refuses more in one line naming a back end that can hold them', () => {
  // Llama-shaped: hidden 2048, 22 layers, GQA 32/4 heads of 64; intermediate and vocab set the size.
  const cfg = (layers: number) =>
    parseConfig({
      architectures: ['LlamaForCausalLM'],
      hidden_size: 2048,
      intermediate_size: 5632,
      num_attention_heads: 32,
      num_key_value_heads: 4,
      num_hidden_layers: layers,
      vocab_size: 32000,
      max_position_embeddings: 2048,
      rms_norm_eps: 1e-5,
      tie_word_embeddings: false,
    });
  const params = (c: ReturnType<typeof parseConfig>) => {
    const p = modelParameters(c);
    return p.matrix + p.vector;
  };
  const big = cfg(42); // ≈ 2.0B parameters
  assert.ok(params(big) > 1.95e9 && params(big) < 2.05e9, String(params(big)));
  checkFootprint(big, 'wasm', { matrices: 'bf16', hostBytes: 64 * 2 ** 30 });
  // The same model in float32 does not fit; the line says the checkpoint's own type does.
  assert.throws(
    () => checkFootprint(big, 'wasm', { matrices: 'f32', native: 'bf16', hostBytes: 64 * 2 ** 30 }),
    (e: unknown) =>
      e instanceof KiviError &&
      !e.message.includes('\n') &&
      /more than the wasm back end can hold.*with the checkpoint's bf16 matrices \(--weights native\) they need 3\.\d\d GiB and fit$/.test(e.message),
  );
  const bigger = cfg(46); // ≈ 2.2B parameters
  assert.ok(params(bigger) > 2.15e9, String(params(bigger)));
  assert.throws(
    () => checkFootprint(bigger, 'wasm', { matrices: 'bf16', hostBytes: 64 * 2 ** 30 }),
    (e: unknown) =>
      e instanceof KiviError &&
      !e.message.includes('\n') &&
      /^the model's weights need 4\.\d\d GiB \(2\.\d\dB parameters, matrices as bf16\), more than the wasm back end can hold .*the TypeScript back end \(--backend ts\) keeps them in ordinary memory/.test(
        e.message,
      ),
  );
  checkFootprint(bigger, 'ts', { matrices: 'bf16', hostBytes: 64 * 2 ** 30 });
});
