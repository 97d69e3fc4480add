/**
 * The light per-row ops of a forward pass, bit for bit the TypeScript reference (kernels/ts/ops.ts),
 * which computes in float64 where it does: RMSNorm's sum of squares in float64 in order, 1/sqrt in
 * float64, then float32(w · float32(x · inv)); RoPE's x1·c − x2·s in float64 rounded once to float32;
 * add in float32. Over a range of rows (or elements), so threads can share one call.
 */
import { finiteHalf, finiteHalves4 } from './common';

/** Norm weights: float32, or bfloat16/float16 bits widened exactly. */
@inline function weight(w: usize, i: usize, kind: i32): f32 {
  if (kind == 0) return load<f32>(w + (i << 2));
  const h = <u32>load<u16>(w + (i << 1));
  if (kind == 1) return reinterpret<f32>(h << 16);
  // float16 (finite: the loader rejects ±Inf/NaN weights).
  return finiteHalf(<i32>h);
}

/** Weights i..i+3 as float32. */
@inline function weight4(w: usize, i: usize, kind: i32): v128 {
  if (kind == 0) return v128.load(w + (i << 2));
  const h = v128.load64_zero(w + (i << 1));
  if (kind == 1) return i32x4.shl(i32x4.extend_low_i16x8_u(h), 16);
  return finiteHalves4(i32x4.extend_low_i16x8_s(h));
}

/** out rows [r0, r1) = rmsnorm(x rows) ⊙ w, rows D floats apart (out may be x). wKind: 0 f32, 1 bf16, 2 f16. */
export function rmsnorm_rows(out: usize, x: usize, w: usize, wKind: i32, r0: i32, r1: i32, D: i32, eps: f64): void {
  const DB = <usize>D << 2;
  const vecB = DB & ~15;
  for (let r = r0; r < r1; r++) {
    const xr = x + <usize>r * DB, o = out + <usize>r * DB;
    let ss: f64 = 0;
    for (let i: usize = 0; i < DB; i += 4) {
      const v = <f64>load<f32>(xr + i);
      ss += v * v;
    }
    const inv: f64 = 1 / Math.sqrt(<f64>(<f32>(ss / <f64>D)) + eps);
    const iv = f64x2.splat(inv);
    let i: usize = 0;
    for (; i < vecB; i += 16) {
      const v = v128.load(xr + i);
      const lo = f32x4.demote_f64x2_zero(f64x2.mul(f64x2.promote_low_f32x4(v), iv));
      const hi = f32x4.demote_f64x2_zero(f64x2.mul(f64x2.promote_low_f32x4(v128.shuffle<f32>(v, v, 2, 3, 0, 1)), iv));
      v128.store(o + i, f32x4.mul(weight4(w, i >> 2, wKind), v128.shuffle<f32>(lo, hi, 0, 1, 4, 5)));
    }
    for (; i < DB; i += 4) {
      const t = <f32>(<f64>load<f32>(xr + i) * inv);
      store<f32>(o + i, weight(w, i >> 2, wKind) * t);
    }
  }
}

/**
 * Rotate-half RoPE in place on the first `heads` heads of rows [r0, r1) (rowStride floats apart): pairs
 * (i, i + d/2) by the angle of positions[r] (i32 at `positions`, indexed by row), cos/sin [pos][d/2].
 */
export function rope_rows(x: usize, r0: i32, r1: i32, rowStride: i32, heads: i32, d: i32, positions: usize, cos: usize, sin: usize): void {
  const halfB = <usize>(d >> 1) << 2;
  const vecB = halfB & ~15;
  const dB = <usize>d << 2;
  for (let r = r0; r < r1; r++) {
    const co = <usize>load<i32>(positions + (<usize>r << 2)) * halfB;
    const cp = cos + co, sp = sin + co;
    for (let h = 0; h < heads; h++) {
      const b = x + <usize>r * (<usize>rowStride << 2) + <usize>h * dB;
      let i: usize = 0;
      for (; i < vecB; i += 16) {
        const x1 = v128.load(b + i), x2 = v128.load(b + halfB + i);
        const c = v128.load(cp + i), s = v128.load(sp + i);
        v128.store(b + i, rot(x1, c, x2, s, true));
        v128.store(b + halfB + i, rot(x2, c, x1, s, false));
      }
      for (; i < halfB; i += 4) {
        const x1 = <f64>load<f32>(b + i), x2 = <f64>load<f32>(b + halfB + i);
        const c = <f64>load<f32>(cp + i), s = <f64>load<f32>(sp + i);
        store<f32>(b + i, <f32>(x1 * c - x2 * s));
        store<f32>(b + halfB + i, <f32>(x2 * c + x1 * s));
      }
    }
  }
}

/** float32(a·c − b·s) (sub) or float32(a·c + b·s), each in float64, for 4 lanes. */
@inline function rot(a: v128, c: v128, b: v128, s: v128, sub: bool): v128 {
  const aH = v128.shuffle<f32>(a, a, 2, 3, 0, 1), cH = v128.shuffle<f32>(c, c, 2, 3, 0, 1);
  const bH = v128.shuffle<f32>(b, b, 2, 3, 0, 1), sH = v128.shuffle<f32>(s, s, 2, 3, 0, 1);
  const p = f64x2.mul(f64x2.promote_low_f32x4(a), f64x2.promote_low_f32x4(c));
  const q = f64x2.mul(f64x2.promote_low_f32x4(b), f64x2.promote_low_f32x4(s));
  const pH = f64x2.mul(f64x2.promote_low_f32x4(aH), f64x2.promote_low_f32x4(cH));
  const qH = f64x2.mul(f64x2.promote_low_f32x4(bH), f64x2.promote_low_f32x4(sH));
  const lo = f32x4.demote_f64x2_zero(sub ? f64x2.sub(p, q) : f64x2.add(p, q));
  const hi = f32x4.demote_f64x2_zero(sub ? f64x2.sub(pH, qH) : f64x2.add(pH, qH));
  return v128.shuffle<f32>(lo, hi, 0, 1, 4, 5);
}

/** x[i] += y[i] for i in [i0, i1). */
export function add_range(x: usize, y: usize, i0: i32, i1: i32): void {
  let p = x + (<usize>i0 << 2), q = y + (<usize>i0 << 2);
  const end = x + (<usize>i1 << 2);
  for (; p + 16 <= end; p += 16, q += 16) v128.store(p, f32x4.add(v128.load(p), v128.load(q)));
  for (; p < end; p += 4, q += 4) store<f32>(p, load<f32>(p) + load<f32>(q));
}
