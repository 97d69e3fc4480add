/**
 * Admission by KV-cache memory. Every request reserves the most page bytes its cache can ever hold — its
 * cache prefilled with the prompt and decoded to its last token, computed exactly by cache/budget.ts from
 * the cache's own page bookkeeping — and joins the engine's running batch only while the reservations of
 * all running requests fit the budget. Since a cache never holds more pages than its reservation, the
 * storage really allocated never exceeds the budget. Requests
 * that do not fit wait in a bounded FIFO queue (first come, first served: a large request is never
 * overtaken forever by small ones); past the queue they are refused with a 429.
 *
 * A prompt prefilled in chunks (--prefill-chunk, prefix-cache blocks) is reserved for that schedule. A
 * request that starts from a restored prefix holds that prefix's pages from its start; its reservation is
 * the cold schedule's peak, which bounds the restored run's (the same steps from the restored length on,
 * and the restored pages are those the cold run holds at that point), so a restore that fails can still
 * start cold within it.
 *
 * Policy only: the engine (engine/batch.ts) knows nothing about budgets.
 */

import { peakAllocatedBytes } from '../cache/budget.js';
import type { CacheSpec } from '../cache/spec.js';
import type { CacheImage, KvCache } from '../cache/types.js';
import type { BatchEngine, PrefillPlan, Sequence } from '../engine/batch.js';
import { chunkEnds } from '../engine/chunks.js';
import type { GenerateOptions } from '../engine/generate.js';
import type { PagePool } from '../kernels/types.js';
import { KiviError } from '../util/errors.js';
import { formatBytes as formatBytesIn } from '../util/format.js';

export interface SchedulerOptions {
  spec: CacheSpec;
  /** The pool caches take pages from (its shape and page sizes fix the reservations; its peak is reported). */
  pool: PagePool;
  /** Most cache bytes all running sequences may hold together. */
  budgetBytes: number;
  /** Most requests waiting for memory; more are refused (429). */
  maxQueue: number;
  /** A fresh, empty cache of `spec`. */
  newCache: () => KvCache;
  /** Chunk grids every prompt is prefilled on (--prefill-chunk, the prefix cache's block). */
  grids?: number[];
}

/** How one request starts: from a restored prefix, and with a hook after each prefill chunk. */
export interface Start {
  /** A cache image holding the prompt's first image.length tokens (fewer than all). */
  image?: CacheImage;
  afterChunk?: PrefillPlan['afterChunk'];
  /** Called when the image could not be restored (the request then prefills cold). */
  onRestoreError?: (err: unknown) => void;
}

interface Waiting {
  promptIds: number[];
  opts: GenerateOptions;
  start: Start;
  bytes: number;
  resolve: (seq: Sequence) => void;
  reject: (err: unknown) => void;
  /** Detach the abort listener. */
  detach: () => void;
}

/** Byte counts formatted for error messages and logs (one decimal). */
export function formatBytes(n: number): string {
  return formatBytesIn(n, 1);
}

export class Scheduler {
  private readonly running = new Map<Sequence, number>();
  private readonly queue: Waiting[] = [];
  private reserved = 0;
  private closed = false;
  /** Most sequences running at once, and most cache bytes in use at the end of any step, since start. */
  maxRunning = 0;
  maxUsedBytes = 0;
  /** Requests refused because the queue was full. */
  rejected = 0;
  private readonly unhook: () => void;
  private endedInStep = 0;

  constructor(
    private readonly engine: BatchEngine,
    readonly opts: SchedulerOptions,
  ) {
    if (!(opts.budgetBytes > 0)) throw new KiviError(`the KV budget must be positive, got ${opts.budgetBytes}`);
    if (!(Number.isInteger(opts.maxQueue) && opts.maxQueue >= 0)) throw new KiviError(`the queue bound must be an integer ≥ 0, got ${opts.maxQueue}`);
    this.unhook = engine.onStep(() => {
      // Sequences that finished in this step held their last bytes until its end, alongside the others.
      this.maxUsedBytes = Math.max(this.maxUsedBytes, this.usedBytes() + this.endedInStep);
      this.endedInStep = 0;
    });
  }

  /**
   * The most cache bytes a request can hold: prefilled with the prompt, then decoded one token per step.
   * The last generated token is sampled but never fed back, so the cache ends at prompt + maxTokens − 1.
   */
  reservation(promptTokens: number, maxTokens: number): number {
    const key = `${promptTokens}:${maxTokens}`;
    let b = this.reservations.get(key);
    if (b === undefined) {
      const grids = this.opts.grids ?? [];
      const prefill = grids.length === 0 ? promptTokens : chunkEnds(0, promptTokens, grids);
      b = peakAllocatedBytes(this.opts.spec, this.opts.pool, promptTokens + maxTokens - 1, prefill);
      if (this.reservations.size >= 1024) this.reservations.delete(this.reservations.keys().next().value!);
      this.reservations.set(key, b);
    }
    return b;
  }
  /** Reservations by prompt and max tokens (requests repeat their shapes; the simulation is O(length)). */
  private readonly reservations = new Map<string, number>();

