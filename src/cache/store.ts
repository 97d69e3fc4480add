/**
 * Full-precision key or value storage for one layer, in chunks of CHUNK tokens laid out
 * [kvHead][token][headDim] so attention reads each head contiguously. float32, or float16 bits.
 * Chunks come from the kernel back end's allocator and are never copied when the cache grows.
 */
import type { Kernels } from '../kernels/types.js';
import { toHalfBits, fromHalfBits } from '../quant/float16.js';
import type { AttentionPlan } from '../kernels/plan.js';

export const CHUNK = 256;

export class ChunkedStore {
  readonly chunks: (Float32Array | Uint16Array)[] = [];
  length = 0;

  constructor(
    private readonly kernels: Kernels,
    readonly kvHeads: number,
    readonly d: number,
    readonly half: boolean,
  ) {}

  /** Write one token row [kvHeads·d] at position t (t ≤ length; t == length appends). */
  set(t: number, src: Float32Array, off: number): void {
    const ci = (t / CHUNK) | 0;
    if (ci === this.chunks.length) {
      const n = this.kvHeads * CHUNK * this.d;
      this.chunks.push(this.half ? this.kernels.allocU16(n) : this.kernels.allocF32(n));
    }
    const chunk = this.chunks[ci]!;
    const ti = t - ci * CHUNK;
    const { d } = this;
    for (let h = 0; h < this.kvHeads; h++) {
      const dst = (h * CHUNK + ti) * d;
      const s = off + h * d;
      if (chunk instanceof Float32Array) {
        for (let c = 0; c < d; c++) chunk[dst + c] = src[s + c]!;
      } else {
        for (let c = 0; c < d; c++) chunk[dst + c] = toHalfBits(src[s + c]!);
      }
    }
    if (t === this.length) this.length++;
  }

  push(src: Float32Array, off: number): void {
    this.set(this.length, src, off);
  }

  /** Read token t of head h into dst[dOff..] as float32. */
  get(h: number, t: number, dst: Float32Array, dOff: number): void {
    const ci = (t / CHUNK) | 0;
    const chunk = this.chunks[ci]!;
    const base = (h * CHUNK + (t - ci * CHUNK)) * this.d;
    for (let c = 0; c < this.d; c++) {
      dst[dOff + c] = chunk instanceof Float32Array ? chunk[base + c]! : fromHalfBits(chunk[base + c]!);
    }
  }

  /** Tokens held in chunk ci. */
  chunkTokens(ci: number): number {
    return Math.min(CHUNK, this.length - ci * CHUNK);
  }

  bytes(): number {
    return this.length * this.kvHeads * this.d * (this.half ? 2 : 4);
  }

  reservedBytes(): number {
    return this.chunks.length * this.kvHeads * CHUNK * this.d * (this.half ? 2 : 4);
  }

  free(): void {
    for (const c of this.chunks) this.kernels.free(c);
    this.chunks.length = 0;
    this.length = 0;
  }
}

/** Exact attention of one token's queries over full-precision key/value stores, as plan tasks (one per kv head). */
export function planStores(
  keys: ChunkedStore, values: ChunkedStore, numHeads: number,
  q: Float32Array, qOff: number, out: Float32Array, oOff: number, plan: AttentionPlan,
): void {
  const { kvHeads, d } = keys;
  const nq = numHeads / kvHeads;
  const scale = 1 / Math.sqrt(d);
  for (let h = 0; h < kvHeads; h++) {
    plan.task(q, qOff + h * nq * d, nq, out, oOff + h * nq * d, d, scale);
    for (let ci = 0; ci < keys.chunks.length; ci++) plan.keys(keys.chunks[ci]!, h * CHUNK * d, keys.chunkTokens(ci));
    for (let ci = 0; ci < values.chunks.length; ci++) plan.values(values.chunks[ci]!, h * CHUNK * d, values.chunkTokens(ci));
  }
}
