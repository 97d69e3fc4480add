/**
 * Streaming perplexity for several cache specs over the same windows (docs/KIVI.md §9), plus plain
 * teacher-forced perplexity as the reference.
 *
 * Each window gets one exact fp32 forward over all its tokens: its logits give the teacher-forced NLL, and
 * its first `prefill` tokens' K/V are the prefill every spec restores (a prefill is exact whatever the
 * cache, so it is computed once per window, not once per spec). Windows run in batches to bound memory.
 */

import { type CacheSpec, createCache, parseKvSpec } from '../../cache/spec.js';
import type { PrefixSnapshot } from '../../engine/prefix.js';
import { logProb } from '../../engine/sampling.js';
import type { LlamaModel } from '../../model/llama.js';
import { mean } from '../numbers.js';
import { checkWindows, streamingNll } from './nll.js';

export interface PplOptions {
  prefill: number;
  /** Prefill each spec's cache in chunks of this many tokens (streamingNll's prefillChunk). */
  prefillChunk?: number;
  /** Windows decoded together (and snapshots held at once). */
  batch?: number;
  onProgress?: (done: number, total: number) => void;
}

export interface SpecNll {
  kv: string;
  /** Mean NLL (nats) per window. */
  nll: number[];
  mean_nll: number;
  ppl: number;
}

export interface PplStudy {
  windows: number;
  window: number;
  prefill: number;
  /** The prefill's chunk (null: one exact chunk). */
  prefillChunk?: number | null;
  results: SpecNll[];
  /**
   * Teacher-forced fp32 over the tokens the streaming protocol scores (the fp32 spec must match it up to
   * float rounding), and over every token of the window (the usual plain perplexity).
   */
  teacherForced: SpecNll & { nll_all: number[]; mean_nll_all: number; ppl_all: number };
}

export function specNll(kv: string, nll: number[]): SpecNll {
  const m = mean(nll);
  return { kv, nll, mean_nll: m, ppl: Math.exp(m) };
}

/** One exact forward of a whole window: teacher-forced NLLs and the prefill snapshot. */
async function exactWindow(model: LlamaModel, w: number[], P: number): Promise<{ scored: number; all: number; snap: PrefixSnapshot }> {
  const V = model.config.vocabSize;
  const cache = createCache(parseKvSpec('fp32'), model.pool);
  try {
    // The window's K/V after RoPE: its first P rows are the prefill every spec restores.
    const rows: Float32Array[] = [];
    const logits = (await model.forward([{ tokens: w, cache, logits: 'all' }], { capture: rows }))[0] as Float32Array;
    let all = 0;
    let scored = 0;
    for (let p = 0; p < w.length - 1; p++) {
      const nll = -logProb(logits, p * V, V, w[p + 1]!);
      all += nll;
      if (p >= P) scored += nll;
    }
    const snap = { tokens: P, rows, lastLogits: logits.slice((P - 1) * V, P * V) };
    return { scored: scored / (w.length - 1 - P), all: all / (w.length - 1), snap };
  } finally {
    cache.free();
  }
}

export async function perplexityStudy(model: LlamaModel, windows: number[][], specs: CacheSpec[], opts: PplOptions): Promise<PplStudy> {
  const P = opts.prefill;
  checkWindows(windows, P, model.config.maxPositions);
  const batch = opts.batch ?? 4;
  const nll = specs.map(() => new Array<number>(windows.length));
  const tfScored = new Array<number>(windows.length);
  const tfAll = new Array<number>(windows.length);
  const total = windows.reduce((a, w) => a + w.length + specs.length * (w.length - 1 - P), 0);
  let done = 0;
  for (let b = 0; b < windows.length; b += batch) {
    const group = windows.slice(b, b + batch);
    const snaps: PrefixSnapshot[] = [];
    for (const [j, w] of group.entries()) {
      const r = await exactWindow(model, w, P);
      tfScored[b + j] = r.scored;
      tfAll[b + j] = r.all;
      done += w.length;
      opts.onProgress?.(done, total);
      snaps.push(r.snap);
    }
    for (const [i, spec] of specs.entries()) {
      const base = done;
      const r = await streamingNll(
        model,
        group,
        spec,
        { prefill: P, prefillChunk: opts.prefillChunk, onProgress: (d) => opts.onProgress?.(base + d, total) },
        snaps,
      );
      r.forEach((x, j) => {
        nll[i]![b + j] = x;
      });
      done = base + group.reduce((a, w) => a + (w.length - 1 - P), 0);
    }
  }
  const tf = specNll('fp32 (teacher-forced)', tfScored);
  const meanAll = mean(tfAll);
  return {
    windows: windows.length,
    window: windows[0]!.length,
    prefill: P,
    prefillChunk: opts.prefillChunk ?? null,
    results: specs.map((spec, i) => specNll(spec.name, nll[i]!)),
    teacherForced: { ...tf, nll_all: tfAll, mean_nll_all: meanAll, ppl_all: Math.exp(meanAll) },
  };
}

/** The row changes are measured against: the fp32 spec where it was run, else teacher-forced fp32. */
export function baselineOf(study: PplStudy): SpecNll {
  return study.results.find((r) => r.kv === 'fp32') ?? study.teacherForced;
}
