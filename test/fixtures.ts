/** Synthetic model directories for loader and architecture tests. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MODEL_DIR } from './helpers.js';

export interface TensorSpec {
  name: string;
  dtype: 'F32' | 'F16' | 'BF16' | string;
  shape: number[];
  data: Uint8Array;
}

/** Serialize tensors to safetensors bytes (header JSON padded to 8 bytes). */
export function safetensorsBytes(tensors: TensorSpec[], tamper?: (header: Record<string, unknown>) => void): Buffer {
  const header: Record<string, unknown> = {};
  let off = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + t.data.length] };
    off += t.data.length;
  }
  tamper?.(header);
  let json = JSON.stringify(header);
  while ((json.length + 8) % 8 !== 0) json += ' ';
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  return Buffer.concat([len, Buffer.from(json), ...tensors.map((t) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.length))]);
}

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
    return s / 4294967296 - 0.5;
  };
}

export interface TinyConfig {
  architecture?: string;
  hidden?: number;
  heads?: number;
  kvHeads?: number;
  headDim?: number;
  inter?: number;
  layers?: number;
  vocab?: number;
  bias?: boolean;
  dtype?: 'F32' | 'F16' | 'BF16';
  tie?: boolean;
  extra?: Record<string, unknown>;
}

/** f32 → bytes in the given dtype (bf16 by truncation of an already-bf16-exact value). */
function encode(x: Float32Array, dtype: 'F32' | 'F16' | 'BF16', toHalf: (v: number) => number): Uint8Array {
  if (dtype === 'F32') return new Uint8Array(x.buffer.slice(0));
  const out = new Uint16Array(x.length);
  const u = new Uint32Array(x.buffer);
  for (let i = 0; i < x.length; i++) out[i] = dtype === 'BF16' ? u[i]! >>> 16 : toHalf(x[i]!);
  return new Uint8Array(out.buffer);
}

/** A random Llama-family model directory with the bundled tokenizer. */
export async function writeTinyModel(dir: string, c: TinyConfig = {}): Promise<{ config: Record<string, unknown>; tensors: TensorSpec[] }> {
  const { toHalfBits } = await import('../src/quant/float16.js');
  const H = c.heads ?? 4;
  const KV = c.kvHeads ?? 2;
  const d = c.headDim ?? 16;
  const D = c.hidden ?? 64;
  const I = c.inter ?? 96;
  const L = c.layers ?? 2;
  const V = c.vocab ?? 8192;
  const dtype = c.dtype ?? 'F32';
  const r = rng(42);
  const tensors: TensorSpec[] = [];
  const add = (name: string, shape: number[], scale = 0.2, ones = false) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const x = new Float32Array(n);
    for (let i = 0; i < n; i++) x[i] = ones ? 1 + r() * 0.1 : r() * scale;
    // Make values exactly representable in the target dtype so every dtype loads the same model.
    const u = new Uint32Array(x.buffer);
    if (dtype !== 'F32') for (let i = 0; i < n; i++) u[i] = u[i]! & 0xffff0000;
    if (dtype === 'F16') for (let i = 0; i < n; i++) x[i] = Math.fround(x[i]!);
    tensors.push({ name, dtype, shape, data: encode(x, dtype, toHalfBits) });
  };
  add('model.embed_tokens.weight', [V, D], 1);
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}.`;
    add(`${p}input_layernorm.weight`, [D], 0, true);
    add(`${p}self_attn.q_proj.weight`, [H * d, D]);
    add(`${p}self_attn.k_proj.weight`, [KV * d, D]);
    add(`${p}self_attn.v_proj.weight`, [KV * d, D]);
    if (c.bias) {
      add(`${p}self_attn.q_proj.bias`, [H * d]);
      add(`${p}self_attn.k_proj.bias`, [KV * d]);
      add(`${p}self_attn.v_proj.bias`, [KV * d]);
    }
    add(`${p}self_attn.o_proj.weight`, [D, H * d]);
    add(`${p}post_attention_layernorm.weight`, [D], 0, true);
    add(`${p}mlp.gate_proj.weight`, [I, D]);
    add(`${p}mlp.up_proj.weight`, [I, D]);
    add(`${p}mlp.down_proj.weight`, [D, I]);
  }
  add('model.norm.weight', [D], 0, true);
  if (!(c.tie ?? true)) add('lm_head.weight', [V, D]);
  const config = {
    architectures: [c.architecture ?? 'LlamaForCausalLM'],
    hidden_size: D,
    intermediate_size: I,
    num_hidden_layers: L,
    num_attention_heads: H,
    num_key_value_heads: KV,
    head_dim: d,
    vocab_size: V,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    max_position_embeddings: 512,
    tie_word_embeddings: c.tie ?? true,
    bos_token_id: 1,
    eos_token_id: 2,
    hidden_act: 'silu',
    ...c.extra,
  };
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(MODEL_DIR, f), path.join(dir, f));
  fs.writeFileSync(path.join(dir, 'model.safetensors'), safetensorsBytes(tensors));
  return { config, tensors };
}
