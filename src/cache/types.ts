/**
 * The KV cache is the only seam between the model and how keys and values are stored. The cache does not
 * hand tensors back: it *attends*, so a quantized cache computes attention on its packed codes and never
 * expands them (docs/KIVI.md §6).
 */
import type { Kernels } from '../kernels/types.js';

/** Shapes a cache needs from the model. */
export interface CacheDims {
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
}

/** Per-thread scratch for attention: a growable scores buffer. */
export class AttnScratch {
  scores = new Float32Array(0);
  tmp = new Float32Array(0);
  ensure(scores: number, tmp = 0): void {
    if (this.scores.length < scores) this.scores = new Float32Array(Math.max(scores, this.scores.length * 2));
    if (this.tmp.length < tmp) this.tmp = new Float32Array(Math.max(tmp, this.tmp.length * 2));
  }
}

/** One layer's keys and values for one sequence. K/V rows are token-major [kvHeads·headDim], after RoPE. */
export interface LayerCache {
  /** Tokens held. */
  readonly length: number;
  /**
   * Store a prompt's keys and values ([T][kvHeads·headDim] each) into an empty cache. The prompt's own
   * attention is computed exactly by the model; this only decides what is kept and how.
   */
  prefill(k: Float32Array, kOff: number, v: Float32Array, vOff: number, T: number): void;
  /** Add one token's key and value ([kvHeads·headDim] each). */
  append(k: Float32Array, kOff: number, v: Float32Array, vOff: number): void;
  /**
   * Attention of one token's queries ([numHeads·headDim] at qOff) over every cached token, written to
   * out[oOff..]. It ends the decode step: afterwards the cache applies its storage rules (KIVI: flush a
   * full key residual, slide the value window). Call it once after each append.
   */
  attend(q: Float32Array, qOff: number, out: Float32Array, oOff: number, scratch: AttnScratch): void;
  /** Bytes of cached data held now: codes, scales, minimums and full-precision residual, exactly. */
  bytes(): number;
  /** Bytes of storage reserved (≥ bytes(): whole blocks, residual buffers). */
  reservedBytes(): number;
  /** Release storage; the cache is empty afterwards. */
  free(): void;
  /** Keys and values as float32 [kvHead][length][headDim], as attention would read them (analysis only). */
  read?(): { k: Float32Array; v: Float32Array };
}

/** Builds one LayerCache; a cache spec compiles to one of these. */
export type LayerCacheFactory = (dims: CacheDims, kernels: Kernels) => LayerCache;

/** All layers of one sequence. */
export class SequenceCache {
  readonly layers: LayerCache[];
  constructor(readonly spec: string, readonly dims: CacheDims, kernels: Kernels, make: LayerCacheFactory) {
    this.layers = Array.from({ length: dims.numLayers }, () => make(dims, kernels));
  }
  /** Tokens held (every layer holds the same number). */
  get length(): number {
    return this.layers[0]!.length;
  }
  bytes(): number {
    let b = 0;
    for (const l of this.layers) b += l.bytes();
    return b;
  }
  reservedBytes(): number {
    let b = 0;
    for (const l of this.layers) b += l.reservedBytes();
    return b;
  }
  free(): void {
    for (const l of this.layers) l.free();
  }
}

/** Softmax in place over row[off .. off+n). */
export function softmaxInPlace(row: Float32Array, off: number, n: number): void {
  let max = -Infinity;
  for (let i = off; i < off + n; i++) if (row[i]! > max) max = row[i]!;
  let sum = 0;
  for (let i = off; i < off + n; i++) {
    const e = Math.exp(row[i]! - max);
    row[i] = e;
    sum += e;
  }
  const inv = 1 / sum;
  for (let i = off; i < off + n; i++) row[i] = row[i]! * inv;
}
