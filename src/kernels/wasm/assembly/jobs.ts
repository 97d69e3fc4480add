/**
 * The cache jobs that store and quantize new tokens into pages (kernels/layout.ts JOB_STORE, JOB_QKEY,
 * JOB_QVAL), bit for bit the TypeScript reference (kernels/ts/jobs.ts with src/quant/quantizer.ts):
 * min/max per group in the reference's order (so even the sign of a zero minimum matches), the scale
 * (max − min)/(2^b − 1) and the minimum in float32 rounded to float16 (round to nearest even), codes
 * round-half-even((x − m16)/s16) clamped to [0, 2^b − 1], 0 where the float16 scale is 0, packed 32/b
 * to a u32 word along the channel axis.
 *
 * cache_job returns 0 when done, or 1 for the caller to run the reference on the job instead: where the
 * reference throws (a non-finite value, a scale or minimum past float16, a malformed record: it then
 * throws its own error) and for what only the reference does (8-bit value metadata, fake quantization,
 * other code widths). The reference rewrites every head, so a job left half done here is no matter.
 */
import {
  JOB_QKEY, JOB_QVAL, JOB_STORE, JOB_VALUES, SEG_BITS, SEG_CAP, SEG_F16, SEG_F32, SEG_G, SEG_KIND,
  SEG_KIVI_K, SEG_KIVI_V, SEG_N, SEG_PAGE, SEG_ROWS, SEG_SECTION, SEG_T0, SEG_WORDS,
} from '../../layout';
import { finiteHalf, finiteHalves4 } from './common';

const JOB_DONE = 0;
const JOB_REFERENCE = 1;

@inline function word(p: usize, i: i32): i32 {
  return load<i32>(p + (<usize>i << 2));
}

/** float32 → binary16 bits, round to nearest even, overflow → ±Inf (src/quant/float16.ts toHalfBits). */
export function toHalf(x: f32): u32 {
  const bits = reinterpret<u32>(x);
  const sign = (bits >> 16) & 0x8000;
  const exp = <i32>((bits >> 23) & 0xff);
  const mant = bits & 0x7fffff;
  if (exp == 0xff) return sign | 0x7c00 | (mant != 0 ? 0x200 : 0);
  const e = exp - 112;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    const m = mant | 0x800000;
    const shift = <u32>(14 - e);
    let h = m >> shift;
    const rem = m & ((1 << shift) - 1);
    const half: u32 = 1 << (shift - 1);
    if (rem > half || (rem == half && (h & 1) != 0)) h++;
    return sign | h;
  }
  let h = (<u32>e << 10) | (mant >> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1) != 0)) h++;
  return sign | h;
}

/** Bytes of scratch cache_job needs for a destination of n tokens of d channels. */
export function cache_job_scratch_bytes(n: i32, d: i32): i32 {
  return (n * d + 4 * d) * 4 + 64;
}

/**
 * One job of a step plan on layer `layer`, every kv head: its fields (JOB_KIND, JOB_HALF, JOB_SRC0,
 * JOB_SRCN, JOB_DST) as arguments, the plan's segments at `segs`, the step's qkv rows at `qkv`.
 */
