/**
 * Architecture coverage on small random models: MHA/GQA/MQA, Qwen2 biases, untied heads, F16/BF16
 * weights, RoPE variants. The invariant: prefilling T tokens and decoding the last one through the
 * cache give the same logits, for every layout.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { KiviModel } from '../src/api.js';
import { parseConfig } from '../src/model/config.js';
import { ropeInvFreq } from '../src/model/rope.js';
import { tmpDir } from './helpers.js';
import { writeTinyModel, type TinyConfig } from './fixtures.js';

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
  ['llama3 rope scaling', { extra: { rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 } } }],
  ['linear rope scaling', { extra: { rope_scaling: { type: 'linear', factor: 2 } } }],
];

for (const [name, c] of variants) {
  test(`${name}: prefill and decode agree`, async () => {
    const m = await tiny(c);
    // fp32 agrees to float rounding; fp16 decode reads float16-rounded K/V, the prefill exact ones.
    for (const [kv, tol] of [['fp32', 2e-4], ['fp16', 5e-3]] as const) {
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
  seqs.forEach((_, i) => assert.deepEqual(together[i], alone[i]));
});

test('config: rope θ from rope_theta or rope_parameters; head_dim given or derived; Qwen2 implies biases', () => {
  const base = {
    architectures: ['LlamaForCausalLM'], hidden_size: 64, intermediate_size: 96, num_hidden_layers: 1,
    num_attention_heads: 4, vocab_size: 10,
  };
  assert.equal(parseConfig({ ...base, rope_theta: 500000 }).ropeTheta, 500000);
  assert.equal(parseConfig({ ...base, rope_parameters: { rope_theta: 1e6, rope_type: 'default' } }).ropeTheta, 1e6);
  assert.equal(parseConfig(base).headDim, 16);
  assert.equal(parseConfig({ ...base, head_dim: 32 }).headDim, 32);
  assert.equal(parseConfig(base).numKvHeads, 4);
  assert.equal(parseConfig({ ...base, architectures: ['Qwen2ForCausalLM'] }).attentionBias, true);
  assert.equal(parseConfig(base).attentionBias, false);
  assert.equal(parseConfig({ ...base, architectures: ['MistralForCausalLM'], sliding_window: 256, max_position_embeddings: 4096 }).maxPositions, 256);
  const l3 = parseConfig({ ...base, rope_parameters: { rope_type: 'llama3', rope_theta: 500000, factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 } });
  assert.deepEqual(l3.ropeScaling, { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 });
});

test('RoPE frequencies: θ^(−2i/d), llama3 keeps high frequencies and divides low ones by the factor', () => {
  const none = ropeInvFreq({ headDim: 128, ropeTheta: 500000, ropeScaling: { type: 'none' } });
  assert.equal(none[0], 1);
  assert.ok(Math.abs(none[32]! - 500000 ** -0.5) / 500000 ** -0.5 < 1e-6);
  const l3 = ropeInvFreq({ headDim: 128, ropeTheta: 500000, ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 } });
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
