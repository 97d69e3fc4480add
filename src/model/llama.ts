/**
 * The Llama-family forward pass (Llama, Mistral, Qwen2), float32, over a batch of sequences.
 *
 * One call advances several sequences at once: their tokens are stacked into one matrix so every weight
 * is read once per call (the linear layers dominate), while attention runs per sequence through that
 * sequence's cache. A sequence whose cache is empty is *prefilled*: its tokens attend to each other
 * exactly and causally, then their K/V go to the cache. Otherwise its tokens are *decoded* one after the
 * other through the cache (append, attend), which is what teacher forcing and generation both need.
 *
 * Attention is collected into plans (src/kernels/plan.ts) so the back end runs many tasks per call, in
 * parallel where it can: all prefill queries of a layer in one plan, and for decoding, the k-th new
 * token of every sequence in one plan (a sequence's own tokens must go in order).
 */
import type { Kernels } from '../kernels/types.js';
import type { ModelConfig } from './config.js';
import type { ModelWeights } from './weights.js';
import { RopeTable, ropeInvFreq } from './rope.js';
import { AttnScratch, type CacheDims, type SequenceCache } from '../cache/types.js';
import { AttentionPlan } from '../kernels/plan.js';
import { KiviError } from '../util/errors.js';

export interface ForwardItem {
  /** New tokens of this sequence. */
  tokens: ArrayLike<number>;
  cache: SequenceCache;
  /** Which positions need logits: none, the last new token, or every new token. */
  logits: 'none' | 'last' | 'all';
}

/** Growable activation buffers, owned by the model (llama2.c's RunState): nothing is allocated per token. */
class Workspace {
  rows = 0;
  x: Float32Array = new Float32Array(0);
  xn: Float32Array = new Float32Array(0);
  qkv: Float32Array = new Float32Array(0);
  q: Float32Array = new Float32Array(0);
  k: Float32Array = new Float32Array(0);
  v: Float32Array = new Float32Array(0);
  att: Float32Array = new Float32Array(0);
  proj: Float32Array = new Float32Array(0);
  gu: Float32Array = new Float32Array(0);
  act: Float32Array = new Float32Array(0);
  kh: Float32Array = new Float32Array(0);
  vh: Float32Array = new Float32Array(0);

  constructor(private readonly kernels: Kernels, private readonly cfg: ModelConfig) {}

  ensure(rows: number): void {
    if (rows <= this.rows) return;
    const n = Math.max(rows, this.rows * 2);
    const { hiddenSize: D, numHeads: H, numKvHeads: KV, headDim: d, intermediateSize: I } = this.cfg;
    const a = (size: number, old: Float32Array) => {
      if (old.length) this.kernels.free(old);
      return this.kernels.allocF32(size);
    };
    this.x = a(n * D, this.x);
    this.xn = a(n * D, this.xn);
    this.qkv = a(n * (H + 2 * KV) * d, this.qkv);
    this.q = a(n * H * d, this.q);
    this.k = a(n * KV * d, this.k);
    this.v = a(n * KV * d, this.v);
    this.att = a(n * H * d, this.att);
    this.proj = a(n * D, this.proj);
    this.gu = a(n * 2 * I, this.gu);
    this.act = a(n * I, this.act);
    this.kh = a(n * KV * d, this.kh);
    this.vh = a(n * KV * d, this.vh);
    this.rows = n;
  }
}

export class LlamaModel {
  readonly dims: CacheDims;
  private readonly rope: RopeTable;
  private readonly ws: Workspace;
  private readonly scratch = new AttnScratch();
  private readonly plan = new AttentionPlan();
  private logitsBuf: Float32Array = new Float32Array(0);

  constructor(readonly config: ModelConfig, readonly weights: ModelWeights, readonly kernels: Kernels) {
    this.dims = { numLayers: config.numLayers, numHeads: config.numHeads, numKvHeads: config.numKvHeads, headDim: config.headDim };
    this.rope = new RopeTable(ropeInvFreq(config));
    this.ws = new Workspace(kernels, config);
  }

