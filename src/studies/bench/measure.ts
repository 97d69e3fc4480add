/**
 * Measurement helpers shared by the benchmarks: medians of repeated timings after warm-up, the process's
 * resident memory, and seeded synthetic data. Timings are wall-clock; callers report ratios measured
 * side by side in one run, never absolute promises.
 */
import v8 from 'node:v8';
import { Rng } from '../../engine/sampling.js';
import { median } from '../numbers.js';

export const now = (): number => performance.now() / 1000;

export interface RepeatOptions {
  /** Untimed rounds first (JIT, caches, page faults). */
  warmup: number;
  /** Timed rounds at least this many times ... */
  minRepeats: number;
  /** ... and until this many seconds have been timed in all ... */
  minSeconds: number;
  /** ... but never more than this many. */
  maxRepeats: number;
}

export const DEFAULT_REPEATS: RepeatOptions = { warmup: 2, minRepeats: 5, minSeconds: 0.5, maxRepeats: 50 };

/**
 * Time several functions in rounds, each once per round in turn, so that load from other processes
 * falls on all of them alike (ratios between them are what the benchmarks report). Returns, per function,
 * the median seconds and every sample.
 */
export function timeInterleaved(fns: readonly (() => void)[], o: RepeatOptions = DEFAULT_REPEATS): { seconds: number; samples: number[] }[] {
  for (let i = 0; i < o.warmup; i++) for (const fn of fns) fn();
  const samples = fns.map((): number[] => []);
  let total = 0;
  for (let round = 0; round < o.maxRepeats && (round < o.minRepeats || total < o.minSeconds); round++) {
    fns.forEach((fn, i) => {
      const t0 = now();
      fn();
      const dt = now() - t0;
      samples[i]!.push(dt);
      total += dt;
    });
  }
  return samples.map((s) => ({ seconds: median(s), samples: s }));
}

/** timeInterleaved for functions whose work ends when their promise resolves (a GPU's, say). */
export async function timeInterleavedAsync(
  fns: readonly (() => Promise<void>)[],
  o: RepeatOptions = DEFAULT_REPEATS,
): Promise<{ seconds: number; samples: number[] }[]> {
  for (let i = 0; i < o.warmup; i++) for (const fn of fns) await fn();
  const samples = fns.map((): number[] => []);
  let total = 0;
  for (let round = 0; round < o.maxRepeats && (round < o.minRepeats || total < o.minSeconds); round++) {
    for (const [i, fn] of fns.entries()) {
      const t0 = now();
      await fn();
      const dt = now() - t0;
      samples[i]!.push(dt);
      total += dt;
    }
  }
  return samples.map((s) => ({ seconds: median(s), samples: s }));
}

/** Time one function repeatedly; the median seconds and every sample. */
export function timeRepeated(fn: () => void, o: RepeatOptions = DEFAULT_REPEATS): { seconds: number; samples: number[] } {
  return timeInterleaved([fn], o)[0]!;
}

/** The most memory this process has had resident, in bytes (Linux reports maxRSS in KiB). */
export function peakRssBytes(): number {
  return process.resourceUsage().maxRSS * 1024;
}

/**
 * Run V8's young generation through its whole size once. Any process that has done some work (a server
 * after a few requests, a cache fill) has touched every page of it, so it is resident from then on (32 MiB
 * on Node 20): part of a ready process's fixed overhead, which a short warm-up alone leaves half counted.
 * Short-lived garbage of twice the space's size makes the scavenger use both of its halves.
 */
export function fillYoungGeneration(): number {
  const young = v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space');
  const bytes = 2 * (young?.space_size ?? 0);
  let sink = 0;
  for (let done = 0; done < bytes; done += 1024) sink += new Array<number>(120).fill(done).length;
  return sink;
}

/** A full garbage collection, where the process allows one (--expose-gc); false where it does not. */
export function collectGarbage(): boolean {
  const g = (globalThis as { gc?: () => void }).gc;
  if (!g) return false;
  g();
  g();
  return true;
}

/** Resident memory now, after a full garbage collection where the process allows one (--expose-gc). */
export function settledRssBytes(): number {
  collectGarbage();
  return process.memoryUsage().rss;
}

/** Standard normal numbers from a seeded generator (Box–Muller). */
export class Gaussian {
  private readonly rng: Rng;
  private spare: number | null = null;
  constructor(seed: number) {
    this.rng = new Rng(seed);
  }
  next(): number {
    if (this.spare !== null) {
      const s = this.spare;
      this.spare = null;
      return s;
    }
    const u = 1 - this.rng.next();
    const v = this.rng.next();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }
}

/** Every how many key channels one is an outlier channel (docs/KIVI.md §2: a few fixed channels dominate). */
export const OUTLIER_EVERY = 32;
/** How much larger an outlier channel's keys are than the rest. */
export const OUTLIER_SCALE = 12;

/**
 * Synthetic keys and values, token-major [T][kvHeads·d] as a cache's prefill takes them. Keys are
 * normal with a few large-magnitude channels per head (fixed across tokens, like real models' keys);
 * values are plain normal.
 */
export function syntheticKV(T: number, kvHeads: number, d: number, seed: number): { k: Float32Array; v: Float32Array } {
  const g = new Gaussian(seed);
  const row = kvHeads * d;
  const k = new Float32Array(T * row);
  const v = new Float32Array(T * row);
  const bias = new Float32Array(row);
  for (let c = 0; c < row; c++) bias[c] = (c % d) % OUTLIER_EVERY === 3 ? OUTLIER_SCALE * (1 + g.next() * 0.1) : 0;
  for (let t = 0, i = 0; t < T; t++) {
    for (let c = 0; c < row; c++, i++) {
      const outlier = bias[c]! !== 0;
      k[i] = outlier ? bias[c]! + g.next() * 2 : g.next();
      v[i] = g.next();
    }
  }
  return { k, v };
}

/** Seeded pseudo-random token ids in [lo, hi) for synthetic prompts. */
export function syntheticTokens(n: number, lo: number, hi: number, seed: number): number[] {
  const r = new Rng(seed);
  return Array.from({ length: n }, () => lo + Math.floor(r.next() * (hi - lo)));
}
