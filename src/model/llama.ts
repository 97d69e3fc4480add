/**
 * The Llama-family forward pass (Llama, Mistral, Qwen2) over a batch of sequences, written once against
 * the back-end op table (kernels/types.ts): the model says what to compute, the back end where it lives
 * and when it runs.
 *
 * One call advances several sequences at once: their new tokens are stacked into one activation matrix
 * so every weight is read once per call (the linear layers dominate), while attention runs per sequence
 * through that sequence's cache. Before the layers run, every cache plans the step (cache/types.ts): the
 * attention of its new tokens and the jobs that fold them in. A chunk marked 'prefill' attends to its
 * cache and, exactly and causally, to itself; a 'decode' item's tokens go through the cache one after
 * the other, one sub-step each (teacher forcing and generation both need that).
 */

import type { CacheDims, KvCache } from '../cache/types.js';
import { endStep } from '../cache/types.js';
import { StepPlan } from '../kernels/plan.js';
import type { Backend, PagePool, Tensor } from '../kernels/types.js';
import { KiviError } from '../util/errors.js';
import type { ModelConfig } from './config.js';
import { RopeTable, ropeInvFreq } from './rope.js';
import type { ModelWeights } from './weights.js';

export interface ForwardItem {
  /** New tokens of this sequence. */
  tokens: ArrayLike<number>;
  cache: KvCache;
  /**
   * Which results come back: nothing, the logits of the last new token, of every new token, or the index
   * of the last token's largest logit (computed where the back end computes; one number comes back).
   */
  logits: 'none' | 'last' | 'all' | 'argmax';
  /** 'prefill': the tokens attend to each other exactly (default when the cache is empty); 'decode': one by one through the cache. */
  mode?: 'prefill' | 'decode';
}

/** What forward() returns per item: logits [rows][vocab] (a copy the caller owns), or the argmax id. */
export type ForwardResult = Float32Array | number | null;

export interface ForwardOptions {
  /**
   * Filled with each layer's qkv activation after RoPE ([rows][(H + 2·KV)·d], every item's rows in
   * order): the keys, values and queries the caches and attention saw (studies, prefill snapshots).
   */
  capture?: Float32Array[];
}

/** Activation tensors sized for `rows` rows, owned by the model (llama2.c's RunState). */
class Workspace {
  rows = 0;
  x!: Tensor;
  xn!: Tensor;
  qkv!: Tensor;
  att!: Tensor;
  gu!: Tensor;
  act!: Tensor;

  constructor(
    private readonly backend: Backend,
    private readonly cfg: ModelConfig,
  ) {}

  ensure(rows: number): void {
    if (rows <= this.rows) return;
    const n = Math.max(rows, this.rows * 2);
    const { hiddenSize: D, numHeads: H, numKvHeads: KV, headDim: d, intermediateSize: I } = this.cfg;
    const b = this.backend;
    if (this.rows > 0) for (const t of [this.x, this.xn, this.qkv, this.att, this.gu, this.act]) b.release(t);
    this.x = b.tensor('f32', n * D);
    this.xn = b.tensor('f32', n * D);
    this.qkv = b.tensor('f32', n * (H + 2 * KV) * d);
    this.att = b.tensor('f32', n * H * d);
    this.gu = b.tensor('f32', n * 2 * I);
    this.act = b.tensor('f32', n * I);
    this.rows = n;
  }

  release(): void {
    if (this.rows > 0) for (const t of [this.x, this.xn, this.qkv, this.att, this.gu, this.act]) this.backend.release(t);
    this.rows = 0;
  }
}

export class LlamaModel {
  readonly dims: CacheDims;
  /** Where every cache of this model takes its pages. */
  readonly pool: PagePool;
  private readonly rope: RopeTable;
  private cos: Tensor | null = null;
  private sin: Tensor | null = null;
  private ropePositions = 0;
  private readonly ws: Workspace;
  private readonly plan = new StepPlan();
  private logitRows = 0;
  private logitsX!: Tensor;
  private logits!: Tensor;

  constructor(
    readonly config: ModelConfig,
    readonly weights: ModelWeights,
    readonly backend: Backend,
  ) {
    this.dims = { numLayers: config.numLayers, numHeads: config.numHeads, numKvHeads: config.numKvHeads, headDim: config.headDim };
    this.pool = backend.createPagePool(this.dims);
    this.plan.pageRuns = backend.pageRuns === true;
    this.rope = new RopeTable(ropeInvFreq(config), config.maxPositions);
    this.ws = new Workspace(backend, config);
  }

