/**
 * Continuous batching: many sequences of different lengths advance together, one forward pass (one read
 * of the weights) per step. A sequence joins between steps (its prompt is prefilled in the step it
 * joins, alongside the others' decode tokens) and leaves when it finishes or is cancelled, freeing its
 * cache at once. Each sequence owns its cache, sampler and stop matcher, so batching never changes what
 * a sequence generates.
 *
 * A prompt may be prefilled in chunks, one per step (engine/chunks.ts: chunk ends on fixed grids), so a
 * long prompt does not stall the others' decoding for one whole forward; and a sequence may start from a
 * cache that already holds the first tokens of its prompt (restored from a cache file): only the rest is
 * prefilled, as a continued prefill.
 */

import type { KvCache } from '../cache/types.js';
import type { LlamaModel } from '../model/llama.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import { StreamDecoder } from '../tokenizer/tokenizer.js';
import { KiviError } from '../util/errors.js';
import { nextMacrotask } from '../util/macrotask.js';
import { checkGrid, nextChunkEnd } from './chunks.js';
import type { FinishReason, GenerateChunk, GenerateOptions, GenerateResult } from './generate.js';
import { Sampler, validateSampling } from './sampling.js';
import { StopMatcher } from './stop.js';

const now = () => performance.now() / 1000;

export function checkContext(promptTokens: number, maxTokens: number, context: number): void {
  if (promptTokens === 0) throw new KiviError('empty prompt');
  if (promptTokens > context) {
    throw new KiviError(`prompt of ${promptTokens} tokens is longer than the model's context of ${context}`);
  }
  if (promptTokens + maxTokens > context) {
    throw new KiviError(`prompt of ${promptTokens} tokens + ${maxTokens} new tokens exceeds the model's context of ${context}`);
  }
}

/** One generation in a batch: an async iterator of chunks whose return value is the result. */
export class Sequence implements AsyncIterable<GenerateChunk> {
  readonly ids: number[] = [];
  finishReason: FinishReason | null = null;
  error: unknown = null;
  prefillSeconds = 0;
  decodeSeconds = 0;
  decodeSteps = 0;
  /** Cache bytes when the sequence finished (its cache is freed then). */
  kvBytesAtEnd = 0;
  /** The token to feed at the next step (null until the prompt is prefilled). */
  next: number | null = null;
  /** Prompt tokens the cache held when the sequence joined (a restored prefix): not prefilled again. */
  readonly reusedTokens: number;
  /** Prompt tokens in the cache so far. */
  prefilled: number;

  private readonly sampler: Sampler;
  private readonly decoder: StreamDecoder;
  private readonly stops: StopMatcher;
  private readonly chunks: GenerateChunk[] = [];
  private wake: (() => void) | null = null;
  private readonly endListeners: ((seq: Sequence) => void)[] = [];
  readonly maxTokens: number;

  constructor(
    readonly id: number,
    readonly promptIds: number[],
    readonly cache: KvCache,
    tokenizer: Tokenizer,
    readonly opts: GenerateOptions,
    private readonly engine: BatchEngine,
    readonly prefill: PrefillPlan = {},
  ) {
    this.reusedTokens = cache.length;
    this.prefilled = cache.length;
    this.maxTokens = opts.maxTokens ?? 128;
    this.sampler = new Sampler(opts);
    this.decoder = new StreamDecoder(tokenizer);
    this.stops = new StopMatcher(opts.stop ?? []);
  }

  get done(): boolean {
    return this.finishReason !== null || this.error !== null;
  }

  /** Cache bytes held now (0 once finished: the cache is freed). */
  kvBytes(): number {
    return this.done ? 0 : this.cache.bytes();
  }

  get text(): string {
    return this.stops.fullText;
  }

  /** Call `fn` once when the sequence ends (finished, cancelled or failed), right after its cache is freed. */
  onEnd(fn: (seq: Sequence) => void): void {
    if (this.done) fn(this);
    else this.endListeners.push(fn);
  }

  /** Stop generating and free the cache now. */
  cancel(): void {
    if (this.done) return;
    this.engine.remove(this);
    this.finish('abort');
  }

  /** Greedy sequences need only the argmax of their logits, which the back end computes. */
  get greedy(): boolean {
    return (this.opts.temperature ?? 0) === 0;
  }

