/**
 * Fused attention on packed KIVI codes (docs/KIVI.md §6), grouped-query aware. Codes are the standard
 * packing: per token along channels, word w of a token holds channels w·(32/b)…, element j at bits
 * [b·j, b·j+b). Read as i16 lanes, lane k of a 128-bit unit holds cpl = 16/b consecutive channels, so
 * plane s = (lane >> b·s) & mask gives channels k·cpl + s: the unit's codes widened to 16 bits with two
 * instructions per plane (one at 2 bits, see keyQmax), ready for i32x4.dot_i16x8_s.
 *
 * Scores (keys quantized per channel in groups of G tokens): q·k̂_t = Σ_c (q_c·s_c)·code_tc + Σ_c q_c·m_c.
 * Per group and head, qs = q ⊙ s is quantized to int16 with one scale α = max|qs|/qmax and permuted to
 * the planes' channel order; then each token is integer dots and adds (two heads and two tokens per
 * step, each unit's codes unpacked once for both heads), and score = (α·Σ + Σ_c q_c·m_c)·scale. The rounding moves a score by at most
 * α/2·Σ_c code_tc (times scale).
 *
 * Values (quantized per token in groups of G channels): Σ_t a_t·v̂_tc = Σ_t (a_t·s_tg)·code_tc + Σ_t a_t·m_tg.
 * The weights w_tg = a_t·s_tg are quantized to int16 per group over ≤ 256 tokens with
 * α_g = max|a|·max s_g/32767, two tokens' codes are interleaved lane by lane so one dot multiplies both
 * by their weights (two heads share the unpacking), and the minimum term is one float sum per group.
 * The rounding moves an output by at most Σ_t α_g/2·code_tc. A chunk may span several value pages
 * (accum_kivi_list): the attention task hands over a fused chunk's pages at once.
 * Every call first reads one word per line of its codes and scales/minimums (common.ts touch).
 */
import { finiteHalves4, positiveHalves4, hmax, hsum, roundToInt, roundToIntScalar, touch, zero16 } from './common';

const QMAX: f32 = 32767;
/** Tokens per value chunk: keeps Σ |w|·code within int32 at 8 bits (256·32767·255 < 2^31). */
const VCHUNK = 256;

/**
 * Largest int16 query value per key width. At 2 bits the key kernel skips the masks of planes 1..7 by
 * telescoping: Σ_s Q_s·c_s = Q_0·c_0 + Q_1·R_1 + Σ_{s≥2} (Q_s − 4·Q_{s−1})·R_s with R_s = lane >> 2s,
 * so the differences must fit int16: |Q| ≤ 32767/5. The rounding this costs (≤ α/2 per channel) stays
 * far below KIVI's own error (half a code step per channel). 4- and 8-bit keys keep the masks and the
 * full int16 range (telescoping would need |Q| ≤ 32767/17 at 4 bits: too coarse).
 */
@inline function keyQmax(bits: i32): f32 {
  return bits == 2 ? 6553 : 32767;
}

/**
 * Bits per code as a compile-time constant: the kernels are instantiated per width (u8 → 2, u16 → 4,
 * u32 → 8) so every plane loop is unrolled with constant shifts and masks.
 */
// @ts-ignore: decorator
@inline function BITS<B>(): i32 {
  return <i32>sizeof<B>() << 1;
}

@inline function align16(n: usize): usize {
  return (n + 15) & ~15;
}

/** Channels padded to whole 128-bit units of codes. */
@inline function padChannels(d: i32, bits: i32): i32 {
  const u = 128 / bits;
  return (d + u - 1) / u * u;
}

/** Work bytes the kivi kernels need for head size d and nq query heads (any bits, any G ≥ 4). */
export function kivi_work_bytes(d: i32, nq: i32): i32 {
  const dPad = (d + 63) & ~63;
  const scoresB = nq * dPad * 4 + nq * dPad * 2 + 2 * 16 * ((nq + 3) >> 2) + dPad * 2 + d * 16 + 64;
  const ng = d >> 2;
  const valuesB = 2 * VCHUNK * ng * 4 + 2 * ((VCHUNK >> 1) * ng * 4 + 3 * (ng * 4 + 16)) + 2 * (ng * 4 + 16) + 16 * 4;
  return <i32>align16(max(scoresB, valuesB)) + 16; // + accum_kivi's one-segment list
}

// ---- scores -------------------------------------------------------------------------------------

/** [a0+a1, a2+a3, b0+b1, b2+b3]: two heads' unit dots in one vector. */
@inline function pack(a: v128, b: v128): v128 {
  return i32x4.add(v128.shuffle<i32>(a, b, 0, 2, 4, 6), v128.shuffle<i32>(a, b, 1, 3, 5, 7));
}

@inline function plane(V: v128, shift: i32, mask: i32): v128 {
  return v128.and(i16x8.shr_u(V, shift), i16x8.splat(<i16>mask));
}

/**
 * Reorder a unit's int16 query values from channel order (n[c], 8 per vector) to planes: plane s,
 * lane k = channel k·cpl + s.
 */