  /**
   * Advance every item by its tokens. Returns, per item, its logits ([rows][vocab]; rows = 0, 1 or
   * tokens.length as asked). The returned arrays are copies the caller owns.
   */
  forward(items: ForwardItem[]): Float32Array[] {
    const cfg = this.config;
    const { hiddenSize: D, numHeads: H, numKvHeads: KV, headDim: d, intermediateSize: I, vocabSize: V } = cfg;
    const qkvDim = (H + 2 * KV) * d;
    let N = 0;
    const starts: number[] = [];
    const past: number[] = [];
    for (const it of items) {
      if (it.tokens.length === 0) throw new KiviError('forward: a sequence with no new tokens');
      starts.push(N);
      past.push(it.cache.length);
      if (it.cache.length + it.tokens.length > cfg.maxPositions) {
        throw new KiviError(`sequence of ${it.cache.length + it.tokens.length} tokens exceeds the model's context of ${cfg.maxPositions}`);
      }
      N += it.tokens.length;
    }
    const ws = this.ws;
    ws.ensure(N);
    const { x, xn, qkv, q, k, v, att, proj, gu, act } = ws;
    const K = this.kernels;

    // Embed.
    for (let i = 0; i < items.length; i++) {
      const toks = items[i]!.tokens;
      for (let j = 0; j < toks.length; j++) {
        const id = toks[j]!;
        if (!Number.isInteger(id) || id < 0 || id >= V) throw new KiviError(`token id ${id} outside the vocabulary [0, ${V})`);
        x.set(this.weights.embed.subarray(id * D, (id + 1) * D), (starts[i]! + j) * D);
      }
    }

    for (let l = 0; l < cfg.numLayers; l++) {
      const w = this.weights.layers[l]!;
      // Attention block: x += o_proj(attention(rope(q), rope(k), v)).
      rmsnorm(xn, x, w.attnNorm, N, D, cfg.rmsNormEps);
      K.matmul(qkv, xn, w.wqkv, N, D, qkvDim, w.bqkv);
      for (let r = 0; r < N; r++) {
        const o = r * qkvDim;
        q.set(qkv.subarray(o, o + H * d), r * H * d);
        k.set(qkv.subarray(o + H * d, o + (H + KV) * d), r * KV * d);
        v.set(qkv.subarray(o + (H + KV) * d, o + qkvDim), r * KV * d);
      }
      for (let i = 0; i < items.length; i++) {
        const T = items[i]!.tokens.length;
        for (let j = 0; j < T; j++) {
          const r = starts[i]! + j;
          this.rope.apply(q, r * H * d, H, past[i]! + j);
          this.rope.apply(k, r * KV * d, KV, past[i]! + j);
        }
      }
      this.attention(l, items, starts, past);
      K.matmul(proj, att, w.wo, N, H * d, D);
      addInPlace(x, proj, N * D);

      // MLP block: x += down(silu(gate(x)) · up(x)).
      rmsnorm(xn, x, w.mlpNorm, N, D, cfg.rmsNormEps);
      K.matmul(gu, xn, w.wgu, N, D, 2 * I);
      K.swiglu(act, gu, N, I);
      K.matmul(proj, act, w.wdown, N, I, D);
      addInPlace(x, proj, N * D);
    }

    // Final norm and output head, only on rows that need logits.
    const rows: number[] = [];
    for (let i = 0; i < items.length; i++) {
      const it = items[i]!;
      const T = it.tokens.length;
      if (it.logits === 'last') rows.push(starts[i]! + T - 1);
      if (it.logits === 'all') for (let j = 0; j < T; j++) rows.push(starts[i]! + j);
    }
    const out: Float32Array[] = [];
    if (rows.length > 0) {
      for (let n = 0; n < rows.length; n++) xn.set(x.subarray(rows[n]! * D, (rows[n]! + 1) * D), n * D);
      rmsnorm(xn, xn, this.weights.norm, rows.length, D, cfg.rmsNormEps);
      if (this.logitsBuf.length < rows.length * V) {
        if (this.logitsBuf.length) K.free(this.logitsBuf);
        this.logitsBuf = K.allocF32(rows.length * V);
      }
      K.matmul(this.logitsBuf, xn, this.weights.lmHead, rows.length, D, V);
    }
    let n = 0;
    for (const it of items) {
      const m = it.logits === 'none' ? 0 : it.logits === 'last' ? 1 : it.tokens.length;
      out.push(this.logitsBuf.slice(n * V, (n + m) * V));
      n += m;
    }
    return out;
  }