export function cache_job(kind: i32, half: i32, src0: i32, srcN: i32, dstSeg: i32, segs: usize, layer: i32,
  qkv: usize, H: i32, KV: i32, d: i32, scratch: usize): i32 {
  const dp = segs + <usize>(dstSeg * SEG_WORDS) * 4;
  const dKind = word(dp, SEG_KIND), dN = word(dp, SEG_N), dCap = word(dp, SEG_CAP), dT0 = word(dp, SEG_T0);
  const bits = word(dp, SEG_BITS), G = word(dp, SEG_G);
  const dB = <usize>d << 2;
  if (kind == JOB_STORE) {
    if (dKind != SEG_F32 && dKind != SEG_F16) return JOB_REFERENCE;
  } else if (kind == JOB_QKEY || kind == JOB_QVAL) {
    if (kind == JOB_QKEY && (dKind != SEG_KIVI_K || dT0 != 0 || dN != dCap)) return JOB_REFERENCE;
    if (kind == JOB_QVAL && dKind != SEG_KIVI_V) return JOB_REFERENCE;
    // Whole words of 32/b channels in vectors of 4, whole groups; the reference does the rest.
    if ((bits != 2 && bits != 4 && bits != 8) || G <= 0 || dN <= 0 || (d & (32 / bits - 1)) != 0) return JOB_REFERENCE;
    if (kind == JOB_QKEY ? dCap % G != 0 : (G & 3) != 0 || d % G != 0) return JOB_REFERENCE;
  } else {
    return JOB_REFERENCE;
  }
  // Scratch: the gathered rows [dN][d], then per-channel scales, minimums, nonzero-scale masks, codes.
  const x = (scratch + 15) & ~15;
  const sv = x + <usize>(dN * d) * 4, mv = sv + dB, zv = mv + dB, cv = zv + dB;
  const qkvRow = <usize>((H + 2 * KV) * d) << 2;
  const part = (half == JOB_VALUES ? H + KV : H);
  const secB = <usize>word(dp, SEG_SECTION);
  for (let h = 0; h < KV; h++) {
    const n = gather(src0, srcN, segs, layer, h, qkv, qkvRow, part, KV, d, x);
    if (n != dN) return JOB_REFERENCE;
    const sec = <usize>word(dp, SEG_PAGE) + <usize>(layer * KV + h) * secB;
    if (kind == JOB_STORE) {
      const m = <usize>(dN * d);
      if (dKind == SEG_F32) memory.copy(sec + <usize>(dT0 * d) * 4, x, m << 2);
      else {
        const o = sec + <usize>(dT0 * d) * 2;
        for (let i: usize = 0; i < m; i++) store<u16>(o + (i << 1), <u16>toHalf(load<f32>(x + (i << 2))));
      }
      continue;
    }
    const codesB = <usize>(dCap * d * bits / 8);
    const wpr = <usize>(d * bits / 32);
    const scales = sec + codesB;
    let r: i32;
    if (kind == JOB_QKEY) {
      r = quantKeys(x, dN, d, G, bits, sec, scales, scales + <usize>((dCap / G) * d * 2), sv, mv, zv, cv);
    } else {
      const pg = <usize>(dT0 * (d / G) * 2);
      r = quantValues(x, dN, d, G, bits, sec + <usize>dT0 * wpr * 4, scales + pg, scales + <usize>(dCap * (d / G) * 2) + pg, cv);
    }
    if (r != JOB_DONE) return r;
  }
  return JOB_DONE;
}

/**
 * The job's source tokens for kv head h, in order, as float32 rows [t][d] at x; returns the count, or −1
 * for a source left to the reference (non-finite float16 values, other kinds).
 */
function gather(src0: i32, srcN: i32, segs: usize, layer: i32, h: i32, qkv: usize, qkvRow: usize, part: i32,
  KV: i32, d: i32, x: usize): i32 {
  const dB = <usize>d << 2;
  let t = 0;
  for (let k = src0; k < src0 + srcN; k++) {
    const sp = segs + <usize>(k * SEG_WORDS) * 4;
    const kind = word(sp, SEG_KIND), n = word(sp, SEG_N);
    const dst = x + <usize>t * dB;
    if (kind == SEG_ROWS) {
      const src = qkv + <usize>word(sp, SEG_PAGE) * qkvRow + <usize>(part + h) * dB;
      for (let i = 0; i < n; i++) memory.copy(dst + <usize>i * dB, src + <usize>i * qkvRow, dB);
    } else {
      const sec = <usize>word(sp, SEG_PAGE) + <usize>(layer * KV + h) * <usize>word(sp, SEG_SECTION);
      const first = word(sp, SEG_T0);
      if (kind == SEG_F32) memory.copy(dst, sec + <usize>first * dB, <usize>n * dB);
      else if (kind == SEG_F16) {
        const src = sec + <usize>(first * d) * 2, m = <usize>(n * d);
        let inf = i16x8.splat(0);
        let i: usize = 0;
        for (; i + 4 <= m; i += 4) {
          const v = v128.load64_zero(src + (i << 1));
          inf = v128.or(inf, i16x8.eq(v128.and(v, i16x8.splat(0x7c00)), i16x8.splat(0x7c00)));
          v128.store(dst + (i << 2), finiteHalves4(i32x4.extend_low_i16x8_s(v)));
        }
        for (; i < m; i++) {
          const b = <u32>load<u16>(src + (i << 1));
          if ((b & 0x7c00) == 0x7c00) return -1;
          store<f32>(dst + (i << 2), finiteHalf(<i32>b));
        }
        if (v128.any_true(inf)) return -1;
      } else {
        return -1;
      }
    }
    t += n;
  }
  return t;
}

