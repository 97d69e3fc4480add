/**
 * The reference attention over a step plan's tasks (kernels/layout.ts): for each task and kv head, the
 * scores of the head's queries against every key segment (float rows, float16 pages, KIVI key blocks on
 * their codes), one softmax over all of them, then the weighted sum of the value segments (KIVI value
 * pages on their codes). Plain loops; the faster back ends are tested against this.
 */

import { halfTable } from '../../quant/float16.js';
import { meta8Min, meta8Scale } from '../../quant/meta8.js';
import type { HostPages } from '../host/memory.js';
import {
  SEG_BITS,
  SEG_CAP,
  SEG_F16,
  SEG_F32,
  SEG_G,
  SEG_KIND,
  SEG_KIVI_K,
  SEG_KIVI_V,
  SEG_KIVI_V8,
  SEG_N,
  SEG_PAGE,
  SEG_ROWS,
  SEG_SECTION,
  SEG_T0,
  SEG_WORDS,
  TASK_K0,
  TASK_KN,
  TASK_ROW,
  TASK_TOKENS,
  TASK_V0,
  TASK_VN,
  TASK_WORDS,
} from '../layout.js';
import { kiviSection, kiviV8Section, wordsPerRow } from '../pages.js';
import type { StepPlan } from '../plan.js';
import type { AttnShape } from '../types.js';
import { softmaxInPlace } from './softmax.js';

const H16 = halfTable();

/** Growable scratch for scores and a folded query. */
export class AttnScratch {
  scores = new Float32Array(1024);
  qs = new Float32Array(256);
  ensure(scores: number, d: number): void {
    if (this.scores.length < scores) this.scores = new Float32Array(Math.max(scores, this.scores.length * 2));
    if (this.qs.length < d) this.qs = new Float32Array(d);
  }
}

/** Run the attention tasks [t0, t0 + n) of a plan on layer `layer`. */
export function attendTasks(
  plan: StepPlan,
  t0: number,
  n: number,
  layer: number,
  qkv: Float32Array,
  att: Float32Array,
  shape: AttnShape,
  pages: HostPages,
  scratch: AttnScratch,
): void {
  for (let i = t0; i < t0 + n; i++) attendTask(plan, i, layer, qkv, att, shape, pages, scratch);
}

