/**
 * Load a Hugging Face model: config.json, tokenizer, safetensors weights, from any byte source (a
 * directory in Node, a URL base anywhere). Browser-safe: the filesystem source is imported only when
 * a path is given.
 */

import { type ByteSource, isUrl, readJson } from '../io/source.js';
import { urlSource } from '../io/source-url.js';
import type { Backend } from '../kernels/types.js';
import { Tokenizer } from '../tokenizer/tokenizer.js';
import { KiviError } from '../util/errors.js';
import { type ModelConfig, parseConfig } from './config.js';
import { checkFootprint } from './footprint.js';
import { LlamaModel } from './llama.js';
import { checkpointMatrixType, indexTensors, type LoadProgress, matrixDType, randomWeights, readWeights, type WeightFormat } from './weights.js';

/** Where a model is: a directory path (Node), an http(s) URL base, or any ByteSource. */
export type ModelLocation = string | URL | ByteSource;

/**
 * The byte source for a location. Paths need Node (the filesystem source is loaded only then); in a
 * browser a relative location resolves against the page's URL.
 */
export async function openSource(location: ModelLocation): Promise<ByteSource> {
  if (typeof location !== 'string' && !(location instanceof URL)) return location;
  if (isUrl(location)) return urlSource(location);
  if (typeof process === 'undefined' || !process.versions?.node) {
    // In a browser or worker a relative location is a URL relative to the page (or worker script).
    const base = (globalThis as { location?: { href: string } }).location?.href;
    if (base) return urlSource(new URL(location, base));
    throw new KiviError(`"${location}" is not an http(s) URL; outside Node, load a model from a URL`);
  }
  const { fsSource } = await import('../io/source-fs.js');
  return fsSource(String(location));
}

export async function readModelConfig(location: ModelLocation): Promise<ModelConfig> {
  const source = await openSource(location);
  const file = source.locate('config.json');
  const raw = await readJson(source, 'config.json', { required: true, missing: `${source.where}: missing config.json` });
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new KiviError(`${file}: not a JSON object`);
  const cfg = parseConfig(raw as Record<string, unknown>);
  // generation_config.json may name more EOS tokens (Llama 3 instruct models do).
  const g = (await readJson(source, 'generation_config.json', { required: false })) as { eos_token_id?: number | number[] } | null | undefined;
  if (g) {
    const ids = typeof g.eos_token_id === 'number' ? [g.eos_token_id] : Array.isArray(g.eos_token_id) ? g.eos_token_id : [];
    for (const id of ids) if (!cfg.eosTokenIds.includes(id)) cfg.eosTokenIds.push(id);
  }
  return cfg;
}

export interface LoadedModel {
  /** The model directory or URL base. */
  dir: string;
  /** SHA-256 (hex) of the parsed config and the weights' identity: names, shapes, types, first bytes. */
  fingerprint: string;
  config: ModelConfig;
  tokenizer: Tokenizer;
  model: LlamaModel;
}

export interface LoadModelOptions {
  /** Weight bytes read so far and in all, called after each tensor. */
  onProgress?: LoadProgress;
  /** Matrices in the checkpoint's type ('native', the default) or widened to float32. */
  weights?: WeightFormat;
  /**
   * Seeded random weights of config.json's shapes instead of the checkpoint (benchmarks at paper scale
   * without downloading one); a folder with only config.json will do (token ids then stand for text).
   */
  randomWeights?: number;
}

/** The machine's memory in Node; unknown in a browser (and in the browser bundle, even run by Node). */
async function hostMemory(): Promise<number | undefined> {
  if (typeof process === 'undefined' || !process.versions?.node) return undefined;
  try {
    return (await import('./host-node.js')).hostMemoryBytes();
  } catch {
    return undefined;
  }
}

export async function loadModel(location: ModelLocation, backend: Backend, opts: LoadModelOptions = {}): Promise<LoadedModel> {
  const source = await openSource(location);
  const config = await readModelConfig(source);
  const format = opts.weights ?? 'native';
  const hostBytes = await hostMemory();
  // Before any weight is read: a model the back end cannot hold is one line, not a failure after minutes.
  const footprint = (file: 'F32' | 'F16' | 'BF16') =>
    checkFootprint(config, backend.name, {
      matrices: matrixDType(backend, file, format),
      native: format === 'f32' && file !== 'F32' ? matrixDType(backend, file, 'native') : undefined,
      hostBytes,
    });
  if (opts.randomWeights !== undefined) {
    footprint('BF16');
    return loadRandom(source, config, backend, opts.randomWeights, format);
  }
  const index = await indexTensors(source);
  try {
    footprint(checkpointMatrixType(index));
    const tokenizer = await Tokenizer.load(source, config);
    const weights = await readWeights(index, config, backend, { format, onProgress: opts.onProgress });
    const fingerprint = await sha256Hex(`${JSON.stringify(config)}\n${weights.identity}`);
    return { dir: source.where, fingerprint, config, tokenizer, model: new LlamaModel(config, weights, backend) };
  } finally {
    await index.close();
  }
}

/** SHA-256 of a string, hex (WebCrypto: Node and browsers alike). */
export async function sha256Hex(text: string): Promise<string> {
  const d = new Uint8Array(await globalThis.crypto.subtle.digest('SHA-256', new TextEncoder().encode(text)));
  return Array.from(d, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Positions a random-weight model accepts: 4M, the longest context the benchmarks fill. */
export const RANDOM_MAX_POSITIONS = 1 << 22;

async function loadRandom(source: ByteSource, config: ModelConfig, backend: Backend, seed: number, format?: WeightFormat): Promise<LoadedModel> {
  if (!Number.isSafeInteger(seed) || seed < 0 || seed > 0xffffffff) throw new KiviError(`random-weights seed must be an integer in [0, 2^32), got ${seed}`);
  const tj = await source.open('tokenizer.json');
  await tj?.close();
  const tokenizer = tj ? await Tokenizer.load(source, config) : Tokenizer.synthetic(config.vocabSize, config);
  // Random weights have no trained context length: positions are limited only by RoPE's tables (long-context benchmarks).
  config.maxPositions = Math.max(config.maxPositions, RANDOM_MAX_POSITIONS);
  const weights = randomWeights(config, backend, seed, format);
  const fingerprint = await sha256Hex(`${JSON.stringify(config)}\n${weights.identity}`);
  return { dir: source.where, fingerprint, config, tokenizer, model: new LlamaModel(config, weights, backend) };
}
