/**
 * The cache step protocol (plan, run, end) in one call, for tests, benchmarks and restores that drive
 * caches without a model: each item brings its new tokens' q/k/v rows ([n][(H + 2·KV)·d], after RoPE),
 * the same rows serve every layer, and the step runs exactly as the model runs it (model/llama.ts).
 */

import { StepPlan } from '../kernels/plan.js';
import type { Backend, PagePool, Tensor } from '../kernels/types.js';
import { endStep, type KvCache } from './types.js';

export interface StepItem {
  cache: KvCache;
  /** The new tokens' qkv rows, [n][(H + 2·KV)·d]. */
  rows: Float32Array;
  n: number;
  /** 'prefill': the n tokens attend to each other exactly (default when the cache is empty); 'decode': one by one. */
  mode?: 'prefill' | 'decode';
}

export class CacheStepper {
  private readonly plan = new StepPlan();
  private readonly jobsOnly = new StepPlan('jobs');
  private capacity = 0;
  private qkv: Tensor | null = null;
  private att: Tensor | null = null;
  private readonly qkvDim: number;

  constructor(
    readonly backend: Backend,
    readonly pool: PagePool,
  ) {
    const { numHeads: H, numKvHeads: KV, headDim: d } = pool.shape;
    this.qkvDim = (H + 2 * KV) * d;
    this.plan.pageRuns = backend.pageRuns === true;
  }

  /**
   * One step of every item on every layer. With `attend` (the default) the attention output rows come
   * back ([N][H·d], items' rows in order); without, only the caches' storage jobs run (filling caches).
   */
  async step(items: StepItem[], attend = true): Promise<Float32Array | null> {
    return this.run(items, attend, true);
  }

  /** step(), where `write` false means the items' rows are already in the stepper's qkv rows (fillCycled). */
  private async run(items: StepItem[], attend: boolean, write: boolean): Promise<Float32Array | null> {
    const { numLayers: L, numHeads: H, headDim: d } = this.pool.shape;
    const plan = attend ? this.plan : this.jobsOnly;
    let N = 0;
    for (const it of items) N += it.n;
    this.ensure(N);
    plan.clear();
    let subs = 0;
    const decode = (it: StepItem) => (it.mode ?? (it.cache.length === 0 ? 'prefill' : 'decode')) === 'decode';
    for (const it of items) subs = Math.max(subs, decode(it) ? it.n : 1);
    for (let j = 0; j < subs; j++) {
      plan.beginSubstep();
      let row = 0;
      for (const it of items) {
        if (!decode(it)) {
          if (j === 0) it.cache.plan(plan, row, it.n);
        } else if (j < it.n) {
          it.cache.plan(plan, row + j, 1);
        }
        row += it.n;
      }
    }
    plan.validate();
    const writeRows = () => {
      let row = 0;
      for (const it of items) {
        this.backend.write(this.qkv!, it.rows.subarray(0, it.n * this.qkvDim), row * this.qkvDim);
        row += it.n;
      }
    };
    // Rows already on the back end (fillCycled) are rewritten anyway when pre-phase jobs change them in place.
    if (write || plan.nPre > 0) writeRows();
    const B = this.backend;
    try {
      for (let l = 0; l < L; l++) {
        // Pre-phase jobs may change the rows in place (a key rotation): each layer starts from the given rows, as
        // each of the model's layers computes its own.
        if (l > 0 && plan.nPre > 0) writeRows();
        for (let s = 0; s < subs; s++) {
          B.cacheJobs(plan, s, 'pre', l, this.qkv!, this.pool);
          if (attend) B.attend(plan, s, l, this.qkv!, this.att!, this.pool);
          B.cacheJobs(plan, s, 'post', l, this.qkv!, this.pool);
        }
      }
    } finally {
      endStep(plan, this.pool);
    }
    if (attend) return B.read(this.att!, 0, N * H * d);
    await B.sync();
    return null;
  }

  /** Fill a cache with T tokens of keys and values (rows as in step()), in prefill chunks of `chunk`, without attending. */
  async fill(cache: KvCache, rows: Float32Array, T: number, chunk = 256): Promise<void> {
    for (let t = 0; t < T; t += chunk) {
      const n = Math.min(chunk, T - t);
      await this.step([{ cache, rows: rows.subarray(t * this.qkvDim, (t + n) * this.qkvDim), n, mode: 'prefill' }], false);
    }
  }

  /**
   * Fill a cache with T tokens by cycling the n tokens of `rows` (for benchmarks: a cache's bytes do not
   * depend on what it holds). The rows are written to the back end once; chunks of up to n tokens then
   * run the storage jobs only, so a GPU fill of millions of tokens does not resend the same rows.
   */
  async fillCycled(cache: KvCache, rows: Float32Array, n: number, T: number): Promise<void> {
    if (rows.length < n * this.qkvDim) throw new Error(`fillCycled: ${rows.length} floats hold fewer than ${n} rows`);
    this.ensure(n);
    this.backend.write(this.qkv!, rows.subarray(0, n * this.qkvDim), 0);
    for (let t = 0; t < T; t += n) {
      const m = Math.min(n, T - t);
      await this.run([{ cache, rows: rows.subarray(0, m * this.qkvDim), n: m, mode: 'prefill' }], false, false);
    }
  }

  /** Release the stepper's tensors. */
  dispose(): void {
    if (this.qkv) this.backend.release(this.qkv);
    if (this.att) this.backend.release(this.att);
    this.qkv = this.att = null;
    this.capacity = 0;
  }

  private ensure(N: number): void {
    if (N <= this.capacity) return;
    this.dispose();
    const { numHeads: H, headDim: d } = this.pool.shape;
    this.capacity = Math.max(N, 16);
    this.qkv = this.backend.tensor('f32', this.capacity * this.qkvDim);
    this.att = this.backend.tensor('f32', this.capacity * H * d);
  }
}

/** Synthetic qkv rows from separate q, k, v arrays ([n][H·d], [n][KV·d], [n][KV·d]); q may be null (zeros). */
export function qkvRows(
  shape: { numHeads: number; numKvHeads: number; headDim: number },
  n: number,
  q: Float32Array | null,
  k: Float32Array,
  v: Float32Array,
  kOff = 0,
  vOff = 0,
): Float32Array {
  const { numHeads: H, numKvHeads: KV, headDim: d } = shape;
  const dim = (H + 2 * KV) * d;
  const out = new Float32Array(n * dim);
  for (let t = 0; t < n; t++) {
    if (q) out.set(q.subarray(t * H * d, (t + 1) * H * d), t * dim);
    out.set(k.subarray(kOff + t * KV * d, kOff + (t + 1) * KV * d), t * dim + H * d);
    out.set(v.subarray(vOff + t * KV * d, vOff + (t + 1) * KV * d), t * dim + (H + KV) * d);
  }
  return out;
}
