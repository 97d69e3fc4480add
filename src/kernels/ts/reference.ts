/**
 * The pure-TypeScript back end: the readable reference every faster back end is tested against, and the
 * fallback where WebAssembly is unavailable. Loops are plain, over typed arrays, with a few independent
 * accumulators; each dot product is summed in the same order whatever the batch size, so batching never
 * changes a result.
 */
import type { Kernels } from '../types.js';
import type { Bits } from '../../quant/quantizer.js';
import { halfTable } from '../../quant/float16.js';
import {
  type AttentionPlan, SEG_KIVI, SEG_STRIDE, TASK_STRIDE, SBITS, SDATA, SDATA_OFF, SG, SKIND, SMINS, SN, SP_OFF,
  SSCALES, TD, TK0, TKN, TKT, TNQ, TOUT, TOUT_OFF, TQ, TQ_OFF, TV0, TVN,
} from '../plan.js';
import { softmaxInPlace } from './softmax.js';

const H = halfTable();

function dot(a: Float32Array, ao: number, b: Float32Array, bo: number, n: number): number {
  let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  let i = 0;
  for (; i + 3 < n; i += 4) {
    s0 += a[ao + i]! * b[bo + i]!;
    s1 += a[ao + i + 1]! * b[bo + i + 1]!;
    s2 += a[ao + i + 2]! * b[bo + i + 2]!;
    s3 += a[ao + i + 3]! * b[bo + i + 3]!;
  }
  for (; i < n; i++) s0 += a[ao + i]! * b[bo + i]!;
  return s0 + s1 + (s2 + s3);
}

function dotHalf(a: Float32Array, ao: number, b: Uint16Array, bo: number, n: number): number {
  let s0 = 0, s1 = 0;
  let i = 0;
  for (; i + 1 < n; i += 2) {
    s0 += a[ao + i]! * H[b[bo + i]!]!;
    s1 += a[ao + i + 1]! * H[b[bo + i + 1]!]!;
  }
  for (; i < n; i++) s0 += a[ao + i]! * H[b[bo + i]!]!;
  return s0 + s1;
}

export class TsKernels implements Kernels {
  readonly name: string = 'ts';
  readonly threads = 1;

  allocF32(n: number): Float32Array { return new Float32Array(n); }
  allocU32(n: number): Uint32Array { return new Uint32Array(n); }
  allocU16(n: number): Uint16Array { return new Uint16Array(n); }
  free(): void { /* garbage collected */ }
  dispose(): void { /* nothing held */ }

  matmul(out: Float32Array, x: Float32Array, w: Float32Array, rows: number, inDim: number, outDim: number, bias?: Float32Array): void {
    // Weight row outer, activation row inner: each weight row is read from memory once per call.
    for (let o = 0; o < outDim; o++) {
      const wo = o * inDim;
      const b = bias ? bias[o]! : 0;
      for (let r = 0; r < rows; r++) out[r * outDim + o] = dot(x, r * inDim, w, wo, inDim) + b;
    }
  }

  swiglu(act: Float32Array, gu: Float32Array, rows: number, I: number): void {
    for (let r = 0; r < rows; r++) {
      const g0 = r * 2 * I;
      for (let i = 0; i < I; i++) {
        const g = gu[g0 + i]!;
        act[r * I + i] = (g / (1 + Math.exp(-g))) * gu[g0 + I + i]!;
      }
    }
  }

  scoresDense(s: Float32Array, sOff: number, sStride: number, q: Float32Array, qOff: number, nq: number,
    k: Float32Array | Uint16Array, kOff: number, n: number, d: number, scale: number): void {
    for (let j = 0; j < nq; j++) {
      const qo = qOff + j * d;
      const so = j * sStride + sOff;
      if (k instanceof Float32Array) {
        for (let t = 0; t < n; t++) s[so + t] = dot(q, qo, k, kOff + t * d, d) * scale;
      } else {
        for (let t = 0; t < n; t++) s[so + t] = dotHalf(q, qo, k, kOff + t * d, d) * scale;
      }
    }
  }

  accumDense(out: Float32Array, oOff: number, p: Float32Array, pOff: number, pStride: number, nq: number,
    v: Float32Array | Uint16Array, vOff: number, n: number, d: number): void {
    const half = !(v instanceof Float32Array);
    for (let j = 0; j < nq; j++) {
      const oo = oOff + j * d;
      const po = j * pStride + pOff;
      for (let t = 0; t < n; t++) {
        const a = p[po + t]!;
        if (a === 0) continue;
        const vo = vOff + t * d;
        if (half) {
          for (let c = 0; c < d; c++) out[oo + c] += a * H[v[vo + c]!]!;
        } else {
          for (let c = 0; c < d; c++) out[oo + c] += a * v[vo + c]!;
        }
      }
    }
  }

