/**
 * The KV cache is the only seam between the model and how keys and values are stored. The cache does not
 * hand tensors back: it *attends*, so a quantized cache computes attention on its packed codes and never
 * expands them (docs/KIVI.md §6).
 */
import type { Kernels } from '../kernels/types.js';
import { AttentionPlan } from '../kernels/plan.js';

/** Shapes a cache needs from the model. */
export interface CacheDims {
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
}

/** Per-thread scratch for attention: a growable scores buffer and a reusable attention plan. */
export class AttnScratch {
  scores = new Float32Array(0);
  tmp = new Float32Array(0);
  readonly plan = new AttentionPlan();
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
  /**
   * attend() in two halves, so the model can run the attention of many sequences as one batch (and on
   * several threads): add this step's attention tasks to a plan — the same computation attend() does —
   * and, once the plan has run, end the step with endStep().
   */
  planAttend?(q: Float32Array, qOff: number, out: Float32Array, oOff: number, plan: AttentionPlan): void;
  endStep?(): void;
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

export { softmaxInPlace } from '../kernels/ts/softmax.js';

/** attend() for a cache with planAttend/endStep: plan, run, end the step. */
export function attendNow(cache: Required<Pick<LayerCache, 'planAttend' | 'endStep'>>, kernels: Kernels,
  q: Float32Array, qOff: number, out: Float32Array, oOff: number, scratch: AttnScratch): void {
  const plan = scratch.plan;
  plan.clear();
  cache.planAttend(q, qOff, out, oOff, plan);
  kernels.attend(plan);
  plan.clear();
  cache.endStep();
}
