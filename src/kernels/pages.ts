/**
 * Page geometry: the bytes of one (layer, kv head) section of a page of each segment kind, and where
 * the parts of a KIVI section lie (layout.ts describes the kinds). Every back end and the caches'
 * budget arithmetic use these, so a layout is defined once.
 */
import { SEG_F16, SEG_F32, SEG_KIVI_K, SEG_KIVI_V, SEG_KIVI_V8 } from './layout.js';

/** Sections are padded to 16 bytes so vector loads never straddle two sections' data. */
export const SECTION_ALIGN = 16;

const pad = (b: number) => Math.ceil(b / SECTION_ALIGN) * SECTION_ALIGN;

/** u32 words of packed codes per token row of d channels at `bits` bits. */
export function wordsPerRow(d: number, bits: number): number {
  return (d * bits) / 32;
}

/** Byte offsets of the parts of a KIVI section: codes at 0, then scales, then minimums. */
export interface KiviSection {
  scalesAt: number;
  minsAt: number;
  bytes: number;
}

export function kiviSection(kind: number, cap: number, d: number, bits: number, G: number): KiviSection {
  const codes = cap * wordsPerRow(d, bits) * 4;
  // Keys: one scale per channel per group of G tokens; values: one per group of G channels per token.
  const params = kind === SEG_KIVI_K ? (cap / G) * d * 2 : cap * (d / G) * 2;
  return { scalesAt: codes, minsAt: codes + params, bytes: pad(codes + 2 * params) };
}

/** Byte offsets of the parts of an 8-bit-metadata value section (SEG_KIVI_V8): codes, (lo, hi) per token, (u, v) per group. */
export interface KiviV8Section {
  lohiAt: number;
  uvAt: number;
  bytes: number;
}

export function kiviV8Section(cap: number, d: number, bits: number, G: number): KiviV8Section {
  const codes = cap * wordsPerRow(d, bits) * 4;
  const lohi = cap * 2 * 2;
  return { lohiAt: codes, uvAt: codes + lohi, bytes: pad(codes + lohi + cap * (d / G) * 2) };
}

/** Bytes of one (layer, kv head) section of a page of `cap` token slots. */
export function sectionBytes(kind: number, cap: number, d: number, bits = 0, G = 0): number {
  switch (kind) {
    case SEG_F32:
      return pad(cap * d * 4);
    case SEG_F16:
      return pad(cap * d * 2);
    case SEG_KIVI_K:
    case SEG_KIVI_V:
      return kiviSection(kind, cap, d, bits, G).bytes;
    case SEG_KIVI_V8:
      return kiviV8Section(cap, d, bits, G).bytes;
    default:
      throw new Error(`sectionBytes: kind ${kind} has no pages`);
  }
}
