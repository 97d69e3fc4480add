/**
 * KL divergence from the full-precision model (issue 14): the streaming protocol of `eval ppl` (each
 * window's prefill exact, then teacher-forced decode steps through the cache), with an fp32 cache run in
 * lockstep on the same windows. Per spec and decode step: KL(p_fp32 ‖ p_spec) in nats, whether the argmax
 * agrees with fp32's, and the NLL of the true next token. Perplexity averages a cache's failures away;
 * KL divergence and top-1 agreement show every step on which the distribution moved.
 */

import { bitsPerElement } from '../../cache/bits.js';
import { type CacheSpec, parseKvSpec } from '../../cache/spec.js';
import { argmax } from '../../engine/sampling.js';
import type { LlamaModel } from '../../model/llama.js';
import { mean } from '../numbers.js';
import { checkWindows, snapshotWindows, teacherForce } from './nll.js';

export interface KldOptions {
  prefill: number;
  /** Windows decoded together (and snapshots held at once). */
  batch?: number;
  /** Decode steps per forward call (bounds the logits held: (specs + 1) · windows · chunk · vocab floats). */
  chunk?: number;
  onProgress?: (done: number, total: number) => void;
}

export interface SpecKld {
  kv: string;
  /** Mean KL(p_fp32 ‖ p_spec) over the decode steps, nats. */
  kld: number;
  /** Fraction of decode steps whose argmax equals fp32's. */
  top1_agree: number;
  mean_nll: number;
  ppl: number;
  /** Codes and metadata per cached element (the full-precision residual not counted). */
  bits_per_element: number;
  /** Per window: mean KL and mean NLL over its decode steps. */
  kld_windows: number[];
  nll_windows: number[];
}

export interface KldStudy {
  windows: number;
  window: number;
  prefill: number;
  results: SpecKld[];
}

/** Log-softmax of logits[off .. off + n) into out, in float64. */
export function logSoftmax64(logits: Float32Array, off: number, n: number, out: Float64Array): void {
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (logits[off + i]! > max) max = logits[off + i]!;
  let sum = 0;
  for (let i = 0; i < n; i++) sum += Math.exp(logits[off + i]! - max);
  const lse = max + Math.log(sum);
  for (let i = 0; i < n; i++) out[i] = logits[off + i]! - lse;
}

/** KL(p ‖ q) = Σ p_i (log p_i − log q_i) from log-probabilities; terms with p_i = 0 contribute 0. */
export function klFromLogProbs(lp: Float64Array, lq: Float64Array, n: number): number {
  let kl = 0;
  for (let i = 0; i < n; i++) {
    const p = Math.exp(lp[i]!);
    if (p > 0) kl += p * (lp[i]! - lq[i]!);
  }
  return kl;
}

export async function kldStudy(model: LlamaModel, windows: number[][], specs: CacheSpec[], opts: KldOptions): Promise<KldStudy> {
  const P = opts.prefill;
  checkWindows(windows, P, model.config.maxPositions);
  const V = model.config.vocabSize;
  const batch = opts.batch ?? 4;
  const S = specs.length;
  const kl = specs.map(() => new Array<number>(windows.length).fill(0));
  const nll = specs.map(() => new Array<number>(windows.length).fill(0));
  const agree = specs.map(() => 0);
  const lp = new Float64Array(V);
  const lq = new Float64Array(V);
  const steps = windows.reduce((a, w) => a + (w.length - 1 - P), 0);
  const total = steps * (S + 1) + windows.length * P;
  let done = 0;
  for (let b = 0; b < windows.length; b += batch) {
    const group = windows.slice(b, b + batch);
    const snaps = await snapshotWindows(model, group, P);
    done += group.length * P;
    const base = done;
    // Spec 0 is the fp32 reference; specs 1..S are the ones compared with it.
    await teacherForce(
      model,
      group,
      [parseKvSpec('fp32'), ...specs],
      {
        prefill: P,
        chunk: opts.chunk ?? 16,
        onProgress: (d) => opts.onProgress?.(base + d, total),
      },
      (j, p0, p1, logits) => {
        const w = group[j]!;
        const wi = b + j;
        for (let p = p0; p < p1; p++) {
          const off = (p - p0) * V;
          logSoftmax64(logits[0]!, off, V, lp);
          const top = argmax(logits[0]!, off, V);
          for (let s = 0; s < S; s++) {
            logSoftmax64(logits[s + 1]!, off, V, lq);
            kl[s]![wi] += klFromLogProbs(lp, lq, V);
            nll[s]![wi] -= lq[w[p + 1]!]!;
            if (argmax(logits[s + 1]!, off, V) === top) agree[s]++;
          }
        }
      },
      snaps,
    );
    done = base + group.reduce((a, w) => a + (w.length - 1 - P), 0) * (S + 1);
  }
  const results = specs.map((spec, s): SpecKld => {
    const kldW = kl[s]!.map((x, wi) => x / (windows[wi]!.length - 1 - P));
    const nllW = nll[s]!.map((x, wi) => x / (windows[wi]!.length - 1 - P));
    const m = mean(nllW);
    return {
      kv: spec.name,
      kld: mean(kldW),
      top1_agree: agree[s]! / steps,
      mean_nll: m,
      ppl: Math.exp(m),
      bits_per_element: bitsPerElement(spec, model.dims.headDim),
      kld_windows: kldW,
      nll_windows: nllW,
    };
  });
  return { windows: windows.length, window: windows[0]!.length, prefill: P, results };
}