  /** Called by the engine with this step's logits row, or the argmax id for a greedy sequence. */
  accept(result: Float32Array | number, tokenizer: Tokenizer): void {
    const tok = typeof result === 'number' ? result : this.sampler.sample(result, 0, result.length);
    if (!this.opts.ignoreEos && tokenizer.isEos(tok)) {
      this.finish('eos');
      return;
    }
    this.ids.push(tok);
    const { emit, stopped } = this.stops.push(this.decoder.push(tok));
    this.push({ token: tok, text: emit });
    if (stopped) this.finish('stop');
    else if (this.ids.length >= this.maxTokens) this.finish('length');
    else this.next = tok;
  }

  /** Mark finished (the engine has already removed it from the batch), release trailing text, free the cache. */
  finish(reason: FinishReason): void {
    if (this.done) return;
    if (reason !== 'stop') {
      const rest = this.stops.push(this.decoder.flush()).emit + this.stops.flush();
      if (rest) this.push({ token: null, text: rest });
    }
    this.kvBytesAtEnd = this.cache.bytes();
    this.cache.free();
    this.finishReason = reason;
    this.ended();
  }

  fail(err: unknown): void {
    if (this.done) return;
    this.cache.free();
    this.error = err;
    this.ended();
  }

  private ended(): void {
    this.signal();
    for (const fn of this.endListeners.splice(0)) fn(this);
  }

  result(): GenerateResult {
    return {
      ids: this.ids,
      text: this.stops.fullText,
      promptTokens: this.promptIds.length,
      reusedTokens: this.reusedTokens,
      finishReason: this.finishReason ?? 'abort',
      kvBytes: this.kvBytesAtEnd,
      prefillSeconds: this.prefillSeconds,
      decodeSeconds: this.decodeSeconds,
      decodeSteps: this.decodeSteps,
    };
  }

  private push(c: GenerateChunk): void {
    this.chunks.push(c);
    this.signal();
  }

