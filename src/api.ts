/**
 * The library's front door: load a model directory once, then generate with any cache spec.
 *
 *   const m = await KiviModel.load('models/llama-28m-gqa', { kv: 'kivi2' });
 *   for await (const c of m.generate('The pass key is', { maxTokens: 16 })) process.stdout.write(c.text);
 */

import { decodeCache, encodeCache, restoreCache, tokenHash } from './cache/file.js';
import { type CacheSpec, checkSpecBackend, createCache, DEFAULT_KV, type KvOption, toCacheSpec, validateSpec } from './cache/spec.js';
import type { CacheDims, KvCache } from './cache/types.js';
import { BatchEngine } from './engine/batch.js';
import { checkGrid, chunkEnds } from './engine/chunks.js';
import type { GenerateChunk, GenerateOptions, GenerateResult } from './engine/generate.js';
import { type Backend, type BackendOptions, createBackend } from './kernels/index.js';
import type { ModelConfig } from './model/config.js';
import type { ForwardItem, ForwardOptions, ForwardResult, LlamaModel } from './model/llama.js';
import { loadModel, type ModelLocation } from './model/load.js';
import type { LoadProgress, WeightFormat } from './model/weights.js';
import type { Tokenizer } from './tokenizer/tokenizer.js';
import { KiviError } from './util/errors.js';

/** Prompt tokens of warmUp(): past the presets' 128-token KIVI residual, so a key block is quantized. */
const WARM_PROMPT = 160;

export interface LoadOptions extends BackendOptions {
  /** Default cache spec for generate(): 'kivi2' (default), 'kivi4', 'fp16', 'fp32', ... or a spec object. */
  kv?: KvOption;
  /** Weight bytes read so far and in all, called after each tensor (for a progress bar). */
  onProgress?: LoadProgress;
  /** Weight matrices in the checkpoint's own type ('native', default: bf16 stays bf16) or widened to float32. */
  weights?: WeightFormat;
  /** Seeded random weights of config.json's shapes instead of the checkpoint (benchmarks; a folder with config.json alone will do). */
  randomWeights?: number;
}

export interface GenerateCallOptions extends GenerateOptions {
  /** Cache spec for this call (default: the model's; with `prefix`, the spec the file was saved with). */
  kv?: KvOption;
  /**
   * A cache file (saveCache(cache, tokens)) holding the prompt's first tokens: it is restored and only
   * the rest of the prompt is prefilled, continuing the cache. The file must name its tokens and they
   * must begin the prompt; otherwise generate() throws a KiviError.
   */
  prefix?: Uint8Array;
}

export class KiviModel {
  private constructor(
    readonly dir: string,
    /** SHA-256 of the config and the weights' identity: what saved caches are tied to. */
    readonly fingerprint: string,
    readonly config: ModelConfig,
    readonly tokenizer: Tokenizer,
    /** The forward pass (studies call it directly). */
    readonly transformer: LlamaModel,
    readonly backend: Backend,
    /** The default cache spec of generate() and newCache(). */
    readonly kv: CacheSpec,
  ) {}

  /** The shapes caches are built for (layers, heads, kv heads, head size). */
  get dims(): CacheDims {
    return this.transformer.dims;
  }

  /**
   * Load a model: a directory path (Node), an http(s) URL base whose files are fetched (browsers and
   * Node: `KiviModel.load('https://host/models/llama-28m-gqa/')`), or any ByteSource.
   */
  static async load(location: ModelLocation, opts: LoadOptions = {}): Promise<KiviModel> {
    const spec = toCacheSpec(opts.kv ?? DEFAULT_KV);
    const backend = await createBackend(opts);
    try {
      const m = await loadModel(location, backend, { onProgress: opts.onProgress, weights: opts.weights, randomWeights: opts.randomWeights });
      validateSpec(spec, m.model.dims);
      checkSpecBackend(spec, m.model.pool);
      return new KiviModel(m.dir, m.fingerprint, m.config, m.tokenizer, m.model, backend, spec);
    } catch (e) {
      backend.dispose();
      throw e;
    }
  }

  /**
   * The batching engine behind generate(): concurrent generate() calls share its forward passes.
   * Created on first use.
   */
  get engine(): BatchEngine {
    this.batch ??= new BatchEngine(this.transformer, this.tokenizer);
    return this.batch;
  }
  private batch?: BatchEngine;

  /** An empty cache for one sequence (free() it when done). */
  newCache(kv: KvOption = this.kv): KvCache {
    const spec = toCacheSpec(kv);
    validateSpec(spec, this.dims);
    return createCache(spec, this.transformer.pool);
  }

  /**
   * One sequence's cache as a file's bytes (docs: cache/file.ts), tied to this model and the cache's spec;
   * with the tokens it holds, the file names them (a hash), so generate({ prefix }) can check a prompt.
   */
  async saveCache(cache: KvCache, tokens?: ArrayLike<number>): Promise<Uint8Array> {
    if (tokens !== undefined && tokens.length !== cache.length) {
      throw new KiviError(`the cache holds ${cache.length} tokens, not the ${tokens.length} given`);
    }
    const hash = tokens === undefined ? undefined : await tokenHash(tokens);
    return encodeCache(cache, { model: this.fingerprint, spec: cache.spec, shape: this.dims, tokens: hash });
  }