@inline function permuteUnit<B>(n: usize, qi: usize): void {
  const bits = BITS<B>();
  if (bits == 2) {
    // 8×8 transpose of i16.
    const n0 = v128.load(n), n1 = v128.load(n, 16), n2 = v128.load(n, 32), n3 = v128.load(n, 48);
    const n4 = v128.load(n, 64), n5 = v128.load(n, 80), n6 = v128.load(n, 96), n7 = v128.load(n, 112);
    const t0 = v128.shuffle<i16>(n0, n1, 0, 8, 1, 9, 2, 10, 3, 11), t1 = v128.shuffle<i16>(n0, n1, 4, 12, 5, 13, 6, 14, 7, 15);
    const t2 = v128.shuffle<i16>(n2, n3, 0, 8, 1, 9, 2, 10, 3, 11), t3 = v128.shuffle<i16>(n2, n3, 4, 12, 5, 13, 6, 14, 7, 15);
    const t4 = v128.shuffle<i16>(n4, n5, 0, 8, 1, 9, 2, 10, 3, 11), t5 = v128.shuffle<i16>(n4, n5, 4, 12, 5, 13, 6, 14, 7, 15);
    const t6 = v128.shuffle<i16>(n6, n7, 0, 8, 1, 9, 2, 10, 3, 11), t7 = v128.shuffle<i16>(n6, n7, 4, 12, 5, 13, 6, 14, 7, 15);
    const u0 = v128.shuffle<i32>(t0, t2, 0, 4, 1, 5), u1 = v128.shuffle<i32>(t0, t2, 2, 6, 3, 7);
    const u2 = v128.shuffle<i32>(t1, t3, 0, 4, 1, 5), u3 = v128.shuffle<i32>(t1, t3, 2, 6, 3, 7);
    const u4 = v128.shuffle<i32>(t4, t6, 0, 4, 1, 5), u5 = v128.shuffle<i32>(t4, t6, 2, 6, 3, 7);
    const u6 = v128.shuffle<i32>(t5, t7, 0, 4, 1, 5), u7 = v128.shuffle<i32>(t5, t7, 2, 6, 3, 7);
    v128.store(qi, v128.shuffle<i64>(u0, u4, 0, 2));
    v128.store(qi, v128.shuffle<i64>(u0, u4, 1, 3), 16);
    v128.store(qi, v128.shuffle<i64>(u1, u5, 0, 2), 32);
    v128.store(qi, v128.shuffle<i64>(u1, u5, 1, 3), 48);
    v128.store(qi, v128.shuffle<i64>(u2, u6, 0, 2), 64);
    v128.store(qi, v128.shuffle<i64>(u2, u6, 1, 3), 80);
    v128.store(qi, v128.shuffle<i64>(u3, u7, 0, 2), 96);
    v128.store(qi, v128.shuffle<i64>(u3, u7, 1, 3), 112);
  } else if (bits == 4) {
    const n0 = v128.load(n), n1 = v128.load(n, 16), n2 = v128.load(n, 32), n3 = v128.load(n, 48);
    const a = v128.shuffle<i16>(n0, n1, 0, 4, 8, 12, 1, 5, 9, 13), b = v128.shuffle<i16>(n0, n1, 2, 6, 10, 14, 3, 7, 11, 15);
    const c = v128.shuffle<i16>(n2, n3, 0, 4, 8, 12, 1, 5, 9, 13), e = v128.shuffle<i16>(n2, n3, 2, 6, 10, 14, 3, 7, 11, 15);
    v128.store(qi, v128.shuffle<i64>(a, c, 0, 2));
    v128.store(qi, v128.shuffle<i64>(a, c, 1, 3), 16);
    v128.store(qi, v128.shuffle<i64>(b, e, 0, 2), 32);
    v128.store(qi, v128.shuffle<i64>(b, e, 1, 3), 48);
  } else {
    const n0 = v128.load(n), n1 = v128.load(n, 16);
    v128.store(qi, v128.shuffle<i16>(n0, n1, 0, 2, 4, 6, 8, 10, 12, 14));
    v128.store(qi, v128.shuffle<i16>(n0, n1, 1, 3, 5, 7, 9, 11, 13, 15), 16);
  }
}

/**
 * Stage 1 of a group's query preparation, for heads j0 and j1 (may be equal) in one pass over the
 * channels: float16 scales/minimums → float32, qs_j = q_j ⊙ s into qs buffers, max|qs_j| and
 * Σ_c q_jc·m_c. Channels past d are left as they are (zero).
 */
@inline function scaleQueries(q0: usize, q1: usize, scales: usize, mins: usize, dB: usize, qs0: usize, qs1: usize,
  alpha0: usize, alpha1: usize, bias0: usize, bias1: usize): void {
  let am0 = f32x4.splat(0), am1 = am0, bs0 = am0, bs1 = am0;
  for (let c: usize = 0; c < dB; c += 16) {
    const sv = positiveHalves4(i32x4.extend_low_i16x8_u(v128.load64_zero(scales + (c >> 1)))); // scales ≥ 0
    const mv = finiteHalves4(i32x4.extend_low_i16x8_s(v128.load64_zero(mins + (c >> 1))));
    const x0 = v128.load(q0 + c), x1 = v128.load(q1 + c);
    const v0 = f32x4.mul(x0, sv), v1 = f32x4.mul(x1, sv);
    v128.store(qs0 + c, v0);
    v128.store(qs1 + c, v1);
    am0 = f32x4.pmax(am0, f32x4.abs(v0));
    am1 = f32x4.pmax(am1, f32x4.abs(v1));
    bs0 = f32x4.add(bs0, f32x4.mul(x0, mv));
    bs1 = f32x4.add(bs1, f32x4.mul(x1, mv));
  }
  store<f32>(alpha0, hmax(am0));
  store<f32>(bias0, hsum(bs0));
  store<f32>(alpha1, hmax(am1));
  store<f32>(bias1, hsum(bs1));
}

/**
 * Stage 2, per head: qs (float32 [dPad], max |qs| at alphaP) → int16 planes at qi, and α = max/qmax
 * stored back at alphaP.
 */
@inline function quantizeQuery<B>(qs: usize, tmp: usize, dPad: i32, qi: usize, alphaP: usize): void {
  const bits = BITS<B>();
  const padB = <usize>dPad << 2;
  const am = load<f32>(alphaP);
  const qmax = keyQmax(bits);
  store<f32>(alphaP, am / qmax);
  const iv = f32x4.splat(am > 0 ? qmax / am : 0);
  for (let c: usize = 0, h: usize = 0; c < padB; c += 32, h += 16) {
    const lo = roundToInt(f32x4.mul(v128.load(qs + c), iv));
    const hi = roundToInt(f32x4.mul(v128.load(qs + c, 16), iv));
    v128.store(tmp + h, i16x8.narrow_i32x4_s(lo, hi));
  }
  const unitB = <usize>(256 / bits); // int16 bytes of one unit's channels = bytes of its planes
  const units = dPad * bits / 128;
  for (let u = 0; u < units; u++) {
    const qu = qi + <usize>u * unitB;
    permuteUnit<B>(tmp + <usize>u * unitB, qu);
    if (bits == 2) {
      // Telescope (keyQmax): plane s ≥ 2 gets Q_s − 4·Q_{s−1}, highest first.
      for (let k: usize = unitB - 16; k >= 32; k -= 16) {
        v128.store(qu + k, i16x8.sub(v128.load(qu + k), i16x8.shl(v128.load(qu + k - 16), bits)));
      }
    }
  }
}

/**
 * Scores of G tokens (one group) for one head (the last of an odd number of query heads; pairs take
 * groupScores2), two tokens per step. Each token's sums go to `part`, then 4 tokens at a time are
 * reduced, scaled and stored.
 */
