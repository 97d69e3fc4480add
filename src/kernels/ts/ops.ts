/**
 * The reference dense ops over typed arrays: embedding, RMSNorm, matmul (float32, float16 or bfloat16
 * weights, computed in float32), rotary embedding, SwiGLU, add, gather, argmax. Each dot product is
 * summed in the same order whatever the batch size, so batching never changes a result.
 */
import { halfTable, toHalfBits } from '../../quant/float16.js';

const H16 = halfTable();
let bf: Float32Array | undefined;
/** All 65536 bfloat16 values as float32 (a bfloat16 is the top half of a float32). */
export function bf16Table(): Float32Array {
  if (!bf) {
    const u = new Uint32Array(65536);
    for (let i = 0; i < 65536; i++) u[i] = i << 16;
    bf = new Float32Array(u.buffer);
  }
  return bf;
}

export type WeightArray = Float32Array | Uint16Array;
export type WeightType = 'f32' | 'f16' | 'bf16';

/** The float32 values of 16-bit patterns of a weight type (undefined for f32). */
function table(t: WeightType): Float32Array | undefined {
  return t === 'f32' ? undefined : t === 'f16' ? H16 : bf16Table();
}

export function dot(a: Float32Array, ao: number, b: Float32Array, bo: number, n: number): number {
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

/** Dot product with 16-bit weights read through their float32 table. */
function dot16(a: Float32Array, ao: number, b: Uint16Array, bo: number, n: number, tab: Float32Array): number {
  let s0 = 0,
    s1 = 0,
    s2 = 0,
    s3 = 0;
  let i = 0;
  for (; i + 3 < n; i += 4) {
    s0 += a[ao + i]! * tab[b[bo + i]!]!;
    s1 += a[ao + i + 1]! * tab[b[bo + i + 1]!]!;
    s2 += a[ao + i + 2]! * tab[b[bo + i + 2]!]!;
    s3 += a[ao + i + 3]! * tab[b[bo + i + 3]!]!;
  }
  for (; i < n; i++) s0 += a[ao + i]! * tab[b[bo + i]!]!;
  return s0 + s1 + (s2 + s3);
}

/**
 * out[r·outDim + o] = Σ_i x[r·inDim + i]·w[o·inDim + i] (+ bias[o]), or with `accumulate` out += that sum
 * (the sum rounded first, as a matmul then an add); each weight row read once per call.
 */
export function matmul(
  out: Float32Array,
  x: Float32Array,
  w: WeightArray,
  wt: WeightType,
  rows: number,
  inDim: number,
  outDim: number,
  bias?: Float32Array,
  o0 = 0,
  o1 = outDim,
  accumulate = false,
): void {
  const tab = table(wt);
  for (let o = o0; o < o1; o++) {
    const wo = o * inDim;
    const b = bias ? bias[o]! : 0;
    for (let r = 0; r < rows; r++) {
      const s = tab ? dot16(x, r * inDim, w as Uint16Array, wo, inDim, tab) : dot(x, r * inDim, w as Float32Array, wo, inDim);
      const i = r * outDim + o;
      out[i] = accumulate ? out[i]! + Math.fround(s + b) : s + b;
    }
  }
}

/** out[r] = table[ids[r]] as float32. */
export function embed(out: Float32Array, tableData: WeightArray, wt: WeightType, ids: Int32Array, D: number): void {
  const tab = table(wt);
  for (let r = 0; r < ids.length; r++) {
    const src = ids[r]! * D;
    if (tab) {
      const w = tableData as Uint16Array;
      for (let i = 0; i < D; i++) out[r * D + i] = tab[w[src + i]!]!;
    } else {
      out.set((tableData as Float32Array).subarray(src, src + D), r * D);
    }
  }
}

export function rmsnorm(out: Float32Array, x: Float32Array, w: WeightArray, wt: WeightType, rows: number, D: number, eps: number): void {
  const tab = table(wt);
  for (let r = 0; r < rows; r++) {
    const o = r * D;
    let ss = 0;
    for (let i = 0; i < D; i++) ss += x[o + i]! * x[o + i]!;
    const inv = 1 / Math.sqrt(Math.fround(ss / D) + eps);
    for (let i = 0; i < D; i++) {
      const wi = tab ? tab[(w as Uint16Array)[i]!]! : (w as Float32Array)[i]!;
      out[o + i] = wi * Math.fround(x[o + i]! * inv);
    }
  }
}

/**
 * Rotate-half rotary embedding in place on the first `heads` head vectors of each row (q heads then k
 * heads, which are adjacent in a qkv row): pairs (i, i + d/2) by angle positions[r]·inv_freq_i.
 */
export function rope(
  x: Float32Array,
  rows: number,
  rowStride: number,
  heads: number,
  d: number,
  positions: Int32Array,
  cos: Float32Array,
  sin: Float32Array,
): void {
  const half = d / 2;
  for (let r = 0; r < rows; r++) {
    const co = positions[r]! * half;
    for (let h = 0; h < heads; h++) {
      const b = r * rowStride + h * d;
      for (let i = 0; i < half; i++) {
        const c = cos[co + i]!;
        const s = sin[co + i]!;
        const x1 = x[b + i]!;
        const x2 = x[b + i + half]!;
        x[b + i] = x1 * c - x2 * s;
        x[b + i + half] = x2 * c + x1 * s;
      }
    }
  }
}

export function swiglu(act: Float32Array, gu: Float32Array, rows: number, I: number): void {
  for (let r = 0; r < rows; r++) {
    const g0 = r * 2 * I;
    for (let i = 0; i < I; i++) {
      const g = gu[g0 + i]!;
      act[r * I + i] = (g / (1 + Math.exp(-g))) * gu[g0 + I + i]!;
    }
  }
}

export function add(x: Float32Array, y: Float32Array, n: number): void {
  for (let i = 0; i < n; i++) x[i] += y[i]!;
}

export function gather(out: Float32Array, x: Float32Array, rows: Int32Array, D: number): void {
  for (let i = 0; i < rows.length; i++) out.set(x.subarray(rows[i]! * D, (rows[i]! + 1) * D), i * D);
}

export function argmax(x: Float32Array, rows: number, n: number): Int32Array {
  const out = new Int32Array(rows);
  for (let r = 0; r < rows; r++) {
    let best = 0;
    let bv = -Infinity;
    for (let i = 0; i < n; i++) {
      const v = x[r * n + i]!;
      if (v > bv) {
        bv = v;
        best = i;
      }
    }
    out[r] = best;
  }
  return out;
}

// ---- random fill (benchmarks on random weights) ---------------------------------------------------

/** A 32-bit integer hash (PCG's output permutation), identical in WGSL (webgpu/dense.ts). */
function pcg(v: number): number {
  const s = (Math.imul(v, 747796405) + 2891336453) >>> 0;
  const w = Math.imul(((s >>> ((s >>> 28) + 4)) ^ s) >>> 0, 277803737) >>> 0;
  return ((w >>> 22) ^ w) >>> 0;
}

/** The float32 factor that turns a centred sum of four 22-bit uniforms into standard deviation `scale`. */
export function randomScale(scale: number): number {
  return Math.fround((scale * Math.sqrt(3)) / 2 ** 22);
}

/**
 * Fill with normal-ish values (a centred sum of four uniforms: Irwin–Hall, variance scale²): element i
 * depends only on (seed, i), and every step is exact in float32, so all back ends fill alike. 16-bit
 * types get the value rounded to nearest even. data[i] gets element first + i's value.
 */
export function randomFill(data: Float32Array | Uint16Array, dtype: 'f32' | 'f16' | 'bf16', seed: number, scale: number, first = 0): void {
  const c = randomScale(scale);
  const hs = pcg(seed >>> 0);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  for (let i = 0; i < data.length; i++) {
    const u1 = pcg(((first + i) ^ hs) >>> 0);
    const u2 = pcg(u1);
    const u3 = pcg(u2);
    const u4 = pcg(u3);
    const s = (u1 >>> 10) + (u2 >>> 10) + (u3 >>> 10) + (u4 >>> 10);
    const v = Math.fround((s - 8388606) * c);
    if (dtype === 'f32') data[i] = v;
    else if (dtype === 'f16') data[i] = toHalfBits(v);
    else {
      f[0] = v;
      data[i] = ((u[0]! + 0x7fff + ((u[0]! >>> 16) & 1)) >>> 0) >>> 16;
    }
  }
}