  /**
   * A cache holding `tokens`, prefilled (in chunks ending at multiples of `prefillChunk`, if given) —
   * e.g. a system prompt to save with saveCache(cache, tokens). Free it when done.
   */
  async prefill(tokens: number[], opts: { kv?: KvOption; prefillChunk?: number } = {}): Promise<KvCache> {
    if (tokens.length === 0) throw new KiviError('empty prompt');
    const cache = this.newCache(opts.kv ?? this.kv);
    try {
      const grids = opts.prefillChunk === undefined ? [] : [checkGrid(opts.prefillChunk, 'the prefill chunk')];
      let t = 0;
      for (const end of chunkEnds(0, tokens.length, grids)) {
        await this.forward([{ tokens: tokens.slice(t, end), cache, logits: 'none', mode: 'prefill' }]);
        t = end;
      }
      return cache;
    } catch (e) {
      cache.free();
      throw e;
    }
  }

  /**
   * A cache restored from saveCache()'s bytes; refuses a file of another model or spec (pass the spec it
   * was saved with, default the model's), another format version or corrupt bytes, with a KiviError.
   */
  async restoreCache(bytes: Uint8Array, kv: KvOption = this.kv): Promise<KvCache> {
    const cache = this.newCache(kv);
    await restoreCache(cache, bytes, { model: this.fingerprint, spec: cache.spec, shape: this.dims });
    return cache;
  }

  /**
   * On WebGPU, compile the pipelines a first request runs, and run the slow steps that follow a long
   * compile, now: a prompt past the KIVI residual (its cache jobs run) and two decode steps, greedy and with
   * logits read back, through a throwaway cache of the default spec, outside the batching engine (its
   * counters stay as they were; the pool's peak is reset after). On an H200 at Llama-2-7B's shapes (128K
   * cached tokens) a process's first decode step took 3.1 s, 2.6 s of it compiling 10 pipelines, and the next
   * one 0.7 s, before settling at 30 ms (docs/perf/webgpu-h200.md). Kernels for caches that span more than
   * one binding, and the bulk kernel (48K quantized tokens and up), still compile when first needed. The CPU
   * back ends compile nothing per shape: there it returns at once. `kivi serve` calls it before it listens.
   */
  async warmUp(): Promise<void> {
    if (this.backend.name !== 'webgpu') return;
    const n = Math.min(WARM_PROMPT, this.config.maxPositions - 3);
    const V = this.config.vocabSize;
    const tokens = Array.from({ length: n }, (_, i) => 1 + ((i * 7919) % (V - 1)));
    const cache = this.newCache();
    try {
      const [id] = await this.forward([{ tokens, cache, logits: 'argmax', mode: 'prefill' }]);
      const [next] = await this.forward([{ tokens: [id as number], cache, logits: 'argmax', mode: 'decode' }]);
      await this.forward([{ tokens: [next as number], cache, logits: 'last', mode: 'decode' }]);
    } finally {
      cache.free();
      this.transformer.pool.resetPeak();
    }
  }

  /** One forward step over several sequences' caches (studies, tests): see LlamaModel.forward. */
  forward(items: ForwardItem[], opts?: ForwardOptions): Promise<ForwardResult[]> {
    return this.transformer.forward(items, opts);
  }

  /** Text → token ids (BOS prepended as the tokenizer config says). */
  encode(text: string, opts?: { bos?: boolean }): number[] {
    return this.tokenizer.encode(text, opts);
  }

  decode(ids: ArrayLike<number>): string {
    return this.tokenizer.decode(ids);
  }

  /** Stream generated tokens; the iterator's return value is the full result. */
  generate(prompt: string | number[], opts: GenerateCallOptions = {}): AsyncGenerator<GenerateChunk, GenerateResult, void> {
    const ids = typeof prompt === 'string' ? this.encode(prompt) : prompt;
    if (opts.prefix !== undefined) return this.generateFrom(ids, opts.prefix, opts);
    const cache = this.newCache(opts.kv ?? this.kv);
    return this.engine.add(ids, cache, opts).stream();
  }

  /** generate() from a restored prefix: checked against the prompt, then continued. */
  private async *generateFrom(ids: number[], prefix: Uint8Array, opts: GenerateCallOptions): AsyncGenerator<GenerateChunk, GenerateResult, void> {
    const cache = this.newCache(opts.kv ?? this.kv);
    try {
      const img = await decodeCache(prefix, { model: this.fingerprint, spec: cache.spec, shape: this.dims });
      if (img.tokens === null) throw new KiviError('the prefix cache file does not say which tokens it holds: save it with saveCache(cache, tokens)');
      if (img.length >= ids.length) throw new KiviError(`the prefix holds ${img.length} tokens; the prompt of ${ids.length} must be longer`);
      if (img.tokens !== (await tokenHash(ids, img.length))) throw new KiviError(`the prompt does not begin with the ${img.length} tokens the prefix holds`);
      cache.restore(img);
    } catch (e) {
      cache.free();
      throw e;
    }
    return yield* this.engine.add(ids, cache, opts).stream();
  }

  /** Stop the back end's helper threads and release its memory; the model is unusable afterwards. */
  dispose(): void {
    this.backend.dispose();
  }

  /** Generate to the end and return the result. */
  async complete(prompt: string | number[], opts: GenerateCallOptions = {}): Promise<GenerateResult> {
    const it = this.generate(prompt, opts);
    for (;;) {
      const r = await it.next();
      if (r.done) return r.value;
    }
  }
}
