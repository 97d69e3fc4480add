/**
 * The KV cache is the only seam between the model and how keys and values are stored. A cache is one
 * sequence's keys and values for every layer, in pages from its back end's pool; it never hands tensors
 * back. Each forward step follows one protocol, the same for every cache:
 *
 *   1. plan:  cache.plan(stepPlan, row, n) describes, as records (kernels/layout.ts), the attention of
 *             the n new tokens at activation rows [row, row + n) over the cache and over each other
 *             (causally, exactly), and the jobs that fold them into the cache (store, quantize);
 *   2. run:   the back end runs the plan's phases layer after layer (model/llama.ts);
 *   3. end:   endStep() returns the pages the plan freed to the pool.
 *
 * A chunk of n > 1 tokens is a prefill (or a continued prefill): its tokens see each other exactly and
 * the cache as it was. Decoding is n = 1 per sub-step, so each decoded token reads the earlier ones
 * through the cache's storage rules (docs/KIVI.md §5). A quantized cache's attention runs on its packed codes
 * (docs/KIVI.md §6): nothing is dequantized in bulk.
 */

import type { StepPlan } from '../kernels/plan.js';
import type { AttnShape, PagePool } from '../kernels/types.js';
import { KiviError } from '../util/errors.js';
import type { CacheSpec } from './spec.js';

export type CacheDims = AttnShape;

export interface KvCache {
  /** The spec this cache was built from (its name is what CLI and JSON outputs show). */
  readonly spec: CacheSpec;
  /** Where its pages come from (the model's pool). */
  readonly pool: PagePool;
  /** Tokens held (after the last planned step). */
  readonly length: number;
  /**
   * Plan n new tokens at activation rows [row, row + n): their attention and their storage. The cache's
   * bookkeeping advances at once; the data moves when the back end runs the plan.
   */
  plan(plan: StepPlan, row: number, n: number): void;
  /** Bytes of cached data: codes, scales, minimums and full-precision tokens, exactly. */
  bytes(): number;
  /** Bytes of pages held (≥ bytes(): pages are filled slot by slot). What a KV budget counts. */
  allocatedBytes(): number;
  /** Return every page; the cache is empty and reusable afterwards. */
  free(): void;
  /** The cache as it is held: its counters and its pages' bytes (read back from the back end). */
  save(): Promise<CacheImage>;
  /** Fill this empty cache from an image a cache of the same spec and model shape saved. */
  restore(image: CacheImage): void;
}

/** A page's bytes, [layer][kv head][section], and its section size. */
export interface PageImage {
  section: number;
  bytes: Uint8Array;
}

/** A cache as held in memory: tokens, the cache's own counters, and its pages in the cache's order. */
export interface CacheImage {
  length: number;
  state: number[];
  pages: PageImage[];
}

/** Reads an image back in the order it was written; any mismatch is a corrupt image. */
export class ImageReader {
  private s = 0;
  private p = 0;
  constructor(readonly image: CacheImage) {}
  num(): number {
    const v = this.image.state[this.s++];
    if (v === undefined || !Number.isSafeInteger(v) || v < 0) throw new KiviError('corrupt cache image: bad counters');
    return v;
  }
  page(section: number): PageImage {
    const pg = this.image.pages[this.p++];
    if (!pg || pg.section !== section) throw new KiviError('corrupt cache image: pages do not match the cache layout');
    return pg;
  }
  /** Check everything was read. */
  done(): void {
    if (this.s !== this.image.state.length || this.p !== this.image.pages.length) throw new KiviError('corrupt cache image: unread data');
  }
}

/** The pool a cache's pages come from, and the plan's deferred frees returned after a step has run. */
export function endStep(plan: StepPlan, pool: PagePool): void {
  for (const p of plan.freed) pool.free(p);
  plan.freed.length = 0;
}