@inline function groupScores1<B>(s0: usize, cg: usize, tokB: usize, G: i32, units: i32,
  q0: usize, al0: v128, bi0: v128, sc: v128, part: usize): void {
  const bits = BITS<B>();
  const unitB = <usize>(256 / bits);
  const mask: i32 = (1 << bits) - 1;
  const M = i16x8.splat(<i16>mask);
  for (let t = 0, c = cg, pp = part; t < G; t += 2, c += tokB << 1, pp += 16) {
    let a0 = i32x4.splat(0), a1 = a0;
    for (let u = 0, off: usize = 0, qa = q0; u < units; u++, off += 16, qa += unitB) {
      const V0 = v128.load(c + off), V1 = v128.load(c + tokB + off);
      let y0 = v128.and(V0, M), y1 = v128.and(V1, M);
      let x = v128.load(qa);
     
      a0 = i32x4.add(a0, i32x4.dot_i16x8_s(y0, x)); a1 = i32x4.add(a1, i32x4.dot_i16x8_s(y1, x));
      if (bits == 2) {
        y0 = i16x8.shr_u(V0, 2); y1 = i16x8.shr_u(V1, 2); x = v128.load(qa, 16);
        a0 = i32x4.add(a0, i32x4.dot_i16x8_s(y0, x)); a1 = i32x4.add(a1, i32x4.dot_i16x8_s(y1, x));
        y0 = i16x8.shr_u(V0, 4); y1 = i16x8.shr_u(V1, 4); x = v128.load(qa, 32);
        a0 = i32x4.add(a0, i32x4.dot_i16x8_s(y0, x)); a1 = i32x4.add(a1, i32x4.dot_i16x8_s(y1, x));
        y0 = i16x8.shr_u(V0, 6); y1 = i16x8.shr_u(V1, 6); x = v128.load(qa, 48);
        a0 = i32x4.add(a0, i32x4.dot_i16x8_s(y0, x)); a1 = i32x4.add(a1, i32x4.dot_i16x8_s(y1, x));
        y0 = i16x8.shr_u(V0, 8); y1 = i16x8.shr_u(V1, 8); x = v128.load(qa, 64);
        a0 = i32x4.add(a0, i32x4.dot_i16x8_s(y0, x)); a1 = i32x4.add(a1, i32x4.dot_i16x8_s(y1, x));
        y0 = i16x8.shr_u(V0, 10); y1 = i16x8.shr_u(V1, 10); x = v128.load(qa, 80);
        a0 = i32x4.add(a0, i32x4.dot_i16x8_s(y0, x)); a1 = i32x4.add(a1, i32x4.dot_i16x8_s(y1, x));
        y0 = i16x8.shr_u(V0, 12); y1 = i16x8.shr_u(V1, 12); x = v128.load(qa, 96);
        a0 = i32x4.add(a0, i32x4.dot_i16x8_s(y0, x)); a1 = i32x4.add(a1, i32x4.dot_i16x8_s(y1, x));
        y0 = i16x8.shr_u(V0, 14); y1 = i16x8.shr_u(V1, 14); x = v128.load(qa, 112);
        a0 = i32x4.add(a0, i32x4.dot_i16x8_s(y0, x)); a1 = i32x4.add(a1, i32x4.dot_i16x8_s(y1, x));
      } else if (bits == 4) {
        y0 = plane(V0, 4, 15); y1 = plane(V1, 4, 15); x = v128.load(qa, 16);
        a0 = i32x4.add(a0, i32x4.dot_i16x8_s(y0, x)); a1 = i32x4.add(a1, i32x4.dot_i16x8_s(y1, x));
        y0 = plane(V0, 8, 15); y1 = plane(V1, 8, 15); x = v128.load(qa, 32);
        a0 = i32x4.add(a0, i32x4.dot_i16x8_s(y0, x)); a1 = i32x4.add(a1, i32x4.dot_i16x8_s(y1, x));
        y0 = i16x8.shr_u(V0, 12); y1 = i16x8.shr_u(V1, 12); x = v128.load(qa, 48);
        a0 = i32x4.add(a0, i32x4.dot_i16x8_s(y0, x)); a1 = i32x4.add(a1, i32x4.dot_i16x8_s(y1, x));
      } else {
        y0 = i16x8.shr_u(V0, 8); y1 = i16x8.shr_u(V1, 8); x = v128.load(qa, 16);
        a0 = i32x4.add(a0, i32x4.dot_i16x8_s(y0, x)); a1 = i32x4.add(a1, i32x4.dot_i16x8_s(y1, x));
      }
    }
    v128.store(pp, pack(a0, a1)); // [t lo, t hi, t+1 lo, t+1 hi]
  }
  for (let t = 0, pp = part; t < G; t += 4, pp += 32) {
    const x = v128.load(pp), y = v128.load(pp, 16);
    const h0 = f32x4.convert_i32x4_s(i32x4.add(v128.shuffle<i32>(x, y, 0, 2, 4, 6), v128.shuffle<i32>(x, y, 1, 3, 5, 7)));
    v128.store(s0 + (<usize>t << 2), f32x4.mul(f32x4.add(f32x4.mul(h0, al0), bi0), sc));
  }
}

/**
 * Scores of G tokens (one group) for two heads, two tokens per step: each unit's codes are unpacked once
 * for both heads (the issue of a kv head's query heads sharing every key group). Two tokens × two heads
 * is 4 accumulators, the unit's two code vectors, two unpacked planes and both heads' query plane: 10
 * live vectors, within the 16 registers. Each step's sums are reduced to [A_t, A_t+1, B_t, B_t+1] and
 * stored as scores right away.
 */
