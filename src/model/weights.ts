/**
 * Load a Hugging Face model directory's weights (single-file or sharded safetensors) into float32,
 * checking every tensor's shape against config.json. q/k/v and gate/up projections are concatenated
 * so each layer runs two input matmuls instead of five.
 */
import { KiviError } from '../util/errors.js';
import type { Kernels } from '../kernels/types.js';
import type { ModelConfig } from './config.js';
import { readHeader, readTensorInto, type TensorInfo } from './safetensors.js';
import { isPlainFileName, readJson, type ByteSource, type RandomAccess } from './source.js';

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

/** Loading progress: tensor bytes read so far and in all. */
export type LoadProgress = (done: number, total: number) => void;

/** The model's safetensors files, open, and where every tensor lives across them. */
export interface TensorIndex {
  tensors: Map<string, TensorInfo>;
  files: Map<string, RandomAccess>;
  close(): Promise<void>;
}

/** The shard file names a parsed model.safetensors.index.json names, each checked to be a plain file name. */
export function shardNames(index: unknown, indexFile: string): string[] {
  const map = (index as { weight_map?: unknown } | null)?.weight_map;
  if (typeof index !== 'object' || index === null || typeof map !== 'object' || map === null) {
    throw new KiviError(`${indexFile}: missing "weight_map"`);
  }
  const shards = new Set<string>();
  for (const shard of Object.values(map)) {
    if (typeof shard !== 'string') throw new KiviError(`${indexFile}: "weight_map" values must be file names`);
    if (!isPlainFileName(shard)) {
      throw new KiviError(`${indexFile}: shard ${JSON.stringify(shard)} is not a plain file name inside the model directory`);
    }
    shards.add(shard);
  }
  return [...shards];
}

/** Open the model's safetensors (single-file or sharded) and map every tensor name to where it lives. */
export async function indexTensors(source: ByteSource): Promise<TensorIndex> {
  const files = new Map<string, RandomAccess>();
  const close = async () => {
    for (const f of files.values()) await f.close();
  };
  try {
    const tensors = new Map<string, TensorInfo>();
    const indexName = 'model.safetensors.index.json';
    const index = await readJson(source, indexName, { required: false });
    if (index !== undefined) {
      for (const shard of shardNames(index, source.locate(indexName))) {
        const f = await source.open(shard);
        if (!f) throw new KiviError(`missing shard ${source.locate(shard)} (named in model.safetensors.index.json)`);
        files.set(shard, f);
        for (const [name, info] of await readHeader(f, shard)) tensors.set(name, info);
      }
    } else {
      const f = await source.open('model.safetensors');
      if (!f) throw new KiviError(`${source.where}: no model.safetensors or model.safetensors.index.json`);
      files.set('model.safetensors', f);
      for (const [name, info] of await readHeader(f, 'model.safetensors')) tensors.set(name, info);
    }
    return { tensors, files, close };
  } catch (e) {
    await close();
    throw e;
  }
}

export async function loadWeights(source: ByteSource, cfg: ModelConfig, kernels: Kernels, onProgress?: LoadProgress): Promise<ModelWeights> {
  const index = await indexTensors(source);
  try {
    return await readWeights(index, cfg, kernels, onProgress);
  } finally {
    await index.close();
  }
}

