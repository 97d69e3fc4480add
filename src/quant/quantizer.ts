/**
 * The KIVI quantizer (docs/KIVI.md §3–4) as pure functions over typed arrays.
 *
 * A group is n numbers read with a stride. Asymmetric min/max: s = (max − min) / (2^b − 1), with s and
 * min stored as float16 and the codes computed from the *stored* values; codes are round-half-to-even,
 * clamped to [0, 2^b − 1]; a group whose float16 scale is 0 gets all-zero codes. Arithmetic is float32
 * (Math.fround after each operation), as in the reference.
 */

import { KiviError } from '../util/errors.js';
import { fromHalfBits, toHalfBits } from './float16.js';

export type Bits = 2 | 4 | 8;
export const SUPPORTED_BITS: readonly Bits[] = [2, 4, 8];

const fr = Math.fround;

export function isBits(b: number): b is Bits {
  return b === 2 || b === 4 || b === 8;
}

/** Round to nearest integer, ties to even (Math.round rounds ties up). */
export function roundHalfEven(v: number): number {
  const r = Math.round(v);
  return r - v === 0.5 && (r & 1) !== 0 ? r - 1 : r;
}

/**
 * Quantize one group x[start + i·stride], i < n, writing codes to codes[codeStart + i·codeStride]
 * and the float16 bits of scale and minimum to params[paramIndex] and params2[paramIndex].
 */
export function quantizeGroup(
  x: Float32Array,
  start: number,
  stride: number,
  n: number,
  bits: Bits,
  codes: Uint8Array,
  codeStart: number,
  codeStride: number,
  scales: Uint16Array,
  mins: Uint16Array,
  paramIndex: number,
): void {
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0, p = start; i < n; i++, p += stride) {
    const v = x[p]!;
    if (!Number.isFinite(v)) {
      throw new KiviError(`cannot quantize a non-finite value (${v})`);
    }
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  const maxCode = (1 << bits) - 1;
  const sBits = toHalfBits(fr(fr(hi - lo) / maxCode));
  const mBits = toHalfBits(lo);
  if ((sBits & 0x7c00) === 0x7c00 || (mBits & 0x7c00) === 0x7c00) {
    throw new KiviError(`group range [${lo}, ${hi}] does not fit float16 scale/minimum`);
  }
  scales[paramIndex] = sBits;
  mins[paramIndex] = mBits;
  const s = fromHalfBits(sBits);
  const m = fromHalfBits(mBits);
  for (let i = 0, p = start, q = codeStart; i < n; i++, p += stride, q += codeStride) {
    if (s === 0) {
      codes[q] = 0;
      continue;
    }
    const c = roundHalfEven(fr(fr(x[p]! - m) / s));
    codes[q] = c < 0 ? 0 : Math.min(c, maxCode);
  }
}

/** Dequantize a code: c·s16 + m16 in float32. */
export function dequantizeCode(code: number, scaleBits: number, minBits: number): number {
  return fr(fr(code * fromHalfBits(scaleBits)) + fromHalfBits(minBits));
}

/**
 * Quantize then dequantize one group: out[outStart + i·stride] = x̂ for x[start + i·stride]. Identical to
 * quantizeGroup followed by dequantizeCode (simulated quantization, docs/KIVI.md §8). `scale`/`min` are
 * one-element scratch arrays that receive the group's float16 parameters.
 */
export function fakeQuantizeGroup(
  x: Float32Array,
  start: number,
  stride: number,
  n: number,
  bits: Bits,
  out: Float32Array,
  outStart: number,
  codes: Uint8Array,
  scale: Uint16Array,
  min: Uint16Array,
): void {
  quantizeGroup(x, start, stride, n, bits, codes, 0, 1, scale, min, 0);
  for (let i = 0, q = outStart; i < n; i++, q += stride) out[q] = dequantizeCode(codes[i]!, scale[0]!, min[0]!);
}

/** Words needed to pack n codes of b bits (32/b per 32-bit word). */
export function packedWords(n: number, bits: Bits): number {
  return Math.ceil((n * bits) / 32);
}

/**
 * Pack n codes, 32/b per 32-bit word, little-endian within the word: element j of the run occupies bits
 * [b·j, b·j + b) of its word.
 */
export function packCodes(codes: Uint8Array, codeStart: number, n: number, bits: Bits, out: Uint32Array, outStart: number): void {
  const per = 32 / bits;
  const words = packedWords(n, bits);
  for (let w = 0; w < words; w++) {
    let word = 0;
    const base = codeStart + w * per;
    const m = Math.min(per, n - w * per);
    for (let j = 0; j < m; j++) word |= codes[base + j]! << (bits * j);
    out[outStart + w] = word >>> 0;
  }
}

/** Inverse of packCodes. */
export function unpackCodes(words: Uint32Array, wordStart: number, n: number, bits: Bits, out: Uint8Array, outStart: number): void {
  const per = 32 / bits;
  const mask = (1 << bits) - 1;
  for (let i = 0; i < n; i++) {
    const w = words[wordStart + ((i / per) | 0)]!;
    out[outStart + i] = (w >>> (bits * (i % per))) & mask;
  }
}

/** A quantized [tokens][dim] block: codes packed along the channel axis of each token. */
export interface QuantizedBlock {
  tokens: number;
  dim: number;
  bits: Bits;
  groupSize: number;
  /** [tokens][dim·b/32] */
  codes: Uint32Array;
  /** float16 bits: [tokens][dim/G] per token, or [tokens/G][dim] per channel */
  scales: Uint16Array;
  mins: Uint16Array;
  axis: 'token' | 'channel';
}