@inline function groupScores2<B>(sA: usize, sB: usize, cg: usize, tokB: usize, G: i32, units: i32,
  qA: usize, qB: usize, mulAB: v128, addAB: v128): void {
  const bits = BITS<B>();
  const unitB = <usize>(256 / bits);
  const mask: i32 = (1 << bits) - 1;
  const M = i16x8.splat(<i16>mask);
  for (let t = 0, c = cg; t < G; t += 2, c += tokB << 1) {
    let a0 = i32x4.splat(0), a1 = a0, b0 = a0, b1 = a0;
    for (let u = 0, off: usize = 0, qa = qA, qb = qB; u < units; u++, off += 16, qa += unitB, qb += unitB) {
      const V0 = v128.load(c + off), V1 = v128.load(c + tokB + off);
      let y0 = v128.and(V0, M), y1 = v128.and(V1, M);
      let x = v128.load(qa), z = v128.load(qb);
      a0 = dotw(y0, x, a0); a1 = dotw(y1, x, a1); b0 = dotw(y0, z, b0); b1 = dotw(y1, z, b1);
      if (bits == 2) {
        y0 = i16x8.shr_u(V0, 2); y1 = i16x8.shr_u(V1, 2); x = v128.load(qa, 16); z = v128.load(qb, 16);
        a0 = dotw(y0, x, a0); a1 = dotw(y1, x, a1); b0 = dotw(y0, z, b0); b1 = dotw(y1, z, b1);
        y0 = i16x8.shr_u(V0, 4); y1 = i16x8.shr_u(V1, 4); x = v128.load(qa, 32); z = v128.load(qb, 32);
        a0 = dotw(y0, x, a0); a1 = dotw(y1, x, a1); b0 = dotw(y0, z, b0); b1 = dotw(y1, z, b1);
        y0 = i16x8.shr_u(V0, 6); y1 = i16x8.shr_u(V1, 6); x = v128.load(qa, 48); z = v128.load(qb, 48);
        a0 = dotw(y0, x, a0); a1 = dotw(y1, x, a1); b0 = dotw(y0, z, b0); b1 = dotw(y1, z, b1);
        y0 = i16x8.shr_u(V0, 8); y1 = i16x8.shr_u(V1, 8); x = v128.load(qa, 64); z = v128.load(qb, 64);
        a0 = dotw(y0, x, a0); a1 = dotw(y1, x, a1); b0 = dotw(y0, z, b0); b1 = dotw(y1, z, b1);
        y0 = i16x8.shr_u(V0, 10); y1 = i16x8.shr_u(V1, 10); x = v128.load(qa, 80); z = v128.load(qb, 80);
        a0 = dotw(y0, x, a0); a1 = dotw(y1, x, a1); b0 = dotw(y0, z, b0); b1 = dotw(y1, z, b1);
        y0 = i16x8.shr_u(V0, 12); y1 = i16x8.shr_u(V1, 12); x = v128.load(qa, 96); z = v128.load(qb, 96);
        a0 = dotw(y0, x, a0); a1 = dotw(y1, x, a1); b0 = dotw(y0, z, b0); b1 = dotw(y1, z, b1);
        y0 = i16x8.shr_u(V0, 14); y1 = i16x8.shr_u(V1, 14); x = v128.load(qa, 112); z = v128.load(qb, 112);
        a0 = dotw(y0, x, a0); a1 = dotw(y1, x, a1); b0 = dotw(y0, z, b0); b1 = dotw(y1, z, b1);
      } else if (bits == 4) {
        y0 = plane(V0, 4, 15); y1 = plane(V1, 4, 15); x = v128.load(qa, 16); z = v128.load(qb, 16);
        a0 = dotw(y0, x, a0); a1 = dotw(y1, x, a1); b0 = dotw(y0, z, b0); b1 = dotw(y1, z, b1);
        y0 = plane(V0, 8, 15); y1 = plane(V1, 8, 15); x = v128.load(qa, 32); z = v128.load(qb, 32);
        a0 = dotw(y0, x, a0); a1 = dotw(y1, x, a1); b0 = dotw(y0, z, b0); b1 = dotw(y1, z, b1);
        y0 = i16x8.shr_u(V0, 12); y1 = i16x8.shr_u(V1, 12); x = v128.load(qa, 48); z = v128.load(qb, 48);
        a0 = dotw(y0, x, a0); a1 = dotw(y1, x, a1); b0 = dotw(y0, z, b0); b1 = dotw(y1, z, b1);
      } else {
        y0 = i16x8.shr_u(V0, 8); y1 = i16x8.shr_u(V1, 8); x = v128.load(qa, 16); z = v128.load(qb, 16);
        a0 = dotw(y0, x, a0); a1 = dotw(y1, x, a1); b0 = dotw(y0, z, b0); b1 = dotw(y1, z, b1);
      }
    }
    // pack: [t lo, t hi, t+1 lo, t+1 hi] per head → [A_t, A_t+1, B_t, B_t+1].
    const pa = pack(a0, a1), pb = pack(b0, b1);
    const sums = i32x4.add(v128.shuffle<i32>(pa, pb, 0, 2, 4, 6), v128.shuffle<i32>(pa, pb, 1, 3, 5, 7));
    const r = f32x4.add(f32x4.mul(f32x4.convert_i32x4_s(sums), mulAB), addAB);
    v128.store64_lane(sA + (<usize>t << 2), r, 0);
    v128.store64_lane(sB + (<usize>t << 2), r, 1);
  }
}

function scoresKivi<B>(s: usize, sStride: i32, q: usize, nq: i32, codes: usize, scales: usize, mins: usize,
  n: i32, d: i32, G: i32, scale: f32, work: usize): void {
  const bits = BITS<B>();
  const dPad = padChannels(d, bits);
  const dB = <usize>d << 2, padB = <usize>dPad << 2;
  // Work: per head qs [dPad] f32, int16 planes [dPad]; then α, Σq·m per head; scratch.
  const qs = work;
  const qi = qs + <usize>nq * padB;
  const qiB = <usize>dPad << 1;
  const alpha = qi + <usize>nq * qiB;
  const bias = alpha + align16(<usize>nq << 2);
  const tmp = bias + align16(<usize>nq << 2);
  const part = tmp + align16(<usize>dPad << 1); // G ≤ d packed token sums
  if (padB > dB) for (let j = 0; j < nq; j++) zero16(qs + <usize>j * padB + (dB & ~15), padB - (dB & ~15));
  const tokB = <usize>(d * bits >> 5) << 2;
  const units = dPad * bits / 128;
  const sB = <usize>sStride << 2;
  const sc = f32x4.splat(scale);
  touch(codes, <usize>n * tokB);
  touch(scales, <usize>(n / G) * dB >> 1);
  touch(mins, <usize>(n / G) * dB >> 1);
  for (let g0 = 0; g0 < n; g0 += G) {
    const pOff = <usize>(g0 / G) * dB >> 1; // float16 [n/G][d]
    for (let j = 0; j < nq; j += 2) {
      const j1 = j + 1 < nq ? j + 1 : j;
      scaleQueries(q + <usize>j * dB, q + <usize>j1 * dB, scales + pOff, mins + pOff, dB,
        qs + <usize>j * padB, qs + <usize>j1 * padB, alpha + (<usize>j << 2), alpha + (<usize>j1 << 2),
        bias + (<usize>j << 2), bias + (<usize>j1 << 2));
    }
    for (let j = 0; j < nq; j++) quantizeQuery<B>(qs + <usize>j * padB, tmp, dPad, qi + <usize>j * qiB, alpha + (<usize>j << 2));
    const cg = codes + <usize>g0 * tokB;
    const sg = s + (<usize>g0 << 2);
    let j = 0;
    for (; j + 2 <= nq; j += 2) {
      // [α_A, α_A, α_B, α_B]·scale and the same of the biases: score = Σ·α·scale + bias·scale.
      const al = v128.shuffle<f32>(v128.load32_splat(alpha + (<usize>j << 2)), v128.load32_splat(alpha + (<usize>j << 2) + 4), 0, 1, 4, 5);
      const bi = v128.shuffle<f32>(v128.load32_splat(bias + (<usize>j << 2)), v128.load32_splat(bias + (<usize>j << 2) + 4), 0, 1, 4, 5);
      groupScores2<B>(sg + <usize>j * sB, sg + <usize>(j + 1) * sB, cg, tokB, G, units, qi + <usize>j * qiB, qi + <usize>(j + 1) * qiB,
        f32x4.mul(al, sc), f32x4.mul(bi, sc));
    }
    if (j < nq) {
      groupScores1<B>(sg + <usize>j * sB, cg, tokB, G, units, qi + <usize>j * qiB,
        v128.load32_splat(alpha + (<usize>j << 2)), v128.load32_splat(bias + (<usize>j << 2)), sc, part);
    }
  }
}

