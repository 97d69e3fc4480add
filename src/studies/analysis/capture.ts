/**
 * Real keys, values and queries of a model on a text: the model runs with a full-precision cache whose
 * layers also record the (post-RoPE) queries they attend with.
 *
 * The first token is prefilled (attention inside a prefill is the model's own, so no query passes the
 * cache); every later token is decoded through the cache, which is exact attention over fp32 K/V, so the
 * captured K/V are the same as a prefill's and the queries cover tokens 1..T−1.
 */
import type { LlamaModel } from '../../model/llama.js';
import type { Kernels } from '../../kernels/types.js';
import { AttnScratch, type CacheDims, type LayerCache, SequenceCache } from '../../cache/types.js';
import { DenseLayerCache } from '../../cache/dense.js';

/** One layer's tensors, head-major: k, v [kvHead][T][d]; q [T−1][numHeads·d] for tokens 1..T−1. */
export interface LayerKv {
  k: Float32Array;
  v: Float32Array;
  q: Float32Array;
}

export interface CapturedKv {
  tokens: number;
  dims: CacheDims;
  layers: LayerKv[];
}

class QueryRecordingCache implements LayerCache {
  readonly queries: Float32Array;
  private n = 0;
  private readonly inner: DenseLayerCache;

  constructor(private readonly dims: CacheDims, kernels: Kernels, capacity: number) {
    this.inner = new DenseLayerCache(dims, kernels, false);
    this.queries = new Float32Array(capacity * dims.numHeads * dims.headDim);
  }

  get length(): number {
    return this.inner.length;
  }

  prefill(k: Float32Array, kOff: number, v: Float32Array, vOff: number, T: number): void {
    this.inner.prefill(k, kOff, v, vOff, T);
  }

  append(k: Float32Array, kOff: number, v: Float32Array, vOff: number): void {
    this.inner.append(k, kOff, v, vOff);
  }

  attend(q: Float32Array, qOff: number, out: Float32Array, oOff: number, scratch: AttnScratch): void {
    const row = this.dims.numHeads * this.dims.headDim;
    this.queries.set(q.subarray(qOff, qOff + row), this.n++ * row);
    this.inner.attend(q, qOff, out, oOff, scratch);
  }

  bytes(): number {
    return this.inner.bytes();
  }

  reservedBytes(): number {
    return this.inner.reservedBytes();
  }

  free(): void {
    this.inner.free();
  }

  read(): { k: Float32Array; v: Float32Array } {
    return this.inner.read();
  }
}

export function captureKv(model: LlamaModel, tokens: number[]): CapturedKv {
  const T = tokens.length;
  const cache = new SequenceCache('fp32+queries', model.dims, model.kernels, (d, k) => new QueryRecordingCache(d, k, T - 1));
  try {
    model.forward([{ tokens: tokens.slice(0, 1), cache, logits: 'none' }]);
    if (T > 1) model.forward([{ tokens: tokens.slice(1), cache, logits: 'none' }]);
    const layers = cache.layers.map((l) => {
      const { k, v } = l.read!();
      return { k, v, q: (l as QueryRecordingCache).queries };
    });
    return { tokens: T, dims: model.dims, layers };
  } finally {
    cache.free();
  }
}