/**
 * Quantize a [tokens][dim] matrix with groups of G consecutive channels of one token (KIVI's values).
 * Scales/mins are written at [t·(dim/G) + g].
 */
export function quantizePerTokenInto(
  x: Float32Array,
  xStart: number,
  tokens: number,
  dim: number,
  G: number,
  bits: Bits,
  codesOut: Uint32Array,
  codesStart: number,
  scales: Uint16Array,
  mins: Uint16Array,
  paramStart: number,
  scratch: Uint8Array,
): void {
  const groups = dim / G;
  const wordsPerToken = packedWords(dim, bits);
  for (let t = 0; t < tokens; t++) {
    for (let g = 0; g < groups; g++) {
      quantizeGroup(x, xStart + t * dim + g * G, 1, G, bits, scratch, g * G, 1, scales, mins, paramStart + t * groups + g);
    }
    packCodes(scratch, 0, dim, bits, codesOut, codesStart + t * wordsPerToken);
  }
}

/**
 * Quantize a [tokens][dim] matrix (tokens % G == 0) with groups of G consecutive tokens of one channel
 * (KIVI's keys). Scales/mins are written at [(t/G)·dim + c]; codes are still packed per token.
 */
export function quantizePerChannelInto(
  x: Float32Array,
  xStart: number,
  tokens: number,
  dim: number,
  G: number,
  bits: Bits,
  codesOut: Uint32Array,
  codesStart: number,
  scales: Uint16Array,
  mins: Uint16Array,
  paramStart: number,
  scratch: Uint8Array,
): void {
  const wordsPerToken = packedWords(dim, bits);
  for (let g0 = 0; g0 < tokens; g0 += G) {
    const n = Math.min(G, tokens - g0);
    for (let c = 0; c < dim; c++) {
      quantizeGroup(x, xStart + g0 * dim + c, dim, n, bits, scratch, c, dim, scales, mins, paramStart + (g0 / G) * dim + c);
    }
    for (let t = 0; t < n; t++) {
      packCodes(scratch, t * dim, dim, bits, codesOut, codesStart + (g0 + t) * wordsPerToken);
    }
  }
}

function checkShape(tokens: number, dim: number, G: number, bits: Bits, axis: 'token' | 'channel'): void {
  if (!isBits(bits)) throw new KiviError(`bits must be one of ${SUPPORTED_BITS.join(', ')}, got ${bits}`);
  if (!(G > 0) || !Number.isInteger(G)) throw new KiviError(`group size must be a positive integer, got ${G}`);
  if (axis === 'token' && dim % G !== 0) throw new KiviError(`dim ${dim} is not a multiple of group size ${G}`);
  if ((dim * bits) % 32 !== 0) throw new KiviError(`dim ${dim} × ${bits} bits does not fill 32-bit words`);
  if (tokens < 0) throw new KiviError('negative token count');
}

/** Allocating form of the per-token quantizer (tests, analysis). */
export function quantizePerToken(x: Float32Array, tokens: number, dim: number, G: number, bits: Bits): QuantizedBlock {
  checkShape(tokens, dim, G, bits, 'token');
  const codes = new Uint32Array(tokens * packedWords(dim, bits));
  const scales = new Uint16Array(tokens * (dim / G));
  const mins = new Uint16Array(scales.length);
  quantizePerTokenInto(x, 0, tokens, dim, G, bits, codes, 0, scales, mins, 0, new Uint8Array(dim));
  return { tokens, dim, bits, groupSize: G, codes, scales, mins, axis: 'token' };
}

/** Allocating form of the per-channel quantizer; a last partial token group is quantized as it is. */
export function quantizePerChannel(x: Float32Array, tokens: number, dim: number, G: number, bits: Bits): QuantizedBlock {
  checkShape(tokens, dim, G, bits, 'channel');
  const groups = Math.ceil(tokens / G);
  const codes = new Uint32Array(tokens * packedWords(dim, bits));
  const scales = new Uint16Array(groups * dim);
  const mins = new Uint16Array(scales.length);
  quantizePerChannelInto(x, 0, tokens, dim, G, bits, codes, 0, scales, mins, 0, new Uint8Array(G * dim));
  return { tokens, dim, bits, groupSize: G, codes, scales, mins, axis: 'channel' };
}

/** Expand a block back to float32 [tokens][dim]. */
export function dequantize(block: QuantizedBlock, out = new Float32Array(block.tokens * block.dim)): Float32Array {
  const { tokens, dim, bits, groupSize: G, codes, scales, mins, axis } = block;
  const wpt = packedWords(dim, bits);
  const row = new Uint8Array(dim);
  for (let t = 0; t < tokens; t++) {
    unpackCodes(codes, t * wpt, dim, bits, row, 0);
    for (let c = 0; c < dim; c++) {
      const p = axis === 'token' ? t * (dim / G) + ((c / G) | 0) : ((t / G) | 0) * dim + c;
      out[t * dim + c] = dequantizeCode(row[c]!, scales[p]!, mins[p]!);
    }
  }
  return out;
}

/** Bytes a block holds: codes plus two float16 per group. */
export function blockBytes(block: QuantizedBlock): number {
  return block.codes.byteLength + block.scales.byteLength + block.mins.byteLength;
}
