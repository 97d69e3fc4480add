/**
 * The KIVI cache (docs/KIVI.md §5–6): keys quantized per channel in groups of G tokens, values per token
 * in groups of G channels, the newest tokens kept in full precision.
 *
 * Storage for one layer of one sequence, every array [kvHead]-major:
 *  - key blocks of exactly R tokens (one flush of the residual): codes [R][d·kb/32] words, float16
 *    scale/min [R/G][d];
 *  - the key residual: up to R−1 full-precision tokens between steps (flushed as one block at R);
 *  - value blocks of VALUE_BLOCK tokens: codes [VALUE_BLOCK][d·vb/32], float16 scale/min [VALUE_BLOCK][d/G];
 *  - the value residual: a ring of R+1 slots holding the newest R tokens (R+1 during a step).
 * Attention runs on the codes: planAttend() lists the blocks as segments of an attention plan that the
 * kernels run (scores on packed keys, weighted packed values); nothing is ever dequantized in bulk.
 */
import type { Kernels } from '../kernels/types.js';
import { type Bits, packedWords, quantizePerChannelInto, quantizePerTokenInto } from '../quant/quantizer.js';
import { fromHalfBits, toHalfBits } from '../quant/float16.js';
import type { AttentionPlan } from '../kernels/plan.js';
import { AttnScratch, type CacheDims, type LayerCache, attendNow } from './types.js';
import { KiviError } from '../util/errors.js';

export interface KiviOptions {
  kBits: Bits;
  vBits: Bits;
  /** Group size G: tokens per key group, channels per value group. */
  groupSize: number;
  /** Full-precision residual length R (R % G == 0). */
  residual: number;
  /** Residual storage: float32 (the reference's) or float16 (the paper's, smaller). */
  residualDtype: 'fp32' | 'fp16';
}

export const VALUE_BLOCK = 256;

interface QBlock {
  codes: Uint32Array;
  scales: Uint16Array;
  mins: Uint16Array;
}

/** Check options against a model's head size; a clear error for anything the layout cannot hold. */
export function validateKivi(o: KiviOptions, headDim: number): void {
  const G = o.groupSize;
  const R = o.residual;
  if (!Number.isInteger(G) || G <= 0) throw new KiviError(`KIVI group size must be a positive integer, got ${G}`);
  if (!Number.isInteger(R) || R <= 0) throw new KiviError(`KIVI residual length must be a positive integer, got ${R}`);
  if (R % G !== 0) throw new KiviError(`KIVI residual length R=${R} must be a multiple of the group size G=${G}`);
  if (headDim % G !== 0) {
    throw new KiviError(`KIVI group size G=${G} must divide the model's head_dim ${headDim} (choose another --kv: a G that divides it, or fp16)`);
  }
  for (const b of [o.kBits, o.vBits]) {
    if (G % (32 / b) !== 0) throw new KiviError(`KIVI group size G=${G} must be a multiple of ${32 / b} (codes per 32-bit word at ${b} bits)`);
  }
}

/**
 * Quantization scratch shared by every KIVI cache on this thread. Quantizing is synchronous, so one pair
 * of buffers serves all caches; a pair per cache would cost 5·R·d bytes in every layer of every sequence
 * (80 KiB at R = 128, d = 128) that no one counts.
 */
const scratch = { rows: new Float32Array(0), codes: new Uint8Array(0) };

function scratchRows(n: number): Float32Array {
  if (scratch.rows.length < n) scratch.rows = new Float32Array(n);
  return scratch.rows;
}

function scratchCodes(n: number): Uint8Array {
  if (scratch.codes.length < n) scratch.codes = new Uint8Array(n);
  return scratch.codes;
}

export class KiviLayerCache implements LayerCache {
  private readonly kv: number;
  private readonly d: number;
  private readonly G: number;
  private readonly R: number;
  private readonly wptK: number;
  private readonly wptV: number;
  private readonly resBytes: number;

  private readonly keyBlocks: QBlock[] = [];
  /** Residual buffers, allocated on first use and released by free(). */
  private kRes: Float32Array | Uint16Array | null = null;
  private rk = 0;

  private readonly valueBlocks: QBlock[] = [];
  private nVq = 0;
  private vRes: Float32Array | Uint16Array | null = null;
  private vStart = 0;
  private rv = 0;

  constructor(private readonly dims: CacheDims, private readonly kernels: Kernels, readonly opts: KiviOptions) {
    validateKivi(opts, dims.headDim);
    this.kv = dims.numKvHeads;
    this.d = dims.headDim;
    this.G = opts.groupSize;
    this.R = opts.residual;
    this.wptK = packedWords(this.d, opts.kBits);
    this.wptV = packedWords(this.d, opts.vBits);
    this.resBytes = opts.residualDtype === 'fp16' ? 2 : 4;
  }