/**
 * s[j·sStride + t] = scale·(q_j · k̂_t) for t < n (a multiple of G), keys quantized per channel:
 * codes [n][d·bits/32] words, float16 scales/mins [n/G][d].
 */
export function scores_kivi(s: usize, sStride: i32, q: usize, nq: i32, codes: usize, scales: usize, mins: usize,
  n: i32, d: i32, bits: i32, G: i32, scale: f32, work: usize): void {
  if (bits == 2) scoresKivi<u8>(s, sStride, q, nq, codes, scales, mins, n, d, G, scale, work);
  else if (bits == 4) scoresKivi<u16>(s, sStride, q, nq, codes, scales, mins, n, d, G, scale, work);
  else scoresKivi<u32>(s, sStride, q, nq, codes, scales, mins, n, d, G, scale, work);
}

// ---- weighted sum of values ---------------------------------------------------------------------

/**
 * One chunk's float16 scales and minimums (n = m·ng of each, token-major) → float32 at sf/mf, shared by
 * every head, and the largest scale of each group at smax (raised, not reset: one call per segment of a
 * chunk). One flat pass: with ng a multiple of 4, every vector of 4 lies in one token.
 */
function convertParams(scales: usize, mins: usize, n: i32, ng: i32, sf: usize, mf: usize, smax: usize): void {
  const ngB = <usize>ng << 2;
  const nB = <usize>n << 2;
  let i: usize = 0;
  if ((ng & 3) == 0) {
    if (ng == 4) {
      let sm = v128.load(smax);
      for (; i + 32 <= nB; i += 32) {
        const h = v128.load(scales + (i >> 1)), k = v128.load(mins + (i >> 1));
        const s0 = positiveHalves4(i32x4.extend_low_i16x8_u(h)), s1 = positiveHalves4(i32x4.extend_high_i16x8_u(h));
        v128.store(sf + i, s0);
        v128.store(sf + i, s1, 16);
        v128.store(mf + i, finiteHalves4(i32x4.extend_low_i16x8_s(k)));
        v128.store(mf + i, finiteHalves4(i32x4.extend_high_i16x8_s(k)), 16);
        sm = f32x4.pmax(sm, f32x4.pmax(s0, s1));
      }
      v128.store(smax, sm);
    }
    for (let go: usize = i % ngB; i < nB; i += 16) {
      const sv = positiveHalves4(i32x4.extend_low_i16x8_u(v128.load64_zero(scales + (i >> 1))));
      v128.store(sf + i, sv);
      v128.store(mf + i, finiteHalves4(i32x4.extend_low_i16x8_s(v128.load64_zero(mins + (i >> 1)))));
      v128.store(smax + go, f32x4.pmax(v128.load(smax + go), sv));
      go += 16;
      if (go == ngB) go = 0;
    }
  } else {
    for (let go: usize = 0; i < nB; i += 4) {
      const sv = halfScalar(scales + (i >> 1));
      store<f32>(sf + i, sv);
      store<f32>(mf + i, halfScalar(mins + (i >> 1)));
      const sm = load<f32>(smax + go);
      store<f32>(smax + go, sv > sm ? sv : sm);
      go += 4;
      if (go == ngB) go = 0;
    }
  }
}

@inline function halfScalar(p: usize): f32 {
  return f32x4.extract_lane(finiteHalves4(i32x4.splat(<i32>load<i16>(p))), 0);
}

/** Pack two tokens' int16 weights: low half the even token's, high half the odd token's. */
@inline function pairWords(wa: v128, wb: v128): v128 {
  return v128.or(v128.and(wa, i32x4.splat(0xffff)), i32x4.shl(wb, 16));
}

/**
 * One head's weights over m ≤ VCHUNK tokens: w_tg = a_t·s_tg quantized to int16 with α_g =
 * max|a|·max s_g / 32767 (so |w/α| ≤ 32767 without a pass over the products), stored in pairs of
 * tokens (low half: even token, high half: odd token, 0 past the end) as wi[pair][g]; α_g at alpha and
 * the minimum terms Σ_t a_t·m_tg (in token order) at mt. The inverse scales go to inv.
 */
function prepareWeights(p: usize, sf: usize, mf: usize, smax: usize, m: i32, ng: i32, wi: usize,
  alpha: usize, inv: usize, mt: usize): void {
  const ngB = <usize>ng << 2;
  let av = f32x4.splat(0);
  let t = 0;
  for (; t + 4 <= m; t += 4) av = f32x4.pmax(av, f32x4.abs(v128.load(p + (<usize>t << 2))));
  let amax = hmax(av);
  for (; t < m; t++) {
    const a = abs(load<f32>(p + (<usize>t << 2)));
    amax = a > amax ? a : amax;
  }
  for (let g: usize = 0; g < ngB; g += 4) {
    const top = amax * load<f32>(smax + g);
    store<f32>(inv + g, top > 0 ? QMAX / top : 0);
    store<f32>(alpha + g, top / QMAX);
  }
  zero16(mt, (ngB + 15) & ~15);
  const full = m >> 1; // pairs with two tokens
  if (ng == 4) {
    const iv = v128.load(inv);
    let mv = f32x4.splat(0);
    let pa = p, row = sf, mrow = mf, dst = wi;
    for (let pr = 0; pr < full; pr++, pa += 8, row += 32, mrow += 32, dst += 16) {
      const vA = v128.load32_splat(pa), vB = v128.load32_splat(pa, 4);
      const wa = roundToInt(f32x4.mul(f32x4.mul(vA, v128.load(row)), iv));
      const wb = roundToInt(f32x4.mul(f32x4.mul(vB, v128.load(row, 16)), iv));
      v128.store(dst, pairWords(wa, wb));
      mv = f32x4.add(f32x4.add(mv, f32x4.mul(vA, v128.load(mrow))), f32x4.mul(vB, v128.load(mrow, 16)));
    }
    if (m & 1) {
      const vA = v128.load32_splat(pa);
      v128.store(dst, pairWords(roundToInt(f32x4.mul(f32x4.mul(vA, v128.load(row)), iv)), i32x4.splat(0)));
      mv = f32x4.add(mv, f32x4.mul(vA, v128.load(mrow)));
    }
    v128.store(mt, mv);
    return;
  }
  const pairs = (m + 1) >> 1;
  for (let pr = 0; pr < pairs; pr++) {
    const tA = 2 * pr, hasB = tA + 1 < m;
    const aA = load<f32>(p + (<usize>tA << 2)), aB: f32 = hasB ? load<f32>(p + (<usize>tA << 2), 4) : 0;
    const rowA = <usize>tA * ngB, rowB = hasB ? rowA + ngB : rowA;
    const dst = wi + <usize>pr * ngB;
    for (let g: usize = 0; g < ngB; g += 4) {
      const iv = load<f32>(inv + g);
      const wa = roundToIntScalar(aA * load<f32>(sf + rowA + g) * iv);
      const wb = roundToIntScalar(aB * load<f32>(sf + rowB + g) * iv);
      store<i32>(dst + g, (wa & 0xffff) | (wb << 16));
      let mv = load<f32>(mt + g) + aA * load<f32>(mf + rowA + g);
      if (hasB) mv += aB * load<f32>(mf + rowB + g);
      store<f32>(mt + g, mv);
    }
  }
}

