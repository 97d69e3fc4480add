/**
 * The reference cache jobs of a step plan (kernels/layout.ts): store new tokens into full-precision
 * pages, quantize key blocks per channel and value tokens per token into KIVI pages (the quantizer of
 * src/quant, bit for bit), and the simulated quantization of the fake caches. Each job reads its source
 * segments' tokens in order, for every kv head of one layer.
 */

import { fromHalfBits, toHalfBits } from '../../quant/float16.js';
import { fwht } from '../../quant/hadamard.js';
import { quantizePerToken8Into } from '../../quant/meta8.js';
import { type Bits, fakeQuantizeGroup, quantizePerChannelInto, quantizePerTokenInto } from '../../quant/quantizer.js';
import type { HostPages } from '../host/memory.js';
import {
  JOB_BITS,
  JOB_DST,
  JOB_FAKE_CHANNEL,
  JOB_FAKE_TOKEN,
  JOB_HALF,
  JOB_KIND,
  JOB_QKEY,
  JOB_QVAL,
  JOB_ROTATE,
  JOB_SRC0,
  JOB_SRCN,
  JOB_STORE,
  JOB_VALUES,
  JOB_WORDS,
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
} from '../layout.js';
import { kiviSection, kiviV8Section, wordsPerRow } from '../pages.js';
import type { AttnShape } from '../types.js';

/** Scratch for gathering a job's input rows. */
export class JobScratch {
  x = new Float32Array(0);
  y = new Float32Array(0);
  codes = new Uint8Array(0);
  readonly sc = new Uint16Array(1);
  readonly mn = new Uint16Array(1);
  ensure(floats: number, codes: number): void {
    if (this.x.length < floats) {
      this.x = new Float32Array(floats);
      this.y = new Float32Array(floats);
    }
    if (this.codes.length < codes) this.codes = new Uint8Array(codes);
  }
}

/** Run jobs [j0, j0 + n) of a job table (plan.pre or plan.post) on layer `layer`. */
export function runJobs(
  jobs: Int32Array,
  j0: number,
  n: number,
  segs: Int32Array,
  layer: number,
  qkv: Float32Array,
  shape: AttnShape,
  pages: HostPages,
  scratch: JobScratch,
): void {
  for (let j = j0; j < j0 + n; j++) runJob(jobs, j, segs, layer, qkv, shape, pages, scratch);
}

