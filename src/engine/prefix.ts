/**
 * Prefill once, restore many times. A prefill's attention is exact whatever the cache, so the K/V it
 * produces are the same for every cache spec: studies that compare specs on one prompt compute the
 * prefill once, then fill each spec's cache from the saved K/V with the cache's own storage jobs.
 */

import { createCache, parseKvSpec } from '../cache/spec.js';
import type { KvCache } from '../cache/types.js';
import type { LlamaModel } from '../model/llama.js';

export interface PrefixSnapshot {
  tokens: number;
  /** Per layer, the qkv rows after RoPE [T][(H + 2·KV)·d] (possibly rows of a longer forward). */
  rows: Float32Array[];
  /** Logits of the last prompt token. */
  lastLogits: Float32Array;
}

export async function snapshotPrefill(model: LlamaModel, tokens: ArrayLike<number>): Promise<PrefixSnapshot> {
  const cache = createCache(parseKvSpec('fp32'), model.pool);
  try {
    const rows: Float32Array[] = [];
    const [lastLogits] = await model.forward([{ tokens, cache, logits: 'last' }], { capture: rows });
    return { tokens: tokens.length, rows, lastLogits: lastLogits as Float32Array };
  } finally {
    cache.free();
  }
}

/** Fill an empty cache as if the snapshot's prompt had just been prefilled into it. */
export function restorePrefill(model: LlamaModel, cache: KvCache, snap: PrefixSnapshot): Promise<void> {
  return model.ingest(cache, snap.rows, snap.tokens);
}
