/**
 * JOB_ROTATE (`rot=hadamard`, kernels/layout.ts): the orthonormal Walsh–Hadamard transform of every query
 * head and key head of a run of qkv rows, in place, in src/quant/hadamard.ts's order of operations
 * (stages h = 1, 2, …, d/2 of (a, b) → (a + b, a − b), then × scale), so the result is the reference's
 * bit for bit: SIMD lanes do the same float32 operations. Stages 1 and 2 pair lanes of one vector
 * (shuffles); from 4 on, whole vectors pair up.
 */

/**
 * `rows` rows from byte address x, `stride` floats apart; in each, `heads` head vectors of d floats from
 * its start. d is a power of two; scale = fround(1/√d).
 */
export function fwht_rows(x: usize, rows: i32, heads: i32, stride: i32, d: i32, scale: f32): void {
  for (let r = 0; r < rows; r++) {
    for (let h = 0; h < heads; h++) {
      const p = x + (<usize>(r * stride + h * d) << 2);
      if (d < 4) fwhtScalar(p, d, scale);
      else fwht4(p, d, scale);
    }
  }
}

function fwht4(p: usize, d: i32, scale: f32): void {
  const end = p + (<usize>d << 2);
  // h = 1: lanes (0, 1) and (2, 3) pair; h = 2: lanes (0, 2) and (1, 3).
  for (let q = p; q < end; q += 16) {
    const v = v128.load(q);
    let lo = v128.shuffle<f32>(v, v, 0, 0, 2, 2);
    let hi = v128.shuffle<f32>(v, v, 1, 1, 3, 3);
    const w = v128.shuffle<f32>(f32x4.add(lo, hi), f32x4.sub(lo, hi), 0, 5, 2, 7);
    lo = v128.shuffle<f32>(w, w, 0, 1, 0, 1);
    hi = v128.shuffle<f32>(w, w, 2, 3, 2, 3);
    v128.store(q, v128.shuffle<f32>(f32x4.add(lo, hi), f32x4.sub(lo, hi), 0, 1, 4, 5));
  }
  for (let h = 4; h < d; h <<= 1) {
    const hb = <usize>h << 2;
    for (let b = p; b < end; b += hb << 1) {
      for (let q = b; q < b + hb; q += 16) {
        const a = v128.load(q);
        const c = v128.load(q + hb);
        v128.store(q, f32x4.add(a, c));
        v128.store(q + hb, f32x4.sub(a, c));
      }
    }
  }
  const s = f32x4.splat(scale);
  for (let q = p; q < end; q += 16) v128.store(q, f32x4.mul(v128.load(q), s));
}

function fwhtScalar(p: usize, d: i32, scale: f32): void {
  for (let h = 1; h < d; h <<= 1) {
    for (let i = 0; i < d; i += h << 1) {
      for (let j = i; j < i + h; j++) {
        const a = load<f32>(p + (<usize>j << 2));
        const b = load<f32>(p + (<usize>(j + h) << 2));
        store<f32>(p + (<usize>j << 2), a + b);
        store<f32>(p + (<usize>(j + h) << 2), a - b);
      }
    }
  }
  for (let i = 0; i < d; i++) store<f32>(p + (<usize>i << 2), load<f32>(p + (<usize>i << 2)) * scale);
}