  /** The residual buffers, allocating them on first use. */
  private residuals(): { kRes: Float32Array | Uint16Array; vRes: Float32Array | Uint16Array } {
    if (!this.kRes || !this.vRes) {
      const half = this.opts.residualDtype === 'fp16';
      const alloc = (n: number) => (half ? this.kernels.allocU16(n) : this.kernels.allocF32(n));
      this.kRes = alloc(this.kv * this.R * this.d);
      this.vRes = alloc(this.kv * (this.R + 1) * this.d);
    }
    return { kRes: this.kRes, vRes: this.vRes };
  }

  private get nKq(): number {
    return this.keyBlocks.length * this.R;
  }

  get length(): number {
    return this.nKq + this.rk;
  }

  prefill(k: Float32Array, kOff: number, v: Float32Array, vOff: number, T: number): void {
    if (this.length !== 0) throw new Error('KiviLayerCache.prefill on a non-empty cache');
    const { R, kv, d } = this;
    const row = kv * d;
    // Keys: whole blocks of R quantized, the last T mod R kept (all of them while T < R).
    const kq = T < R ? 0 : T - (T % R);
    for (let b = 0; b < kq; b += R) this.quantizeKeyBlock(k, kOff + b * row, row);
    const { kRes } = this.residuals();
    for (let t = kq; t < T; t++) this.writeRow(kRes, this.R, this.rk++, k, kOff + t * row);
    // Values: all but the newest R quantized per token.
    const vq = T <= R ? 0 : T - R;
    for (let t = 0; t < vq; t++) this.quantizeValue(v, vOff + t * row);
    for (let t = vq; t < T; t++) this.pushValueResidual(v, vOff + t * row);
  }

  append(k: Float32Array, kOff: number, v: Float32Array, vOff: number): void {
    this.writeRow(this.residuals().kRes, this.R, this.rk++, k, kOff);
    this.pushValueResidual(v, vOff);
  }

  attend(q: Float32Array, qOff: number, out: Float32Array, oOff: number, scratch: AttnScratch): void {
    attendNow(this, this.kernels, q, qOff, out, oOff, scratch);
  }

  /** One task per kv head over [key blocks ; key residual] and [value blocks ; value ring], in token order. */
  planAttend(q: Float32Array, qOff: number, out: Float32Array, oOff: number, plan: AttentionPlan): void {
    const { kv, d, R, G } = this;
    const { kRes, vRes } = this.residuals();
    const nq = this.dims.numHeads / kv;
    const scale = 1 / Math.sqrt(d);
    const gPerBlock = R / G;
    const vGroups = d / G;
    const slots = R + 1;
    const { kBits, vBits } = this.opts;
    for (let h = 0; h < kv; h++) {
      plan.task(q, qOff + h * nq * d, nq, out, oOff + h * nq * d, d, scale);
      for (const b of this.keyBlocks) plan.keysKivi(b.codes, h * R * this.wptK, b.scales, b.mins, h * gPerBlock * d, R, kBits, G);
      plan.keys(kRes, h * R * d, this.rk);
      for (let i = 0; i * VALUE_BLOCK < this.nVq; i++) {
        const b = this.valueBlocks[i]!;
        const n = Math.min(VALUE_BLOCK, this.nVq - i * VALUE_BLOCK);
        plan.valuesKivi(b.codes, h * VALUE_BLOCK * this.wptV, b.scales, b.mins, h * VALUE_BLOCK * vGroups, n, vBits, G);
      }
      // The value ring holds tokens nVq.. in slot order vStart, vStart+1, ... (mod R+1).
      const n1 = Math.min(this.rv, slots - this.vStart);
      plan.values(vRes, (h * slots + this.vStart) * d, n1);
      plan.values(vRes, h * slots * d, this.rv - n1);
    }
  }

  /** End of the step (KIVI.md §5.3–4): flush a full key residual as one block; slide the value window. */
  endStep(): void {
    if (this.rk === this.R) this.flushKeyResidual();
    if (this.rv > this.R) this.quantizeOldestValue();
  }

  bytes(): number {
    const { kv, d, G } = this;
    const keyQ = this.nKq * kv * (this.wptK * 4) + (this.nKq / G) * kv * d * 4;
    const valQ = this.nVq * kv * (this.wptV * 4 + (d / G) * 4);
    return keyQ + valQ + (this.rk + this.rv) * kv * d * this.resBytes;
  }

  reservedBytes(): number {
    const { kv, d, G, R } = this;
    const keyBlock = kv * R * (this.wptK * 4) + kv * (R / G) * d * 4;
    const valBlock = kv * VALUE_BLOCK * (this.wptV * 4 + (d / G) * 4);
    const residual = this.kRes ? (2 * R + 1) * kv * d * this.resBytes : 0;
    return this.keyBlocks.length * keyBlock + this.valueBlocks.length * valBlock + residual;
  }

