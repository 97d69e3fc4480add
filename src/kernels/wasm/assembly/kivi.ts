/**
 * Fused attention on packed KIVI codes (docs/KIVI.md §6), grouped-query aware. Codes are the standard
 * packing: per token along channels, word w of a token holds channels w·(32/b)…, element j at bits
 * [b·j, b·j+b). Read as i16 lanes, lane k of a 128-bit unit holds cpl = 16/b consecutive channels, so
 * plane s = (lane >> b·s) & mask gives channels k·cpl + s: the unit's codes widened to 16 bits with two
 * instructions per plane, ready for i32x4.dot_i16x8_s.
 *
 * Scores (keys quantized per channel in groups of G tokens): q·k̂_t = Σ_c (q_c·s_c)·code_tc + Σ_c q_c·m_c.
 * Per group and head, qs = q ⊙ s is quantized to int16 with one scale α = max|qs|/32767 and permuted to
 * the planes' channel order; then each token is integer dots and adds, and
 * score = (α·Σ + Σ_c q_c·m_c)·scale. The int16 rounding moves a score by at most α/2·Σ_c code_tc.
 *
 * Values (quantized per token in groups of G channels): Σ_t a_t·v̂_tc = Σ_t (a_t·s_tg)·code_tc + Σ_t a_t·m_tg.
 * The weights w_tg = a_t·s_tg are quantized to int16 per group over ≤ 256 tokens (α_g = max|w|/32767),
 * two tokens' codes are interleaved lane by lane so one dot multiplies both by their weights, and the
 * minimum term is one float sum per group.
 */
import { hsum, isum4, finiteHalves4 } from './common';

const QMAX: f32 = 32767;
/** Tokens per value chunk: keeps Σ |w|·code within int32 at 8 bits (256·32767·255 < 2^31). */
const VCHUNK = 256;

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
  const scoresB = 3 * dPad * 4 + dPad * 2 + 2 * 16 * ((nq + 3) >> 2) + nq * dPad * 2 + nq * dPad * 4 + 64;
  const ng = d >> 2;
  const valuesB = VCHUNK * ng * 4 + (VCHUNK >> 1) * ng * 4 + 3 * ng * 4 + 8 * 16 + 64;
  return <i32>align16(max(scoresB, valuesB));
}

// ---- scores -------------------------------------------------------------------------------------

/** [a0+a1, a2+a3, b0+b1, b2+b3]: two heads' unit dots in one vector. */
@inline function pack(a: v128, b: v128): v128 {
  return i32x4.add(v128.shuffle<i32>(a, b, 0, 2, 4, 6), v128.shuffle<i32>(a, b, 1, 3, 5, 7));
}

@inline function plane(V: v128, shift: i32, mask: i32): v128 {
  return v128.and(i16x8.shr_u(V, shift), i16x8.splat(<i16>mask));
}

@inline function dotq(y: v128, q: usize, off: usize): v128 {
  return i32x4.dot_i16x8_s(y, v128.load(q + off));
}

/** One 128-bit unit of one token against two heads' permuted int16 queries. */
@inline function unit2(V: v128, q0: usize, q1: usize, bits: i32): v128 {
  const mask: i32 = (1 << bits) - 1;
  let y = v128.and(V, i16x8.splat(<i16>mask));
  let a = dotq(y, q0, 0), b = dotq(y, q1, 0);
  if (bits == 2) {
    y = plane(V, 2, 3); a = i32x4.add(a, dotq(y, q0, 16)); b = i32x4.add(b, dotq(y, q1, 16));
    y = plane(V, 4, 3); a = i32x4.add(a, dotq(y, q0, 32)); b = i32x4.add(b, dotq(y, q1, 32));
    y = plane(V, 6, 3); a = i32x4.add(a, dotq(y, q0, 48)); b = i32x4.add(b, dotq(y, q1, 48));
    y = plane(V, 8, 3); a = i32x4.add(a, dotq(y, q0, 64)); b = i32x4.add(b, dotq(y, q1, 64));
    y = plane(V, 10, 3); a = i32x4.add(a, dotq(y, q0, 80)); b = i32x4.add(b, dotq(y, q1, 80));
    y = plane(V, 12, 3); a = i32x4.add(a, dotq(y, q0, 96)); b = i32x4.add(b, dotq(y, q1, 96));
    y = i16x8.shr_u(V, 14); a = i32x4.add(a, dotq(y, q0, 112)); b = i32x4.add(b, dotq(y, q1, 112));
  } else if (bits == 4) {
    y = plane(V, 4, 15); a = i32x4.add(a, dotq(y, q0, 16)); b = i32x4.add(b, dotq(y, q1, 16));
    y = plane(V, 8, 15); a = i32x4.add(a, dotq(y, q0, 32)); b = i32x4.add(b, dotq(y, q1, 32));
    y = i16x8.shr_u(V, 12); a = i32x4.add(a, dotq(y, q0, 48)); b = i32x4.add(b, dotq(y, q1, 48));
  } else {
    y = i16x8.shr_u(V, 8); a = i32x4.add(a, dotq(y, q0, 16)); b = i32x4.add(b, dotq(y, q1, 16));
  }
  return pack(a, b);
}