/** Two tokens' 4 i16 lanes of one half unit, interleaved [a0 b0 a1 b1 a2 b2 a3 b3] (one punpcklwd). */
@inline function pairLanes(A: usize, B: usize): v128 {
  return v128.shuffle<i16>(v128.load64_zero(A), v128.load64_zero(B), 0, 8, 1, 9, 2, 10, 3, 11);
}

@inline function pairWeights<U>(wp: usize, g0: usize, lanesG: usize): v128 {
  if (isBoolean<U>()) return v128.load32_splat(wp + g0);
  let W = v128.load32_zero(wp + <usize>load<i32>(lanesG));
  W = v128.load32_lane(wp + <usize>load<i32>(lanesG, 4), W, 1);
  W = v128.load32_lane(wp + <usize>load<i32>(lanesG, 8), W, 2);
  return v128.load32_lane(wp + <usize>load<i32>(lanesG, 12), W, 3);
}

@inline function dotw(y: v128, w: v128, acc: v128): v128 {
  return i32x4.add(acc, i32x4.dot_i16x8_s(y, w));
}

/**
 * Half unit h (channels c0 = h·4·cpl …) of one head over m tokens from cb: per plane, Σ over pairs of
 * (w_A·code_A + w_B·code_B) in int32 (two pairs per step), then out[c] += α_g·Σ + mt_g in channel
 * order. U = bool: the half unit lies in one group (one weight per pair); otherwise one group per lane,
 * from the lane→group table at lanesG.
 */
@inline function halfUnit<B, U>(out: usize, d: i32, G: i32, list: usize, nseg: i32, tokB: usize, h: i32, wi: usize, ngB: usize,
  lanesG: usize, alpha: usize, mt: usize): void {
  const bits = BITS<B>();
  const cpl = 16 / bits;
  const c0 = h * 4 * cpl;
  const g0 = <usize>(c0 / G) << 2;
  let a0 = i32x4.splat(0), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  const tok2 = tokB << 1;
  let wp = wi;
  for (let e = 0; e < nseg; e++) {
  const m = load<i32>(list + (<usize>e << 4), 12);
  const pairs = (m + 1) >> 1;
  let A = <usize>load<u32>(list + (<usize>e << 4)) + (<usize>h << 3);
  let pr = 0;
  for (; pr + 2 <= pairs; pr += 2, A += tok2 << 1, wp += ngB << 1) {
    // Tokens A, B (pair pr) and C, D (pair pr + 1); D may be past the end: its weight is 0, read C.
    const C = A + tok2;
    const X = pairLanes(A, A + tokB), Y = pairLanes(C, 2 * pr + 3 < m ? C + tokB : C);
    const W = pairWeights<U>(wp, g0, lanesG), Z = pairWeights<U>(wp + ngB, g0, lanesG);
    if (bits == 2) {
      a0 = dotw(v128.and(Y, i16x8.splat(3)), Z, dotw(v128.and(X, i16x8.splat(3)), W, a0));
      a1 = dotw(plane(Y, 2, 3), Z, dotw(plane(X, 2, 3), W, a1));
      a2 = dotw(plane(Y, 4, 3), Z, dotw(plane(X, 4, 3), W, a2));
      a3 = dotw(plane(Y, 6, 3), Z, dotw(plane(X, 6, 3), W, a3));
      a4 = dotw(plane(Y, 8, 3), Z, dotw(plane(X, 8, 3), W, a4));
      a5 = dotw(plane(Y, 10, 3), Z, dotw(plane(X, 10, 3), W, a5));
      a6 = dotw(plane(Y, 12, 3), Z, dotw(plane(X, 12, 3), W, a6));
      a7 = dotw(i16x8.shr_u(Y, 14), Z, dotw(i16x8.shr_u(X, 14), W, a7));
    } else if (bits == 4) {
      a0 = dotw(v128.and(Y, i16x8.splat(15)), Z, dotw(v128.and(X, i16x8.splat(15)), W, a0));
      a1 = dotw(plane(Y, 4, 15), Z, dotw(plane(X, 4, 15), W, a1));
      a2 = dotw(plane(Y, 8, 15), Z, dotw(plane(X, 8, 15), W, a2));
      a3 = dotw(i16x8.shr_u(Y, 12), Z, dotw(i16x8.shr_u(X, 12), W, a3));
    } else {
      a0 = dotw(v128.and(Y, i16x8.splat(255)), Z, dotw(v128.and(X, i16x8.splat(255)), W, a0));
      a1 = dotw(i16x8.shr_u(Y, 8), Z, dotw(i16x8.shr_u(X, 8), W, a1));
    }
  }
  if (pr < pairs) {
    const X = pairLanes(A, 2 * pr + 1 < m ? A + tokB : A);
    const W = pairWeights<U>(wp, g0, lanesG);
    wp += ngB;
    if (bits == 2) {
      a0 = dotw(v128.and(X, i16x8.splat(3)), W, a0);
      a1 = dotw(plane(X, 2, 3), W, a1);
      a2 = dotw(plane(X, 4, 3), W, a2);
      a3 = dotw(plane(X, 6, 3), W, a3);
      a4 = dotw(plane(X, 8, 3), W, a4);
      a5 = dotw(plane(X, 10, 3), W, a5);
      a6 = dotw(plane(X, 12, 3), W, a6);
      a7 = dotw(i16x8.shr_u(X, 14), W, a7);
    } else if (bits == 4) {
      a0 = dotw(v128.and(X, i16x8.splat(15)), W, a0);
      a1 = dotw(plane(X, 4, 15), W, a1);
      a2 = dotw(plane(X, 8, 15), W, a2);
      a3 = dotw(i16x8.shr_u(X, 12), W, a3);
    } else {
      a0 = dotw(v128.and(X, i16x8.splat(255)), W, a0);
      a1 = dotw(i16x8.shr_u(X, 8), W, a1);
    }
  }
  }
  // Plane s, lane k holds channel c0 + k·cpl + s: transpose to channel order, 4 channels per vector
  // (4 consecutive channels share a group: G is a multiple of 2·cpl ≥ 4).
  if (bits == 2) {
    finish4(out, d, G, c0, cpl, alpha, mt, a0, a1, a2, a3, 0);
    finish4(out, d, G, c0, cpl, alpha, mt, a4, a5, a6, a7, 4);
  } else if (bits == 4) {
    finish4(out, d, G, c0, cpl, alpha, mt, a0, a1, a2, a3, 0);
  } else {
    // lane k of plane s: channel c0 + 2k + s.
    finish1(out, d, G, c0, alpha, mt, v128.shuffle<i32>(a0, a1, 0, 4, 1, 5));
    finish1(out, d, G, c0 + 4, alpha, mt, v128.shuffle<i32>(a0, a1, 2, 6, 3, 7));
  }
}

