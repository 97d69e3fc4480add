/**
 * Single-sequence generation: prefill the prompt, then sample and decode one token at a time, streamed
 * as an async iterator. The cache is freed when generation ends, however it ends.
 */
import type { LlamaModel } from '../model/llama.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import { StreamDecoder } from '../tokenizer/tokenizer.js';
import { Sampler, type SamplingOptions, validateSampling } from './sampling.js';
import { StopMatcher } from './stop.js';
import type { SequenceCache } from '../cache/types.js';
import { KiviError } from '../util/errors.js';

export interface GenerateOptions extends SamplingOptions {
  /** Most tokens to generate (default 128). */
  maxTokens?: number;
  /** Stop when the generated text contains any of these (the stop string is not returned). */
  stop?: string[];
  /** Keep generating through end-of-sequence tokens (benchmarks, reference comparisons). */
  ignoreEos?: boolean;
  /** Abort generation (the cache is freed). */
  signal?: AbortSignal;
}

export interface GenerateChunk {
  /** The token just generated; null for text released when generation ends. */
  token: number | null;
  /** Text that became final with this token (may be empty). */
  text: string;
}

export type FinishReason = 'stop' | 'length' | 'eos' | 'abort';

export interface GenerateResult {
  ids: number[];
  text: string;
  promptTokens: number;
  finishReason: FinishReason;
  /** Cache bytes held after the last step (codes + scales + minimums + residual). */
  kvBytes: number;
  prefillSeconds: number;
  decodeSeconds: number;
  /** Decode forward passes run (generated tokens − 1, the first token comes from the prefill). */
  decodeSteps: number;
}

export function checkContext(promptTokens: number, maxTokens: number, context: number): void {
  if (promptTokens === 0) throw new KiviError('empty prompt');
  if (promptTokens > context) {
    throw new KiviError(`prompt of ${promptTokens} tokens is longer than the model's context of ${context}`);
  }
  if (promptTokens + maxTokens > context) {
    throw new KiviError(`prompt of ${promptTokens} tokens + ${maxTokens} new tokens exceeds the model's context of ${context}`);
  }
}

const now = () => performance.now() / 1000;
const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

export async function* generateTokens(
  model: LlamaModel, tokenizer: Tokenizer, cache: SequenceCache, promptIds: number[], opts: GenerateOptions = {},
): AsyncGenerator<GenerateChunk, GenerateResult, void> {
  const maxTokens = opts.maxTokens ?? 128;
  try {
    if (!Number.isInteger(maxTokens) || maxTokens < 1) throw new KiviError(`max tokens must be an integer ≥ 1, got ${maxTokens}`);
    validateSampling(opts);
    checkContext(promptIds.length, maxTokens, model.config.maxPositions);
    if (cache.length !== 0) throw new KiviError('generate needs an empty cache');
    const sampler = new Sampler(opts);
    const decoder = new StreamDecoder(tokenizer);
    const stops = new StopMatcher(opts.stop ?? []);
    const ids: number[] = [];
    let finishReason: FinishReason = 'length';

    const t0 = now();
    let logits = model.forward([{ tokens: promptIds, cache, logits: 'last' }])[0]!;
    const prefillSeconds = now() - t0;
    let decodeSeconds = 0;
    let decodeSteps = 0;

    for (;;) {
      const tok = sampler.sample(logits);
      if (!opts.ignoreEos && tokenizer.isEos(tok)) {
        finishReason = 'eos';
        break;
      }
      ids.push(tok);
      const { emit, stopped } = stops.push(decoder.push(tok));
      yield { token: tok, text: emit };
      if (stopped) {
        finishReason = 'stop';
        break;
      }
      if (ids.length >= maxTokens) break;
      if (opts.signal?.aborted) {
        finishReason = 'abort';
        break;
      }
      await tick();
      const t1 = now();
      logits = model.forward([{ tokens: [tok], cache, logits: 'last' }])[0]!;
      decodeSeconds += now() - t1;
      decodeSteps++;
    }
    if (finishReason !== 'stop') {
      const rest = stops.push(decoder.flush()).emit + stops.flush();
      if (rest) yield { token: null, text: rest };
    }
    return {
      ids, text: stops.fullText, promptTokens: promptIds.length, finishReason, kvBytes: cache.bytes(),
      prefillSeconds, decodeSeconds, decodeSteps,
    };
  } finally {
    cache.free();
  }
}
