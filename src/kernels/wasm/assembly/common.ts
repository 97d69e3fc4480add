/** Helpers shared by the kernels: horizontal sums with one fixed order, float16 → float32, rounding. */

/** (v0 + v2) + (v1 + v3): the one order every kernel uses to finish a 4-lane dot product. */
@inline export function hsum(v: v128): f32 {
  return (f32x4.extract_lane(v, 0) + f32x4.extract_lane(v, 2)) + (f32x4.extract_lane(v, 1) + f32x4.extract_lane(v, 3));
}

/** [hsum(a), hsum(b), hsum(c), hsum(d)], each in hsum's order. */
@inline export function hsum4(a: v128, b: v128, c: v128, d: v128): v128 {
  const x = f32x4.add(v128.shuffle<f32>(a, b, 0, 1, 4, 5), v128.shuffle<f32>(a, b, 2, 3, 6, 7));
  const y = f32x4.add(v128.shuffle<f32>(c, d, 0, 1, 4, 5), v128.shuffle<f32>(c, d, 2, 3, 6, 7));
  return f32x4.add(v128.shuffle<f32>(x, y, 0, 2, 4, 6), v128.shuffle<f32>(x, y, 1, 3, 5, 7));
}

// 2^112: moves a float16 exponent (bias 15) to float32's (bias 127); subnormal halves come out exact.
const HALF_TO_FLOAT: f32 = 5.192296858534828e33;

/**
 * Four float16 values (sign-extended into i32 lanes) → float32, exact for every finite value
 * (subnormals included): the 15 magnitude bits moved into place, times 2^112. ±Inf/NaN are not handled.
 */
@inline export function finiteHalves4(v: v128): v128 {
  const mag = v128.and(i32x4.shl(v, 13), i32x4.splat(0x0fffe000));
  return v128.or(f32x4.mul(mag, f32x4.splat(HALF_TO_FLOAT)), v128.and(v, i32x4.splat(0x80000000)));
}

/** One float16 value (its bits, sign-extended or not) → float32, finiteHalves4's conversion on one lane. */
@inline export function finiteHalf(h: i32): f32 {
  return f32x4.extract_lane(finiteHalves4(i32x4.splat(<i32>(<i16>h))), 0);
}

/** Four non-negative float16 values (zero-extended into i32 lanes) → float32, exact when finite. */
@inline export function positiveHalves4(v: v128): v128 {
  return f32x4.mul(i32x4.shl(v, 13), f32x4.splat(HALF_TO_FLOAT));
}

// 1.5·2^23: adding it rounds a float to an integer (ties to even) in the low mantissa bits.
const ROUNDER: f32 = 12582912.0;
const ROUNDER_BITS = 0x4b400000;

/** round-half-even(x) as i32 lanes, for |x| < 2^22 (one add and one subtract, unlike nearest + trunc_sat). */
@inline export function roundToInt(x: v128): v128 {
  return i32x4.sub(f32x4.add(x, f32x4.splat(ROUNDER)), i32x4.splat(ROUNDER_BITS));
}

@inline export function roundToIntScalar(x: f32): i32 {
  return reinterpret<i32>(x + ROUNDER) - ROUNDER_BITS;
}

/** Largest lane (pseudo-max: no NaN handling, one instruction per step). */
@inline export function hmax(v: v128): f32 {
  const m = f32x4.pmax(v, v128.shuffle<f32>(v, v, 2, 3, 0, 1));
  return max(f32x4.extract_lane(m, 0), f32x4.extract_lane(m, 1));
}

/** Zero `bytes` (a multiple of 16) at p. */
@inline export function zero16(p: usize, bytes: usize): void {
  const z = i32x4.splat(0);
  for (let e = p + bytes; p < e; p += 16) v128.store(p, z);
}

/** Keeps the sweeps' loads alive (an optimizer may drop loads whose result is unused). */
let touchSink: i32 = 0;

/**
 * Read one word per 64-byte line of [p, p + bytes): the misses of a short run of cache pages (a KIVI
 * section is a few KiB) then overlap instead of each waiting for the kernel's loop to reach it (the
 * hardware prefetcher restarts at every page boundary).
 */
@inline export function touch(p: usize, bytes: usize): void {
  let acc: i32 = 0;
  for (let a = p, e = p + bytes; a < e; a += 64) acc |= load<i32>(a);
  touchSink |= acc;
}