/** out[c .. c+4) += α_g·f32(sums) + mt_g (c < d; c multiple of 4). */
@inline function finish1(out: usize, d: i32, G: i32, c: i32, alpha: usize, mt: usize, sums: v128): void {
  if (c >= d) return;
  const g = <usize>(c / G) << 2;
  const o = out + (<usize>c << 2);
  const v = f32x4.add(f32x4.mul(f32x4.convert_i32x4_s(sums), v128.load32_splat(alpha + g)), v128.load32_splat(mt + g));
  v128.store(o, f32x4.add(v128.load(o), v));
}

/**
 * Planes p0..p3 (plane i, lane k: channel c0 + k·cpl + s0 + i) → channel order: transposing the 4×4
 * block gives, for each lane k, channels c0 + k·cpl + s0 .. +3.
 */
@inline function finish4(out: usize, d: i32, G: i32, c0: i32, cpl: i32, alpha: usize, mt: usize,
  p0: v128, p1: v128, p2: v128, p3: v128, s0: i32): void {
  const t0 = v128.shuffle<i32>(p0, p1, 0, 4, 1, 5), t1 = v128.shuffle<i32>(p0, p1, 2, 6, 3, 7);
  const t2 = v128.shuffle<i32>(p2, p3, 0, 4, 1, 5), t3 = v128.shuffle<i32>(p2, p3, 2, 6, 3, 7);
  finish1(out, d, G, c0 + s0, alpha, mt, v128.shuffle<i64>(t0, t2, 0, 2));
  finish1(out, d, G, c0 + cpl + s0, alpha, mt, v128.shuffle<i64>(t0, t2, 1, 3));
  finish1(out, d, G, c0 + 2 * cpl + s0, alpha, mt, v128.shuffle<i64>(t1, t3, 0, 2));
  finish1(out, d, G, c0 + 3 * cpl + s0, alpha, mt, v128.shuffle<i64>(t1, t3, 1, 3));
}

/** Plane s of interleaved codes (s a constant after inlining). */
@inline function planeOf<B>(X: v128, s: i32): v128 {
  const bits = BITS<B>();
  const mask: i32 = (1 << bits) - 1;
  const top = 16 / bits - 1;
  if (s == 0) return v128.and(X, i16x8.splat(<i16>mask));
  if (s == top) return i16x8.shr_u(X, s * bits);
  return v128.and(i16x8.shr_u(X, s * bits), i16x8.splat(<i16>mask));
}

/**
 * Two heads at once over half unit h, planes s0 .. s0+3 (or the 2 planes of 8-bit codes): each pair's
 * codes are unpacked once for both heads. 4 planes × 2 heads is as many accumulators as fit in
 * registers; 2-bit codes take two passes (planes 0–3, then 4–7).
 */
@inline function halfUnit2<B, U>(oA: usize, oB: usize, d: i32, G: i32, list: usize, nseg: i32, tokB: usize, h: i32,
  wA: usize, wB: usize, ngB: usize, lanesG: usize, alA: usize, alB: usize, mtA: usize, mtB: usize, s0: i32): void {
  const bits = BITS<B>();
  const cpl = 16 / bits;
  const c0 = h * 4 * cpl;
  const g0 = <usize>(c0 / G) << 2;
  let a0 = i32x4.splat(0), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  let pa = wA, pb = wB;
  const tok2 = tokB << 1;
  for (let e = 0; e < nseg; e++) {
  const m = load<i32>(list + (<usize>e << 4), 12);
  const pairs = (m + 1) >> 1;
  let A = <usize>load<u32>(list + (<usize>e << 4)) + (<usize>h << 3);
  for (let pr = 0; pr < pairs; pr++, A += tok2, pa += ngB, pb += ngB) {
    const X = pairLanes(A, 2 * pr + 1 < m ? A + tokB : A);
    const WA = pairWeights<U>(pa, g0, lanesG), WB = pairWeights<U>(pb, g0, lanesG);
    let y = planeOf<B>(X, s0);
    a0 = dotw(y, WA, a0); b0 = dotw(y, WB, b0);
    y = planeOf<B>(X, s0 + 1);
    a1 = dotw(y, WA, a1); b1 = dotw(y, WB, b1);
    if (bits != 8) {
      y = planeOf<B>(X, s0 + 2);
      a2 = dotw(y, WA, a2); b2 = dotw(y, WB, b2);
      y = planeOf<B>(X, s0 + 3);
      a3 = dotw(y, WA, a3); b3 = dotw(y, WB, b3);
    }
  }
  }
  if (bits != 8) {
    finish4(oA, d, G, c0, cpl, alA, mtA, a0, a1, a2, a3, s0);
    finish4(oB, d, G, c0, cpl, alB, mtB, b0, b1, b2, b3, s0);
  } else {
    finish1(oA, d, G, c0, alA, mtA, v128.shuffle<i32>(a0, a1, 0, 4, 1, 5));
    finish1(oA, d, G, c0 + 4, alA, mtA, v128.shuffle<i32>(a0, a1, 2, 6, 3, 7));
    finish1(oB, d, G, c0, alB, mtB, v128.shuffle<i32>(b0, b1, 0, 4, 1, 5));
    finish1(oB, d, G, c0 + 4, alB, mtB, v128.shuffle<i32>(b0, b1, 2, 6, 3, 7));
  }
}

