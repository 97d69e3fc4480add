/**
 * Attention on full-precision keys and values, float32 or float16 (converted in-kernel), grouped-query
 * aware: the nq query heads of one kv head share every key/value load.
 *
 * Scores: s[j·sStride + t] = scale·(q_j · k_t); each dot is one f32x4 accumulator over channels in steps
 * of 4, finished by hsum, then the d % 4 tail; float16 keys give exactly the float32 result on the
 * converted keys. Tiles: 4 tokens × 2 heads.
 * float16 is converted exactly for every finite value (subnormals included) with a shift and a
 * power-of-two multiply; ±Inf/NaN entries (a value that overflowed float16 when stored) are not
 * special-cased: the attention output is meaningless then anyway.
 * Accumulation: out[j·d + c] += Σ_t p[j·pStride + t]·v[t·d + c], in token order, for blocks of tokens
 * small enough to stay in L1 while 16 channels × 2 heads of the output live in registers.
 */
import { finiteHalf, finiteHalves4, hsum, hsum4 } from './common';

const TOKEN_BLOCK = 64;

/** Keeps the prefetch sweep's loads alive (an optimizer may drop loads whose result is unused). */
let sink: i32 = 0;

@inline function halfScalar(p: usize): f32 {
  return finiteHalf(<i32>load<i16>(p));
}

// ---- scores -------------------------------------------------------------------------------------

/** One key chunk of 4 channels at byte c as float32, from float32 or float16 storage. */
@inline function key4(k: usize, c: usize, half: bool): v128 {
  return half ? finiteHalves4(i32x4.extend_low_i16x8_s(v128.load64_zero(k + (c >> 1)))) : v128.load(k + c);
}

@inline function keyAt(k: usize, c: usize, half: bool): f32 {
  return half ? halfScalar(k + (c >> 1)) : load<f32>(k + c);
}

/** Scalar tail (channels from byte vecEnd) of one dot product. */
@inline function tailDot(q: usize, k: usize, vecEnd: usize, dB: usize, half: bool): f32 {
  let s: f32 = 0;
  for (let c = vecEnd; c < dB; c += 4) s += load<f32>(q + c) * keyAt(k, c, half);
  return s;
}

@inline function tail4(q: usize, k: usize, kB: usize, vecEnd: usize, dB: usize, half: bool): v128 {
  let v = f32x4.splat(0);
  v = f32x4.replace_lane(v, 0, tailDot(q, k, vecEnd, dB, half));
  v = f32x4.replace_lane(v, 1, tailDot(q, k + kB, vecEnd, dB, half));
  v = f32x4.replace_lane(v, 2, tailDot(q, k + 2 * kB, vecEnd, dB, half));
  v = f32x4.replace_lane(v, 3, tailDot(q, k + 3 * kB, vecEnd, dB, half));
  return v;
}

