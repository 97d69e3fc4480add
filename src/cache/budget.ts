/**
 * Cache bytes as a function of length, without a back end: what admission control and capacity
 * planning need. Between decode steps a cache's contents depend only on how many tokens it holds (KIVI:
 * min(T, S) sink tokens, and of the T' = T − S after them the key residual holds T' mod R tokens, the
 * value residual min(T', R)), so cacheBytes() matches
 * bytes() exactly. What a budget must bound is the pages held, which peakAllocatedBytes() gets by
 * running the cache's own page bookkeeping over the sequence's steps against a pool that only counts.
 */

import { StepPlan } from '../kernels/plan.js';
import type { AttnShape, PagePool } from '../kernels/types.js';
import { packedWords } from '../quant/quantizer.js';
import { keyGroup, sinkTokens, valueGroup, valueMeta8 } from './kivi.js';
import { type CacheSpec, createCache, type SpecBody } from './spec.js';
import type { CacheDims } from './types.js';
import { endStep } from './types.js';

/** Bytes one sequence's cache holds after T tokens (all layers). */
export function cacheBytes(spec: SpecBody, dims: CacheDims, T: number): number {
  const { numLayers: L, numKvHeads: KV, headDim: d } = dims;
  const perLayer = (() => {
    switch (spec.kind) {
      case 'fp32':
        return T * 2 * KV * d * 4;
      case 'fp16':
        return T * 2 * KV * d * 2;
      case 'fake':
        // Full-precision keys/values plus their dequantized shadows.
        return T * 4 * KV * d * 4;
      case 'kivi': {
        const { residual: R, kBits, vBits } = spec;
        const Gk = keyGroup(spec);
        const Gv = valueGroup(spec);
        // vmeta=8: (u, v) bytes per group and float16 (lo, hi) per token instead of float16 scale/min per group.
        const valueMeta = valueMeta8(spec) ? (d / Gv) * 2 + 4 : (d / Gv) * 4;
        const resBytes = spec.residualDtype === 'fp16' ? 2 : 4;
        const sink = Math.min(T, sinkTokens(spec));
        const Ts = T - sink;
        const rk = Ts % R;
        const kq = Ts - rk;
        const rv = Math.min(Ts, R);
        const vq = Ts - rv;
        const keyQ = kq * KV * packedWords(d, kBits) * 4 + (kq / Gk) * KV * d * 4;
        const valQ = vq * KV * (packedWords(d, vBits) * 4 + valueMeta);
        return keyQ + valQ + (rk + rv + 2 * sink) * KV * d * resBytes;
      }
    }
  })();
  return L * perLayer;
}

/**
 * The most bytes the cache holds at any length in [from, T] — a sequence prefilled with `from` tokens
 * and decoded to T. KIVI's bytes rise with length except for a drop at each key flush, so the peak is at
 * T, at `from`, or at the last length before a flush (T − S ≡ R−1 mod R) in the range; teeth grow with length.
 */
export function peakCacheBytes(spec: SpecBody, dims: CacheDims, T: number, from = 1): number {
  let peak = Math.max(cacheBytes(spec, dims, T), cacheBytes(spec, dims, Math.min(from, T)));
  if (spec.kind === 'kivi') {
    const R = spec.residual;
    const S = sinkTokens(spec);
    const tooth = T - ((T - S + 1) % R);
    if (T >= S && tooth >= from) peak = Math.max(peak, cacheBytes(spec, dims, tooth));
  }
  return peak;
}

/** A pool that hands out numbers and counts bytes: page bookkeeping without storage. */
class CountingPool implements PagePool {
  allocatedBytes = 0;
  peakBytes = 0;
  resetPeak(): void {
    this.peakBytes = this.allocatedBytes;
  }
  private next = 1;
  private readonly sizes = new Map<number, number>();
  constructor(
    readonly shape: AttnShape,
    readonly pageBytes: (sectionBytes: number) => number,
    readonly oracleJobs?: boolean,
  ) {}
  alloc(sectionBytes: number): number {
    const b = this.pageBytes(sectionBytes);
    this.sizes.set(this.next, b);
    this.allocatedBytes += b;
    this.peakBytes = Math.max(this.peakBytes, this.allocatedBytes);
    return this.next++;
  }
  free(page: number): void {
    this.allocatedBytes -= this.sizes.get(page)!;
    this.sizes.delete(page);
  }
  readPage(): Promise<Uint8Array> {
    throw new Error('CountingPool holds no data');
  }
  writePage(): void {
    throw new Error('CountingPool holds no data');
  }
}

/**
 * The most page bytes a sequence's cache holds at any moment while it is prefilled with `from` tokens
 * and then decoded one token per step up to T tokens (pages freed by a step count until the step has
 * run, as they do in the real pool). `from` may list the ends of the prefill's chunks instead (one step
 * each, as engine/chunks.ts cuts them; the last is the prompt's length). `pool` supplies the shape and
 * each page's size in the pool.
 */
export function peakAllocatedBytes(
  spec: CacheSpec,
  pool: Pick<PagePool, 'shape' | 'pageBytes' | 'oracleJobs'>,
  T: number,
  from: number | readonly number[] = 1,
): number {
  const counter = new CountingPool(pool.shape, (b) => pool.pageBytes(b), pool.oracleJobs);
  const cache = createCache(spec, counter);
  const plan = new StepPlan('dry');
  let peak = 0;
  const step = (n: number) => {
    plan.clear();
    plan.beginSubstep();
    cache.plan(plan, 0, n);
    peak = Math.max(peak, counter.allocatedBytes);
    endStep(plan, counter);
  };
  const ends = typeof from === 'number' ? [from] : from;
  let t = 0;
  for (const e of ends) {
    const end = Math.min(e, T);
    if (end > t) step(end - t);
    t = Math.max(t, end);
  }
  for (; t < T; t++) step(1);
  return peak;
}
