/** Full-precision caches: `fp32` (what the reference computes with) and `fp16` (stores float16, computes in float32). */
import type { Kernels } from '../kernels/types.js';
import type { AttentionPlan } from '../kernels/plan.js';
import { AttnScratch, type CacheDims, type LayerCache, attendNow } from './types.js';
import { ChunkedStore, planStores } from './store.js';

export class DenseLayerCache implements LayerCache {
  private readonly k: ChunkedStore;
  private readonly v: ChunkedStore;

  constructor(private readonly dims: CacheDims, private readonly kernels: Kernels, half: boolean) {
    this.k = new ChunkedStore(kernels, dims.numKvHeads, dims.headDim, half);
    this.v = new ChunkedStore(kernels, dims.numKvHeads, dims.headDim, half);
  }

  get length(): number {
    return this.k.length;
  }

  prefill(k: Float32Array, kOff: number, v: Float32Array, vOff: number, T: number): void {
    const row = this.dims.numKvHeads * this.dims.headDim;
    for (let t = 0; t < T; t++) {
      this.k.push(k, kOff + t * row);
      this.v.push(v, vOff + t * row);
    }
  }

  append(k: Float32Array, kOff: number, v: Float32Array, vOff: number): void {
    this.k.push(k, kOff);
    this.v.push(v, vOff);
  }

  attend(q: Float32Array, qOff: number, out: Float32Array, oOff: number, scratch: AttnScratch): void {
    attendNow(this, this.kernels, q, qOff, out, oOff, scratch);
  }

  planAttend(q: Float32Array, qOff: number, out: Float32Array, oOff: number, plan: AttentionPlan): void {
    planStores(this.k, this.v, this.dims.numHeads, q, qOff, out, oOff, plan);
  }

  endStep(): void { /* nothing to reorganize */ }

  bytes(): number {
    return this.k.bytes() + this.v.bytes();
  }

  reservedBytes(): number {
    return this.k.reservedBytes() + this.v.reservedBytes();
  }

  free(): void {
    this.k.free();
    this.v.free();
  }

  read(): { k: Float32Array; v: Float32Array } {
    return { k: readStore(this.k), v: readStore(this.v) };
  }
}

/** Copy a store out as float32 [kvHead][token][d]. */
export function readStore(s: ChunkedStore): Float32Array {
  const out = new Float32Array(s.kvHeads * s.length * s.d);
  for (let h = 0; h < s.kvHeads; h++) {
    for (let t = 0; t < s.length; t++) s.get(h, t, out, (h * s.length + t) * s.d);
  }
  return out;
}
