/**
 * Simulated ("fake") quantization for the paper's comparison of quantization axes (docs/KIVI.md §8):
 * full-precision keys and values are kept, and at every decode step attention reads the
 * quantize-dequantize of *all* of them (no residual), per token (groups of G channels) or per channel
 * (groups of G consecutive tokens counted from token 0, the last partial group as it is).
 *
 * Recomputing everything each step gives the same numbers as updating only what can change: a token's
 * per-token groups never change, and only the last per-channel group gains members. So a dequantized
 * shadow copy is kept and refreshed from the first changed token. This cache materializes dequantized
 * values on purpose: it is an analysis tool, not a memory saver.
 */
import type { Kernels } from '../kernels/types.js';
import { type Bits, fakeQuantizeGroup } from '../quant/quantizer.js';
import type { AttentionPlan } from '../kernels/plan.js';
import { AttnScratch, type CacheDims, type LayerCache, attendNow } from './types.js';
import { ChunkedStore, planStores } from './store.js';
import { readStore } from './dense.js';
import { KiviError } from '../util/errors.js';

export type Axis = 'token' | 'channel';

export interface FakeOptions {
  bits: Bits;
  keyAxis: Axis;
  valueAxis: Axis;
  groupSize: number;
}

export class FakeQuantLayerCache implements LayerCache {
  private readonly k: ChunkedStore;
  private readonly v: ChunkedStore;
  private readonly kq: ChunkedStore;
  private readonly vq: ChunkedStore;
  private readonly x: Float32Array;
  private readonly y: Float32Array;
  private readonly rows: Float32Array;
  private readonly codes: Uint8Array;
  private readonly sc = new Uint16Array(1);
  private readonly mn = new Uint16Array(1);

  constructor(private readonly dims: CacheDims, private readonly kernels: Kernels, readonly opts: FakeOptions) {
    const G = opts.groupSize;
    if (!Number.isInteger(G) || G <= 0) throw new KiviError(`fake-quant group size must be a positive integer, got ${G}`);
    if ((opts.keyAxis === 'token' || opts.valueAxis === 'token') && dims.headDim % G !== 0) {
      throw new KiviError(`fake-quant group size G=${G} must divide head_dim ${dims.headDim} for per-token groups`);
    }
    const mk = () => new ChunkedStore(kernels, dims.numKvHeads, dims.headDim, false);
    this.k = mk();
    this.v = mk();
    this.kq = mk();
    this.vq = mk();
    this.x = new Float32Array(G * dims.headDim);
    this.y = new Float32Array(G * dims.headDim);
    this.rows = new Float32Array(G * dims.numKvHeads * dims.headDim);
    this.codes = new Uint8Array(Math.max(G, dims.headDim));
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
    this.refresh(this.k, this.kq, this.opts.keyAxis, 0);
    this.refresh(this.v, this.vq, this.opts.valueAxis, 0);
  }

  append(k: Float32Array, kOff: number, v: Float32Array, vOff: number): void {
    const t = this.k.length;
    this.k.push(k, kOff);
    this.v.push(v, vOff);
    this.refresh(this.k, this.kq, this.opts.keyAxis, t);
    this.refresh(this.v, this.vq, this.opts.valueAxis, t);
  }

  attend(q: Float32Array, qOff: number, out: Float32Array, oOff: number, scratch: AttnScratch): void {
    attendNow(this, this.kernels, q, qOff, out, oOff, scratch);
  }

  planAttend(q: Float32Array, qOff: number, out: Float32Array, oOff: number, plan: AttentionPlan): void {
    planStores(this.kq, this.vq, this.dims.numHeads, q, qOff, out, oOff, plan);
  }

  endStep(): void { /* the shadow copies are refreshed on append */ }

  /** Re-derive the shadow rows of every group touched by tokens ≥ from. */
  private refresh(src: ChunkedStore, dst: ChunkedStore, axis: Axis, from: number): void {
    const { numKvHeads: kv, headDim: d } = this.dims;
    const { bits, groupSize: G } = this.opts;
    const T = src.length;
    const { x, y, rows, codes, sc, mn } = this;
    const row = kv * d;
    if (axis === 'token') {
      for (let t = from; t < T; t++) {
        for (let h = 0; h < kv; h++) {
          src.get(h, t, x, 0);
          for (let g = 0; g < d; g += G) fakeQuantizeGroup(x, g, 1, G, bits, rows, h * d + g, codes, sc, mn);
        }
        dst.set(t, rows, 0);
      }
      return;
    }
    for (let g0 = Math.floor(from / G) * G; g0 < T; g0 += G) {
      const n = Math.min(G, T - g0);
      for (let h = 0; h < kv; h++) {
        for (let t = 0; t < n; t++) src.get(h, g0 + t, x, t * d);
        for (let c = 0; c < d; c++) fakeQuantizeGroup(x, c, d, n, bits, y, c, codes, sc, mn);
        for (let t = 0; t < n; t++) rows.set(y.subarray(t * d, (t + 1) * d), t * row + h * d);
      }
      for (let t = 0; t < n; t++) dst.set(g0 + t, rows, t * row);
    }
  }

  bytes(): number {
    return this.k.bytes() + this.v.bytes() + this.kq.bytes() + this.vq.bytes();
  }

  reservedBytes(): number {
    return this.k.reservedBytes() + this.v.reservedBytes() + this.kq.reservedBytes() + this.vq.reservedBytes();
  }

  free(): void {
    for (const s of [this.k, this.v, this.kq, this.vq]) s.free();
  }

  read(): { k: Float32Array; v: Float32Array } {
    return { k: readStore(this.kq), v: readStore(this.vq) };
  }
}
