/**
 * The library's front door: load a model directory once, then generate with any cache spec.
 *
 *   const m = await KiviModel.load('models/llama-28m-gqa', { kv: 'kivi2' });
 *   for await (const c of m.generate('The pass key is', { maxTokens: 16 })) process.stdout.write(c.text);
 */
import { createKernels, type BackendOptions, type Kernels } from './kernels/index.js';
import { loadModel, type ModelLocation } from './model/load.js';
import type { LoadProgress } from './model/weights.js';
import type { ModelConfig } from './model/config.js';
import type { LlamaModel } from './model/llama.js';
import type { Tokenizer } from './tokenizer/tokenizer.js';
import { DEFAULT_KV, createCache, type KvOption, toCacheSpec, validateSpec } from './cache/spec.js';
import type { SequenceCache } from './cache/types.js';
import type { GenerateChunk, GenerateOptions, GenerateResult } from './engine/generate.js';
import { BatchEngine } from './engine/batch.js';

export interface LoadOptions extends BackendOptions {
  /** Default cache spec for generate(): 'kivi2' (default), 'kivi4', 'fp16', 'fp32', ... or a spec object. */
  kv?: KvOption;
  /** Weight bytes read so far and in all, called after each tensor (for a progress bar). */
  onProgress?: LoadProgress;
}

export interface GenerateCallOptions extends GenerateOptions {
  /** Cache spec for this call (default: the model's). */
  kv?: KvOption;
}

export class KiviModel {
  private constructor(
    readonly dir: string,
    readonly config: ModelConfig,
    readonly tokenizer: Tokenizer,
    readonly model: LlamaModel,
    readonly kernels: Kernels,
    readonly kv: KvOption,
  ) {}

  /**
   * Load a model: a directory path (Node), an http(s) URL base whose files are fetched (browsers and
   * Node: `KiviModel.load('https://host/models/llama-28m-gqa/')`), or any ByteSource.
   */
  static async load(location: ModelLocation, opts: LoadOptions = {}): Promise<KiviModel> {
    const kv = opts.kv ?? DEFAULT_KV;
    const spec = toCacheSpec(kv);
    const kernels = await createKernels(opts);
    const m = await loadModel(location, kernels, { onProgress: opts.onProgress });
    validateSpec(spec, m.model.dims);
    return new KiviModel(m.dir, m.config, m.tokenizer, m.model, kernels, kv);
  }

  /**
   * The batching engine behind generate(): concurrent generate() calls share its forward passes.
   * Created on first use.
   */
  get engine(): BatchEngine {
    this.batch ??= new BatchEngine(this.model, this.tokenizer);
    return this.batch;
  }
  private batch?: BatchEngine;

  /** An empty cache for one sequence (free() it when done). */
  newCache(kv: KvOption = this.kv): SequenceCache {
    return createCache(kv, this.model.dims, this.kernels);
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
    const cache = this.newCache(opts.kv ?? this.kv);
    return this.engine.add(ids, cache, opts).stream();
  }

  /** Stop the back end's helper threads and release its memory; the model is unusable afterwards. */
  dispose(): void {
    this.kernels.dispose();
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
