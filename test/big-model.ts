/**
 * Real-size checkpoints generated for the tests that load them (never committed): a Llama config.json, the
 * bundled tokenizer padded to the model's vocabulary, and one model.safetensors of bf16 tensors written as a
 * sparse file. Only the tensors named `dense` get data (seeded random values); the rest are holes that read
 * as zeros and cost neither disk nor write time, so a 2 GB checkpoint is written in well under a second.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MODEL_DIR } from './helpers.js';

export interface BigShape {
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  inter: number;
  vocab: number;
  maxPositions: number;
  tie: boolean;
}

/** TinyLlama-1.1B's shapes (head_dim 64), with a tied output head and 24 layers: 1.12B parameters. */
export const TINYLLAMA_SHAPED: BigShape = { hidden: 2048, layers: 24, heads: 32, kvHeads: 4, inter: 5632, vocab: 32000, maxPositions: 2048, tie: true };

/** Every tensor of a Llama checkpoint of shape s, in file order. */
export function bigTensors(s: BigShape): { name: string; shape: number[] }[] {
  const D = s.hidden,
    d = D / s.heads,
    I = s.inter;
  const t = [{ name: 'model.embed_tokens.weight', shape: [s.vocab, D] }];
  for (let l = 0; l < s.layers; l++) {
    const p = `model.layers.${l}.`;
    t.push(
      { name: `${p}input_layernorm.weight`, shape: [D] },
      { name: `${p}self_attn.q_proj.weight`, shape: [s.heads * d, D] },
      { name: `${p}self_attn.k_proj.weight`, shape: [s.kvHeads * d, D] },
      { name: `${p}self_attn.v_proj.weight`, shape: [s.kvHeads * d, D] },
      { name: `${p}self_attn.o_proj.weight`, shape: [D, s.heads * d] },
      { name: `${p}post_attention_layernorm.weight`, shape: [D] },
      { name: `${p}mlp.gate_proj.weight`, shape: [I, D] },
      { name: `${p}mlp.up_proj.weight`, shape: [I, D] },
      { name: `${p}mlp.down_proj.weight`, shape: [D, I] },
    );
  }
  t.push({ name: 'model.norm.weight', shape: [D] });
  if (!s.tie) t.push({ name: 'lm_head.weight', shape: [s.vocab, D] });
  return t;
}

/** Seeded bf16 patterns of values uniform in ±scale (no rounding: the top half of a float32). */
export function randomBf16(n: number, scale: number, seed: number): Uint16Array {
  const out = new Uint16Array(n);
  const f = new Float32Array(1),
    u = new Uint32Array(f.buffer);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x ^ (x >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
    f[0] = (x / 2 ** 32 - 0.5) * 2 * scale;
    out[i] = u[0]! >>> 16;
  }
  return out;
}

/** The bundled tokenizer with entries <extra_N> added up to `vocab` ids, so every id decodes. */
function paddedTokenizer(vocab: number): string {
  const t = JSON.parse(fs.readFileSync(path.join(MODEL_DIR, 'tokenizer.json'), 'utf8')) as { model: { vocab: Record<string, number> } };
  const have = Object.keys(t.model.vocab).length;
  if (have > vocab) throw new Error(`the bundled tokenizer has ${have} tokens, more than a vocabulary of ${vocab}`);
  for (let id = have; id < vocab; id++) t.model.vocab[`<extra_${id}>`] = id;
  return JSON.stringify(t);
}

export interface WrittenModel {
  parameters: number;
  bytes: number;
}

/** Write a sparse bf16 checkpoint of shape s into dir; `dense` gives the data of the tensors that have any. */
export function writeBigModel(dir: string, s: BigShape, dense: Record<string, Uint16Array> = {}): WrittenModel {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(
    path.join(dir, 'config.json'),
    JSON.stringify({
      architectures: ['LlamaForCausalLM'],
      model_type: 'llama',
      hidden_size: s.hidden,
      intermediate_size: s.inter,
      num_hidden_layers: s.layers,
      num_attention_heads: s.heads,
      num_key_value_heads: s.kvHeads,
      vocab_size: s.vocab,
      max_position_embeddings: s.maxPositions,
      rms_norm_eps: 1e-5,
      rope_theta: 10000,
      tie_word_embeddings: s.tie,
      bos_token_id: 1,
      eos_token_id: 2,
      hidden_act: 'silu',
      torch_dtype: 'bfloat16',
    }),
  );
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), paddedTokenizer(s.vocab));
  fs.copyFileSync(path.join(MODEL_DIR, 'tokenizer_config.json'), path.join(dir, 'tokenizer_config.json'));
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  const at = new Map<string, number>();
  let off = 0,
    parameters = 0;
  for (const t of bigTensors(s)) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (dense[t.name] && dense[t.name]!.length !== n) throw new Error(`${t.name}: ${dense[t.name]!.length} values for ${n}`);
    header[t.name] = { dtype: 'BF16', shape: t.shape, data_offsets: [off, off + 2 * n] };
    at.set(t.name, off);
    off += 2 * n;
    parameters += n;
  }
  let json = JSON.stringify(header);
  while ((json.length + 8) % 8 !== 0) json += ' ';
  const head = Buffer.alloc(8 + json.length);
  head.writeBigUInt64LE(BigInt(json.length));
  head.write(json, 8, 'latin1');
  const bytes = head.length + off;
  const fd = fs.openSync(path.join(dir, 'model.safetensors'), 'w');
  try {
    fs.writeSync(fd, head, 0, head.length, 0);
    for (const [name, data] of Object.entries(dense)) {
      const b = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      for (let done = 0; done < b.length; ) done += fs.writeSync(fd, b, done, b.length - done, head.length + at.get(name)! + done);
    }
    fs.ftruncateSync(fd, bytes);
  } finally {
    fs.closeSync(fd);
  }
  return { parameters, bytes };
}