  get runningCount(): number {
    return this.running.size;
  }

  get queuedCount(): number {
    return this.queue.length;
  }

  get reservedBytes(): number {
    return this.reserved;
  }

  /** Cache bytes the running sequences hold now (bytes(), not reservations). */
  usedBytes(): number {
    let b = 0;
    for (const s of this.running.keys()) b += s.kvBytes();
    return b;
  }

  /** Page bytes the running caches hold (≥ usedBytes: pages fill slot by slot). What the budget bounds. */
  allocatedBytes(): number {
    let b = 0;
    for (const s of this.running.keys()) if (!s.done) b += s.cache.allocatedBytes();
    return b;
  }

  /**
   * Start a generation as soon as its reservation fits. Resolves with the running sequence; rejects with a
   * KiviError: 429 when the queue is full, 400 when the request could never fit the budget, 503 when the
   * server is closing; and with the signal's reason when the signal aborts it while it waits.
   */
  submit(promptIds: number[], opts: GenerateOptions, start: Start = {}): Promise<Sequence> {
    if (this.closed) return Promise.reject(new KiviError('the server is shutting down', 503));
    const maxTokens = opts.maxTokens ?? 128;
    const bytes = this.reservation(promptIds.length, maxTokens);
    if (bytes > this.opts.budgetBytes) {
      return Promise.reject(
        new KiviError(
          `a prompt of ${promptIds.length} tokens with max_tokens ${maxTokens} needs up to ${formatBytes(bytes)} of KV cache, ` +
            `more than the server's whole budget of ${formatBytes(this.opts.budgetBytes)}; lower max_tokens or shorten the prompt`,
          400,
        ),
      );
    }
    if (this.queue.length === 0 && this.fits(bytes)) return Promise.resolve(this.start(promptIds, opts, bytes, start));
    if (this.queue.length >= this.opts.maxQueue) {
      this.rejected++;
      return Promise.reject(
        new KiviError(`server busy: the KV cache budget is in use and ${this.queue.length} requests are already waiting; retry later`, 429),
      );
    }
    if (opts.signal?.aborted) return Promise.reject(opts.signal.reason);
    return new Promise<Sequence>((resolve, reject) => {
      const w: Waiting = { promptIds, opts, start, bytes, resolve, reject, detach: () => {} };
      const signal = opts.signal;
      if (signal) {
        const onAbort = () => {
          const i = this.queue.indexOf(w);
          if (i >= 0) this.queue.splice(i, 1);
          reject(signal.reason);
          // The head may have changed.
          this.admit();
        };
        signal.addEventListener('abort', onAbort, { once: true });
        w.detach = () => signal.removeEventListener('abort', onAbort);
      }
      this.queue.push(w);
    });
  }

  /** Refuse new work, reject every waiting request and cancel every running one (their caches are freed). */
  close(): void {
    this.closed = true;
    for (const w of this.queue.splice(0)) {
      w.detach();
      w.reject(new KiviError('the server is shutting down', 503));
    }
    for (const s of [...this.running.keys()]) s.cancel();
    this.unhook();
  }

  private fits(bytes: number): boolean {
    return this.reserved + bytes <= this.opts.budgetBytes;
  }

  private start(promptIds: number[], opts: GenerateOptions, bytes: number, start: Start): Sequence {
    const cache = this.opts.newCache();
    if (start.image) {
      try {
        cache.restore(start.image);
      } catch (e) {
        // The image passed its checksum, so this is not expected; the cold start fits the same reservation.
        cache.free();
        start.onRestoreError?.(e);
      }
    }
    // engine.add validates the request and frees the cache if it throws; nothing is reserved until it succeeds.
    const seq = this.engine.add(promptIds, cache, opts, { grids: this.opts.grids, afterChunk: start.afterChunk });
    if (seq.done) return seq;
    this.reserved += bytes;
    this.running.set(seq, bytes);
    this.maxRunning = Math.max(this.maxRunning, this.running.size);
    seq.onEnd(() => this.release(seq));
    return seq;
  }

  private release(seq: Sequence): void {
    const bytes = this.running.get(seq);
    if (bytes === undefined) return;
    this.running.delete(seq);
    this.reserved -= bytes;
    // Only a step finishes a sequence (eos, stop, length); a cancel happens between steps.
    if (seq.finishReason !== 'abort') this.endedInStep += seq.kvBytesAtEnd;
    this.admit();
  }

  /** Start waiting requests, in order, while the head fits. */
  private admit(): void {
    while (this.queue.length > 0 && this.fits(this.queue[0]!.bytes)) {
      const w = this.queue.shift()!;
      w.detach();
      try {
        w.resolve(this.start(w.promptIds, w.opts, w.bytes, w.start));
      } catch (e) {
        w.reject(e);
      }
    }
  }
}
