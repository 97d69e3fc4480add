/**
 * out[r·outDim + o] = Σ_i x[r·inDim + i]·w[o·inDim + i] (+ bias[o]) for outputs o in [o0, o1), all rows.
 *
 * Every output element is computed the same way whatever the tile it falls in, the number of rows or
 * the output range a thread was given: one f32x4 accumulator over i in steps of 4 (mul then add, no FMA),
 * finished by hsum, then the inDim % 4 tail in order, then the bias. So batching and threading never
 * change a result bit.
 *
 * Tiles: 2 rows × 4 outputs (8 accumulators) for batches; 1 row × 8 outputs for single rows (GEMV).
 * Rows are taken in blocks so the activations stay in L2 while a 4-output weight slab is in L1.
 */
import { hsum } from './common';

const ROW_BLOCK = 64;

@inline function tail(x: usize, w: usize, from: usize, end: usize): f32 {
  let s: f32 = 0;
  for (let i = from; i < end; i += 4) s += load<f32>(x + i) * load<f32>(w + i);
  return s;
}

@inline function finish(acc: v128, x: usize, w: usize, vecEnd: usize, end: usize, bias: usize, o: i32): f32 {
  let s = hsum(acc);
  if (vecEnd < end) s += tail(x, w, vecEnd, end);
  if (bias) s += load<f32>(bias + (<usize>o << 2));
  return s;
}

/** One output element (the reference for every tile). */
function dot1(out: usize, x: usize, w: usize, vecEnd: usize, end: usize, bias: usize, o: i32): void {
  let a = f32x4.splat(0);
  for (let i: usize = 0; i < vecEnd; i += 16) a = f32x4.add(a, f32x4.mul(v128.load(x + i), v128.load(w + i)));
  store<f32>(out, finish(a, x, w, vecEnd, end, bias, o));
}

export function matmul(out: usize, x: usize, w: usize, rows: i32, inDim: i32, outDim: i32, bias: usize, o0: i32, o1: i32): void {
  const rowB = <usize>inDim << 2;
  const vecEnd = rowB & ~15;
  const outB = <usize>outDim << 2;
  if (rows == 1) {
    gemv(out, x, w, rowB, vecEnd, bias, o0, o1);
    return;
  }
  for (let r0 = 0; r0 < rows; r0 += ROW_BLOCK) {
    tiles(out, x, w + <usize>o0 * rowB, r0, min(rows, r0 + ROW_BLOCK), rowB, outB, bias, o0, o1);
  }
}

/**
 * Outputs [o0, o1) of rows [r0, r1) in 2×4 tiles; wRow is the address of weight row o0 (rows rowB bytes
 * apart). Also the 16-bit kernels' batch path, on weight rows they converted to float32 (matmul16.ts).
 */
export function tiles(out: usize, x: usize, wRow: usize, r0: i32, r1: i32, rowB: usize, outB: usize, bias: usize, o0: i32, o1: i32): void {
  const vecEnd = rowB & ~15;
  let o = o0;
  for (; o + 4 <= o1; o += 4) {
    const w0 = wRow + <usize>(o - o0) * rowB;
    // Row pairs: the panel over all inputs at once (no partial sums kept).
    tilesK(out, x, w0, rowB, r0, r1, rowB, outB, bias, o, 0, vecEnd, true, 0);
    // An odd last row: one output at a time.
    if ((r1 - r0) & 1) {
      const r = r1 - 1;
      const x0 = x + <usize>r * rowB;
      const p0 = out + <usize>r * outB + (<usize>o << 2);
      for (let k = 0; k < 4; k++) dot1(p0 + (<usize>k << 2), x0, w0 + <usize>k * rowB, vecEnd, rowB, bias, o + k);
    }
  }
  for (; o < o1; o++) {
    const wo = wRow + <usize>(o - o0) * rowB;
    for (let r = r0; r < r1; r++) dot1(out + <usize>r * outB + (<usize>o << 2), x + <usize>r * rowB, wo, vecEnd, rowB, bias, o);
  }
}

/**
 * tiles() on one panel of 4 outputs (o..o+3, weight rows wStride bytes apart from wRow) over the inputs
 * in bytes [k0, k1) only, for row pairs [r0, r1): each pair's 8 accumulators start at zero (k0 == 0) or
 * from acc (128 bytes per pair), and are saved back to acc, or, when `last`, finished as tiles() finishes
 * them (the tail inputs from k1 = vecEnd on, then the bias). Each lane adds the same products in the same
 * order as in tiles(), so splitting the inputs into blocks never changes a bit. The 16-bit kernels run it
 * on float32 panels of a block of inputs, which then stay in L1 (matmul16.ts); tiles() runs it over all
 * inputs at once.
 */
