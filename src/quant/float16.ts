/**
 * IEEE binary16 conversion. Node 20 has no Math.f16round, and KIVI stores every scale and minimum as
 * float16 (round to nearest, ties to even, subnormals included), so the rounding must be exact.
 */
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** float → binary16 bits, round-to-nearest-even; overflow → ±Inf; NaN stays NaN. */
export function toHalfBits(x: number): number {
  f32[0] = x;
  const bits = u32[0]!;
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  const mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 : 0);
  const e = exp - 112; // re-biased exponent (127 → 15)
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // Result is subnormal (or zero): shift the 24-bit significand down to units of 2^-24.
    if (e < -10) return sign;
    const m = mant | 0x800000;
    const shift = 14 - e;
    let h = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (h & 1) !== 0)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) !== 0)) h++; // a carry may reach Inf: still correct
  return sign | h;
}

/** binary16 bits → float (exact). */
export function fromHalfBits(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant !== 0 ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** Round a number to the nearest float16 value, returned as a number. */
export function f16round(x: number): number {
  return fromHalfBits(toHalfBits(x));
}

let table: Float32Array | undefined;
/** All 65536 float16 values as float32, for hot loops that read float16 storage. */
export function halfTable(): Float32Array {
  if (!table) {
    table = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) table[i] = fromHalfBits(i);
  }
  return table;
}

/** Copy floats into float16 storage. */
export function encodeHalf(src: ArrayLike<number>, dst: Uint16Array, dstOffset = 0): void {
  for (let i = 0; i < src.length; i++) dst[dstOffset + i] = toHalfBits(src[i]!);
}