  /** Give the activation buffers back (they grow to the largest step run; benchmarks measure each run's own). */
  releaseScratch(): void {
    this.ws.release();
    if (this.logitRows > 0) {
      this.backend.release(this.logitsX);
      this.backend.release(this.logits);
      this.logitRows = 0;
    }
  }

  /**
   * Advance every item by its tokens; resolves, per item, to what its `logits` asked for. Items run as
   * one batch; a failure leaves their caches unusable (free them).
   */
  async forward(items: ForwardItem[], opts: ForwardOptions = {}): Promise<ForwardResult[]> {
    const cfg = this.config;
    const { hiddenSize: D, numHeads: H, numKvHeads: KV, headDim: d, intermediateSize: I, vocabSize: V } = cfg;
    const qkvDim = (H + 2 * KV) * d;
    const B = this.backend;

    // Rows, positions and token ids of every new token; the plan of every cache.
    let N = 0;
    let subs = 0;
    let maxPos = 0;
    const starts: number[] = [];
    for (const it of items) {
      if (it.tokens.length === 0) throw new KiviError('forward: a sequence with no new tokens');
      if (it.cache.pool !== this.pool) throw new KiviError('forward: a cache made for another model');
      const end = it.cache.length + it.tokens.length;
      if (end > cfg.maxPositions) throw new KiviError(`sequence of ${end} tokens exceeds the model's context of ${cfg.maxPositions}`);
      starts.push(N);
      N += it.tokens.length;
      subs = Math.max(subs, this.isPrefill(it) ? 1 : it.tokens.length);
      maxPos = Math.max(maxPos, end);
    }
    const ids = new Int32Array(N);
    const positions = new Int32Array(N);
    items.forEach((it, i) => {
      for (let j = 0; j < it.tokens.length; j++) {
        const id = it.tokens[j]!;
        if (!Number.isInteger(id) || id < 0 || id >= V) throw new KiviError(`token id ${id} outside the vocabulary [0, ${V})`);
        ids[starts[i]! + j] = id;
        positions[starts[i]! + j] = it.cache.length + j;
      }
    });
    const plan = this.plan;
    plan.clear();
    for (let j = 0; j < subs; j++) {
      plan.beginSubstep();
      items.forEach((it, i) => {
        if (this.isPrefill(it)) {
          if (j === 0) it.cache.plan(plan, starts[i]!, it.tokens.length);
        } else if (j < it.tokens.length) {
          it.cache.plan(plan, starts[i]! + j, 1);
        }
      });
    }
    plan.validate();

    this.ensureRope(maxPos);
    const ws = this.ws;
    ws.ensure(N);
    const { x, xn, qkv, att, gu, act } = ws;
    const w = this.weights;
    try {
      B.embed(x, w.embed, ids, D);
      for (let l = 0; l < cfg.numLayers; l++) {
        const lw = w.layers[l]!;
        // Attention block: x += o_proj(attention(rope(q), rope(k), v)).
        B.rmsnorm(xn, x, lw.attnNorm, N, D, cfg.rmsNormEps);
        B.matmul(qkv, xn, lw.wqkv, N, D, qkvDim, lw.bqkv);
        B.rope(qkv, N, positions, this.cos!, this.sin!, this.dims);
        if (opts.capture) opts.capture[l] = await B.read(qkv, 0, N * qkvDim);
        for (let s = 0; s < subs; s++) {
          B.cacheJobs(plan, s, 'pre', l, qkv, this.pool);
          B.attend(plan, s, l, qkv, att, this.pool);
          B.cacheJobs(plan, s, 'post', l, qkv, this.pool);
        }
        B.matmulAdd(x, att, lw.wo, N, H * d, D);
        // MLP block: x += down(silu(gate(x)) · up(x)).
        B.rmsnorm(xn, x, lw.mlpNorm, N, D, cfg.rmsNormEps);
        B.matmul(gu, xn, lw.wgu, N, D, 2 * I);
        B.swiglu(act, gu, N, I);
        B.matmulAdd(x, act, lw.wdown, N, I, D);
      }
    } finally {
      endStep(plan, this.pool);
    }
    return this.results(items, starts);
  }