  /** One layer's attention for every item: prefills first (exact, causal), then decode steps. */
  private attention(l: number, items: ForwardItem[], starts: number[], past: number[]): void {
    const { numHeads: H, numKvHeads: KV, headDim: d } = this.config;
    const { q, k, v, att } = this.ws;
    const plan = this.plan;
    plan.clear();
    for (let i = 0; i < items.length; i++) {
      if (past[i] === 0) this.planCausal(starts[i]!, items[i]!.tokens.length, plan);
    }
    if (plan.tasks > 0) this.kernels.attend(plan);
    plan.clear();
    let steps = 0;
    for (let i = 0; i < items.length; i++) {
      const T = items[i]!.tokens.length;
      if (past[i] === 0) items[i]!.cache.layers[l]!.prefill(k, starts[i]! * KV * d, v, starts[i]! * KV * d, T);
      else steps = Math.max(steps, T);
    }
    // Step j: the j-th new token of every decoding sequence, as one plan.
    for (let j = 0; j < steps; j++) {
      for (let i = 0; i < items.length; i++) {
        if (past[i] === 0 || j >= items[i]!.tokens.length) continue;
        const lc = items[i]!.cache.layers[l]!;
        const r = starts[i]! + j;
        lc.append(k, r * KV * d, v, r * KV * d);
        if (lc.planAttend) lc.planAttend(q, r * H * d, att, r * H * d, plan);
        else lc.attend(q, r * H * d, att, r * H * d, this.scratch);
      }
      if (plan.tasks > 0) this.kernels.attend(plan);
      plan.clear();
      for (let i = 0; i < items.length; i++) {
        if (past[i] === 0 || j >= items[i]!.tokens.length) continue;
        const lc = items[i]!.cache.layers[l]!;
        if (lc.planAttend) lc.endStep?.();
      }
    }
  }

  /** Exact causal attention among one sequence's rows r0..r0+T−1 (prefill), as one task per query and kv head. */
  private planCausal(r0: number, T: number, plan: AttentionPlan): void {
    const { numHeads: H, numKvHeads: KV, headDim: d } = this.config;
    const { q, k, v, att, kh, vh } = this.ws;
    const nq = H / KV;
    const scale = 1 / Math.sqrt(d);
    // Head-major copies so each kv head's keys/values are contiguous (this item's region: rows r0..).
    const base = r0 * KV * d;
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < KV; h++) {
        const src = (r0 + t) * KV * d + h * d;
        kh.set(k.subarray(src, src + d), base + (h * T + t) * d);
        vh.set(v.subarray(src, src + d), base + (h * T + t) * d);
      }
    }
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < KV; h++) {
        const qo = (r0 + t) * H * d + h * nq * d;
        plan.task(q, qo, nq, att, qo, d, scale);
        plan.keys(kh, base + h * T * d, t + 1);
        plan.values(vh, base + h * T * d, t + 1);
      }
    }
  }
}

export function rmsnorm(out: Float32Array, x: Float32Array, w: Float32Array, rows: number, D: number, eps: number): void {
  for (let r = 0; r < rows; r++) {
    const o = r * D;
    let ss = 0;
    for (let i = 0; i < D; i++) ss += x[o + i]! * x[o + i]!;
    const inv = 1 / Math.sqrt(Math.fround(ss / D) + eps);
    for (let i = 0; i < D; i++) out[o + i] = w[i]! * Math.fround(x[o + i]! * inv);
  }
}

function addInPlace(x: Float32Array, y: Float32Array, n: number): void {
  for (let i = 0; i < n; i++) x[i] += y[i]!;
}