export function tilesK(out: usize, x: usize, wRow: usize, wStride: usize, r0: i32, r1: i32, rowB: usize, outB: usize,
  bias: usize, o: i32, k0: usize, k1: usize, last: bool, acc: usize): void {
  const w0 = wRow, w1 = w0 + wStride, w2 = w1 + wStride, w3 = w2 + wStride;
  for (let r = r0; r + 2 <= r1; r += 2) {
    const x0 = x + <usize>r * rowB, x1 = x0 + rowB;
    const ap = acc + (<usize>(r - r0) << 6);
    let a00 = f32x4.splat(0), a01 = a00, a02 = a00, a03 = a00;
    let a10 = a00, a11 = a00, a12 = a00, a13 = a00;
    if (k0 != 0) {
      a00 = v128.load(ap); a01 = v128.load(ap, 16); a02 = v128.load(ap, 32); a03 = v128.load(ap, 48);
      a10 = v128.load(ap, 64); a11 = v128.load(ap, 80); a12 = v128.load(ap, 96); a13 = v128.load(ap, 112);
    }
    for (let i = k0; i < k1; i += 16) {
      const u = v128.load(x0 + i), v = v128.load(x1 + i);
      let q = v128.load(w0 + i);
      a00 = f32x4.add(a00, f32x4.mul(u, q)); a10 = f32x4.add(a10, f32x4.mul(v, q));
      q = v128.load(w1 + i);
      a01 = f32x4.add(a01, f32x4.mul(u, q)); a11 = f32x4.add(a11, f32x4.mul(v, q));
      q = v128.load(w2 + i);
      a02 = f32x4.add(a02, f32x4.mul(u, q)); a12 = f32x4.add(a12, f32x4.mul(v, q));
      q = v128.load(w3 + i);
      a03 = f32x4.add(a03, f32x4.mul(u, q)); a13 = f32x4.add(a13, f32x4.mul(v, q));
    }
    if (last) {
      const p0 = out + <usize>r * outB + (<usize>o << 2), p1 = p0 + outB;
      store<f32>(p0, finish(a00, x0, w0, k1, rowB, bias, o));
      store<f32>(p0, finish(a01, x0, w1, k1, rowB, bias, o + 1), 4);
      store<f32>(p0, finish(a02, x0, w2, k1, rowB, bias, o + 2), 8);
      store<f32>(p0, finish(a03, x0, w3, k1, rowB, bias, o + 3), 12);
      store<f32>(p1, finish(a10, x1, w0, k1, rowB, bias, o));
      store<f32>(p1, finish(a11, x1, w1, k1, rowB, bias, o + 1), 4);
      store<f32>(p1, finish(a12, x1, w2, k1, rowB, bias, o + 2), 8);
      store<f32>(p1, finish(a13, x1, w3, k1, rowB, bias, o + 3), 12);
    } else {
      v128.store(ap, a00); v128.store(ap, a01, 16); v128.store(ap, a02, 32); v128.store(ap, a03, 48);
      v128.store(ap, a10, 64); v128.store(ap, a11, 80); v128.store(ap, a12, 96); v128.store(ap, a13, 112);
    }
  }
}

/** One row: 8 outputs at a time, the activation row loaded once per step for all 8. */
function gemv(out: usize, x: usize, w: usize, rowB: usize, vecEnd: usize, bias: usize, o0: i32, o1: i32): void {
  let o = o0;
  for (; o + 8 <= o1; o += 8) {
    const w0 = w + <usize>o * rowB;
    let a0 = f32x4.splat(0), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (let i: usize = 0; i < vecEnd; i += 16) {
      const u = v128.load(x + i);
      let p = w0 + i;
      a0 = f32x4.add(a0, f32x4.mul(u, v128.load(p))); p += rowB;
      a1 = f32x4.add(a1, f32x4.mul(u, v128.load(p))); p += rowB;
      a2 = f32x4.add(a2, f32x4.mul(u, v128.load(p))); p += rowB;
      a3 = f32x4.add(a3, f32x4.mul(u, v128.load(p))); p += rowB;
      a4 = f32x4.add(a4, f32x4.mul(u, v128.load(p))); p += rowB;
      a5 = f32x4.add(a5, f32x4.mul(u, v128.load(p))); p += rowB;
      a6 = f32x4.add(a6, f32x4.mul(u, v128.load(p))); p += rowB;
      a7 = f32x4.add(a7, f32x4.mul(u, v128.load(p)));
    }
    const q = out + (<usize>o << 2);
    store<f32>(q, finish(a0, x, w0, vecEnd, rowB, bias, o));
    store<f32>(q, finish(a1, x, w0 + rowB, vecEnd, rowB, bias, o + 1), 4);
    store<f32>(q, finish(a2, x, w0 + 2 * rowB, vecEnd, rowB, bias, o + 2), 8);
    store<f32>(q, finish(a3, x, w0 + 3 * rowB, vecEnd, rowB, bias, o + 3), 12);
    store<f32>(q, finish(a4, x, w0 + 4 * rowB, vecEnd, rowB, bias, o + 4), 16);
    store<f32>(q, finish(a5, x, w0 + 5 * rowB, vecEnd, rowB, bias, o + 5), 20);
    store<f32>(q, finish(a6, x, w0 + 6 * rowB, vecEnd, rowB, bias, o + 6), 24);
    store<f32>(q, finish(a7, x, w0 + 7 * rowB, vecEnd, rowB, bias, o + 7), 28);
  }
  for (; o < o1; o++) dot1(out + (<usize>o << 2), x, w + <usize>o * rowB, vecEnd, rowB, bias, o);
}

/**
 * The compute bound `bench gemv` sets beside its memory bound: `calls` runs of the batch kernel's 2×4
 * tile (tilesK) over `inDim` inputs of 2 rows (x) and 4 outputs (w), 8 floats out; the caller keeps
 * the operands small enough to stay in L1 — the kernels' own arithmetic with nothing to wait for but
 * itself. A call is 16·inDim float operations.
 */
export function tile_peak(out: usize, x: usize, w: usize, inDim: i32, calls: i32): void {
  const rowB = <usize>inDim << 2;
  for (let c = 0; c < calls; c++) tilesK(out, x, w, rowB, 0, 2, rowB, 16, 0, 0, 0, rowB, true, 0);
}