/** One 128-bit unit of one token against one head. */
@inline function unit1(V: v128, q0: usize, bits: i32): v128 {
  const mask: i32 = (1 << bits) - 1;
  let a = dotq(v128.and(V, i16x8.splat(<i16>mask)), q0, 0);
  if (bits == 2) {
    a = i32x4.add(a, dotq(plane(V, 2, 3), q0, 16));
    a = i32x4.add(a, dotq(plane(V, 4, 3), q0, 32));
    a = i32x4.add(a, dotq(plane(V, 6, 3), q0, 48));
    a = i32x4.add(a, dotq(plane(V, 8, 3), q0, 64));
    a = i32x4.add(a, dotq(plane(V, 10, 3), q0, 80));
    a = i32x4.add(a, dotq(plane(V, 12, 3), q0, 96));
    a = i32x4.add(a, dotq(i16x8.shr_u(V, 14), q0, 112));
  } else if (bits == 4) {
    a = i32x4.add(a, dotq(plane(V, 4, 15), q0, 16));
    a = i32x4.add(a, dotq(plane(V, 8, 15), q0, 32));
    a = i32x4.add(a, dotq(i16x8.shr_u(V, 12), q0, 48));
  } else {
    a = i32x4.add(a, dotq(i16x8.shr_u(V, 8), q0, 16));
  }
  return a;
}

/**
 * Reorder a unit's int16 query values from channel order (n[c], 8 per vector) to planes: plane s,
 * lane k = channel k·cpl + s.
 */
@inline function permuteUnit(n: usize, qi: usize, bits: i32): void {
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
 * One head's query for one key group: qs = q ⊙ s → int16 planes at qi, α and Σ q·m stored at
 * alphaP/biasP. q, s, m are float32 [dPad], zero past d.
 */
@inline function prepareQuery(q: usize, sf: usize, mf: usize, qs: usize, tmp: usize, dPad: i32, bits: i32,
  qi: usize, alphaP: usize, biasP: usize): void {
  const padB = <usize>dPad << 2;
  let amax = f32x4.splat(0), bacc = f32x4.splat(0);
  for (let c: usize = 0; c < padB; c += 16) {
    const x = v128.load(q + c);
    const v = f32x4.mul(x, v128.load(sf + c));
    v128.store(qs + c, v);
    amax = f32x4.max(amax, f32x4.abs(v));
    bacc = f32x4.add(bacc, f32x4.mul(x, v128.load(mf + c)));
  }
  const am = max(max(f32x4.extract_lane(amax, 0), f32x4.extract_lane(amax, 1)), max(f32x4.extract_lane(amax, 2), f32x4.extract_lane(amax, 3)));
  store<f32>(alphaP, am / QMAX);
  store<f32>(biasP, hsum(bacc));
  const iv = f32x4.splat(am > 0 ? QMAX / am : 0);
  for (let c: usize = 0, h: usize = 0; c < padB; c += 32, h += 16) {
    const lo = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(qs + c), iv)));
    const hi = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(qs + c, 16), iv)));
    v128.store(tmp + h, i16x8.narrow_i32x4_s(lo, hi));
  }
  const unitB = <usize>(256 / bits); // int16 bytes of one unit's channels = bytes of its planes
  const units = dPad * bits / 128;
  for (let u = 0; u < units; u++) permuteUnit(tmp + <usize>u * unitB, qi + <usize>u * unitB, bits);
}

