/** Token selection: greedy, or temperature + top-k + top-p sampling from a seeded generator. */
import { KiviError } from '../util/errors.js';

export interface SamplingOptions {
  /** 0 (default) = greedy. */
  temperature?: number;
  /** Keep the k most likely tokens (0 = all). */
  topK?: number;
  /** Keep the smallest set of tokens whose probability reaches p (1 = all). */
  topP?: number;
  /** Seed for reproducible sampling. */
  seed?: number;
}

export function validateSampling(o: SamplingOptions): void {
  const t = o.temperature ?? 0;
  if (!(Number.isFinite(t) && t >= 0)) throw new KiviError(`temperature must be a number ≥ 0, got ${t}`);
  const k = o.topK ?? 0;
  if (!(Number.isInteger(k) && k >= 0)) throw new KiviError(`top-k must be an integer ≥ 0, got ${k}`);
  const p = o.topP ?? 1;
  if (!(Number.isFinite(p) && p > 0 && p <= 1)) throw new KiviError(`top-p must be in (0, 1], got ${p}`);
  if (o.seed !== undefined && !Number.isInteger(o.seed)) throw new KiviError(`seed must be an integer, got ${o.seed}`);
}

/** xoshiro128** seeded through splitmix32: small, fast, and reproducible across platforms. */
export class Rng {
  private s = new Uint32Array(4);
  constructor(seed: number) {
    let x = seed >>> 0;
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.s[i] = (z ^ (z >>> 16)) >>> 0;
    }
  }
  /** Uniform in [0, 1). */
  next(): number {
    const s = this.s;
    const r = Math.imul(rotl(Math.imul(s[1]!, 5), 7), 9) >>> 0;
    const t = s[1]! << 9;
    s[2]! ^= s[0]!;
    s[3]! ^= s[1]!;
    s[1]! ^= s[2]!;
    s[0]! ^= s[3]!;
    s[2]! ^= t;
    s[3] = rotl(s[3]!, 11);
    return r / 4294967296;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

export function argmax(logits: Float32Array, off = 0, n = logits.length - off): number {
  let best = 0;
  let bv = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = logits[off + i]!;
    if (v > bv) {
      bv = v;
      best = i;
    }
  }
  return best;
}

/** A sampler owns its RNG and scratch, so one sampler per sequence allocates nothing per token. */
export class Sampler {
  private readonly rng: Rng;
  private idx = new Int32Array(0);
  private prob = new Float64Array(0);

  constructor(private readonly opts: SamplingOptions) {
    validateSampling(opts);
    this.rng = new Rng(opts.seed ?? (Math.random() * 2 ** 32) >>> 0);
  }

  sample(logits: Float32Array, off = 0, n = logits.length - off): number {
    const t = this.opts.temperature ?? 0;
    if (t === 0) return argmax(logits, off, n);
    if (this.idx.length < n) {
      this.idx = new Int32Array(n);
      this.prob = new Float64Array(n);
    }
    const { idx, prob } = this;
    // Candidates sorted by logit, descending; top-k truncates the list.
    for (let i = 0; i < n; i++) idx[i] = i;
    const sorted = idx.subarray(0, n).sort((a, b) => logits[off + b]! - logits[off + a]!);
    const k = this.opts.topK && this.opts.topK > 0 ? Math.min(this.opts.topK, n) : n;
    const max = logits[off + sorted[0]!]!;
    let sum = 0;
    for (let i = 0; i < k; i++) {
      prob[i] = Math.exp((logits[off + sorted[i]!]! - max) / t);
      sum += prob[i]!;
    }
    // Top-p: the smallest prefix whose mass reaches p.
    const p = this.opts.topP ?? 1;
    let m = k;
    if (p < 1) {
      let acc = 0;
      for (let i = 0; i < k; i++) {
        acc += prob[i]! / sum;
        if (acc >= p) {
          m = i + 1;
          break;
        }
      }
    }
    let mass = 0;
    for (let i = 0; i < m; i++) mass += prob[i]!;
    let r = this.rng.next() * mass;
    for (let i = 0; i < m; i++) {
      r -= prob[i]!;
      if (r < 0) return sorted[i]!;
    }
    return sorted[m - 1]!;
  }
}

/** Natural-log probability of `target` under softmax(logits[off..off+n)), in float64. */
export function logProb(logits: Float32Array, off: number, n: number, target: number): number {
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (logits[off + i]! > max) max = logits[off + i]!;
  let sum = 0;
  for (let i = 0; i < n; i++) sum += Math.exp(logits[off + i]! - max);
  return logits[off + target]! - max - Math.log(sum);
}