@inline function scoresImpl(s: usize, sStride: i32, q: usize, nq: i32, k: usize, kRow: i32, n: i32, d: i32, scale: f32, half: bool): void {
  const dB = <usize>d << 2;               // bytes of one float32 row
  const kB = <usize>kRow;                 // bytes from one key row to the next
  const vecEnd = dB & ~15;
  const hasTail = vecEnd < dB;
  const sB = <usize>sStride << 2;
  const sc = f32x4.splat(scale);
  let j = 0;
  for (; j + 2 <= nq; j += 2) {
    const q0 = q + <usize>j * dB, q1 = q0 + dB;
    const s0 = s + <usize>j * sB, s1 = s0 + sB;
    let t = 0;
    for (; t + 4 <= n; t += 4) {
      const k0 = k + <usize>t * kB, k1 = k0 + kB, k2 = k1 + kB, k3 = k2 + kB;
      let a0 = f32x4.splat(0), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
      for (let c: usize = 0; c < vecEnd; c += 16) {
        const x = v128.load(q0 + c), y = v128.load(q1 + c);
        let kk = key4(k0, c, half);
        a0 = f32x4.add(a0, f32x4.mul(kk, x)); b0 = f32x4.add(b0, f32x4.mul(kk, y));
        kk = key4(k1, c, half);
        a1 = f32x4.add(a1, f32x4.mul(kk, x)); b1 = f32x4.add(b1, f32x4.mul(kk, y));
        kk = key4(k2, c, half);
        a2 = f32x4.add(a2, f32x4.mul(kk, x)); b2 = f32x4.add(b2, f32x4.mul(kk, y));
        kk = key4(k3, c, half);
        a3 = f32x4.add(a3, f32x4.mul(kk, x)); b3 = f32x4.add(b3, f32x4.mul(kk, y));
      }
      let r0 = hsum4(a0, a1, a2, a3), r1 = hsum4(b0, b1, b2, b3);
      if (hasTail) {
        r0 = f32x4.add(r0, tail4(q0, k0, kB, vecEnd, dB, half));
        r1 = f32x4.add(r1, tail4(q1, k0, kB, vecEnd, dB, half));
      }
      v128.store(s0 + (<usize>t << 2), f32x4.mul(r0, sc));
      v128.store(s1 + (<usize>t << 2), f32x4.mul(r1, sc));
    }
    for (; t < n; t++) {
      const k0 = k + <usize>t * kB;
      let a = f32x4.splat(0), b = a;
      for (let c: usize = 0; c < vecEnd; c += 16) {
        const kk = key4(k0, c, half);
        a = f32x4.add(a, f32x4.mul(kk, v128.load(q0 + c)));
        b = f32x4.add(b, f32x4.mul(kk, v128.load(q1 + c)));
      }
      let ra = hsum(a), rb = hsum(b);
      if (hasTail) {
        ra += tailDot(q0, k0, vecEnd, dB, half);
        rb += tailDot(q1, k0, vecEnd, dB, half);
      }
      store<f32>(s0 + (<usize>t << 2), ra * scale);
      store<f32>(s1 + (<usize>t << 2), rb * scale);
    }
  }
  if (j < nq) {
    const q0 = q + <usize>j * dB;
    const s0 = s + <usize>j * sB;
    let t = 0;
    for (; t + 4 <= n; t += 4) {
      const k0 = k + <usize>t * kB, k1 = k0 + kB, k2 = k1 + kB, k3 = k2 + kB;
      let a0 = f32x4.splat(0), a1 = a0, a2 = a0, a3 = a0;
      for (let c: usize = 0; c < vecEnd; c += 16) {
        const x = v128.load(q0 + c);
        a0 = f32x4.add(a0, f32x4.mul(key4(k0, c, half), x));
        a1 = f32x4.add(a1, f32x4.mul(key4(k1, c, half), x));
        a2 = f32x4.add(a2, f32x4.mul(key4(k2, c, half), x));
        a3 = f32x4.add(a3, f32x4.mul(key4(k3, c, half), x));
      }
      let r0 = hsum4(a0, a1, a2, a3);
      if (hasTail) r0 = f32x4.add(r0, tail4(q0, k0, kB, vecEnd, dB, half));
      v128.store(s0 + (<usize>t << 2), f32x4.mul(r0, sc));
    }
    for (; t < n; t++) {
      const k0 = k + <usize>t * kB;
      let a = f32x4.splat(0);
      for (let c: usize = 0; c < vecEnd; c += 16) a = f32x4.add(a, f32x4.mul(key4(k0, c, half), v128.load(q0 + c)));
      let r = hsum(a);
      if (hasTail) r += tailDot(q0, k0, vecEnd, dB, half);
      store<f32>(s0 + (<usize>t << 2), r * scale);
    }
  }
}

/** Scores against n float32 key rows, kRow bytes apart (d·4 in a page; a qkv row's length for new tokens). */
export function scores_f32(s: usize, sStride: i32, q: usize, nq: i32, k: usize, kRow: i32, n: i32, d: i32, scale: f32): void {
  scoresImpl(s, sStride, q, nq, k, kRow, n, d, scale, false);
}

export function scores_f16(s: usize, sStride: i32, q: usize, nq: i32, k: usize, kRow: i32, n: i32, d: i32, scale: f32): void {
  scoresImpl(s, sStride, q, nq, k, kRow, n, d, scale, true);
}

// ---- weighted sum of values ---------------------------------------------------------------------

@inline function val4(v: usize, c: usize, half: bool): v128 {
  return half ? finiteHalves4(i32x4.extend_low_i16x8_s(v128.load64_zero(v + (c >> 1)))) : v128.load(v + c);
}

