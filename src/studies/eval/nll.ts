/**
 * Streaming NLL (docs/KIVI.md §9): prefill the first P tokens of a window exactly, then feed the rest one
 * token at a time through the cache (teacher forcing); the score is the mean NLL of the predictions made
 * by decode steps. Windows of equal length run as one batch; several specs can run in lockstep.
 */

import { type CacheSpec, createCache } from '../../cache/spec.js';
import type { KvCache } from '../../cache/types.js';
import { chunkEnds } from '../../engine/chunks.js';
import { type PrefixSnapshot, restorePrefill, snapshotPrefill } from '../../engine/prefix.js';
import { logProb } from '../../engine/sampling.js';
import type { LlamaModel } from '../../model/llama.js';
import { KiviError } from '../../util/errors.js';

export interface NllOptions {
  prefill: number;
  /**
   * Prefill in chunks ending at multiples of this many tokens, each continuing the cache (as the server's
   * prefix cache does): later chunks read earlier ones through the cache's storage. Default: one exact chunk.
   */
  prefillChunk?: number;
  /** Decode tokens per forward call (bounds memory for logits; progress granularity). */
  chunk?: number;
  onProgress?: (decodedTokens: number, totalTokens: number) => void;
}

export function checkWindows(windows: number[][], prefill: number, context: number): void {
  if (!Array.isArray(windows) || windows.length === 0) throw new KiviError('no windows given');
  for (const [i, w] of windows.entries()) {
    if (!Array.isArray(w) || !w.every((t) => Number.isInteger(t))) throw new KiviError(`window ${i} is not an array of token ids`);
    if (w.length > context) throw new KiviError(`window ${i} has ${w.length} tokens, longer than the model's context of ${context}`);
    if (!(Number.isInteger(prefill) && prefill >= 1 && prefill < w.length - 1)) {
      throw new KiviError(`prefill ${prefill} must be ≥ 1 and leave at least 2 tokens of window ${i} (${w.length} tokens) to decode`);
    }
  }
}

/**
 * Called once per window and chunk of decode steps with every spec's logits for that chunk: logits[s] is
 * [p1 − p0][vocab] for spec s, row p − p0 predicting token p + 1 of the window.
 */
export type ChunkVisitor = (window: number, p0: number, p1: number, logits: Float32Array[]) => void;

/**
 * The streaming protocol for several cache specs in lockstep: every window's prefill (restored from
 * `snapshots` when given, else computed), then teacher-forced decode steps through each spec's cache, all
 * specs and equal-length windows advancing in one batched forward per chunk, so a visitor sees the specs'
 * predictions of the same step together.
 */
export async function teacherForce(
  model: LlamaModel,
  windows: number[][],
  specs: CacheSpec[],
  opts: NllOptions,
  visit: ChunkVisitor,
  snapshots?: PrefixSnapshot[],
): Promise<void> {
  const P = opts.prefill;
  checkWindows(windows, P, model.config.maxPositions);
  // Group windows by length: each group decodes in lockstep as one batch.
  const byLen = new Map<number, number[]>();
  windows.forEach((w, i) => {
    byLen.set(w.length, [...(byLen.get(w.length) ?? []), i]);
  });
  const S = specs.length;
  const total = windows.reduce((a, w) => a + (w.length - 1 - P), 0) * S;
  let done = 0;
  const chunk = opts.chunk ?? 64;
  for (const [len, idx] of byLen) {
    // Item j·S + s: window idx[j] under spec s.
    const caches: KvCache[] = [];
    try {
      for (const wi of idx) {
        for (const spec of specs) {
          const c = createCache(spec, model.pool);
          caches.push(c);
          if (opts.prefillChunk !== undefined) {
            let t = 0;
            for (const end of chunkEnds(0, P, [opts.prefillChunk])) {
              await model.forward([{ tokens: windows[wi]!.slice(t, end), cache: c, logits: 'none', mode: 'prefill' }]);
              t = end;
            }
          } else if (snapshots) await restorePrefill(model, c, snapshots[wi]!);
          else await model.forward([{ tokens: windows[wi]!.slice(0, P), cache: c, logits: 'none' }]);
        }
      }
      // Decode tokens P .. len−2; the step fed token p predicts token p+1.
      for (let p0 = P; p0 < len - 1; p0 += chunk) {
        const p1 = Math.min(len - 1, p0 + chunk);
        const logits = await model.forward(
          caches.map((cache, i) => ({
            tokens: windows[idx[Math.floor(i / S)]!]!.slice(p0, p1),
            cache,
            logits: 'all' as const,
            mode: 'decode' as const,
          })),
        );
        idx.forEach((wi, j) => {
          visit(wi, p0, p1, logits.slice(j * S, (j + 1) * S) as Float32Array[]);
        });
        done += (p1 - p0) * idx.length * S;
        opts.onProgress?.(done, total);
      }
    } finally {
      for (const c of caches) c.free();
    }
  }
}

/** Mean NLL per window for one cache spec. `snapshots` (one per window) skip recomputing the prefill. */
export async function streamingNll(model: LlamaModel, windows: number[][], spec: CacheSpec, opts: NllOptions, snapshots?: PrefixSnapshot[]): Promise<number[]> {
  const P = opts.prefill;
  const V = model.config.vocabSize;
  const sums = new Array<number>(windows.length).fill(0);
  await teacherForce(
    model,
    windows,
    [spec],
    opts,
    (wi, p0, p1, [logits]) => {
      const w = windows[wi]!;
      let s = 0;
      for (let p = p0; p < p1; p++) s -= logProb(logits!, (p - p0) * V, V, w[p + 1]!);
      sums[wi] = sums[wi]! + s;
    },
    snapshots,
  );
  return sums.map((s, wi) => s / (windows[wi]!.length - 1 - P));
}

/** Prefill snapshots for every window, to share across specs. */
export async function snapshotWindows(model: LlamaModel, windows: number[][], prefill: number): Promise<PrefixSnapshot[]> {
  const out: PrefixSnapshot[] = [];
  for (const w of windows) out.push(await snapshotPrefill(model, w.slice(0, prefill)));
  return out;
}