/** Scores of G tokens (one group) for two heads, 4 tokens at a time. */
@inline function groupScores2(s0: usize, s1: usize, cg: usize, tokB: usize, G: i32, units: i32, bits: i32,
  q0: usize, q1: usize, al0: v128, al1: v128, bi0: v128, bi1: v128, sc: v128): void {
  const unitB = <usize>(256 / bits);
  for (let t = 0; t < G; t += 4) {
    const c0 = cg + <usize>t * tokB, c1 = c0 + tokB, c2 = c1 + tokB, c3 = c2 + tokB;
    let r0 = i32x4.splat(0), r1 = r0, r2 = r0, r3 = r0;
    for (let u = 0, off: usize = 0, qo: usize = 0; u < units; u++, off += 16, qo += unitB) {
      r0 = i32x4.add(r0, unit2(v128.load(c0 + off), q0 + qo, q1 + qo, bits));
      r1 = i32x4.add(r1, unit2(v128.load(c1 + off), q0 + qo, q1 + qo, bits));
      r2 = i32x4.add(r2, unit2(v128.load(c2 + off), q0 + qo, q1 + qo, bits));
      r3 = i32x4.add(r3, unit2(v128.load(c3 + off), q0 + qo, q1 + qo, bits));
    }
    // r_t = [h0 lo, h0 hi, h1 lo, h1 hi] → per head [t0, t1, t2, t3].
    const ef = i32x4.add(v128.shuffle<i32>(r0, r1, 0, 4, 2, 6), v128.shuffle<i32>(r0, r1, 1, 5, 3, 7));
    const gh = i32x4.add(v128.shuffle<i32>(r2, r3, 0, 4, 2, 6), v128.shuffle<i32>(r2, r3, 1, 5, 3, 7));
    const h0 = f32x4.convert_i32x4_s(v128.shuffle<i32>(ef, gh, 0, 1, 4, 5));
    const h1 = f32x4.convert_i32x4_s(v128.shuffle<i32>(ef, gh, 2, 3, 6, 7));
    v128.store(s0 + (<usize>t << 2), f32x4.mul(f32x4.add(f32x4.mul(h0, al0), bi0), sc));
    v128.store(s1 + (<usize>t << 2), f32x4.mul(f32x4.add(f32x4.mul(h1, al1), bi1), sc));
  }
}

@inline function groupScores1(s0: usize, cg: usize, tokB: usize, G: i32, units: i32, bits: i32,
  q0: usize, al0: v128, bi0: v128, sc: v128): void {
  const unitB = <usize>(256 / bits);
  for (let t = 0; t < G; t += 4) {
    const c0 = cg + <usize>t * tokB, c1 = c0 + tokB, c2 = c1 + tokB, c3 = c2 + tokB;
    let r0 = i32x4.splat(0), r1 = r0, r2 = r0, r3 = r0;
    for (let u = 0, off: usize = 0, qo: usize = 0; u < units; u++, off += 16, qo += unitB) {
      r0 = i32x4.add(r0, unit1(v128.load(c0 + off), q0 + qo, bits));
      r1 = i32x4.add(r1, unit1(v128.load(c1 + off), q0 + qo, bits));
      r2 = i32x4.add(r2, unit1(v128.load(c2 + off), q0 + qo, bits));
      r3 = i32x4.add(r3, unit1(v128.load(c3 + off), q0 + qo, bits));
    }
    const h0 = f32x4.convert_i32x4_s(isum4(r0, r1, r2, r3));
    v128.store(s0 + (<usize>t << 2), f32x4.mul(f32x4.add(f32x4.mul(h0, al0), bi0), sc));
  }
}

