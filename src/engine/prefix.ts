/**
 * Prefill once, restore many times. A prefill's attention is exact whatever the cache, so the K/V it
 * produces are the same for every cache spec: studies that compare specs on one prompt compute the
 * prefill once (with an fp32 cache), then prefill each spec's cache from the saved K/V.
 */
import type { LlamaModel } from '../model/llama.js';
import type { SequenceCache } from '../cache/types.js';
import { createCache } from '../cache/spec.js';

export interface PrefixSnapshot {
  tokens: number;
  /** Per layer, token-major [T][kvHeads·headDim]. */
  k: Float32Array[];
  v: Float32Array[];
  /** Logits of the last prompt token. */
  lastLogits: Float32Array;
}

export function snapshotPrefill(model: LlamaModel, tokens: ArrayLike<number>): PrefixSnapshot {
  const cache = createCache('fp32', model.dims, model.kernels);
  try {
    const lastLogits = model.forward([{ tokens, cache, logits: 'last' }])[0]!;
    return snapshotCache(cache, tokens.length, lastLogits);
  } finally {
    cache.free();
  }
}

/**
 * The first T tokens of a full-precision cache as a snapshot. A causal forward's K/V for a token depend
 * only on the tokens before it, so a longer exact forward (a whole window) also yields its prefixes'.
 */
export function snapshotCache(cache: SequenceCache, T: number, lastLogits: Float32Array): PrefixSnapshot {
  const { numKvHeads: kv, headDim: d } = cache.dims;
  const k: Float32Array[] = [];
  const v: Float32Array[] = [];
  for (const layer of cache.layers) {
    const r = layer.read!();
    k.push(toTokenMajor(r.k, kv, layer.length, T, d));
    v.push(toTokenMajor(r.v, kv, layer.length, T, d));
  }
  return { tokens: T, k, v, lastLogits };
}

/** Fill an empty cache as if the snapshot's prompt had just been prefilled into it. */
export function restorePrefill(cache: SequenceCache, snap: PrefixSnapshot): void {
  cache.layers.forEach((layer, l) => layer.prefill(snap.k[l]!, 0, snap.v[l]!, 0, snap.tokens));
}

/** [kvHead][len][d] → token-major [T][kvHead·d], keeping the first T tokens. */
function toTokenMajor(x: Float32Array, kv: number, len: number, T: number, d: number): Float32Array {
  const out = new Float32Array(T * kv * d);
  for (let h = 0; h < kv; h++) {
    for (let t = 0; t < T; t++) out.set(x.subarray((h * len + t) * d, (h * len + t + 1) * d), (t * kv + h) * d);
  }
  return out;
}
