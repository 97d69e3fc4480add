/**
 * Load a Hugging Face model directory's weights (single-file or sharded safetensors) into back-end
 * tensors, checking every tensor's shape against config.json. Matrices keep the checkpoint's 16-bit type
 * where the back end computes with it (the kernels widen to float32 as they read), so a bf16 checkpoint
 * costs 2 bytes per weight in memory and per decode step; vectors (norms, biases) are float32. q/k/v and
 * gate/up projections are concatenated so each layer runs two input matmuls instead of five.
 */

import { type ByteSource, isPlainFileName, type RandomAccess, readJson } from '../io/source.js';
import type { Backend, DType, Tensor } from '../kernels/types.js';
import { toHalfBits } from '../quant/float16.js';
import { KiviError } from '../util/errors.js';
import type { ModelConfig } from './config.js';
import { CHUNK_BYTES, type DType as FileDType, readHeader, readTensorChunks, type TensorInfo, toFloat32 } from './safetensors.js';

export interface LayerWeights {
  attnNorm: Tensor;
  /** [(H + 2·KV)·d][hidden]: q rows, then k rows, then v rows. */
  wqkv: Tensor;
  bqkv?: Tensor;
  /** [hidden][H·d] */
  wo: Tensor;
  mlpNorm: Tensor;
  /** [2·I][hidden]: gate rows, then up rows. */
  wgu: Tensor;
  /** [hidden][I] */
  wdown: Tensor;
}

export interface ModelWeights {
  /**
   * What identifies these weights cheaply: every tensor's name, type and shape and its first 4 KiB,
   * as text to hash (the model's fingerprint hashes it with the config).
   */
  identity: string;
  embed: Tensor;
  layers: LayerWeights[];
  norm: Tensor;
  /** Output head [vocab][hidden]; the embedding itself when tied. */
  lmHead: Tensor;
}

/** How matrices are stored: the checkpoint's own type ('native'), or widened to float32 ('f32'). */
export const WEIGHT_FORMATS = ['native', 'f32'] as const;
export type WeightFormat = (typeof WEIGHT_FORMATS)[number];

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

export interface WeightOptions {
  format?: WeightFormat;
  onProgress?: LoadProgress;
}

/**
 * The checkpoint type of the model's matrices (the type of the embedding, which every loader path
 * reads), from the headers alone: what the footprint check needs before any weight is read.
 */
