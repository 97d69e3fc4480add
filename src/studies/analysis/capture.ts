/**
 * Real keys, values and queries of a model on a text: one exact forward of the whole text (a prefill,
 * whose attention is the model's own), with the forward's capture of every layer's q/k/v after RoPE.
 * Queries are kept for tokens 1..T−1 (the ones that attend to earlier tokens).
 */

import { createCache, parseKvSpec } from '../../cache/spec.js';
import type { CacheDims } from '../../cache/types.js';
import type { LlamaModel } from '../../model/llama.js';

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

export async function captureKv(model: LlamaModel, tokens: number[]): Promise<CapturedKv> {
  const T = tokens.length;
  const { numHeads: H, numKvHeads: KV, headDim: d } = model.dims;
  const qkvDim = (H + 2 * KV) * d;
  const cache = createCache(parseKvSpec('fp32'), model.pool);
  try {
    const rows: Float32Array[] = [];
    await model.forward([{ tokens, cache, logits: 'none' }], { capture: rows });
    const layers = rows.map((r) => {
      const k = new Float32Array(KV * T * d);
      const v = new Float32Array(KV * T * d);
      const q = new Float32Array(Math.max(0, T - 1) * H * d);
      for (let t = 0; t < T; t++) {
        const o = t * qkvDim;
        if (t > 0) q.set(r.subarray(o, o + H * d), (t - 1) * H * d);
        for (let h = 0; h < KV; h++) {
          k.set(r.subarray(o + (H + h) * d, o + (H + h + 1) * d), (h * T + t) * d);
          v.set(r.subarray(o + (H + KV + h) * d, o + (H + KV + h + 1) * d), (h * T + t) * d);
        }
      }
      return { k, v, q };
    });
    return { tokens: T, dims: model.dims, layers };
  } finally {
    cache.free();
  }
}
