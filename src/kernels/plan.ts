/**
 * Attention work described as data, so a back end can run it in one call (and in parallel): a task is
 * the nq query heads that share one kv head, for one query token, over the cache's key segments and
 * value segments in token order. Caches add their blocks (dense chunks, KIVI blocks, residuals) as
 * segments; the model collects the tasks of every sequence of a step into one plan.
 */
import type { Bits } from '../quant/quantizer.js';

export type Storage = Float32Array | Uint16Array | Uint32Array;

export const SEG_F32 = 0;
export const SEG_F16 = 1;
export const SEG_KIVI = 2;

// Task fields (int32).
export const TQ = 0, TQ_OFF = 1, TNQ = 2, TOUT = 3, TOUT_OFF = 4, TD = 5, TK0 = 6, TKN = 7, TV0 = 8, TVN = 9, TKT = 10, TVT = 11;
const TASK_FIELDS = 12;
// Segment fields (int32): kind, tokens, data array, data offset, scales array, mins array, param offset, bits, G.
export const SKIND = 0, SN = 1, SDATA = 2, SDATA_OFF = 3, SSCALES = 4, SMINS = 5, SP_OFF = 6, SBITS = 7, SG = 8;
const SEG_FIELDS = 9;

export class AttentionPlan {
  tasks = 0;
  segs = 0;
  /** Task records, TASK_FIELDS int32 each (array fields are indices into refs). */
  t: Int32Array = new Int32Array(TASK_FIELDS * 16);
  /** Softmax scale per task. */
  scale: Float64Array = new Float64Array(16);
  /** Segment records, SEG_FIELDS int32 each. */
  s: Int32Array = new Int32Array(SEG_FIELDS * 64);
  /** Arrays the records point to. */
  readonly refs: Storage[] = [];
  private inValues = false;

  /** Forget every task (the plan object is reused step after step). */
  clear(): void {
    this.tasks = 0;
    this.segs = 0;
    this.refs.length = 0;
  }

  /** Start a task: nq query heads (head size d) at q[qOff..], output to out[oOff .. oOff + nq·d). */
  task(q: Float32Array, qOff: number, nq: number, out: Float32Array, oOff: number, d: number, scale: number): void {
    this.checkLast();
    if (this.t.length < (this.tasks + 1) * TASK_FIELDS) this.t = grow(this.t, (this.tasks + 1) * TASK_FIELDS);
    if (this.scale.length <= this.tasks) {
      const s = new Float64Array(this.scale.length * 2);
      s.set(this.scale);
      this.scale = s;
    }
    const o = this.tasks * TASK_FIELDS;
    const r = this.t;
    r[o + TQ] = this.ref(q);
    r[o + TQ_OFF] = qOff;
    r[o + TNQ] = nq;
    r[o + TOUT] = this.ref(out);
    r[o + TOUT_OFF] = oOff;
    r[o + TD] = d;
    r[o + TK0] = this.segs;
    r[o + TKN] = 0;
    r[o + TV0] = this.segs;
    r[o + TVN] = 0;
    r[o + TKT] = 0;
    r[o + TVT] = 0;
    this.scale[this.tasks] = scale;
    this.tasks++;
    this.inValues = false;
  }

  /** Full-precision keys: n tokens [n][d] from off, float32 or float16 bits. */
  keys(k: Float32Array | Uint16Array, off: number, n: number): void {
    this.seg(true, k instanceof Float32Array ? SEG_F32 : SEG_F16, k, off, n);
  }

  /** KIVI keys: n tokens (a multiple of G), codes [n][d·b/32] from cOff, float16 scale/min [n/G][d] from pOff. */
  keysKivi(codes: Uint32Array, cOff: number, scales: Uint16Array, mins: Uint16Array, pOff: number, n: number, bits: Bits, G: number): void {
    this.seg(true, SEG_KIVI, codes, cOff, n, scales, mins, pOff, bits, G);
  }

  values(v: Float32Array | Uint16Array, off: number, n: number): void {
    this.seg(false, v instanceof Float32Array ? SEG_F32 : SEG_F16, v, off, n);
  }

  /** KIVI values: n tokens, codes [n][d·b/32] from cOff, float16 scale/min [n][d/G] from pIdx. */
  valuesKivi(codes: Uint32Array, cOff: number, scales: Uint16Array, mins: Uint16Array, pIdx: number, n: number, bits: Bits, G: number): void {
    this.seg(false, SEG_KIVI, codes, cOff, n, scales, mins, pIdx, bits, G);
  }

  /** Check every task is complete (keys and values cover the same T > 0 tokens). */
  validate(): void {
    this.checkLast();
  }

  /** Tokens (keys) of task i. */
  tokens(i: number): number {
    return this.t[i * TASK_FIELDS + TKT]!;
  }

  private seg(key: boolean, kind: number, data: Storage, off: number, n: number,
    scales?: Uint16Array, mins?: Uint16Array, pOff = 0, bits = 0, G = 0): void {
    if (this.tasks === 0) throw new Error('AttentionPlan: segment added before any task');
    if (n === 0) return;
    if (key && this.inValues) throw new Error('AttentionPlan: key segments must come before value segments');
    if (!key && !this.inValues) {
      this.inValues = true;
      this.t[(this.tasks - 1) * TASK_FIELDS + TV0] = this.segs;
    }
    if (this.s.length < (this.segs + 1) * SEG_FIELDS) this.s = grow(this.s, (this.segs + 1) * SEG_FIELDS);
    const o = this.segs * SEG_FIELDS;
    const r = this.s;
    r[o + SKIND] = kind;
    r[o + SN] = n;
    r[o + SDATA] = this.ref(data);
    r[o + SDATA_OFF] = off;
    r[o + SSCALES] = scales ? this.ref(scales) : -1;
    r[o + SMINS] = mins ? this.ref(mins) : -1;
    r[o + SP_OFF] = pOff;
    r[o + SBITS] = bits;
    r[o + SG] = G;
    this.segs++;
    const to = (this.tasks - 1) * TASK_FIELDS;
    if (key) {
      this.t[to + TKN]!++;
      this.t[to + TKT] += n;
    } else {
      this.t[to + TVN]!++;
      this.t[to + TVT] += n;
    }
  }

  private checkLast(): void {
    if (this.tasks === 0) return;
    const o = (this.tasks - 1) * TASK_FIELDS;
    const kt = this.t[o + TKT]!, vt = this.t[o + TVT]!;
    if (kt === 0 || kt !== vt) throw new Error(`AttentionPlan: task ${this.tasks - 1} has ${kt} key tokens and ${vt} value tokens`);
  }

  private ref(a: Storage): number {
    this.refs.push(a);
    return this.refs.length - 1;
  }
}

export const TASK_STRIDE = TASK_FIELDS;
export const SEG_STRIDE = SEG_FIELDS;

function grow(a: Int32Array, n: number): Int32Array {
  const b = new Int32Array(Math.max(n, a.length * 2));
  b.set(a);
  return b;
}
