/**
 * Load a Hugging Face model directory's weights (single-file or sharded safetensors) into float32,
 * checking every tensor's shape against config.json. q/k/v and gate/up projections are concatenated
 * so each layer runs two input matmuls instead of five.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KiviError } from '../util/errors.js';
import type { Kernels } from '../kernels/types.js';
import type { ModelConfig } from './config.js';
import { readHeader, readTensorInto, type TensorInfo } from './safetensors.js';

export interface LayerWeights {
  attnNorm: Float32Array;
  /** [(H + 2·KV)·d][hidden]: q rows, then k rows, then v rows. */
  wqkv: Float32Array;
  bqkv?: Float32Array;
  /** [hidden][H·d] */
  wo: Float32Array;
  mlpNorm: Float32Array;
  /** [2·I][hidden]: gate rows, then up rows. */
  wgu: Float32Array;
  /** [hidden][I] */
  wdown: Float32Array;
}

export interface ModelWeights {
  embed: Float32Array;
  layers: LayerWeights[];
  norm: Float32Array;
  /** Output head [vocab][hidden]; the embedding itself when tied. */
  lmHead: Float32Array;
}

/** Map every tensor name to where it lives, across shards. */
export function indexTensors(dir: string): Map<string, TensorInfo> {
  const single = path.join(dir, 'model.safetensors');
  const indexFile = path.join(dir, 'model.safetensors.index.json');
  if (fs.existsSync(indexFile)) {
    let index: { weight_map?: Record<string, string> };
    try {
      index = JSON.parse(fs.readFileSync(indexFile, 'utf8'));
    } catch {
      throw new KiviError(`${indexFile}: malformed JSON`);
    }
    if (!index.weight_map || typeof index.weight_map !== 'object') throw new KiviError(`${indexFile}: missing "weight_map"`);
    const all = new Map<string, TensorInfo>();
    const shards = new Set(Object.values(index.weight_map));
    for (const shard of shards) {
      const file = path.join(dir, shard);
      if (!fs.existsSync(file)) throw new KiviError(`missing shard ${file} (named in model.safetensors.index.json)`);
      for (const [name, info] of readHeader(file)) all.set(name, info);
    }
    return all;
  }
  if (fs.existsSync(single)) return readHeader(single);
  throw new KiviError(`${dir}: no model.safetensors or model.safetensors.index.json`);
}

export function loadWeights(dir: string, cfg: ModelConfig, kernels: Kernels): ModelWeights {
  const tensors = indexTensors(dir);
  const { hiddenSize: D, numHeads: H, numKvHeads: KV, headDim: d, intermediateSize: I, vocabSize: V } = cfg;

  const info = (name: string, shape: number[]): TensorInfo => {
    const t = tensors.get(name);
    if (!t) throw new KiviError(`missing tensor ${name}`);
    if (t.shape.length !== shape.length || t.shape.some((s, i) => s !== shape[i])) {
      throw new KiviError(`tensor ${name} has shape [${t.shape.join(', ')}], config.json implies [${shape.join(', ')}]`);
    }
    return t;
  };
  const load = (name: string, shape: number[]): Float32Array => {
    const t = info(name, shape);
    const out = kernels.allocF32(shape.reduce((a, b) => a * b, 1));
    readTensorInto(t, out);
    return out;
  };
  /** Stack tensors along the first axis into one allocation. */
  const stack = (parts: [string, number[]][]): Float32Array => {
    const total = parts.reduce((a, [, s]) => a + s.reduce((x, y) => x * y, 1), 0);
    const out = kernels.allocF32(total);
    let off = 0;
    for (const [name, shape] of parts) {
      const n = shape.reduce((x, y) => x * y, 1);
      readTensorInto(info(name, shape), out.subarray(off, off + n));
      off += n;
    }
    return out;
  };

  const embed = load('model.embed_tokens.weight', [V, D]);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}.`;
    const layer: LayerWeights = {
      attnNorm: load(`${p}input_layernorm.weight`, [D]),
      wqkv: stack([
        [`${p}self_attn.q_proj.weight`, [H * d, D]],
        [`${p}self_attn.k_proj.weight`, [KV * d, D]],
        [`${p}self_attn.v_proj.weight`, [KV * d, D]],
      ]),
      wo: load(`${p}self_attn.o_proj.weight`, [D, H * d]),
      mlpNorm: load(`${p}post_attention_layernorm.weight`, [D]),
      wgu: stack([
        [`${p}mlp.gate_proj.weight`, [I, D]],
        [`${p}mlp.up_proj.weight`, [I, D]],
      ]),
      wdown: load(`${p}mlp.down_proj.weight`, [D, I]),
    };
    if (cfg.attentionBias) {
      layer.bqkv = stack([
        [`${p}self_attn.q_proj.bias`, [H * d]],
        [`${p}self_attn.k_proj.bias`, [KV * d]],
        [`${p}self_attn.v_proj.bias`, [KV * d]],
      ]);
    }
    layers.push(layer);
  }
  const norm = load('model.norm.weight', [D]);
  let lmHead = embed;
  if (!cfg.tieWordEmbeddings || tensors.has('lm_head.weight')) {
    if (!tensors.has('lm_head.weight') && !cfg.tieWordEmbeddings) {
      throw new KiviError('missing tensor lm_head.weight (and tie_word_embeddings is not set)');
    }
    lmHead = load('lm_head.weight', [V, D]);
  }
  return { embed, layers, norm, lmHead };
}