@inline function scoresKivi(s: usize, sStride: i32, q: usize, nq: i32, codes: usize, scales: usize, mins: usize,
  n: i32, d: i32, bits: i32, G: i32, scale: f32, work: usize): void {
  const dPad = padChannels(d, bits);
  const dB = <usize>d << 2, padB = <usize>dPad << 2;
  const sf = work, mf = sf + padB, qs = mf + padB, tmp = qs + padB;
  const alpha = tmp + align16(<usize>dPad << 1);
  const bias = alpha + align16(<usize>nq << 2);
  const qiB = <usize>dPad << 1;
  const qi = bias + align16(<usize>nq << 2);
  const qpad = qi + <usize>nq * qiB;
  memory.fill(sf, 0, padB << 1);
  for (let j = 0; j < nq; j++) {
    memory.copy(qpad + <usize>j * padB, q + <usize>j * dB, dB);
    if (padB > dB) memory.fill(qpad + <usize>j * padB + dB, 0, padB - dB);
  }
  const tokB = <usize>(d * bits >> 5) << 2;
  const units = dPad * bits / 128;
  const sB = <usize>sStride << 2;
  const sc = f32x4.splat(scale);
  for (let g0 = 0; g0 < n; g0 += G) {
    const pOff = <usize>(g0 / G) * dB >> 1; // float16 [n/G][d]
    for (let c: usize = 0; c < dB; c += 16) {
      v128.store(sf + c, finiteHalves4(i32x4.extend_low_i16x8_s(v128.load64_zero(scales + pOff + (c >> 1)))));
      v128.store(mf + c, finiteHalves4(i32x4.extend_low_i16x8_s(v128.load64_zero(mins + pOff + (c >> 1)))));
    }
    for (let j = 0; j < nq; j++) {
      prepareQuery(qpad + <usize>j * padB, sf, mf, qs, tmp, dPad, bits, qi + <usize>j * qiB,
        alpha + (<usize>j << 2), bias + (<usize>j << 2));
    }
    const cg = codes + <usize>g0 * tokB;
    const sg = s + (<usize>g0 << 2);
    let j = 0;
    for (; j + 2 <= nq; j += 2) {
      const a = alpha + (<usize>j << 2), b = bias + (<usize>j << 2);
      groupScores2(sg + <usize>j * sB, sg + <usize>(j + 1) * sB, cg, tokB, G, units, bits,
        qi + <usize>j * qiB, qi + <usize>(j + 1) * qiB,
        v128.load32_splat(a), v128.load32_splat(a + 4), v128.load32_splat(b), v128.load32_splat(b + 4), sc);
    }
    if (j < nq) {
      groupScores1(sg + <usize>j * sB, cg, tokB, G, units, bits, qi + <usize>j * qiB,
        v128.load32_splat(alpha + (<usize>j << 2)), v128.load32_splat(bias + (<usize>j << 2)), sc);
    }
  }
}

/**
 * s[j·sStride + t] = scale·(q_j · k̂_t) for t < n (a multiple of G), keys quantized per channel:
 * codes [n][d·bits/32] words, float16 scales/mins [n/G][d].
 */
export function scores_kivi(s: usize, sStride: i32, q: usize, nq: i32, codes: usize, scales: usize, mins: usize,
  n: i32, d: i32, bits: i32, G: i32, scale: f32, work: usize): void {
  if (bits == 2) scoresKivi(s, sStride, q, nq, codes, scales, mins, n, d, 2, G, scale, work);
  else if (bits == 4) scoresKivi(s, sStride, q, nq, codes, scales, mins, n, d, 4, G, scale, work);
  else scoresKivi(s, sStride, q, nq, codes, scales, mins, n, d, 8, G, scale, work);
}

// ---- weighted sum of values ---------------------------------------------------------------------

/**
 * Weights of one head over m ≤ VCHUNK tokens: w_tg = a_t·s_tg quantized per group to int16, stored as
 * pairs of tokens (low half: even token, high half: odd token) wi[pair][g]; α_g and the minimum
 * terms Σ_t a_t·m_tg at alpha/mt.
 */