/** True where a lane is ±Inf or NaN (x − x is NaN there, 0 elsewhere). */
@inline function nonFinite(v: v128): v128 {
  const z = f32x4.sub(v, v);
  return f32x4.ne(z, z);
}

/** Codes of 4 channels: round-half-even((v − m)/s) clamped to [0, maxCode], 0 where the mask z is clear. */
@inline function codes4(v: v128, s: v128, m: v128, z: v128, maxCode: v128): v128 {
  const c = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.div(f32x4.sub(v, m), s)));
  return v128.and(i32x4.min_s(i32x4.max_s(c, i32x4.splat(0)), maxCode), z);
}

/** d codes (i32 at c) packed 32/b to a word at out (packCodes: element j of a word at bits [b·j, b·j + b)). */
@inline function pack(c: usize, d: i32, bits: i32, out: usize): void {
  const nw = d * bits / 32;
  if (bits == 2) {
    const mul = i32x4(1, 4, 16, 64);
    for (let w = 0; w < nw; w++) {
      const p = c + (<usize>w << 6);
      let t = v128.or(v128.load(p), i32x4.shl(v128.load(p, 16), 8));
      t = v128.or(t, v128.or(i32x4.shl(v128.load(p, 32), 16), i32x4.shl(v128.load(p, 48), 24)));
      store<u32>(out + (<usize>w << 2), orLanes(i32x4.mul(t, mul)));
    }
  } else if (bits == 4) {
    const mul = i32x4(1, 16, 256, 4096);
    for (let w = 0; w < nw; w++) {
      const p = c + (<usize>w << 5);
      store<u32>(out + (<usize>w << 2), orLanes(i32x4.mul(v128.or(v128.load(p), i32x4.shl(v128.load(p, 16), 16)), mul)));
    }
  } else {
    const mul = i32x4(1, 256, 65536, 16777216);
    for (let w = 0; w < nw; w++) store<u32>(out + (<usize>w << 2), orLanes(i32x4.mul(v128.load(c + (<usize>w << 4)), mul)));
  }
}

@inline function orLanes(v: v128): u32 {
  const t = v128.or(v, v128.shuffle<i32>(v, v, 2, 3, 0, 1));
  return <u32>(i32x4.extract_lane(t, 0) | i32x4.extract_lane(t, 1));
}

/** Float16 bits of s and m per lane into scales/mins; their float32 values and the nonzero-scale mask back. */
@inline function params4(s: v128, m: v128, scales: usize, mins: usize, sv: usize, mv: usize, zv: usize): bool {
  let bad = false;
  for (let l = 0; l < 4; l++) {
    let sb: u32 = 0, mb: u32 = 0;
    if (l == 0) { sb = toHalf(f32x4.extract_lane(s, 0)); mb = toHalf(f32x4.extract_lane(m, 0)); }
    else if (l == 1) { sb = toHalf(f32x4.extract_lane(s, 1)); mb = toHalf(f32x4.extract_lane(m, 1)); }
    else if (l == 2) { sb = toHalf(f32x4.extract_lane(s, 2)); mb = toHalf(f32x4.extract_lane(m, 2)); }
    else { sb = toHalf(f32x4.extract_lane(s, 3)); mb = toHalf(f32x4.extract_lane(m, 3)); }
    if ((sb & 0x7c00) == 0x7c00 || (mb & 0x7c00) == 0x7c00) bad = true;
    store<u16>(scales + (<usize>l << 1), <u16>sb);
    store<u16>(mins + (<usize>l << 1), <u16>mb);
    const sf = finiteHalf(<i32>sb);
    store<f32>(sv + (<usize>l << 2), sf);
    store<f32>(mv + (<usize>l << 2), finiteHalf(<i32>mb));
    store<i32>(zv + (<usize>l << 2), sf != 0 ? -1 : 0);
  }
  return bad;
}

/**
 * Keys: n tokens [t][d] at x quantized per channel in groups of G tokens (quantizePerChannelInto): lanes
 * are channels, tokens are visited in order, so pmin/pmax keep the reference's first-of-equal choice.
 */