  /**
   * Fill a cache with the keys and values of T tokens given as each layer's qkv rows (as forward's
   * `capture` returns them; only the k and v parts are read), as a prefill of those tokens would: the
   * cache's own jobs (pre phase, e.g. a key rotation, then storage), without running attention.
   */
  async ingest(cache: KvCache, rows: Float32Array[], T: number): Promise<void> {
    const { numLayers: L, numHeads: H, numKvHeads: KV, headDim: d } = this.dims;
    if (cache.pool !== this.pool) throw new KiviError('ingest: a cache made for another model');
    if (rows.length !== L) throw new KiviError(`ingest: ${rows.length} layers of rows for a model of ${L}`);
    const plan = this.plan;
    plan.clear();
    plan.beginSubstep();
    cache.plan(plan, 0, T);
    plan.validate();
    this.ws.ensure(T);
    const n = T * (H + 2 * KV) * d;
    try {
      for (let l = 0; l < L; l++) {
        this.backend.write(this.ws.qkv, rows[l]!.subarray(0, n));
        this.backend.cacheJobs(plan, 0, 'pre', l, this.ws.qkv, this.pool);
        this.backend.cacheJobs(plan, 0, 'post', l, this.ws.qkv, this.pool);
      }
    } finally {
      endStep(plan, this.pool);
    }
  }

  private isPrefill(it: ForwardItem): boolean {
    return (it.mode ?? (it.cache.length === 0 ? 'prefill' : 'decode')) === 'prefill';
  }

  /** Final norm and output head on the rows that need them; logits or argmax ids back. */
  private async results(items: ForwardItem[], starts: number[]): Promise<ForwardResult[]> {
    const { hiddenSize: D, vocabSize: V, rmsNormEps } = this.config;
    const rows: number[] = [];
    for (let i = 0; i < items.length; i++) {
      const it = items[i]!;
      const T = it.tokens.length;
      if (it.logits === 'last' || it.logits === 'argmax') rows.push(starts[i]! + T - 1);
      if (it.logits === 'all') for (let j = 0; j < T; j++) rows.push(starts[i]! + j);
    }
    if (rows.length === 0) return items.map(() => null);
    const B = this.backend;
    if (this.logitRows < rows.length) {
      if (this.logitRows > 0) {
        B.release(this.logitsX);
        B.release(this.logits);
      }
      this.logitRows = Math.max(rows.length, this.logitRows * 2);
      this.logitsX = B.tensor('f32', this.logitRows * D);
      this.logits = B.tensor('f32', this.logitRows * V);
    }
    B.gather(this.logitsX, this.ws.x, Int32Array.from(rows), D);
    B.rmsnorm(this.logitsX, this.logitsX, this.weights.norm, rows.length, D, rmsNormEps);
    B.matmul(this.logits, this.logitsX, this.weights.lmHead, rows.length, D, V);
    // Argmax rows come back as ids, the rest as logits: one read each at most.
    const argRows = items.some((it) => it.logits === 'argmax') ? await B.argmax(this.logits, rows.length, V) : null;
    const all = items.some((it) => it.logits === 'last' || it.logits === 'all') ? await B.read(this.logits, 0, rows.length * V) : null;
    const out: ForwardResult[] = [];
    let n = 0;
    for (const it of items) {
      if (it.logits === 'none') out.push(null);
      else if (it.logits === 'argmax') out.push(argRows![n++]!);
      else {
        const m = it.logits === 'last' ? 1 : it.tokens.length;
        out.push(all!.slice(n * V, (n + m) * V));
        n += m;
      }
    }
    return out;
  }

  /** cos/sin tables on the back end for positions [0, n), as many as the host's tables hold (RopeTable.reserve). */
  private ensureRope(n: number): void {
    if (n <= this.ropePositions) return;
    const size = this.rope.reserve(n);
    const { cos, sin } = this.rope.tables(size);
    const B = this.backend;
    if (this.cos) B.release(this.cos);
    if (this.sin) B.release(this.sin);
    this.cos = B.tensor('f32', cos.length);
    this.sin = B.tensor('f32', sin.length);
    B.write(this.cos, cos);
    B.write(this.sin, sin);
    this.ropePositions = size;
  }
}