function prepareWeights(p: usize, scales: usize, mins: usize, m: i32, ng: i32,
  wf: usize, wi: usize, alpha: usize, inv: usize, mt: usize): void {
  const ngB = <usize>ng << 2;
  memory.fill(alpha, 0, ngB); // running max |w|
  memory.fill(mt, 0, ngB);
  const vecG = ng & ~3;
  for (let t = 0; t < m; t++) {
    const a = load<f32>(p + (<usize>t << 2));
    const sp = scales + <usize>t * <usize>(ng << 1), mp = mins + <usize>t * <usize>(ng << 1);
    const wt = wf + <usize>t * ngB;
    const av = f32x4.splat(a);
    let g = 0;
    for (; g < vecG; g += 4) {
      const go = <usize>g << 2;
      const sv = finiteHalves4(i32x4.extend_low_i16x8_s(v128.load64_zero(sp + (<usize>g << 1))));
      const mv = finiteHalves4(i32x4.extend_low_i16x8_s(v128.load64_zero(mp + (<usize>g << 1))));
      const w = f32x4.mul(av, sv);
      v128.store(wt + go, w);
      v128.store(alpha + go, f32x4.max(v128.load(alpha + go), f32x4.abs(w)));
      v128.store(mt + go, f32x4.add(v128.load(mt + go), f32x4.mul(av, mv)));
    }
    for (; g < ng; g++) {
      const go = <usize>g << 2;
      const sv = f32x4.extract_lane(finiteHalves4(i32x4.splat(<i32>load<i16>(sp + (<usize>g << 1)))), 0);
      const mv = f32x4.extract_lane(finiteHalves4(i32x4.splat(<i32>load<i16>(mp + (<usize>g << 1)))), 0);
      const w = a * sv;
      store<f32>(wt + go, w);
      store<f32>(alpha + go, max(load<f32>(alpha + go), abs(w)));
      store<f32>(mt + go, load<f32>(mt + go) + a * mv);
    }
  }
  for (let g = 0; g < ng; g++) {
    const go = <usize>g << 2;
    const am = load<f32>(alpha + go);
    store<f32>(inv + go, am > 0 ? QMAX / am : 0);
    store<f32>(alpha + go, am / QMAX);
  }
  const pairs = (m + 1) >> 1;
  for (let pr = 0; pr < pairs; pr++) {
    const ta = wf + <usize>(2 * pr) * ngB;
    const hasB = 2 * pr + 1 < m;
    const dst = wi + <usize>pr * ngB;
    let g = 0;
    for (; g < vecG; g += 4) {
      const go = <usize>g << 2;
      const iv = v128.load(inv + go);
      const wa = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(ta + go), iv)));
      const wb = hasB ? i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(ta + ngB + go), iv))) : i32x4.splat(0);
      v128.store(dst + go, v128.or(v128.and(wa, i32x4.splat(0xffff)), i32x4.shl(wb, 16)));
    }
    for (; g < ng; g++) {
      const go = <usize>g << 2;
      const iv = load<f32>(inv + go);
      const wa = <i32>nearest<f32>(load<f32>(ta + go) * iv);
      const wb = hasB ? <i32>nearest<f32>(load<f32>(ta + ngB + go) * iv) : 0;
      store<i32>(dst + go, (wa & 0xffff) | (wb << 16));
    }
  }
}

/** Two tokens' 4 i16 lanes of one half unit, interleaved [a0 b0 a1 b1 a2 b2 a3 b3]. */
@inline function pairLanes(A: usize, B: usize): v128 {
  const x = v128.load64_lane(B, v128.load64_zero(A), 1);
  return i8x16.shuffle(x, x, 0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15);
}

/** Weights of a pair for the 4 lanes of a half unit: one group (splat) or one group per lane. */
@inline function pairWeights(wp: usize, g: usize, lanesG: usize, uniform: bool): v128 {
  if (uniform) return v128.load32_splat(wp + (g << 2));
  let w = v128.load32_zero(wp + (load<i32>(lanesG) << 2));
  w = v128.load32_lane(wp + (load<i32>(lanesG, 4) << 2), w, 1);
  w = v128.load32_lane(wp + (load<i32>(lanesG, 8) << 2), w, 2);
  return v128.load32_lane(wp + (load<i32>(lanesG, 12) << 2), w, 3);
}

@inline function dotw(y: v128, w: v128, acc: v128): v128 {
  return i32x4.add(acc, i32x4.dot_i16x8_s(y, w));
}

/**
 * Σ over pairs of (w_A·code_A + w_B·code_B) for the cpl planes of half unit h, m tokens from cb; the
 * int32 sums land in acc[plane][lane].
 */
