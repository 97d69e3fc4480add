/**
 * Simulated ("fake") quantization for the paper's comparison of quantization axes (docs/KIVI.md §8):
 * full-precision keys and values are kept, and at every decode step attention reads the
 * quantize-dequantize of *all* of them (no residual), per token (groups of G channels) or per channel
 * (groups of G consecutive tokens counted from token 0, the last partial group as it is).
 *
 * Recomputing everything each step gives the same numbers as updating only what can change: a token's
 * per-token groups never change, and only the last per-channel group gains members. So a dequantized
 * shadow copy is kept and refreshed from the first changed group. This cache materializes dequantized
 * values on purpose: it is an analysis tool, not a memory saver.
 *
 * A decode step (one new token after a prefill) refreshes the shadows in the plan's pre phase, so its
 * attention reads the new token quantized too; a prefill or a longer chunk attends exactly (docs/KIVI.md §8:
 * prefill attention stays exact) and refreshes the shadows afterwards.
 */

import { JOB_FAKE_CHANNEL, JOB_FAKE_TOKEN, JOB_KEYS, JOB_VALUES, SEG_F32, SEG_ROWS } from '../kernels/layout.js';
import type { StepPlan } from '../kernels/plan.js';
import type { PagePool } from '../kernels/types.js';
import type { Bits } from '../quant/quantizer.js';
import { checkLength } from './dense.js';
import { PagedRows } from './paged.js';
import type { CacheSpec } from './spec.js';
import { type CacheImage, ImageReader, type KvCache } from './types.js';

export type Axis = 'token' | 'channel';

export interface FakeOptions {
  bits: Bits;
  keyAxis: Axis;
  valueAxis: Axis;
  groupSize: number;
}

export class FakeQuantCache implements KvCache {
  private readonly k: PagedRows;
  private readonly v: PagedRows;
  private readonly kq: PagedRows;
  private readonly vq: PagedRows;
  private readonly bytesPerToken: number;

  constructor(
    readonly spec: CacheSpec & { kind: 'fake' },
    readonly pool: PagePool,
  ) {
    const { headDim: d, numLayers: L, numKvHeads: KV } = pool.shape;
    const G = spec.groupSize;
    // A multiple of G, so every per-channel group lies within one page.
    const cap = G * Math.ceil(64 / G);
    const mk = () => new PagedRows(pool, SEG_F32, cap, d);
    this.k = mk();
    this.v = mk();
    this.kq = mk();
    this.vq = mk();
    this.bytesPerToken = 4 * L * KV * d * 4;
  }

  get length(): number {
    return this.k.count;
  }

  plan(plan: StepPlan, row: number, n: number): void {
    const T0 = this.length;
    if (n === 1 && T0 > 0) {
      this.refresh(plan, 'pre', row, 1, T0);
      plan.task(row, T0 + 1);
      this.kq.segments(plan, false);
      this.vq.segments(plan, true);
    } else {
      for (let i = 0; plan.takesTasks && i < n; i++) {
        plan.task(row + i, T0 + i + 1);
        this.kq.segments(plan, false, 0, T0);
        plan.keyRows(row, i + 1);
        this.vq.segments(plan, true, 0, T0);
        plan.valueRows(row, i + 1);
      }
      this.refresh(plan, 'post', row, n, T0);
    }
    this.k.store(plan, JOB_KEYS, row, n);
    this.v.store(plan, JOB_VALUES, row, n);
  }

  /** Shadows of tokens [T0, T0 + n) (rows from `row`), and of the per-channel group they complete. */
  private refresh(plan: StepPlan, phase: 'pre' | 'post', row: number, n: number, T0: number): void {
    const { bits, groupSize: G } = this.spec;
    const halves = [
      [JOB_KEYS, this.spec.keyAxis, this.k, this.kq],
      [JOB_VALUES, this.spec.valueAxis, this.v, this.vq],
    ] as const;
    for (const [half, axis, full, shadow] of halves) {
      shadow.reserve(n);
      if (axis === 'token') {
        // One job per destination page.
        for (let t = T0; t < T0 + n; ) {
          const end = Math.min(T0 + n, (Math.floor((t - shadow.base) / shadow.cap) + 1) * shadow.cap + shadow.base);
          plan.job(phase, JOB_FAKE_TOKEN, half, bits);
          plan.src(SEG_ROWS, row + t - T0, 0, end - t);
          shadow.destination(plan, t, end, G);
          t = end;
        }
      } else {
        for (let g0 = Math.floor(T0 / G) * G; g0 < T0 + n; g0 += G) {
          const end = Math.min(g0 + G, T0 + n);
          plan.job(phase, JOB_FAKE_CHANNEL, half, bits);
          if (g0 < T0) full.sources(plan, g0, T0);
          plan.src(SEG_ROWS, row + Math.max(g0, T0) - T0, 0, end - Math.max(g0, T0));
          shadow.destination(plan, g0, end, G);
        }
      }
    }
  }

  bytes(): number {
    return this.length * this.bytesPerToken;
  }

  allocatedBytes(): number {
    return this.k.allocatedBytes() + this.v.allocatedBytes() + this.kq.allocatedBytes() + this.vq.allocatedBytes();
  }

  free(): void {
    for (const s of [this.k, this.v, this.kq, this.vq]) s.clearAt(null, 0);
  }

  async save(): Promise<CacheImage> {
    const img: CacheImage = { length: this.length, state: [], pages: [] };
    for (const s of [this.k, this.v, this.kq, this.vq]) await s.save(img);
    return img;
  }

  restore(image: CacheImage): void {
    if (this.length !== 0) throw new Error('restore into a non-empty cache');
    const r = new ImageReader(image);
    for (const s of [this.k, this.v, this.kq, this.vq]) s.restore(r);
    r.done();
    checkLength(this, image);
  }
}
