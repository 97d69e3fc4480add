/**
 * An independent model of what KIVI attention must compute, for the cache tests: keys and values dequantized
 * explicitly (per channel, per token, or with 8-bit metadata), optional Hadamard rotation by the explicit
 * matrix, sink tokens left exact, then plain float64 attention.
 */

import { type CacheStepper, qkvRows } from '../src/cache/step.js';
import type { CacheDims, KvCache } from '../src/cache/types.js';
import { fromHalfBits } from '../src/quant/float16.js';
import { fwht } from '../src/quant/hadamard.js';
import { quantizePerToken8Into } from '../src/quant/meta8.js';
import { type Bits, dequantize, quantizePerChannel, quantizePerToken } from '../src/quant/quantizer.js';

export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
    return s / 4294967296;
  };
}

/** [T][kv·d] → head h as [T][d]. */
export function head(x: Float32Array, T: number, kv: number, d: number, h: number): Float32Array {
  const out = new Float32Array(T * d);
  for (let t = 0; t < T; t++) out.set(x.subarray(t * kv * d + h * d, t * kv * d + (h + 1) * d), t * d);
  return out;
}

/** The Sylvester Hadamard matrix / √d, explicitly, in float64. */
export function hadamardMatrix(d: number): Float64Array {
  const m = new Float64Array(d * d);
  for (let i = 0; i < d; i++) {
    for (let j = 0; j < d; j++) {
      let bits = i & j;
      let sign = 1;
      while (bits) {
        sign = -sign;
        bits &= bits - 1;
      }
      m[i * d + j] = sign / Math.sqrt(d);
    }
  }
  return m;
}

/** Independent 8-bit-metadata decode: per token lo/hi (float16), per group u/v, in float64. */
export function dequantizeMeta8(x: Float32Array, T: number, d: number, G: number, bits: Bits): Float32Array {
  const words = (d * bits) / 32;
  const codes = new Uint32Array(T * words);
  const lohi = new Uint16Array(2 * T);
  const uv = new Uint8Array(T * 2 * (d / G));
  quantizePerToken8Into(x, 0, T, d, G, bits, codes, 0, lohi, 0, uv, 0, new Uint8Array(d));
  const out = new Float32Array(T * d);
  const per = 32 / bits;
  for (let t = 0; t < T; t++) {
    const lo = fromHalfBits(lohi[2 * t]!);
    const delta = (fromHalfBits(lohi[2 * t + 1]!) - lo) / 255;
    for (let c = 0; c < d; c++) {
      const g = Math.floor(c / G);
      const u = uv[t * 2 * (d / G) + 2 * g]!,
        v = uv[t * 2 * (d / G) + 2 * g + 1]!;
      const code = (codes[t * words + Math.floor(c / per)]! >>> (bits * (c % per))) & ((1 << bits) - 1);
      out[t * d + c] = lo + u * delta + (code * ((v - u) * delta)) / ((1 << bits) - 1);
    }
  }
  return out;
}

/** The KIVI options a test's expected attention follows (the paper's KIVI: kBits = vBits, Gk = Gv, no rot, no vmeta8). */
export interface Opts {
  kBits: Bits;
  vBits: Bits;
  Gk: number;
  Gv: number;
  rot: boolean;
  vmeta8: boolean;
  /** Sink tokens: [0, sink) exact, the quantized stream from token `sink`. */
  sink?: number;
}

/** What attention must read: (rotated) keys quantized per channel with Gk, values per token with Gv, sink tokens and the rest exact. */
export function expectedAttention(
  K: Float32Array,
  V: Float32Array,
  T: number,
  q: Float32Array,
  dims: CacheDims,
  kq: number,
  vq: number,
  o: Opts,
): Float64Array {
  const { numHeads: H, numKvHeads: kv, headDim: d } = dims;
  const out = new Float64Array(H * d);
  const Hm = hadamardMatrix(d);
  for (let h = 0; h < kv; h++) {
    const kh = head(K, T, kv, d, h);
    const vh = head(V, T, kv, d, h);
    // The cache rotates with the fast transform; the explicit matrix check is a test of its own below.
    if (o.rot) for (let t = 0; t < T; t++) fwht(kh, t * d, d);
    const S = o.sink ?? 0;
    if (kq > 0) kh.set(dequantize(quantizePerChannel(kh.subarray(S * d, (S + kq) * d), kq, d, o.Gk, o.kBits)), S * d);
    if (vq > 0) {
      const vs = vh.subarray(S * d, (S + vq) * d);
      vh.set(o.vmeta8 ? dequantizeMeta8(vs, vq, d, o.Gv, o.vBits) : dequantize(quantizePerToken(vs, vq, d, o.Gv, o.vBits)), S * d);
    }
    const nq = H / kv;
    for (let j = 0; j < nq; j++) {
      const qh = (h * nq + j) * d;
      const qr = new Float64Array(d);
      for (let c = 0; c < d; c++) {
        if (!o.rot) qr[c] = q[qh + c]!;
        else for (let e = 0; e < d; e++) qr[c] += Hm[c * d + e]! * q[qh + e]!;
      }
      const s = new Float64Array(T);
      let max = -Infinity;
      for (let t = 0; t < T; t++) {
        let acc = 0;
        for (let c = 0; c < d; c++) acc += qr[c]! * kh[t * d + c]!;
        s[t] = acc / Math.sqrt(d);
        max = Math.max(max, s[t]!);
      }
      let sum = 0;
      for (let t = 0; t < T; t++) sum += s[t] = Math.exp(s[t]! - max);
      for (let t = 0; t < T; t++) for (let c = 0; c < d; c++) out[qh + c] += (s[t]! / sum) * vh[t * d + c]!;
    }
  }
  return out;
}

export function maxRelErr(a: Float32Array, b: Float64Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i]! - b[i]!));
    den = Math.max(den, Math.abs(b[i]!));
  }
  return num / den;
}

/** A decode step's attention through the cache: the new token's q/k/v as one row. */
export async function decodeStep(
  stepper: CacheStepper,
  cache: KvCache,
  dims: CacheDims,
  q: Float32Array,
  K: Float32Array,
  V: Float32Array,
  t: number,
): Promise<Float32Array> {
  const row = dims.numKvHeads * dims.headDim;
  return (await stepper.step([{ cache, rows: qkvRows(dims, 1, q, K, V, t * row, t * row), n: 1, mode: 'decode' }]))!;
}