@inline function halfUnitSums(cb: usize, tokB: usize, m: i32, h: i32, wi: usize, ngB: usize, g: usize,
  lanesG: usize, uniform: bool, bits: i32, acc: usize): void {
  const hb = cb + (<usize>h << 3);
  const pairs = (m + 1) >> 1;
  let a0 = i32x4.splat(0), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  for (let pr = 0; pr < pairs; pr++) {
    const A = hb + <usize>(2 * pr) * tokB;
    const X = pairLanes(A, 2 * pr + 1 < m ? A + tokB : A);
    const W = pairWeights(wi + <usize>pr * ngB, g, lanesG, uniform);
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
  v128.store(acc, a0); v128.store(acc, a1, 16);
  if (bits <= 4) { v128.store(acc, a2, 32); v128.store(acc, a3, 48); }
  if (bits == 2) { v128.store(acc, a4, 64); v128.store(acc, a5, 80); v128.store(acc, a6, 96); v128.store(acc, a7, 112); }
}

@inline function accumKivi(out: usize, p: usize, pStride: i32, nq: i32, codes: usize, scales: usize, mins: usize,
  n: i32, d: i32, bits: i32, G: i32, work: usize): void {
  const ng = d / G;
  const ngB = <usize>ng << 2;
  const cpl = 16 / bits;
  const hChan = 4 * cpl; // channels of one half unit
  const halves = (d + hChan - 1) / hChan;
  const tokB = <usize>(d * bits >> 5) << 2;
  const dB = <usize>d << 2;
  const wf = work;
  const wi = wf + align16(<usize>VCHUNK * ngB);
  const alpha = wi + align16(<usize>(VCHUNK >> 1) * ngB);
  const inv = alpha + align16(ngB);
  const mt = inv + align16(ngB);
  const acc = mt + align16(ngB);
  const lanesG = acc + 128;
  const uniform = G % hChan == 0;
  for (let j = 0; j < nq; j++) {
    const o = out + <usize>j * dB;
    const pj = p + (<usize>j * <usize>pStride << 2);
    for (let t0 = 0; t0 < n; t0 += VCHUNK) {
      const m = min(VCHUNK, n - t0);
      prepareWeights(pj + (<usize>t0 << 2), scales + <usize>t0 * (<usize>ng << 1), mins + <usize>t0 * (<usize>ng << 1),
        m, ng, wf, wi, alpha, inv, mt);
      const cb = codes + <usize>t0 * tokB;
      for (let h = 0; h < halves; h++) {
        const c0 = h * hChan;
        if (!uniform) for (let k = 0; k < 4; k++) store<i32>(lanesG + (<usize>k << 2), min(ng - 1, (c0 + k * cpl) / G));
        halfUnitSums(cb, tokB, m, h, wi, ngB, <usize>(c0 / G), lanesG, uniform, bits, acc);
        for (let k = 0; k < 4; k++) {
          const cb0 = c0 + k * cpl;
          for (let s = 0; s < cpl; s++) {
            const c = cb0 + s;
            if (c >= d) break;
            const sum = <f32>load<i32>(acc + (<usize>(s * 4 + k) << 2));
            const oc = o + (<usize>c << 2);
            store<f32>(oc, load<f32>(oc) + sum * load<f32>(alpha + (<usize>(c / G) << 2)));
          }
        }
      }
      for (let c = 0; c < d; c++) {
        const oc = o + (<usize>c << 2);
        store<f32>(oc, load<f32>(oc) + load<f32>(mt + (<usize>(c / G) << 2)));
      }
    }
  }
}

/**
 * out[j·d + c] += Σ_t p[j·pStride + t]·v̂_tc for t < n, values quantized per token: codes
 * [n][d·bits/32] words, float16 scales/mins [n][d/G].
 */
export function accum_kivi(out: usize, p: usize, pStride: i32, nq: i32, codes: usize, scales: usize, mins: usize,
  n: i32, d: i32, bits: i32, G: i32, work: usize): void {
  if (bits == 2) accumKivi(out, p, pStride, nq, codes, scales, mins, n, d, 2, G, work);
  else if (bits == 4) accumKivi(out, p, pStride, nq, codes, scales, mins, n, d, 4, G, work);
  else accumKivi(out, p, pStride, nq, codes, scales, mins, n, d, 8, G, work);
}