export function attendTask(
  plan: StepPlan,
  i: number,
  layer: number,
  qkv: Float32Array,
  att: Float32Array,
  shape: AttnShape,
  pages: HostPages,
  scratch: AttnScratch,
): void {
  const { numHeads: H, numKvHeads: KV, headDim: d } = shape;
  const nq = H / KV;
  const qkvDim = (H + 2 * KV) * d;
  const scale = 1 / Math.sqrt(d);
  const t = plan.tasks,
    sg = plan.segs;
  const o = i * TASK_WORDS;
  const row = t[o + TASK_ROW]!,
    T = t[o + TASK_TOKENS]!;
  scratch.ensure(nq * T, d);
  const s = scratch.scores;
  for (let h = 0; h < KV; h++) {
    const qOff = row * qkvDim + h * nq * d;
    let pos = 0;
    for (let k = t[o + TASK_K0]!, end = k + t[o + TASK_KN]!; k < end; k++) {
      const so = k * SEG_WORDS;
      const kind = sg[so + SEG_KIND]!,
        n = sg[so + SEG_N]!;
      if (kind === SEG_ROWS) {
        const r0 = sg[so + SEG_PAGE]!;
        for (let j = 0; j < nq; j++) {
          for (let x = 0; x < n; x++) s[j * T + pos + x] = dot(qkv, qOff + j * d, qkv, (r0 + x) * qkvDim + (H + h) * d, d) * scale;
        }
      } else {
        const cap = sg[so + SEG_CAP]!,
          bits = sg[so + SEG_BITS]!,
          G = sg[so + SEG_G]!;
        const v = pages.views(sg[so + SEG_PAGE]!);
        const sec = v.byteOffset + (layer * KV + h) * sg[so + SEG_SECTION]!;
        const first = sg[so + SEG_T0]!;
        if (kind === SEG_F32 || kind === SEG_F16) {
          for (let j = 0; j < nq; j++) {
            for (let x = 0; x < n; x++) {
              const e = (first + x) * d;
              const dk = kind === SEG_F32 ? dot(qkv, qOff + j * d, v.f32, sec / 4 + e, d) : dotHalf(qkv, qOff + j * d, v.u16, sec / 2 + e, d);
              s[j * T + pos + x] = dk * scale;
            }
          }
        } else {
          const ks = kiviSection(SEG_KIVI_K, cap, d, bits, G);
          scoresKivi(s, pos, T, qkv, qOff, nq, v.u32, sec / 4, v.u16, (sec + ks.scalesAt) / 2, (sec + ks.minsAt) / 2, n, d, bits, G, scale, scratch.qs);
        }
      }
      pos += n;
    }
    for (let j = 0; j < nq; j++) softmaxInPlace(s, j * T, T);
    const oOff = row * H * d + h * nq * d;
    att.fill(0, oOff, oOff + nq * d);
    pos = 0;
    for (let k = t[o + TASK_V0]!, end = k + t[o + TASK_VN]!; k < end; k++) {
      const so = k * SEG_WORDS;
      const kind = sg[so + SEG_KIND]!,
        n = sg[so + SEG_N]!;
      if (kind === SEG_ROWS) {
        const r0 = sg[so + SEG_PAGE]!;
        for (let j = 0; j < nq; j++) {
          for (let x = 0; x < n; x++) axpy(att, oOff + j * d, s[j * T + pos + x]!, qkv, (r0 + x) * qkvDim + (H + KV + h) * d, d);
        }
      } else {
        const cap = sg[so + SEG_CAP]!,
          bits = sg[so + SEG_BITS]!,
          G = sg[so + SEG_G]!;
        const v = pages.views(sg[so + SEG_PAGE]!);
        const sec = v.byteOffset + (layer * KV + h) * sg[so + SEG_SECTION]!;
        const first = sg[so + SEG_T0]!;
        if (kind === SEG_F32) {
          for (let j = 0; j < nq; j++) {
            for (let x = 0; x < n; x++) axpy(att, oOff + j * d, s[j * T + pos + x]!, v.f32, sec / 4 + (first + x) * d, d);
          }
        } else if (kind === SEG_F16) {
          for (let j = 0; j < nq; j++) {
            for (let x = 0; x < n; x++) axpyHalf(att, oOff + j * d, s[j * T + pos + x]!, v.u16, sec / 2 + (first + x) * d, d);
          }
        } else if (kind === SEG_KIVI_V) {
          const vs = kiviSection(SEG_KIVI_V, cap, d, bits, G);
          const groups = d / G;
          accumKivi(
            att,
            oOff,
            s,
            pos,
            T,
            nq,
            v.u32,
            sec / 4 + first * wordsPerRow(d, bits),
            v.u16,
            (sec + vs.scalesAt) / 2 + first * groups,
            (sec + vs.minsAt) / 2 + first * groups,
            n,
            d,
            bits,
            G,
          );
        } else if (kind === SEG_KIVI_V8) {
          const vs = kiviV8Section(cap, d, bits, G);
          if (!v.u8) throw new Error('attention: 8-bit metadata pages need byte views');
          accumKivi8(
            att,
            oOff,
            s,
            pos,
            T,
            nq,
            v.u32,
            sec / 4 + first * wordsPerRow(d, bits),
            v.u16,
            (sec + vs.lohiAt) / 2 + 2 * first,
            v.u8,
            sec + vs.uvAt + first * 2 * (d / G),
            n,
            d,
            bits,
            G,
          );
        } else {
          throw new Error(`attention: value segment of kind ${kind}`);
        }
      }
      pos += n;
    }
  }
}

function dot(a: Float32Array, ao: number, b: Float32Array, bo: number, n: number): number {
  let s0 = 0,
    s1 = 0,
    s2 = 0,
    s3 = 0;
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
  let s0 = 0,
    s1 = 0;
  let i = 0;
  for (; i + 1 < n; i += 2) {
    s0 += a[ao + i]! * H16[b[bo + i]!]!;
    s1 += a[ao + i + 1]! * H16[b[bo + i + 1]!]!;
  }
  for (; i < n; i++) s0 += a[ao + i]! * H16[b[bo + i]!]!;
  return s0 + s1;
}

function axpy(out: Float32Array, oo: number, a: number, x: Float32Array, xo: number, n: number): void {
  if (a === 0) return;
  for (let c = 0; c < n; c++) out[oo + c] += a * x[xo + c]!;
}

function axpyHalf(out: Float32Array, oo: number, a: number, x: Uint16Array, xo: number, n: number): void {
  if (a === 0) return;
  for (let c = 0; c < n; c++) out[oo + c] += a * H16[x[xo + c]!]!;
}

/**
 * Scores against a KIVI key block (n tokens, a multiple of G): codes [n][d·b/32] from cOff, float16
 * scale/min [n/G][d] from sOff/mOff. q·k̂_t = Σ_c (q_c·s_c)·code_tc + Σ_c q_c·m_c: the scales fold into
 * the query once per group (docs/KIVI.md §6).
 */
