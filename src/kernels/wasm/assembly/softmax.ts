/** Softmax and SiLU gating with a vectorized exp (Cephes expf: |rel. error| ≲ 2 ulp). */
import { hmax, hsum, roundToInt } from './common';

@inline export function exp4(x: v128): v128 {
  // Inputs below −87.3 clamp to e^−87.3 ≈ 1.2e−38 (softmax arguments are ≤ 0; the difference is nil).
  x = f32x4.pmin(f32x4.pmax(x, f32x4.splat(-87.33654)), f32x4.splat(88.37626));
  const ni = roundToInt(f32x4.mul(x, f32x4.splat(1.44269504088896341)));
  const n = f32x4.convert_i32x4_s(ni);
  // r = x − n·ln2 in two steps (Cody–Waite) so r is exact enough.
  let r = f32x4.sub(x, f32x4.mul(n, f32x4.splat(0.693359375)));
  r = f32x4.add(r, f32x4.mul(n, f32x4.splat(2.12194440e-4)));
  let y = f32x4.splat(1.9875691500e-4);
  y = f32x4.add(f32x4.mul(y, r), f32x4.splat(1.3981999507e-3));
  y = f32x4.add(f32x4.mul(y, r), f32x4.splat(8.3334519073e-3));
  y = f32x4.add(f32x4.mul(y, r), f32x4.splat(4.1665795894e-2));
  y = f32x4.add(f32x4.mul(y, r), f32x4.splat(1.6666665459e-1));
  y = f32x4.add(f32x4.mul(y, r), f32x4.splat(5.0000001201e-1));
  y = f32x4.add(f32x4.add(f32x4.mul(y, f32x4.mul(r, r)), r), f32x4.splat(1));
  const pow2 = i32x4.shl(i32x4.add(ni, i32x4.splat(127)), 23);
  return f32x4.mul(y, pow2);
}

@inline function exp1(x: f32): f32 {
  return f32x4.extract_lane(exp4(f32x4.splat(x)), 0);
}

/** The largest of n floats at row. */
@inline function rowMax(row: usize, n: i32): f32 {
  const end = row + (<usize>n << 2);
  const vecEnd = row + ((<usize>n << 2) & ~15);
  let mv = f32x4.splat(-Infinity);
  let p = row;
  for (; p < vecEnd; p += 16) mv = f32x4.pmax(mv, v128.load(p));
  let m = hmax(mv);
  for (; p < end; p += 4) m = max(m, load<f32>(p));
  return m;
}

/** Replace each of n floats x at row by e^(x − m) in place; returns their sum. */
@inline function expInPlace(row: usize, n: i32, m: f32): f32 {
  const end = row + (<usize>n << 2);
  const vecEnd = row + ((<usize>n << 2) & ~15);
  const mm = f32x4.splat(m);
  let sv = f32x4.splat(0);
  let p = row;
  for (; p < vecEnd; p += 16) {
    const e = exp4(f32x4.sub(v128.load(p), mm));
    v128.store(p, e);
    sv = f32x4.add(sv, e);
  }
  let sum = hsum(sv);
  for (; p < end; p += 4) {
    const e = exp1(load<f32>(p) - m);
    store<f32>(p, e);
    sum += e;
  }
  return sum;
}

export function softmax(row: usize, n: i32): void {
  const end = row + (<usize>n << 2);
  const vecEnd = row + ((<usize>n << 2) & ~15);
  const sum = expInPlace(row, n, rowMax(row, n));
  const inv: f32 = 1 / sum;
  const iv = f32x4.splat(inv);
  let p = row;
  for (; p < vecEnd; p += 16) v128.store(p, f32x4.mul(v128.load(p), iv));
  for (; p < end; p += 4) store<f32>(p, load<f32>(p) * inv);
}

/** act[r·I + i] = silu(g)·u with g = gu[r·2I + i], u = gu[r·2I + I + i] (the MLP's gate | up halves). */
export function swiglu(act: usize, gu: usize, rows: i32, I: i32): void {
  const IB = <usize>I << 2;
  const vecB = IB & ~15;
  for (let r = 0; r < rows; r++) {
    const g = gu + <usize>r * (IB << 1), u = g + IB, a = act + <usize>r * IB;
    let i: usize = 0;
    for (; i < vecB; i += 16) {
      const x = v128.load(g + i);
      const e = exp4(f32x4.neg(x));
      v128.store(a + i, f32x4.mul(f32x4.div(x, f32x4.add(f32x4.splat(1), e)), v128.load(u + i)));
    }
    for (; i < IB; i += 4) {
      const x = load<f32>(g + i);
      store<f32>(a + i, x / (1 + exp1(-x)) * load<f32>(u + i));
    }
  }
}

/**
 * Online softmax over one chunk of scores (rows j·sStride, m of them per query head): with M_j the
 * running maximum and L_j the running sum (at runMax/runSum), a chunk that raises the maximum rescales
 * L_j and the head's output so far (out[j·d …], d floats) by e^(M_old − M_new); the scores become
 * e^(s − M_j) in place and their sum is added to L_j. The weights stay unnormalized (the caller divides
 * the output by L_j at the end), so a weight is at most 1 and the largest of a chunk is its own e^0
 * only when the chunk holds the maximum so far.
 */
export function online_softmax_chunk(s: usize, sStride: i32, nq: i32, m: i32, runMax: usize, runSum: usize, out: usize, d: i32): void {
  for (let j = 0; j < nq; j++) {
    const row = s + (<usize>(j * sStride) << 2);
    const mx = rowMax(row, m);
    const mp = runMax + (<usize>j << 2), lp = runSum + (<usize>j << 2);
    let M = load<f32>(mp), L = load<f32>(lp);
    if (mx > M) {
      if (M != -Infinity) {
        const f = exp1(M - mx);
        L *= f;
        const fv = f32x4.splat(f);
        const o = out + (<usize>(j * d) << 2), oEnd = o + (<usize>d << 2), oVec = o + ((<usize>d << 2) & ~15);
        let c = o;
        for (; c < oVec; c += 16) v128.store(c, f32x4.mul(v128.load(c), fv));
        for (; c < oEnd; c += 4) store<f32>(c, load<f32>(c) * f);
      }
      M = mx;
      store<f32>(mp, M);
    }
    const sum = expInPlace(row, m, M);
    store<f32>(lp, L + sum);
  }
}
