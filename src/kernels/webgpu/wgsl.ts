/**
 * WGSL shared by the kernels: 16-bit conversions done in integer arithmetic (exact, subnormals included,
 * so results match quant/float16.ts bit for bit whatever the driver does with denormals), a correctly
 * rounded float32 division (WGSL's `/` may be off by 2.5 ulp, which would move quantization codes), and
 * round-half-to-even. No `shader-f16`: 16-bit data lives in u32 words, element i in half (i & 1).
 */

/** f16/bf16 bits → f32, and f32 → f16/bf16 bits (round to nearest, ties to even). */
export const CONVERT = /* wgsl */ `
fn f16_to_f32(h: u32) -> f32 {
  let sgn = (h & 0x8000u) << 16u;
  let e = (h >> 10u) & 0x1fu;
  let m = h & 0x3ffu;
  if (e == 0u) {
    let v = f32(m) * 5.9604644775390625e-8;
    return select(v, -v, sgn != 0u);
  }
  if (e == 31u) { return bitcast<f32>(sgn | 0x7f800000u | (m << 13u)); }
  return bitcast<f32>(sgn | ((e + 112u) << 23u) | (m << 13u));
}

fn bf16_to_f32(h: u32) -> f32 {
  return bitcast<f32>(h << 16u);
}

// quant/float16.ts toHalfBits, word for word.
fn f32_to_f16(x: f32) -> u32 {
  let b = bitcast<u32>(x);
  let sgn = (b >> 16u) & 0x8000u;
  let ex = (b >> 23u) & 0xffu;
  let mant = b & 0x7fffffu;
  if (ex == 0xffu) { return sgn | 0x7c00u | select(0u, 0x200u, mant != 0u); }
  let e = i32(ex) - 112;
  if (e >= 31) { return sgn | 0x7c00u; }
  if (e <= 0) {
    if (e < -10) { return sgn; }
    let m = mant | 0x800000u;
    let sh = u32(14 - e);
    var h = m >> sh;
    let rem = m & ((1u << sh) - 1u);
    let half = 1u << (sh - 1u);
    if (rem > half || (rem == half && (h & 1u) != 0u)) { h += 1u; }
    return sgn | h;
  }
  var h = (u32(e) << 10u) | (mant >> 13u);
  let rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u) != 0u)) { h += 1u; }
  return sgn | h;
}

fn f32_to_bf16(x: f32) -> u32 {
  let u = bitcast<u32>(x);
  return (u + 0x7fffu + ((u >> 16u) & 1u)) >> 16u;
}

// Element i of a 16-bit array held as u32 words.
fn half_of(word: u32, i: u32) -> u32 {
  return select(word & 0xffffu, word >> 16u, (i & 1u) != 0u);
}
`;

/**
 * div_rn(a, b): a / b correctly rounded (binary32, ties to even) for finite a and finite b > 0, by
 * restoring division of the 24-bit significands. Results below 2^-126 flush to ±0: the quantizer only
 * divides where such a result rounds to code 0 or to a float16 scale of 0 anyway.
 * rhe(v): round half to even to an integer (|v| < 2^23).
 */
export const DIVIDE = /* wgsl */ `
fn div_rn(a: f32, b: f32) -> f32 {
  let ab = bitcast<u32>(a);
  let sgn = ab & 0x80000000u;
  var ma = ab & 0x7fffffu;
  var ea = i32((ab >> 23u) & 0xffu);
  if (ea == 0) {
    if (ma == 0u) { return bitcast<f32>(sgn); }
    let lz = 23 - i32(firstLeadingBit(ma));
    ma = (ma << u32(lz)) & 0x7fffffu;
    ea = 1 - lz;
  }
  ma = ma | 0x800000u;
  let bb = bitcast<u32>(b);
  var mb = bb & 0x7fffffu;
  var eb = i32((bb >> 23u) & 0xffu);
  if (eb == 0) {
    let lz = 23 - i32(firstLeadingBit(mb));
    mb = (mb << u32(lz)) & 0x7fffffu;
    eb = 1 - lz;
  }
  mb = mb | 0x800000u;
  var e = ea - eb + 127;
  var r = ma;
  if (r < mb) { r = r << 1u; e = e - 1; }
  var q = 0u;
  for (var i = 0; i < 25; i++) {
    q = q << 1u;
    if (r >= mb) { r = r - mb; q = q | 1u; }
    r = r << 1u;
  }
  var m = q >> 1u;
  if ((q & 1u) != 0u && (r != 0u || (m & 1u) != 0u)) { m = m + 1u; }
  if (m == 0x1000000u) { m = 0x800000u; e = e + 1; }
  if (e <= 0) { return bitcast<f32>(sgn); }
  if (e >= 255) { return bitcast<f32>(sgn | 0x7f800000u); }
  return bitcast<f32>(sgn | (u32(e) << 23u) | (m & 0x7fffffu));
}

fn rhe(v: f32) -> f32 {
  let f = floor(v);
  let d = v - f;
  if (d > 0.5 || (d == 0.5 && (i32(f) & 1) != 0)) { return f + 1.0; }
  return f;
}
`;

/** The linear index of a workgroup in a grid of up to 65535 × 65535 (see grid()). */
export const GRID = /* wgsl */ `
// Infinities built at run time (a constant expression may not be infinite).
var<private> INF_BITS: u32 = 0x7f800000u;
fn pos_inf() -> f32 { return bitcast<f32>(INF_BITS); }
fn neg_inf() -> f32 { return bitcast<f32>(INF_BITS | 0x80000000u); }
fn wg_index(w: vec3<u32>, n: vec3<u32>) -> u32 {
  return w.x + w.y * n.x;
}
`;

/** The 2D grid of workgroups for `count` workgroups (65535 per dimension). */
export function grid(count: number): [number, number] {
  if (count <= 65535) return [Math.max(1, count), 1];
  const y = Math.ceil(count / 65535);
  return [Math.ceil(count / y), y];
}

/** A WGSL literal for a float (always with a decimal point or exponent). */
export function f32lit(x: number): string {
  if (!Number.isFinite(x)) throw new Error(`f32lit: ${x}`);
  const s = String(Math.fround(x));
  return /[.eE]/.test(s) ? s : `${s}.0`;
}