  free(): void {
    for (const b of [...this.keyBlocks, ...this.valueBlocks]) {
      this.kernels.free(b.codes);
      this.kernels.free(b.scales);
      this.kernels.free(b.mins);
    }
    if (this.kRes) this.kernels.free(this.kRes);
    if (this.vRes) this.kernels.free(this.vRes);
    this.kRes = null;
    this.vRes = null;
    this.keyBlocks.length = 0;
    this.valueBlocks.length = 0;
    this.rk = 0;
    this.nVq = 0;
    this.rv = 0;
    this.vStart = 0;
  }

  /** Counts for tests and analysis: quantized and residual tokens of keys and values. */
  layout(): { keyQuantized: number; keyResidual: number; valueQuantized: number; valueResidual: number } {
    return { keyQuantized: this.nKq, keyResidual: this.rk, valueQuantized: this.nVq, valueResidual: this.rv };
  }

  // --- storage rules -------------------------------------------------------------------------------

  /** Quantize R token rows ([R][kv·d] from off, row stride `row`) as one key block, per channel. */
  private quantizeKeyBlock(src: Float32Array, off: number, row: number): void {
    const { R, kv, d, G } = this;
    const b = this.allocBlock(kv * R * this.wptK, kv * (R / G) * d);
    const x = scratchRows(R * d);
    const codes = scratchCodes(R * d);
    for (let h = 0; h < kv; h++) {
      for (let t = 0; t < R; t++) {
        const s = off + t * row + h * d;
        for (let c = 0; c < d; c++) x[t * d + c] = src[s + c]!;
      }
      quantizePerChannelInto(x, 0, R, d, G, this.opts.kBits, b.codes, h * R * this.wptK, b.scales, b.mins,
        h * (R / G) * d, codes);
    }
    this.keyBlocks.push(b);
  }

  private flushKeyResidual(): void {
    const { R, kv, d, G } = this;
    const b = this.allocBlock(kv * R * this.wptK, kv * (R / G) * d);
    const x = scratchRows(R * d);
    const codes = scratchCodes(R * d);
    for (let h = 0; h < kv; h++) {
      const base = h * R * d;
      for (let i = 0; i < R * d; i++) x[i] = readRes(this.kRes!, base + i);
      quantizePerChannelInto(x, 0, R, d, G, this.opts.kBits, b.codes, h * R * this.wptK, b.scales, b.mins,
        h * (R / G) * d, codes);
    }
    this.keyBlocks.push(b);
    this.rk = 0;
  }

  /** Quantize one token row [kv·d] (per token) into the next value slot. */
  private quantizeValue(src: Float32Array, off: number): void {
    const { kv, d, G } = this;
    const bi = (this.nVq / VALUE_BLOCK) | 0;
    if (bi === this.valueBlocks.length) {
      this.valueBlocks.push(this.allocBlock(kv * VALUE_BLOCK * this.wptV, kv * VALUE_BLOCK * (d / G)));
    }
    const b = this.valueBlocks[bi]!;
    const ti = this.nVq - bi * VALUE_BLOCK;
    const codes = scratchCodes(d);
    for (let h = 0; h < kv; h++) {
      const slot = h * VALUE_BLOCK + ti;
      quantizePerTokenInto(src, off + h * d, 1, d, G, this.opts.vBits, b.codes, slot * this.wptV, b.scales, b.mins,
        slot * (d / G), codes);
    }
    this.nVq++;
  }

  private quantizeOldestValue(): void {
    const { kv, d, R } = this;
    const x = scratchRows(kv * d);
    const slots = R + 1;
    for (let h = 0; h < kv; h++) {
      const base = (h * slots + this.vStart) * d;
      for (let c = 0; c < d; c++) x[h * d + c] = readRes(this.vRes!, base + c);
    }
    this.quantizeValue(x, 0);
    this.vStart = (this.vStart + 1) % slots;
    this.rv--;
  }

  private pushValueResidual(src: Float32Array, off: number): void {
    const slots = this.R + 1;
    this.writeRow(this.residuals().vRes, slots, (this.vStart + this.rv) % slots, src, off);
    this.rv++;
  }

  /** Write a token row [kv·d] into slot `slot` of a [kv][slots][d] residual. */
  private writeRow(dst: Float32Array | Uint16Array, slots: number, slot: number, src: Float32Array, off: number): void {
    const { kv, d } = this;
    for (let h = 0; h < kv; h++) {
      const o = (h * slots + slot) * d;
      const s = off + h * d;
      if (dst instanceof Float32Array) {
        for (let c = 0; c < d; c++) dst[o + c] = src[s + c]!;
      } else {
        for (let c = 0; c < d; c++) dst[o + c] = toHalfBits(src[s + c]!);
      }
    }
  }

  private allocBlock(codeWords: number, params: number): QBlock {
    return { codes: this.kernels.allocU32(codeWords), scales: this.kernels.allocU16(params), mins: this.kernels.allocU16(params) };
  }
}

function readRes(a: Float32Array | Uint16Array, i: number): number {
  return a instanceof Float32Array ? a[i]! : fromHalfBits(a[i]!);
}