  private signal(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  /** Iterate chunks as they are generated; the generator's return value is the result. */
  async *stream(): AsyncGenerator<GenerateChunk, GenerateResult, void> {
    try {
      for (;;) {
        while (this.chunks.length > 0) yield this.chunks.shift()!;
        if (this.error !== null) throw this.error;
        if (this.finishReason !== null) return this.result();
        await new Promise<void>((resolve) => (this.wake = resolve));
      }
    } finally {
      // A consumer that stops iterating early cancels the sequence.
      if (!this.done) this.cancel();
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<GenerateChunk> {
    return this.stream();
  }
}

/** How a sequence's prompt is prefilled, beyond GenerateOptions.prefillChunk. */
export interface PrefillPlan {
  /** More chunk grids: a chunk also ends at every multiple of each (a prefix cache's blocks). */
  grids?: number[];
  /**
   * Called after each prefill chunk, once the step has run and before any later step changes the cache
   * (the cache then holds `length` prompt tokens): a prefix cache saves it here. The engine waits for it,
   * so it must not wait on anything slow; its errors are ignored. If the sequence is `done` when a
   * cache.save() resolves, it was cancelled meanwhile and the image must be dropped.
   */
  afterChunk?: (seq: Sequence, length: number) => Promise<void> | void;
}

export interface BatchEngineOptions {
  /** Most sequences decoding at once (default unlimited; the server's admission bounds memory). */
  maxBatch?: number;
}

export class BatchEngine {
  private readonly active: Sequence[] = [];
  private readonly joining: Sequence[] = [];
  private nextId = 1;
  private running = false;
  /** Tokens generated since the engine started, for metrics. */
  generatedTokens = 0;
  /** Prompt tokens run through prefill forwards (restored prefixes not included). */
  prefilledTokens = 0;
  steps = 0;
  /** Seconds spent in forward passes. */
  busySeconds = 0;
  private readonly stepListeners: (() => void)[] = [];

  constructor(
    readonly model: LlamaModel,
    readonly tokenizer: Tokenizer,
    readonly opts: BatchEngineOptions = {},
  ) {}

  /** Sequences in the batch or about to join it. */
  get size(): number {
    return this.active.length + this.joining.length;
  }

  get sequences(): readonly Sequence[] {
    return [...this.active, ...this.joining];
  }

  /**
   * Queue a generation; it joins the batch at the next step. The cache is owned by the sequence from now
   * on. It is empty, or holds the first cache.length tokens of the prompt (fewer than all of them: the
   * last one's logits start generation) — the caller vouches that they are those tokens.
   */
  add(promptIds: number[], cache: KvCache, opts: GenerateOptions = {}, prefill: PrefillPlan = {}): Sequence {
    let grids: number[];
    try {
      const maxTokens = opts.maxTokens ?? 128;
      if (!Number.isInteger(maxTokens) || maxTokens < 1) throw new KiviError(`max tokens must be an integer ≥ 1, got ${maxTokens}`);
      validateSampling(opts);
      checkContext(promptIds.length, maxTokens, this.model.config.maxPositions);
      if (cache.length >= promptIds.length) {
        throw new KiviError(`the cache holds ${cache.length} tokens; a prompt of ${promptIds.length} tokens must add at least one`);
      }
      grids = [...(prefill.grids ?? [])];
      if (opts.prefillChunk !== undefined) grids.push(opts.prefillChunk);
      for (const g of grids) checkGrid(g, 'the prefill chunk');
    } catch (e) {
      cache.free();
      throw e;
    }
    const seq = new Sequence(this.nextId++, promptIds, cache, this.tokenizer, opts, this, { ...prefill, grids });
    this.joining.push(seq);
    if (opts.signal) {
      if (opts.signal.aborted) seq.cancel();
      else opts.signal.addEventListener('abort', () => seq.cancel(), { once: true });
    }
    this.kick();
    return seq;
  }

  /** Call `fn` after every step, once finished sequences have left the batch (metrics, memory checks). */
  onStep(fn: () => void): () => void {
    this.stepListeners.push(fn);
    return () => {
      const i = this.stepListeners.indexOf(fn);
      if (i >= 0) this.stepListeners.splice(i, 1);
    };
  }

  /** Take a sequence out of the batch (it is finishing or cancelled). */
  remove(seq: Sequence): void {
    for (const list of [this.active, this.joining]) {
      const i = list.indexOf(seq);
      if (i >= 0) list.splice(i, 1);
    }
  }

  /** One forward pass over every sequence: joiners prefill their prompt (or its next chunk), the rest decode one token. */
  async step(): Promise<void> {
    const max = this.opts.maxBatch ?? Infinity;
    while (this.joining.length > 0 && this.active.length < max) this.active.push(this.joining.shift()!);
    const batch = this.active.slice();
    if (batch.length === 0) return;
    // Where each prefilling sequence's chunk ends (its prompt length: the last chunk, which gives logits).
    const ends = batch.map((s) => (s.next === null ? nextChunkEnd(s.prefilled, s.promptIds.length, s.prefill.grids!) : 0));
    const items = batch.map((s, i) => {
      const logits = s.greedy ? ('argmax' as const) : ('last' as const);
      if (s.next !== null) return { tokens: [s.next], cache: s.cache, logits };
      const end = ends[i]!;
      const whole = s.prefilled === 0 && end === s.promptIds.length;
      return {
        tokens: whole ? s.promptIds : s.promptIds.slice(s.prefilled, end),
        cache: s.cache,
        mode: 'prefill' as const,
        logits: end === s.promptIds.length ? logits : ('none' as const),
      };
    });
    const t0 = now();
    let logits: (Float32Array | number | null)[];
    try {
      logits = await this.model.forward(items);
    } catch (e) {
      for (const s of batch) {
        this.remove(s);
        s.fail(e);
      }
      this.stepped();
      return;
    }
    const dt = now() - t0;
    this.busySeconds += dt;
    this.steps++;
    // Prefill chunks first: the hooks read caches before accept() can finish a sequence and free its cache.
    for (let i = 0; i < batch.length; i++) {
      const s = batch[i]!;
      if (s.next !== null) continue;
      s.prefillSeconds += dt;
      this.prefilledTokens += ends[i]! - s.prefilled;
      s.prefilled = ends[i]!;
      if (!s.done && s.prefill.afterChunk) {
        try {
          await s.prefill.afterChunk(s, s.prefilled);
        } catch {
          // A hook's failure (a store's) never fails the sequence.
        }
      }
    }
    for (let i = 0; i < batch.length; i++) {
      const s = batch[i]!;
      if (s.next === null) {
        if (s.prefilled < s.promptIds.length) continue; // more chunks to go
      } else {
        s.decodeSeconds += dt;
        s.decodeSteps++;
      }
      if (s.done) continue; // cancelled while the step ran
      s.accept(logits[i]!, this.tokenizer);
      if (s.finishReason === null) this.generatedTokens++;
      else {
        if (s.ids.length > 0 && s.finishReason !== 'eos') this.generatedTokens++;
        this.remove(s);
      }
    }
    this.stepped();
  }

  private stepped(): void {
    for (const fn of this.stepListeners) fn();
  }

  /** Run steps until no sequence is left, yielding to the event loop between steps. */
  private kick(): void {
    if (this.running) return;
    this.running = true;
    const loop = async () => {
      if (this.size === 0) {
        this.running = false;
        return;
      }
      await this.step();
      nextMacrotask(() => void loop());
    };
    nextMacrotask(() => void loop());
  }
}