@inline function accumImpl(out: usize, p: usize, pStride: i32, nq: i32, v: usize, vRow: i32, n: i32, d: i32, half: bool): void {
  const dB = <usize>d << 2;
  const vB = <usize>vRow;
  const pB = <usize>pStride << 2;
  const end16 = dB & ~63, end4 = dB & ~15;
  let touched = i32x4.splat(0);
  for (let t0 = 0; t0 < n; t0 += TOKEN_BLOCK) {
    const t1 = min(n, t0 + TOKEN_BLOCK);
    // The channel passes below read the block column by column (stride vB); one sequential sweep first
    // brings it in line by line, which memory streams much better than strided misses.
    for (let a = v + <usize>t0 * vB, e = v + <usize>t1 * vB; a < e; a += 64) touched = v128.or(touched, v128.load(a));
    let j = 0;
    for (; j + 2 <= nq; j += 2) {
      const o0 = out + <usize>j * dB, o1 = o0 + dB;
      const p0 = p + <usize>j * pB, p1 = p0 + pB;
      let c: usize = 0;
      for (; c < end16; c += 64) {
        let a0 = v128.load(o0 + c), a1 = v128.load(o0 + c, 16), a2 = v128.load(o0 + c, 32), a3 = v128.load(o0 + c, 48);
        let b0 = v128.load(o1 + c), b1 = v128.load(o1 + c, 16), b2 = v128.load(o1 + c, 32), b3 = v128.load(o1 + c, 48);
        for (let t = t0; t < t1; t++) {
          const x = v128.load32_splat(p0 + (<usize>t << 2)), y = v128.load32_splat(p1 + (<usize>t << 2));
          const vt = v + <usize>t * vB;
          let e = val4(vt, c, half);
          a0 = f32x4.add(a0, f32x4.mul(x, e)); b0 = f32x4.add(b0, f32x4.mul(y, e));
          e = val4(vt, c + 16, half);
          a1 = f32x4.add(a1, f32x4.mul(x, e)); b1 = f32x4.add(b1, f32x4.mul(y, e));
          e = val4(vt, c + 32, half);
          a2 = f32x4.add(a2, f32x4.mul(x, e)); b2 = f32x4.add(b2, f32x4.mul(y, e));
          e = val4(vt, c + 48, half);
          a3 = f32x4.add(a3, f32x4.mul(x, e)); b3 = f32x4.add(b3, f32x4.mul(y, e));
        }
        v128.store(o0 + c, a0); v128.store(o0 + c, a1, 16); v128.store(o0 + c, a2, 32); v128.store(o0 + c, a3, 48);
        v128.store(o1 + c, b0); v128.store(o1 + c, b1, 16); v128.store(o1 + c, b2, 32); v128.store(o1 + c, b3, 48);
      }
      for (; c < end4; c += 16) {
        let a = v128.load(o0 + c), b = v128.load(o1 + c);
        for (let t = t0; t < t1; t++) {
          const e = val4(v + <usize>t * vB, c, half);
          a = f32x4.add(a, f32x4.mul(v128.load32_splat(p0 + (<usize>t << 2)), e));
          b = f32x4.add(b, f32x4.mul(v128.load32_splat(p1 + (<usize>t << 2)), e));
        }
        v128.store(o0 + c, a); v128.store(o1 + c, b);
      }
      for (; c < dB; c += 4) accumScalar(o0, o1, p0, p1, v, vB, c, t0, t1, half);
    }
    if (j < nq) {
      const o0 = out + <usize>j * dB;
      const p0 = p + <usize>j * pB;
      let c: usize = 0;
      for (; c < end16; c += 64) {
        let a0 = v128.load(o0 + c), a1 = v128.load(o0 + c, 16), a2 = v128.load(o0 + c, 32), a3 = v128.load(o0 + c, 48);
        for (let t = t0; t < t1; t++) {
          const x = v128.load32_splat(p0 + (<usize>t << 2));
          const vt = v + <usize>t * vB;
          a0 = f32x4.add(a0, f32x4.mul(x, val4(vt, c, half)));
          a1 = f32x4.add(a1, f32x4.mul(x, val4(vt, c + 16, half)));
          a2 = f32x4.add(a2, f32x4.mul(x, val4(vt, c + 32, half)));
          a3 = f32x4.add(a3, f32x4.mul(x, val4(vt, c + 48, half)));
        }
        v128.store(o0 + c, a0); v128.store(o0 + c, a1, 16); v128.store(o0 + c, a2, 32); v128.store(o0 + c, a3, 48);
      }
      for (; c < end4; c += 16) {
        let a = v128.load(o0 + c);
        for (let t = t0; t < t1; t++) a = f32x4.add(a, f32x4.mul(v128.load32_splat(p0 + (<usize>t << 2)), val4(v + <usize>t * vB, c, half)));
        v128.store(o0 + c, a);
      }
      for (; c < dB; c += 4) accumScalar(o0, o0, p0, p0, v, vB, c, t0, t1, half);
    }
  }
  sink |= i32x4.extract_lane(touched, 0);
}

/** One channel (byte c) of one or two heads over tokens t0..t1 (the d % 4 tail). */
@inline function accumScalar(o0: usize, o1: usize, p0: usize, p1: usize, v: usize, vB: usize, c: usize, t0: i32, t1: i32, half: bool): void {
  let a = load<f32>(o0 + c), b = load<f32>(o1 + c);
  for (let t = t0; t < t1; t++) {
    const e = half ? halfScalar(v + <usize>t * vB + (c >> 1)) : load<f32>(v + <usize>t * vB + c);
    a += load<f32>(p0 + (<usize>t << 2)) * e;
    b += load<f32>(p1 + (<usize>t << 2)) * e;
  }
  store<f32>(o0 + c, a);
  if (o1 != o0) store<f32>(o1 + c, b);
}

/** Weighted sum of n float32 value rows, vRow bytes apart. */
export function accum_f32(out: usize, p: usize, pStride: i32, nq: i32, v: usize, vRow: i32, n: i32, d: i32): void {
  accumImpl(out, p, pStride, nq, v, vRow, n, d, false);
}

export function accum_f16(out: usize, p: usize, pStride: i32, nq: i32, v: usize, vRow: i32, n: i32, d: i32): void {
  accumImpl(out, p, pStride, nq, v, vRow, n, d, true);
}