/**
 * One chunk of m ≤ VCHUNK tokens from a list of nseg segments (list: [codes, scales, mins, n] as 32-bit
 * words per segment, in token order; every segment but the last has an even n, so pairs of tokens never
 * straddle two segments): their weights are p[j·pStride + 0 .. m) in the same order. Value pages hold 64
 * tokens: one call over the pages of a whole chunk spreads its fixed work (weights, the transposes at the
 * end of each half unit) over up to VCHUNK tokens.
 */
function accumChunk<B>(out: usize, p: usize, pStride: i32, nq: i32, list: usize, nseg: i32, m: i32, d: i32, G: i32, work: usize): void {
  const bits = BITS<B>();
  const ng = d / G;
  const ngB = <usize>ng << 2;
  const hChan = 64 / bits; // channels of one half unit (4 lanes × 16/b)
  const halves = (d + hChan - 1) / hChan;
  const tokB = <usize>(d * bits >> 5) << 2;
  const dB = <usize>d << 2;
  const cpl = 16 / bits;
  // Work: float32 params of the chunk, then per head of a pair: weights, α, inverse, minimum terms.
  const sf = work;
  const mf = sf + align16(<usize>VCHUNK * ngB);
  const smax = mf + align16(<usize>VCHUNK * ngB);
  const lanesG = smax + align16(ngB);
  const headB = align16(<usize>(VCHUNK >> 1) * ngB) + 3 * align16(ngB);
  const hA = lanesG + 16, hB = hA + headB;
  const wiA = hA, alA = wiA + align16(<usize>(VCHUNK >> 1) * ngB), ivA = alA + align16(ngB), mtA = ivA + align16(ngB);
  const wiB = hB, alB = wiB + align16(<usize>(VCHUNK >> 1) * ngB), ivB = alB + align16(ngB), mtB = ivB + align16(ngB);
  const uniform = G % hChan == 0;
  zero16(smax, (ngB + 15) & ~15);
  for (let e = 0, off: usize = 0; e < nseg; e++) {
    const le = list + (<usize>e << 4);
    const codes = <usize>load<u32>(le), scales = <usize>load<u32>(le, 4), mins = <usize>load<u32>(le, 8), n = load<i32>(le, 12);
    touch(codes, <usize>n * tokB);
    touch(scales, <usize>n * (<usize>ng << 1));
    touch(mins, <usize>n * (<usize>ng << 1));
    convertParams(scales, mins, n * ng, ng, sf + off, mf + off, smax);
    off += <usize>n * ngB;
  }
  for (let j = 0; j < nq; j += 2) {
    const two = j + 1 < nq;
    const oA = out + <usize>j * dB, oB = two ? oA + dB : oA;
    prepareWeights(p + ((<usize>j * <usize>pStride) << 2), sf, mf, smax, m, ng, wiA, alA, ivA, mtA);
    if (two) prepareWeights(p + ((<usize>(j + 1) * <usize>pStride) << 2), sf, mf, smax, m, ng, wiB, alB, ivB, mtB);
    for (let h = 0; h < halves; h++) {
      if (!uniform) for (let k = 0; k < 4; k++) store<i32>(lanesG + (<usize>k << 2), min(ng - 1, (h * hChan + k * cpl) / G) << 2);
      if (!two) {
        if (uniform) halfUnit<B, bool>(oA, d, G, list, nseg, tokB, h, wiA, ngB, lanesG, alA, mtA);
        else halfUnit<B, i32>(oA, d, G, list, nseg, tokB, h, wiA, ngB, lanesG, alA, mtA);
      } else if (uniform) {
        halfUnit2<B, bool>(oA, oB, d, G, list, nseg, tokB, h, wiA, wiB, ngB, lanesG, alA, alB, mtA, mtB, 0);
        if (bits == 2) halfUnit2<B, bool>(oA, oB, d, G, list, nseg, tokB, h, wiA, wiB, ngB, lanesG, alA, alB, mtA, mtB, 4);
      } else {
        halfUnit2<B, i32>(oA, oB, d, G, list, nseg, tokB, h, wiA, wiB, ngB, lanesG, alA, alB, mtA, mtB, 0);
        if (bits == 2) halfUnit2<B, i32>(oA, oB, d, G, list, nseg, tokB, h, wiA, wiB, ngB, lanesG, alA, alB, mtA, mtB, 4);
      }
    }
  }
}

@inline function accumList(out: usize, p: usize, pStride: i32, nq: i32, list: usize, nseg: i32, m: i32, d: i32, bits: i32, G: i32, work: usize): void {
  if (bits == 2) accumChunk<u8>(out, p, pStride, nq, list, nseg, m, d, G, work);
  else if (bits == 4) accumChunk<u16>(out, p, pStride, nq, list, nseg, m, d, G, work);
  else accumChunk<u32>(out, p, pStride, nq, list, nseg, m, d, G, work);
}

/**
 * out[j·d + c] += Σ_t p[j·pStride + t]·v̂_tc for t < n, values quantized per token: codes
 * [n][d·bits/32] words, float16 scales/mins [n][d/G].
 */
export function accum_kivi(out: usize, p: usize, pStride: i32, nq: i32, codes: usize, scales: usize, mins: usize,
  n: i32, d: i32, bits: i32, G: i32, work: usize): void {
  const list = work + <usize>kivi_work_bytes(d, nq) - 16; // one segment: the last 16 bytes of the work area
  const tokB = <usize>(d * bits >> 5) << 2;
  const pB = <usize>((d / G) << 1);
  for (let t0 = 0; t0 < n; t0 += VCHUNK) {
    const m = min(VCHUNK, n - t0);
    store<u32>(list, <u32>(codes + <usize>t0 * tokB));
    store<u32>(list, <u32>(scales + <usize>t0 * pB), 4);
    store<u32>(list, <u32>(mins + <usize>t0 * pB), 8);
    store<i32>(list, m, 12);
    accumList(out, p + (<usize>t0 << 2), pStride, nq, list, 1, m, d, bits, G, work);
  }
}

/**
 * accum_kivi over one chunk given as a list of nseg value segments (see accumChunk) holding m ≤ 256
 * tokens in all, their weights at p[j·pStride + 0 .. m).
 */
export function accum_kivi_list(out: usize, p: usize, pStride: i32, nq: i32, list: usize, nseg: i32, m: i32,
  d: i32, bits: i32, G: i32, work: usize): void {
  accumList(out, p, pStride, nq, list, nseg, m, d, bits, G, work);
}
