/**
 * 8-bit metadata for KIVI value groups (issue 14, `vmeta=8`): instead of a float16 scale and minimum per
 * group (32 bits), each group stores two 8-bit codes (u, v) for its minimum and maximum on a grid spanned
 * by its token, and each token stores its own minimum and maximum as float16 (lo, hi):
 *
 *   token (one kv head, d channels, d/G groups):  lo16 = f16(min), hi16 = f16(max);  Δ = (hi16 − lo16) / 255
 *   group:  u = clamp(floor((min_g − lo16) / Δ), 0, 255),  v = clamp(ceil((max_g − lo16) / Δ), u, 255)
 *   decoded: m = lo16 + u·Δ,  s = (v − u)·Δ / (2^b − 1)        (float32; Δ = 0 → u = v = 0, s = 0, m = lo16)
 *   codes: c = clamp(round_half_even((x − m) / s), 0, 2^b − 1), x̂ = c·s + m  — KIVI's rule with the decoded (s, m).
 *
 * floor/ceil make each group's decoded range contain its data (up to float16 rounding of lo/hi), so no
 * code is clipped; the price is a range widened by < Δ at each end. Bits per element of metadata:
 * 16/G + 32/d, against 32/G for float16 scale and minimum.
 */

import { KiviError } from '../util/errors.js';
import { fromHalfBits, toHalfBits } from './float16.js';
import { type Bits, packCodes, roundHalfEven } from './quantizer.js';

const fr = Math.fround;

/** Δ of a token's grid from its float16 (lo, hi) bits. */
function gridStep(loBits: number, hiBits: number): number {
  return fr(fr(fromHalfBits(hiBits) - fromHalfBits(loBits)) / 255);
}

/** Decoded float32 minimum of a group. */
export function meta8Min(loBits: number, hiBits: number, u: number): number {
  return fr(fromHalfBits(loBits) + fr(u * gridStep(loBits, hiBits)));
}

/** Decoded float32 scale of a group. */
export function meta8Scale(loBits: number, hiBits: number, u: number, v: number, bits: number): number {
  return fr(fr((v - u) * gridStep(loBits, hiBits)) / ((1 << bits) - 1));
}

/**
 * Quantize `tokens` rows of d values (x from xStart) per token in groups of G channels with 8-bit metadata:
 * codes packed per token at codesOut[codesStart + t·d·b/32], (lo, hi) at lohi[lohiAt + 2t], (u, v) of group g
 * at uv[uvAt + t·2·(d/G) + 2g].
 */
export function quantizePerToken8Into(
  x: Float32Array,
  xStart: number,
  tokens: number,
  d: number,
  G: number,
  bits: Bits,
  codesOut: Uint32Array,
  codesStart: number,
  lohi: Uint16Array,
  lohiAt: number,
  uv: Uint8Array,
  uvAt: number,
  scratch: Uint8Array,
): void {
  const groups = d / G;
  const maxCode = (1 << bits) - 1;
  const words = (d * bits) / 32;
  for (let t = 0; t < tokens; t++) {
    const x0 = xStart + t * d;
    let lo = Infinity;
    let hi = -Infinity;
    for (let c = 0; c < d; c++) {
      const v = x[x0 + c]!;
      if (!Number.isFinite(v)) throw new KiviError(`cannot quantize a non-finite value (${v})`);
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    const loBits = toHalfBits(lo);
    const hiBits = toHalfBits(hi);
    if ((loBits & 0x7c00) === 0x7c00 || (hiBits & 0x7c00) === 0x7c00) throw new KiviError(`value range [${lo}, ${hi}] does not fit float16`);
    lohi[lohiAt + 2 * t] = loBits;
    lohi[lohiAt + 2 * t + 1] = hiBits;
    const lo16 = fromHalfBits(loBits);
    const delta = gridStep(loBits, hiBits);
    for (let g = 0; g < groups; g++) {
      const g0 = x0 + g * G;
      let gl = Infinity;
      let gh = -Infinity;
      for (let i = 0; i < G; i++) {
        const v = x[g0 + i]!;
        if (v < gl) gl = v;
        if (v > gh) gh = v;
      }
      let u = 0;
      let w = 0;
      if (delta > 0) {
        u = Math.min(255, Math.max(0, Math.floor(fr(fr(gl - lo16) / delta))));
        w = Math.min(255, Math.max(u, Math.ceil(fr(fr(gh - lo16) / delta))));
      }
      const o = uvAt + t * 2 * groups + 2 * g;
      uv[o] = u;
      uv[o + 1] = w;
      const m = meta8Min(loBits, hiBits, u);
      const s = meta8Scale(loBits, hiBits, u, w, bits);
      for (let i = 0; i < G; i++) {
        if (s === 0) {
          scratch[g * G + i] = 0;
          continue;
        }
        const c = roundHalfEven(fr(fr(x[g0 + i]! - m) / s));
        scratch[g * G + i] = c < 0 ? 0 : Math.min(c, maxCode);
      }
    }
    packCodes(scratch, 0, d, bits, codesOut, codesStart + t * words);
  }
}
