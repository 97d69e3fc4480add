/**
 * Generation options and results. A single generation is a batch of one (engine/batch.ts), so the
 * library, the CLI and the server share one code path.
 */
import type { SamplingOptions } from './sampling.js';

export interface GenerateOptions extends SamplingOptions {
  /** Most tokens to generate (default 128). */
  maxTokens?: number;
  /** Stop when the generated text contains any of these (the stop string is not returned). */
  stop?: string[];
  /** Keep generating through end-of-sequence tokens (benchmarks, reference comparisons). */
  ignoreEos?: boolean;
  /** Abort generation (the cache is freed at once). */
  signal?: AbortSignal;
  /**
   * Prefill the prompt in chunks that end at multiples of this many tokens, one chunk per engine step,
   * so other sequences keep decoding between them (default: the whole prompt in one step).
   */
  prefillChunk?: number;
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
  /** Prompt tokens the sequence started with in its cache (a restored prefix), not prefilled again. */
  reusedTokens: number;
  finishReason: FinishReason;
  /** Cache bytes held after the last step (codes + scales + minimums + residual). */
  kvBytes: number;
  /** Seconds of the forward passes that prefilled the prompt (all its chunks). */
  prefillSeconds: number;
  /** Seconds of the decode forward passes. */
  decodeSeconds: number;
  /** Decode forward passes run (generated tokens − 1: the first token comes from the prefill). */
  decodeSteps: number;
}
