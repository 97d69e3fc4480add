/** Full-precision caches: `fp32` (what the reference computes with) and `fp16` (stores float16, computes in float32). */

import { JOB_KEYS, JOB_VALUES, SEG_F16, SEG_F32 } from '../kernels/layout.js';
import type { StepPlan } from '../kernels/plan.js';
import type { PagePool } from '../kernels/types.js';
import { KiviError } from '../util/errors.js';
import { PagedRows } from './paged.js';
import type { CacheSpec } from './spec.js';
import { type CacheImage, ImageReader, type KvCache } from './types.js';

/** Tokens per page of a dense cache. */
export const DENSE_PAGE = 64;

export class DenseCache implements KvCache {
  private readonly k: PagedRows;
  private readonly v: PagedRows;
  private readonly bytesPerToken: number;

  constructor(
    readonly spec: CacheSpec & { kind: 'fp32' | 'fp16' },
    readonly pool: PagePool,
  ) {
    const { headDim: d, numLayers: L, numKvHeads: KV } = pool.shape;
    const kind = spec.kind === 'fp16' ? SEG_F16 : SEG_F32;
    this.k = new PagedRows(pool, kind, DENSE_PAGE, d, true);
    this.v = new PagedRows(pool, kind, DENSE_PAGE, d, true);
    this.bytesPerToken = 2 * L * KV * d * (spec.kind === 'fp16' ? 2 : 4);
  }

  get length(): number {
    return this.k.count;
  }

  plan(plan: StepPlan, row: number, n: number): void {
    const T0 = this.length;
    // A plan without tasks (filling) skips the per-token page lists: O(n × pages) otherwise.
    for (let i = 0; plan.takesTasks && i < n; i++) {
      plan.task(row + i, T0 + i + 1);
      this.k.segments(plan, false);
      plan.keyRows(row, i + 1);
      this.v.segments(plan, true);
      plan.valueRows(row, i + 1);
    }
    this.k.store(plan, JOB_KEYS, row, n);
    this.v.store(plan, JOB_VALUES, row, n);
  }

  bytes(): number {
    return this.length * this.bytesPerToken;
  }

  allocatedBytes(): number {
    return this.k.allocatedBytes() + this.v.allocatedBytes();
  }

  free(): void {
    this.k.clearAt(null, 0);
    this.v.clearAt(null, 0);
  }

  async save(): Promise<CacheImage> {
    const img: CacheImage = { length: this.length, state: [], pages: [] };
    await this.k.save(img);
    await this.v.save(img);
    return img;
  }

  restore(image: CacheImage): void {
    if (this.length !== 0) throw new Error('restore into a non-empty cache');
    const r = new ImageReader(image);
    this.k.restore(r);
    this.v.restore(r);
    r.done();
    checkLength(this, image);
  }
}

/** A restored cache must hold the tokens its image says. */
export function checkLength(c: KvCache, image: CacheImage): void {
  if (c.length !== image.length) throw new KiviError(`corrupt cache image: ${c.length} tokens restored, ${image.length} expected`);
}