export function checkpointMatrixType(index: TensorIndex): FileDType {
  const t = index.tensors.get('model.embed_tokens.weight');
  if (!t) throw new KiviError('missing tensor model.embed_tokens.weight');
  return t.dtype;
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

/** A weight matrix [rows][cols] in the back end's own layout for matrices, where it has one. */
export function newMatrix(backend: Backend, dtype: DType, rows: number, cols: number): Tensor {
  return backend.matrix ? backend.matrix(dtype, rows, cols) : backend.tensor(dtype, rows * cols);
}

/** The dtype a matrix of a checkpoint dtype is kept in. */
export function matrixDType(backend: Backend, file: FileDType, format: WeightFormat): DType {
  if (format === 'f32' || file === 'F32') return backend.weightDType?.('f32') ?? 'f32';
  return backend.weightDType?.(file === 'BF16' ? 'bf16' : 'f16') ?? (file === 'BF16' ? 'bf16' : 'f16');
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

export async function readWeights(index: TensorIndex, cfg: ModelConfig, backend: Backend, opts: WeightOptions): Promise<ModelWeights> {
  const { tensors, files } = index;
  const { hiddenSize: D, numHeads: H, numKvHeads: KV, headDim: d, intermediateSize: I, vocabSize: V } = cfg;
  const format = opts.format ?? 'native';
  checkTensors(tensors, cfg);

  const info = (name: string, _shape: number[]): TensorInfo => {
    const t = tensors.get(name);
    // checkTensors has seen every name and shape the loader asks for.
    if (!t) throw new Error(`readWeights: ${name} was not checked`);
    return t;
  };
  // Progress counts the bytes of every tensor the model uses (lm_head only when untied).
  const used = [...tensors.values()].filter((t) => t.name.startsWith('model.') || t.name === 'lm_head.weight');
  const total = used.reduce((a, t) => a + (t.end - t.begin), 0);
  let done = 0;
  const f32 = new Float32Array(1 << 20);
  const u16 = new Uint16Array(1 << 20);
  const chunk = new Uint8Array(CHUNK_BYTES);
  /** Read tensor t into `out` from element `at`, converting from the file's dtype to the tensor's. */
  const identity: string[] = [];
  const read = async (t: TensorInfo, out: Tensor, at: number) => {
    await readTensorChunks(
      files.get(t.file)!,
      t,
      (bytes, first) => {
        if (first === 0) identity.push(`${t.name}:${t.dtype}:${t.shape.join('x')}:${hex(bytes.subarray(0, 4096))}`);
        const n = bytes.byteLength / (t.dtype === 'F32' ? 4 : 2);
        const same = (out.dtype === 'bf16' && t.dtype === 'BF16') || (out.dtype === 'f16' && t.dtype === 'F16');
        if (same) {
          const bits = new Uint16Array(bytes.buffer, bytes.byteOffset, n);
          // Kernels widen f16 weights for finite values only (wasm: assembly/matmul16.ts).
          if (out.dtype === 'f16' && !allFiniteHalves(bits)) {
            throw new KiviError(
              `${t.file}: f16 tensor ${t.name} holds ±Inf or NaN values, which 16-bit weights do not support (--weights f32 loads them as float32)`,
            );
          }
          backend.write(out, bits, at + first);
          return;
        }
        toFloat32(bytes, t.dtype, f32);
        if (out.dtype === 'f32') backend.write(out, f32.subarray(0, n), at + first);
        else if (out.dtype === 'f16') {
          for (let i = 0; i < n; i++) u16[i] = toHalfBits(f32[i]!);
          backend.write(out, u16.subarray(0, n), at + first);
        } else throw new Error(`cannot store ${t.dtype} weights as ${out.dtype}`);
      },
      chunk,
    );
    done += t.end - t.begin;
    opts.onProgress?.(Math.min(done, total), total);
  };
  const count = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
  /** A matrix (kept 16-bit where the checkpoint is), or several stacked along the first axis. */
  const matrix = async (...parts: [string, number[]][]): Promise<Tensor> => {
    const infos = parts.map(([name, shape]) => info(name, shape));
    const out = newMatrix(
      backend,
      matrixDType(backend, infos[0]!.dtype, format),
      parts.reduce((a, [, s]) => a + s[0]!, 0),
      parts[0]![1][1]!,
    );
    let at = 0;
    for (let i = 0; i < parts.length; i++) {
      await read(infos[i]!, out, at);
      at += count(parts[i]![1]);
    }
    return out;
  };
  /** A vector (norm weights, biases), float32; several stacked. */
  const vector = async (...parts: [string, number[]][]): Promise<Tensor> => {
    const out = backend.tensor(
      'f32',
      parts.reduce((a, [, s]) => a + count(s), 0),
    );
    let at = 0;
    for (const [name, shape] of parts) {
      await read(info(name, shape), out, at);
      at += count(shape);
    }
    return out;
  };

  const embed = await matrix(['model.embed_tokens.weight', [V, D]]);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}.`;
    const layer: LayerWeights = {
      attnNorm: await vector([`${p}input_layernorm.weight`, [D]]),
      wqkv: await matrix(
        [`${p}self_attn.q_proj.weight`, [H * d, D]],
        [`${p}self_attn.k_proj.weight`, [KV * d, D]],
        [`${p}self_attn.v_proj.weight`, [KV * d, D]],
      ),
      wo: await matrix([`${p}self_attn.o_proj.weight`, [D, H * d]]),
      mlpNorm: await vector([`${p}post_attention_layernorm.weight`, [D]]),
      wgu: await matrix([`${p}mlp.gate_proj.weight`, [I, D]], [`${p}mlp.up_proj.weight`, [I, D]]),
      wdown: await matrix([`${p}mlp.down_proj.weight`, [D, I]]),
    };
    if (cfg.attentionBias) {
      layer.bqkv = await vector([`${p}self_attn.q_proj.bias`, [H * d]], [`${p}self_attn.k_proj.bias`, [KV * d]], [`${p}self_attn.v_proj.bias`, [KV * d]]);
    }
    layers.push(layer);
  }
  const norm = await vector(['model.norm.weight', [D]]);
  let lmHead = embed;
  if (!cfg.tieWordEmbeddings || tensors.has('lm_head.weight')) lmHead = await matrix(['lm_head.weight', [V, D]]);
  opts.onProgress?.(total, total);
  return { identity: identity.join('\n'), embed, layers, norm, lmHead };
}

/** False when some f16 value has an all-ones exponent (±Inf, NaN). */
function allFiniteHalves(bits: Uint16Array): boolean {
  for (let i = 0; i < bits.length; i++) if ((bits[i]! & 0x7c00) === 0x7c00) return false;
  return true;
}

function hex(b: Uint8Array): string {
  let s = '';
  for (const x of b) s += x.toString(16).padStart(2, '0');
  return s;
}

/** Standard deviation of random matrices: Llama's initializer_range. */
export const RANDOM_WEIGHT_STD = 0.02;

/**
 * Seeded random weights of a config's shapes, generated by the back end where they live (no checkpoint,
 * nothing crosses from JavaScript but the norms' ones): what benchmarks of paper-scale shapes run on.
 * Matrices are kept as a bf16 checkpoint's would be; every tensor gets its own seed.
 */
export function randomWeights(cfg: ModelConfig, backend: Backend, seed: number, format: WeightFormat = 'native'): ModelWeights {
  if (!backend.fillRandom) throw new KiviError(`the ${backend.name} back end cannot generate random weights`);
  const fill = backend.fillRandom.bind(backend);
  const { hiddenSize: D, numHeads: H, numKvHeads: KV, headDim: d, intermediateSize: I, vocabSize: V } = cfg;
  const dtype = matrixDType(backend, 'BF16', format);
  let n = 0;
  const matrix = (rows: number, cols: number): Tensor => {
    const t = newMatrix(backend, dtype, rows, cols);
    fill(t, (seed * 1009 + n++) >>> 0, RANDOM_WEIGHT_STD);
    return t;
  };
  const ones = new Float32Array(Math.max(D, 1)).fill(1);
  const vector = (len: number, value: 'ones' | 'zeros'): Tensor => {
    const t = backend.tensor('f32', len);
    if (value === 'ones') backend.write(t, ones.subarray(0, len));
    return t;
  };
  const embed = matrix(V, D);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < cfg.numLayers; l++) {
    layers.push({
      attnNorm: vector(D, 'ones'),
      wqkv: matrix((H + 2 * KV) * d, D),
      ...(cfg.attentionBias ? { bqkv: vector((H + 2 * KV) * d, 'zeros') } : {}),
      wo: matrix(D, H * d),
      mlpNorm: vector(D, 'ones'),
      wgu: matrix(2 * I, D),
      wdown: matrix(D, I),
    });
  }
  const norm = vector(D, 'ones');
  const lmHead = cfg.tieWordEmbeddings ? embed : matrix(V, D);
  return { identity: `random weights, seed ${seed}`, embed, layers, norm, lmHead };
}
