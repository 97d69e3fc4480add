/**
 * Statistics of real K/V (docs/KIVI.md §2): how magnitude is spread over channels and tokens, which channels
 * are outliers, and how much error per-token vs per-channel grouping causes in K, V and the attention
 * output.
 */

import type { CacheDims } from '../../cache/types.js';
import { type Bits, dequantize, quantizePerChannel, quantizePerToken } from '../../quant/quantizer.js';
import { median } from '../numbers.js';
import type { LayerKv } from './capture.js';

export type Axis = 'token' | 'channel';

export interface MagnitudeStats {
  /** max over tokens of |x|, per channel. */
  channelMagnitude: number[];
  /** max over channels of |x|, per token. */
  tokenMagnitude: number[];
  /** Largest channel magnitude / median channel magnitude. */
  channelSpread: number;
  /** Largest token magnitude / median token magnitude. */
  tokenSpread: number;
  /** Channels whose magnitude exceeds outlierRatio × the median channel's, largest first. */
  outlierChannels: number[];
}

/** Magnitude statistics of a [T][d] matrix. */
export function magnitudeStats(x: Float32Array, T: number, d: number, outlierRatio: number): MagnitudeStats {
  const channel = new Array<number>(d).fill(0);
  const token = new Array<number>(T).fill(0);
  for (let t = 0; t < T; t++) {
    for (let c = 0; c < d; c++) {
      const a = Math.abs(x[t * d + c]!);
      if (a > channel[c]!) channel[c] = a;
      if (a > token[t]!) token[t] = a;
    }
  }
  const medC = median(channel);
  const outliers = channel
    .map((m, c) => [m, c] as const)
    .filter(([m]) => m > outlierRatio * medC)
    .sort((a, b) => b[0] - a[0])
    .map(([, c]) => c);
  return {
    channelMagnitude: channel,
    tokenMagnitude: token,
    channelSpread: Math.max(...channel) / medC,
    tokenSpread: Math.max(...token) / median(token),
    outlierChannels: outliers,
  };
}

/** ‖a − b‖ / ‖b‖ (Frobenius). */
export function relativeError(approx: Float32Array, exact: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < exact.length; i++) {
    const e = approx[i]! - exact[i]!;
    num += e * e;
    den += exact[i]! * exact[i]!;
  }
  return Math.sqrt(num / den);
}

/** Quantize-dequantize a [T][d] matrix with groups of G along one axis (per channel: G tokens from token 0). */
export function fakeQuantize(x: Float32Array, T: number, d: number, G: number, bits: Bits, axis: Axis): Float32Array {
  return dequantize(axis === 'token' ? quantizePerToken(x, T, d, G, bits) : quantizePerChannel(x, T, d, G, bits));
}

export interface QuantError {
  /** Relative error of the keys / values themselves. */
  k: number;
  v: number;
  /** Relative error of the attention output with only the keys / only the values quantized. */
  attnK: number;
  attnV: number;
}

export interface HeadErrors {
  bits: Bits;
  axis: Axis;
  error: QuantError;
}

/**
 * Errors of one kv head under each (bits, axis): K and V quantized alone, and the causal attention output
 * of the head's query heads (tokens 1..T−1, each over tokens 0..t) with quantized K or quantized V.
 */
export function quantErrors(layer: LayerKv, dims: CacheDims, T: number, h: number, G: number, configs: { bits: Bits; axis: Axis }[]): HeadErrors[] {
  const d = dims.headDim;
  const K = layer.k.subarray(h * T * d, (h + 1) * T * d);
  const V = layer.v.subarray(h * T * d, (h + 1) * T * d);
  const Ks = configs.map((c) => fakeQuantize(K, T, d, G, c.bits, c.axis));
  const Vs = configs.map((c) => fakeQuantize(V, T, d, G, c.bits, c.axis));
  const out = causalOutputs(layer.q, dims, T, h, K, V, Ks, Vs);
  return configs.map((c, i) => ({
    bits: c.bits,
    axis: c.axis,
    error: {
      k: relativeError(Ks[i]!, K),
      v: relativeError(Vs[i]!, V),
      attnK: relativeError(out.withK[i]!, out.exact),
      attnV: relativeError(out.withV[i]!, out.exact),
    },
  }));
}

/**
 * Causal attention outputs [T−1][nq][d] of kv head h: exact, with each quantized K (exact V), and with
 * each quantized V (exact K, so the exact probabilities are reused).
 */
function causalOutputs(
  q: Float32Array,
  dims: CacheDims,
  T: number,
  h: number,
  K: Float32Array,
  V: Float32Array,
  Ks: Float32Array[],
  Vs: Float32Array[],
): { exact: Float32Array; withK: Float32Array[]; withV: Float32Array[] } {
  const { numHeads: H, numKvHeads: KV, headDim: d } = dims;
  const nq = H / KV;
  const n = (T - 1) * nq * d;
  const exact = new Float32Array(n);
  const withK = Ks.map(() => new Float32Array(n));
  const withV = Vs.map(() => new Float32Array(n));
  const p = new Float64Array(T);
  const scale = 1 / Math.sqrt(d);
  for (let t = 1; t < T; t++) {
    for (let j = 0; j < nq; j++) {
      const qo = ((t - 1) * H + h * nq + j) * d;
      const oo = ((t - 1) * nq + j) * d;
      probabilities(q, qo, K, t + 1, d, scale, p);
      accumulate(p, t + 1, V, d, exact, oo);
      Vs.forEach((Vq, i) => {
        accumulate(p, t + 1, Vq, d, withV[i]!, oo);
      });
      Ks.forEach((Kq, i) => {
        probabilities(q, qo, Kq, t + 1, d, scale, p);
        accumulate(p, t + 1, V, d, withK[i]!, oo);
      });
    }
  }
  return { exact, withK, withV };
}

/** p[0..n) = softmax over s of scale · q·K[s]. */
function probabilities(q: Float32Array, qo: number, K: Float32Array, n: number, d: number, scale: number, p: Float64Array): void {
  let max = -Infinity;
  for (let s = 0; s < n; s++) {
    let dot = 0;
    for (let c = 0; c < d; c++) dot += q[qo + c]! * K[s * d + c]!;
    p[s] = dot * scale;
    if (p[s]! > max) max = p[s]!;
  }
  let sum = 0;
  for (let s = 0; s < n; s++) {
    p[s] = Math.exp(p[s]! - max);
    sum += p[s]!;
  }
  for (let s = 0; s < n; s++) p[s] = p[s]! / sum;
}

function accumulate(p: Float64Array, n: number, V: Float32Array, d: number, out: Float32Array, oo: number): void {
  for (let c = 0; c < d; c++) {
    let acc = 0;
    for (let s = 0; s < n; s++) acc += p[s]! * V[s * d + c]!;
    out[oo + c] = acc;
  }
}