/** Every tensor the model reads, with the shape config.json implies, in loading order. */
export function expectedTensors(cfg: ModelConfig, has: (name: string) => boolean): [string, number[]][] {
  const { hiddenSize: D, numHeads: H, numKvHeads: KV, headDim: d, intermediateSize: I, vocabSize: V } = cfg;
  const out: [string, number[]][] = [['model.embed_tokens.weight', [V, D]]];
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}.`;
    out.push(
      [`${p}input_layernorm.weight`, [D]],
      [`${p}self_attn.q_proj.weight`, [H * d, D]],
      [`${p}self_attn.k_proj.weight`, [KV * d, D]],
      [`${p}self_attn.v_proj.weight`, [KV * d, D]],
      [`${p}self_attn.o_proj.weight`, [D, H * d]],
      [`${p}post_attention_layernorm.weight`, [D]],
      [`${p}mlp.gate_proj.weight`, [I, D]],
      [`${p}mlp.up_proj.weight`, [I, D]],
      [`${p}mlp.down_proj.weight`, [D, I]],
    );
    if (cfg.attentionBias) out.push([`${p}self_attn.q_proj.bias`, [H * d]], [`${p}self_attn.k_proj.bias`, [KV * d]], [`${p}self_attn.v_proj.bias`, [KV * d]]);
  }
  out.push(['model.norm.weight', [D]]);
  if (!cfg.tieWordEmbeddings || has('lm_head.weight')) out.push(['lm_head.weight', [V, D]]);
  return out;
}

/**
 * Check the checkpoint against config.json before anything is allocated: every tensor present with the
 * shape the config implies, and no layer beyond num_hidden_layers (a config that names fewer layers
 * than the checkpoint holds would otherwise run silently on the first few).
 */
export function checkTensors(tensors: Map<string, TensorInfo>, cfg: ModelConfig): void {
  for (const name of tensors.keys()) {
    const m = /^model\.layers\.(\d+)\./.exec(name);
    if (m && Number(m[1]) >= cfg.numLayers) {
      throw new KiviError(`the checkpoint has tensors of layer ${m[1]} (${name}), but config.json says num_hidden_layers ${cfg.numLayers}`);
    }
  }
  if (cfg.tieWordEmbeddings === false && !tensors.has('lm_head.weight')) {
    throw new KiviError('missing tensor lm_head.weight (and tie_word_embeddings is not set)');
  }
  for (const [name, shape] of expectedTensors(cfg, (n) => tensors.has(n))) {
    const t = tensors.get(name);
    if (!t) throw new KiviError(`missing tensor ${name}`);
    if (t.shape.length !== shape.length || t.shape.some((s, i) => s !== shape[i])) {
      throw new KiviError(`tensor ${name} has shape [${t.shape.join(', ')}], config.json implies [${shape.join(', ')}]`);
    }
  }
}

async function readWeights(index: TensorIndex, cfg: ModelConfig, kernels: Kernels, onProgress?: LoadProgress): Promise<ModelWeights> {
  const { tensors, files } = index;
  const { hiddenSize: D, numHeads: H, numKvHeads: KV, headDim: d, intermediateSize: I, vocabSize: V } = cfg;
  checkTensors(tensors, cfg);

  const info = (name: string, shape: number[]): TensorInfo => {
    const t = tensors.get(name);
    // checkTensors has seen every name and shape the loader asks for.
    if (!t) throw new Error(`readWeights: ${name} was not checked`);
    return t;
  };
  // Progress counts the bytes of every tensor the model uses (lm_head only when untied).
  const used = [...tensors.values()].filter((t) => t.name.startsWith('model.') || t.name === 'lm_head.weight');
  const total = used.reduce((a, t) => a + (t.end - t.begin), 0);
  let done = 0;
  const read = async (t: TensorInfo, out: Float32Array) => {
    await readTensorInto(files.get(t.file)!, t, out);
    done += t.end - t.begin;
    onProgress?.(Math.min(done, total), total);
  };
  const load = async (name: string, shape: number[]): Promise<Float32Array> => {
    const t = info(name, shape);
    const out = kernels.allocF32(shape.reduce((a, b) => a * b, 1));
    await read(t, out);
    return out;
  };
  /** Stack tensors along the first axis into one allocation. */
  const stack = async (parts: [string, number[]][]): Promise<Float32Array> => {
    const total = parts.reduce((a, [, s]) => a + s.reduce((x, y) => x * y, 1), 0);
    const out = kernels.allocF32(total);
    let off = 0;
    for (const [name, shape] of parts) {
      const n = shape.reduce((x, y) => x * y, 1);
      await read(info(name, shape), out.subarray(off, off + n));
      off += n;
    }
    return out;
  };

  const embed = await load('model.embed_tokens.weight', [V, D]);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}.`;
    const layer: LayerWeights = {
      attnNorm: await load(`${p}input_layernorm.weight`, [D]),
      wqkv: await stack([
        [`${p}self_attn.q_proj.weight`, [H * d, D]],
        [`${p}self_attn.k_proj.weight`, [KV * d, D]],
        [`${p}self_attn.v_proj.weight`, [KV * d, D]],
      ]),
      wo: await load(`${p}self_attn.o_proj.weight`, [D, H * d]),
      mlpNorm: await load(`${p}post_attention_layernorm.weight`, [D]),
      wgu: await stack([
        [`${p}mlp.gate_proj.weight`, [I, D]],
        [`${p}mlp.up_proj.weight`, [I, D]],
      ]),
      wdown: await load(`${p}mlp.down_proj.weight`, [D, I]),
    };
    if (cfg.attentionBias) {
      layer.bqkv = await stack([
        [`${p}self_attn.q_proj.bias`, [H * d]],
        [`${p}self_attn.k_proj.bias`, [KV * d]],
        [`${p}self_attn.v_proj.bias`, [KV * d]],
      ]);
    }
    layers.push(layer);
  }
  const norm = await load('model.norm.weight', [D]);
  let lmHead = embed;
  if (!cfg.tieWordEmbeddings || tensors.has('lm_head.weight')) lmHead = await load('lm_head.weight', [V, D]);
  onProgress?.(total, total);
  return { embed, layers, norm, lmHead };
}