export function scoresKivi(
  s: Float32Array,
  sOff: number,
  sStride: number,
  q: Float32Array,
  qOff: number,
  nq: number,
  codes: Uint32Array,
  cOff: number,
  params: Uint16Array,
  sOff16: number,
  mOff16: number,
  n: number,
  d: number,
  bits: number,
  G: number,
  scale: number,
  qs: Float32Array,
): void {
  const per = 32 / bits;
  const mask = (1 << bits) - 1;
  const wpt = d / per;
  for (let g0 = 0; g0 < n; g0 += G) {
    const po = (g0 / G) * d;
    for (let j = 0; j < nq; j++) {
      const qo = qOff + j * d;
      let bias = 0;
      for (let c = 0; c < d; c++) {
        const qc = q[qo + c]!;
        qs[c] = qc * H16[params[sOff16 + po + c]!]!;
        bias += qc * H16[params[mOff16 + po + c]!]!;
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

/**
 * Per-token value metadata: writes token t's per-group scale and minimum (float32) into scale/min. The
 * value formats differ only here (float16 scale/min, or 8-bit metadata).
 */
type ValueMeta = (t: number, scale: Float32Array, min: Float32Array) => void;

/** Σ_t a_t·(s_tg·code + m_tg) over n tokens of codes [n][d·b/32] from cOff; the weight folds into s and m. */
function accumCodes(
  out: Float32Array,
  oOff: number,
  p: Float32Array,
  pOff: number,
  pStride: number,
  nq: number,
  codes: Uint32Array,
  cOff: number,
  n: number,
  d: number,
  bits: number,
  G: number,
  meta: ValueMeta,
): void {
  const per = 32 / bits;
  const mask = (1 << bits) - 1;
  const wpt = d / per;
  const groups = d / G;
  const wpg = G / per;
  const scale = new Float32Array(groups);
  const min = new Float32Array(groups);
  for (let j = 0; j < nq; j++) {
    const oo = oOff + j * d;
    const po = j * pStride + pOff;
    for (let t = 0; t < n; t++) {
      const a = p[po + t]!;
      if (a === 0) continue;
      meta(t, scale, min);
      for (let g = 0, c = oo, w = cOff + t * wpt; g < groups; g++) {
        const ws = a * scale[g]!;
        const wm = a * min[g]!;
        for (let e = 0; e < wpg; e++, w++) {
          const word = codes[w]!;
          for (let k = 0; k < per; k++, c++) out[c] += ws * ((word >>> (bits * k)) & mask) + wm;
        }
      }
    }
  }
}

/**
 * Accumulate attention-weighted KIVI values: n tokens, codes [n][d·b/32] from cOff, float16 scale/min
 * [n][d/G] from sOff/mOff. Σ_t a_t·(s_tg·code + m_tg): the weight folds into the scale and minimum.
 */
export function accumKivi(
  out: Float32Array,
  oOff: number,
  p: Float32Array,
  pOff: number,
  pStride: number,
  nq: number,
  codes: Uint32Array,
  cOff: number,
  params: Uint16Array,
  sOff16: number,
  mOff16: number,
  n: number,
  d: number,
  bits: number,
  G: number,
): void {
  const groups = d / G;
  accumCodes(out, oOff, p, pOff, pStride, nq, codes, cOff, n, d, bits, G, (t, scale, min) => {
    for (let g = 0, go = t * groups; g < groups; g++) {
      scale[g] = H16[params[sOff16 + go + g]!]!;
      min[g] = H16[params[mOff16 + go + g]!]!;
    }
  });
}

/**
 * accumKivi for value pages with 8-bit metadata (SEG_KIVI_V8): each group's scale and minimum decoded in
 * float32 from its token's float16 (lo, hi) at lohi[lOff + 2t] and its (u, v) at uv[uOff + t·2·(d/G) + 2g].
 */
export function accumKivi8(
  out: Float32Array,
  oOff: number,
  p: Float32Array,
  pOff: number,
  pStride: number,
  nq: number,
  codes: Uint32Array,
  cOff: number,
  lohi: Uint16Array,
  lOff: number,
  uv: Uint8Array,
  uOff: number,
  n: number,
  d: number,
  bits: number,
  G: number,
): void {
  const groups = d / G;
  accumCodes(out, oOff, p, pOff, pStride, nq, codes, cOff, n, d, bits, G, (t, scale, min) => {
    const lo = lohi[lOff + 2 * t]!;
    const hi = lohi[lOff + 2 * t + 1]!;
    for (let g = 0, go = uOff + t * 2 * groups; g < groups; g++) {
      const u = uv[go + 2 * g]!;
      scale[g] = meta8Scale(lo, hi, u, uv[go + 2 * g + 1]!, bits);
      min[g] = meta8Min(lo, hi, u);
    }
  });
}