function quantKeys(x: usize, n: i32, d: i32, G: i32, bits: i32, codes: usize, scales: usize, mins: usize,
  sv: usize, mv: usize, zv: usize, cv: usize): i32 {
  const dB = <usize>d << 2;
  const maxCode = (1 << bits) - 1;
  const mc = i32x4.splat(maxCode);
  const wpr = <usize>(d * bits / 32) << 2;
  for (let g0 = 0; g0 < n; g0 += G) {
    const gn = min(G, n - g0);
    const gx = x + <usize>g0 * dB;
    const po = <usize>((g0 / G) * d) << 1;
    for (let c: usize = 0; c < dB; c += 16) {
      let lo = f32x4.splat(Infinity), hi = f32x4.splat(-Infinity), bad = i32x4.splat(0);
      for (let t = 0; t < gn; t++) {
        const v = v128.load(gx + <usize>t * dB + c);
        lo = f32x4.pmin(lo, v);
        hi = f32x4.pmax(hi, v);
        bad = v128.or(bad, nonFinite(v));
      }
      if (v128.any_true(bad)) return JOB_REFERENCE;
      const s = f32x4.div(f32x4.sub(hi, lo), f32x4.splat(<f32>maxCode));
      if (params4(s, lo, scales + po + (c >> 1), mins + po + (c >> 1), sv + c, mv + c, zv + c)) return JOB_REFERENCE;
    }
    for (let t = 0; t < gn; t++) {
      const row = gx + <usize>t * dB;
      for (let c: usize = 0; c < dB; c += 16) {
        v128.store(cv + c, codes4(v128.load(row + c), v128.load(sv + c), v128.load(mv + c), v128.load(zv + c), mc));
      }
      pack(cv, d, bits, codes + <usize>(g0 + t) * wpr);
    }
  }
  return JOB_DONE;
}

/**
 * Values: n tokens [t][d] at x quantized per token in groups of G channels (quantizePerTokenInto). The
 * minimum and maximum come from 4 lanes; where one of them is zero, a scalar pass in channel order
 * decides its sign as the reference does.
 */
function quantValues(x: usize, n: i32, d: i32, G: i32, bits: i32, codes: usize, scales: usize, mins: usize, cv: usize): i32 {
  const dB = <usize>d << 2, gB = <usize>G << 2;
  const maxCode = (1 << bits) - 1;
  const mc = i32x4.splat(maxCode);
  const wpr = <usize>(d * bits / 32) << 2;
  const groups = d / G;
  for (let t = 0; t < n; t++) {
    const row = x + <usize>t * dB;
    for (let g = 0; g < groups; g++) {
      const gp = row + <usize>g * gB;
      let lo4 = f32x4.splat(Infinity), hi4 = f32x4.splat(-Infinity), bad = i32x4.splat(0);
      for (let c: usize = 0; c < gB; c += 16) {
        const v = v128.load(gp + c);
        lo4 = f32x4.pmin(lo4, v);
        hi4 = f32x4.pmax(hi4, v);
        bad = v128.or(bad, nonFinite(v));
      }
      if (v128.any_true(bad)) return JOB_REFERENCE;
      let lo = min(min(f32x4.extract_lane(lo4, 0), f32x4.extract_lane(lo4, 1)), min(f32x4.extract_lane(lo4, 2), f32x4.extract_lane(lo4, 3)));
      let hi = max(max(f32x4.extract_lane(hi4, 0), f32x4.extract_lane(hi4, 1)), max(f32x4.extract_lane(hi4, 2), f32x4.extract_lane(hi4, 3)));
      if (lo == 0 || hi == 0) {
        lo = Infinity;
        hi = -Infinity;
        for (let c: usize = 0; c < gB; c += 4) {
          const v = load<f32>(gp + c);
          if (v < lo) lo = v;
          if (v > hi) hi = v;
        }
      }
      const sb = toHalf((hi - lo) / <f32>maxCode), mb = toHalf(lo);
      if ((sb & 0x7c00) == 0x7c00 || (mb & 0x7c00) == 0x7c00) return JOB_REFERENCE;
      const pi = <usize>(t * groups + g) << 1;
      store<u16>(scales + pi, <u16>sb);
      store<u16>(mins + pi, <u16>mb);
      const sf = finiteHalf(<i32>sb);
      const s = f32x4.splat(sf), m = f32x4.splat(finiteHalf(<i32>mb)), z = i32x4.splat(sf != 0 ? -1 : 0);
      for (let c: usize = 0; c < gB; c += 16) v128.store(cv + <usize>g * gB + c, codes4(v128.load(gp + c), s, m, z, mc));
    }
    pack(cv, d, bits, codes + <usize>t * wpr);
  }
  return JOB_DONE;
}