  scoresKivi(s: Float32Array, sOff: number, sStride: number, q: Float32Array, qOff: number, nq: number,
    codes: Uint32Array, cOff: number, scales: Uint16Array, mins: Uint16Array, pOff: number,
    n: number, d: number, bits: Bits, G: number, scale: number): void {
    const per = 32 / bits;
    const mask = (1 << bits) - 1;
    const wpt = d / per;
    const qs = this.scratch(d);
    for (let g0 = 0; g0 < n; g0 += G) {
      const po = pOff + (g0 / G) * d;
      for (let j = 0; j < nq; j++) {
        // q·k̂_t = Σ_c (q_c·s_c)·code_tc + Σ_c q_c·m_c: fold scales into the query once per group.
        const qo = qOff + j * d;
        let bias = 0;
        for (let c = 0; c < d; c++) {
          const qc = q[qo + c]!;
          qs[c] = qc * H[scales[po + c]!]!;
          bias += qc * H[mins[po + c]!]!;
        }
        const so = j * sStride + sOff;
        for (let t = g0; t < g0 + G; t++) {
          const co = cOff + t * wpt;
          let acc = 0;
          for (let w = 0, c = 0; w < wpt; w++) {
            const word = codes[co + w]!;
            for (let k = 0; k < per; k++, c++) acc += qs[c]! * ((word >>> (bits * k)) & mask);
          }
          s[so + t] = (acc + bias) * scale;
        }
      }
    }
  }

  accumKivi(out: Float32Array, oOff: number, p: Float32Array, pOff: number, pStride: number, nq: number,
    codes: Uint32Array, cOff: number, scales: Uint16Array, mins: Uint16Array, pIdx: number,
    n: number, d: number, bits: Bits, G: number): void {
    const per = 32 / bits;
    const mask = (1 << bits) - 1;
    const wpt = d / per;
    const groups = d / G;
    for (let j = 0; j < nq; j++) {
      const oo = oOff + j * d;
      const po = j * pStride + pOff;
      for (let t = 0; t < n; t++) {
        const a = p[po + t]!;
        if (a === 0) continue;
        const co = cOff + t * wpt;
        const go = pIdx + t * groups;
        // Σ_t a_t·(s_tg·code + m_tg): fold the weight into the scale and the minimum.
        const wpg = G / per;
        for (let g = 0, c = oo, w = co; g < groups; g++) {
          const ws = a * H[scales[go + g]!]!;
          const wm = a * H[mins[go + g]!]!;
          for (let e = 0; e < wpg; e++, w++) {
            const word = codes[w]!;
            for (let k = 0; k < per; k++, c++) out[c] += ws * ((word >>> (bits * k)) & mask) + wm;
          }
        }
      }
    }
  }

  attend(plan: AttentionPlan): void {
    plan.validate();
    const { t, s: sg, refs } = plan;
    for (let i = 0; i < plan.tasks; i++) {
      const o = i * TASK_STRIDE;
      const q = refs[t[o + TQ]!] as Float32Array, qOff = t[o + TQ_OFF]!;
      const out = refs[t[o + TOUT]!] as Float32Array, oOff = t[o + TOUT_OFF]!;
      const nq = t[o + TNQ]!, d = t[o + TD]!, T = t[o + TKT]!;
      const scale = plan.scale[i]!;
      if (this.scoresBuf.length < nq * T) this.scoresBuf = new Float32Array(Math.max(nq * T, this.scoresBuf.length * 2));
      const sc = this.scoresBuf;
      let pos = 0;
      for (let k = t[o + TK0]!, end = k + t[o + TKN]!; k < end; k++) {
        const so = k * SEG_STRIDE;
        const n = sg[so + SN]!;
        const data = refs[sg[so + SDATA]!]!;
        if (sg[so + SKIND] === SEG_KIVI) {
          this.scoresKivi(sc, pos, T, q, qOff, nq, data as Uint32Array, sg[so + SDATA_OFF]!, refs[sg[so + SSCALES]!] as Uint16Array,
            refs[sg[so + SMINS]!] as Uint16Array, sg[so + SP_OFF]!, n, d, sg[so + SBITS]! as Bits, sg[so + SG]!, scale);
        } else {
          this.scoresDense(sc, pos, T, q, qOff, nq, data as Float32Array | Uint16Array, sg[so + SDATA_OFF]!, n, d, scale);
        }
        pos += n;
      }
      for (let j = 0; j < nq; j++) softmaxInPlace(sc, j * T, T);
      out.fill(0, oOff, oOff + nq * d);
      pos = 0;
      for (let k = t[o + TV0]!, end = k + t[o + TVN]!; k < end; k++) {
        const so = k * SEG_STRIDE;
        const n = sg[so + SN]!;
        const data = refs[sg[so + SDATA]!]!;
        if (sg[so + SKIND] === SEG_KIVI) {
          this.accumKivi(out, oOff, sc, pos, T, nq, data as Uint32Array, sg[so + SDATA_OFF]!, refs[sg[so + SSCALES]!] as Uint16Array,
            refs[sg[so + SMINS]!] as Uint16Array, sg[so + SP_OFF]!, n, d, sg[so + SBITS]! as Bits, sg[so + SG]!);
        } else {
          this.accumDense(out, oOff, sc, pos, T, nq, data as Float32Array | Uint16Array, sg[so + SDATA_OFF]!, n, d);
        }
        pos += n;
      }
    }
  }

  private scoresBuf = new Float32Array(1024);
  private qsBuf = new Float32Array(256);
  private scratch(n: number): Float32Array {
    if (this.qsBuf.length < n) this.qsBuf = new Float32Array(n);
    return this.qsBuf;
  }
}