export function runJob(
  jobs: Int32Array,
  j: number,
  segs: Int32Array,
  layer: number,
  qkv: Float32Array,
  shape: AttnShape,
  pages: HostPages,
  scratch: JobScratch,
): void {
  const { numKvHeads: KV, headDim: d } = shape;
  const o = j * JOB_WORDS;
  const kind = jobs[o + JOB_KIND]!;
  const dst = jobs[o + JOB_DST]! * SEG_WORDS;
  if (kind === JOB_ROTATE) {
    if (segs[dst + SEG_KIND] !== SEG_ROWS) throw new Error(`cache job ${j}: a rotation works on activation rows`);
    rotateQueriesKeys(qkv, segs[dst + SEG_PAGE]!, segs[dst + SEG_N]!, shape);
    return;
  }
  const dKind = segs[dst + SEG_KIND]!,
    dN = segs[dst + SEG_N]!,
    dCap = segs[dst + SEG_CAP]!;
  const dT0 = segs[dst + SEG_T0]!,
    dBits = segs[dst + SEG_BITS]!,
    G = segs[dst + SEG_G]!;
  // Copy the views out: a pool may reuse one views object for every page (gather() asks for others).
  const dv = pages.views(segs[dst + SEG_PAGE]!);
  const v = { f32: dv.f32, u16: dv.u16, u32: dv.u32, u8: dv.u8, byteOffset: dv.byteOffset };
  const secBytes = segs[dst + SEG_SECTION]!;
  scratch.ensure(dN * d, dN * d);
  const x = scratch.x;
  for (let h = 0; h < KV; h++) {
    const count = gather(jobs, o, segs, layer, h, qkv, shape, pages, x);
    if (count !== dN) throw new Error(`cache job ${j}: ${count} source tokens for ${dN} destination slots`);
    const sec = v.byteOffset + (layer * KV + h) * secBytes;
    switch (kind) {
      case JOB_STORE:
        if (dKind === SEG_F32) v.f32.set(x.subarray(0, dN * d), sec / 4 + dT0 * d);
        else if (dKind === SEG_F16) for (let i = 0, b = sec / 2 + dT0 * d; i < dN * d; i++) v.u16[b + i] = toHalfBits(x[i]!);
        else throw new Error(`cache job ${j}: store into a page of kind ${dKind}`);
        break;
      case JOB_QKEY: {
        if (dKind !== SEG_KIVI_K || dT0 !== 0 || dN !== dCap) throw new Error(`cache job ${j}: a key block must be written whole`);
        const ks = kiviSection(SEG_KIVI_K, dCap, d, dBits, G);
        quantizePerChannelInto(
          x,
          0,
          dN,
          d,
          G,
          dBits as Bits,
          v.u32,
          sec / 4,
          v.u16.subarray((sec + ks.scalesAt) / 2),
          v.u16.subarray((sec + ks.minsAt) / 2),
          0,
          scratch.codes,
        );
        break;
      }
      case JOB_QVAL: {
        if (dKind === SEG_KIVI_V8) {
          const vs = kiviV8Section(dCap, d, dBits, G);
          if (!v.u8) throw new Error(`cache job ${j}: 8-bit metadata pages need byte views`);
          quantizePerToken8Into(
            x,
            0,
            dN,
            d,
            G,
            dBits as Bits,
            v.u32,
            sec / 4 + dT0 * wordsPerRow(d, dBits),
            v.u16,
            (sec + vs.lohiAt) / 2 + 2 * dT0,
            v.u8,
            sec + vs.uvAt + dT0 * 2 * (d / G),
            scratch.codes,
          );
          break;
        }
        if (dKind !== SEG_KIVI_V) throw new Error(`cache job ${j}: values quantized into a page of kind ${dKind}`);
        const vs = kiviSection(SEG_KIVI_V, dCap, d, dBits, G);
        quantizePerTokenInto(
          x,
          0,
          dN,
          d,
          G,
          dBits as Bits,
          v.u32,
          sec / 4 + dT0 * wordsPerRow(d, dBits),
          v.u16.subarray((sec + vs.scalesAt) / 2),
          v.u16.subarray((sec + vs.minsAt) / 2),
          dT0 * (d / G),
          scratch.codes,
        );
        break;
      }
      case JOB_FAKE_TOKEN: {
        const bits = jobs[o + JOB_BITS]! as Bits;
        const y = scratch.y;
        for (let t = 0; t < dN; t++) {
          for (let g = 0; g < d; g += G) fakeQuantizeGroup(x, t * d + g, 1, G, bits, y, t * d + g, scratch.codes, scratch.sc, scratch.mn);
        }
        v.f32.set(y.subarray(0, dN * d), sec / 4 + dT0 * d);
        break;
      }
      case JOB_FAKE_CHANNEL: {
        const bits = jobs[o + JOB_BITS]! as Bits;
        const y = scratch.y;
        for (let c = 0; c < d; c++) fakeQuantizeGroup(x, c, d, dN, bits, y, c, scratch.codes, scratch.sc, scratch.mn);
        v.f32.set(y.subarray(0, dN * d), sec / 4 + dT0 * d);
        break;
      }
      default:
        throw new Error(`cache job ${j}: unknown kind ${kind}`);
    }
  }
}

/** Copy the job's source tokens of kv head h, in order, into x as float32 rows [t][d]; returns the count. */
function gather(
  jobs: Int32Array,
  o: number,
  segs: Int32Array,
  layer: number,
  h: number,
  qkv: Float32Array,
  shape: AttnShape,
  pages: HostPages,
  x: Float32Array,
): number {
  const { numHeads: H, numKvHeads: KV, headDim: d } = shape;
  const qkvDim = (H + 2 * KV) * d;
  const part = (jobs[o + JOB_HALF] === JOB_VALUES ? H + KV : H) + h;
  let t = 0;
  for (let k = jobs[o + JOB_SRC0]!, end = k + jobs[o + JOB_SRCN]!; k < end; k++) {
    const so = k * SEG_WORDS;
    const kind = segs[so + SEG_KIND]!,
      n = segs[so + SEG_N]!;
    if (kind === SEG_ROWS) {
      const r0 = segs[so + SEG_PAGE]!;
      for (let i = 0; i < n; i++) x.set(qkv.subarray((r0 + i) * qkvDim + part * d, (r0 + i) * qkvDim + (part + 1) * d), (t + i) * d);
    } else {
      const v = pages.views(segs[so + SEG_PAGE]!);
      const sec = v.byteOffset + (layer * KV + h) * segs[so + SEG_SECTION]!;
      const first = segs[so + SEG_T0]!;
      if (kind === SEG_F32) x.set(v.f32.subarray(sec / 4 + first * d, sec / 4 + (first + n) * d), t * d);
      else if (kind === SEG_F16) for (let i = 0, b = sec / 2 + first * d; i < n * d; i++) x[t * d + i] = fromHalfBits(v.u16[b + i]!);
      else throw new Error(`cache job: source of kind ${kind}`);
    }
    t += n;
  }
  return t;
}

/** Rows [r0, r0 + n) of a qkv activation: every query head and key head rotated in place (JOB_ROTATE). */
function rotateQueriesKeys(qkv: Float32Array, r0: number, n: number, shape: AttnShape): void {
  const { numHeads: H, numKvHeads: KV, headDim: d } = shape;
  const qkvDim = (H + 2 * KV) * d;
  for (let r = r0; r < r0 + n; r++) for (let h = 0; h < H + KV; h++) fwht(qkv, r * qkvDim + h * d, d);
}
