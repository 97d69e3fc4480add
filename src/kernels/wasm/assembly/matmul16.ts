/**
 * matmul with 16-bit weights (bf16 or f16 bits, as the checkpoint stores them), converted to float32 in
 * registers: out[r·outDim + o] = Σ_i x[r·inDim + i]·w[o·inDim + i] (+ bias[o]) for o in [o0, o1).
 *
 * Every output element is summed exactly as matmul.ts sums it (one f32x4 accumulator over i in steps of
 * 4, mul then add, hsum, the inDim % 4 tail in order, then the bias), and the conversion is exact, so the
 * result is bit for bit matmul's on the float32 expansion of the weights, whatever the tile, the batch or
 * the thread. Only the bytes read change: half as many.
 *
 * Conversion of 8 weights (one 16-byte load): interleaving zeros puts each 16-bit value in the high half
 * of an i32 lane (h << 16). For bf16 that is the float32. For f16 an arithmetic shift right by 3 moves
 * exponent and mantissa into float32's fields with the exponent re-biased by −112, a mask drops the sign
 * copies, and ×2^112 restores the bias: exact for every finite value, subnormals included (f16 ±Inf/NaN
 * weights come out finite; the loader rejects them).
 *
 * Tiles: 1 row × 8 outputs for one row (GEMV: each weight row streamed once, the activation shared). A
 * few rows (decode batches): 4 rows × 2 outputs, then 2 × 4, then 1 × 8, each converted weight vector
 * serving every row of its tile, over blocks of 16 outputs whose weights stay in L2 for all the rows.
 * Many rows (prefill), given per-thread scratch: 4 weight rows at a time converted to a float32 panel once
 * per block of 64 rows (128 in batches that large), then matmul.ts's own float32 tiles — float32 speed,
 * conversion cost amortized. The panel holds KC inputs at a time (8 KiB), not whole rows (64 KiB at 4096
 * inputs, which spilled to L2 and ran 16-row batches 1.3× slower than float32 weights); the tiles keep
 * their accumulators in the scratch between blocks of inputs (matmul.ts tilesK: the same sums).
 *
 * Layout (../tiles.ts): weight rows [0, tiled) may be stored in tiles of 8 rows, input-block-major (per 8
 * inputs, the tile's 8 rows' 16 bytes side by side), so the GEMV's 8-row tile reads one sequential stream
 * instead of 8 strided ones; rows from `tiled` on are row-major, at the address they would have anyway.
 * Each kernel is compiled twice (the `packed` flag, a constant) and only the addresses differ: row o's 8
 * inputs from i sit at rowAt(o) + (i << shift), the same values in the same sums. Packed tiles change the
 * tiles of the batch paths so that each pass reads whole 128-byte blocks: a few rows run one GEMV per row
 * over each block of outputs (L2 serves all but the first), and the panel path converts a whole tile, KC/2
 * inputs at a time, into two 4-row panels. Measured (bench gemv, 8192×4096 bf16, 1 thread): 1 row 1.28×
 * faster, 2–8 rows 1.0–1.1×, 16 and 32 rows 8–14% slower (about 4 ms more a pass that we could not
 * explain or remove), 64 rows and more within 1–4%.
 */
import { hsum } from './common';
import { tilesK } from './matmul';

const ROW_BLOCK = 64;
/**
 * Rows per block of the panel path: each panel is converted once per block, and the block's activations
 * (128 rows: 256 KiB at 512 inputs, 704 KiB at 1408) stream from L2 for every panel either way.
 */
const PANEL_ROW_BLOCK = 128;
/** Batches of at least this many rows (per block) convert weights to float32 panels, given scratch. */
const PANEL_ROWS = 16;
/** Weight rows per converted panel (matmul.ts's tiles take 4 outputs at a time). */
const PANEL = 4;
/** Inputs per block of a panel (a multiple of 4): 4 × KC float32 stay in L1 beside the rows' inputs. */
const KC = 512;
/** Bytes of one panel row: a block of inputs, and after the last block the ≤ 3 tail inputs. */
const PANEL_STRIDE: usize = (KC + 4) * 4;
/** The tiles' accumulators between blocks of inputs: 128 bytes per row pair of a row block (one set per panel of a tile). */
const ACC_BYTES: usize = (PANEL_ROW_BLOCK / 2) * 128;
/** Outputs per block of the few-rows path: 16 weight rows stay in L2 while 4, 2 and 1-row tiles pass. */
const O_BLOCK = 16;
// 2^112: from the re-biased exponent of an f16 value shifted into float32's fields back to its own.
const F16_SCALE: f32 = 5.192296858534828e33;
const F16_KEEP: i32 = 0x8fffe000;
const F16_KEEP_HIGH: i32 = 0x8fff;

/** Rows of a tile of the packed layout (../tiles.ts TILE_ROWS). */
const TILE: i32 = 8;

/** Row o's first 8 inputs: row-major, or in its tile (inDim a multiple of 8 there). */
@inline function rowAt(w: usize, o: i32, wB: usize, packed: bool): usize {
  return packed ? w + <usize>(o >> 3) * (wB << 3) + (<usize>(o & 7) << 4) : w + <usize>o * wB;
}

/** Byte offset of input i (a multiple of 8) from rowAt: 2 bytes an input, or 128 bytes per 8 in a tile. */
@inline function inAt(i: i32, packed: bool): usize {
  return <usize>i << (packed ? 4 : 1);
}

// f16: the low and high 16 bits of each float32 (h << 13 with the sign kept at bit 31), built in 16-bit lanes.
@inline function f16Low(v: v128): v128 {
  return i16x8.shl(v, 13);
}
@inline function f16High(v: v128): v128 {
  return v128.and(i16x8.shr_s(v, 3), i16x8.splat(<i16>F16_KEEP_HIGH));
}

/** Weights 0..3 (of the 8 in v) as float32. */
@inline function lo(v: v128, f16: bool): v128 {
  if (!f16) return v128.shuffle<u16>(i32x4.splat(0), v, 0, 8, 1, 9, 2, 10, 3, 11);
  return f32x4.mul(v128.shuffle<u16>(f16Low(v), f16High(v), 0, 8, 1, 9, 2, 10, 3, 11), f32x4.splat(F16_SCALE));
}

/** Weights 4..7 (of the 8 in v) as float32. */
@inline function hi(v: v128, f16: bool): v128 {
  if (!f16) return v128.shuffle<u16>(i32x4.splat(0), v, 4, 12, 5, 13, 6, 14, 7, 15);
  return f32x4.mul(v128.shuffle<u16>(f16Low(v), f16High(v), 4, 12, 5, 13, 6, 14, 7, 15), f32x4.splat(F16_SCALE));
}

/** One 16-bit weight at byte p as float32 (the same conversion, scalar). */
@inline function one(p: usize, f16: bool): f32 {
  const h = <i32>load<u16>(p) << 16;
  return f16 ? reinterpret<f32>((h >> 3) & F16_KEEP) * F16_SCALE : reinterpret<f32>(h);
}

/** hsum, then the tail (inputs from vecEnd) summed on its own as matmul.ts does, then the bias. */
@inline function finish(acc: v128, x: usize, w: usize, vecEnd: i32, inDim: i32, bias: usize, o: i32, f16: bool): f32 {
  let s = hsum(acc);
  if (vecEnd < inDim) {
    let t: f32 = 0;
    for (let i = vecEnd; i < inDim; i++) t += load<f32>(x + (<usize>i << 2)) * one(w + (<usize>i << 1), f16);
    s += t;
  }
  if (bias) s += load<f32>(bias + (<usize>o << 2));
  return s;
}

/** One output element (the reference for every tile). */
@inline function dot1(out: usize, x: usize, w: usize, vec8: i32, vecEnd: i32, inDim: i32, bias: usize, o: i32, f16: bool, packed: bool): void {
  let a = f32x4.splat(0);
  let i = 0;
  for (; i < vec8; i += 8) {
    const v = v128.load(w + inAt(i, packed));
    const xp = x + (<usize>i << 2);
    a = f32x4.add(a, f32x4.mul(v128.load(xp), lo(v, f16)));
    a = f32x4.add(a, f32x4.mul(v128.load(xp, 16), hi(v, f16)));
  }
  if (i < vecEnd) a = f32x4.add(a, f32x4.mul(v128.load(x + (<usize>i << 2)), lo(v128.load64_zero(w + (<usize>i << 1)), f16)));
  store<f32>(out, finish(a, x, w, vecEnd, inDim, bias, o, f16));
}

@inline function matmulImpl(out: usize, x: usize, w: usize, rows: i32, inDim: i32, outDim: i32, bias: usize, o0: i32, o1: i32, scratch: usize, tiled: i32, f16: bool): void {
  // Packed rows [o0, tiled) first (tiled > 0 only where inDim is a multiple of 8), then row-major rows.
  const split = min(o1, max(o0, tiled));
  if (o0 < split) rangeImpl(out, x, w, rows, inDim, outDim, bias, o0, split, scratch, f16, true);
  if (split < o1) rangeImpl(out, x, w, rows, inDim, outDim, bias, split, o1, scratch, f16, false);
}

/** Outputs [o0, o1), all in one layout. */
@inline function rangeImpl(out: usize, x: usize, w: usize, rows: i32, inDim: i32, outDim: i32, bias: usize, o0: i32, o1: i32, scratch: usize, f16: bool, packed: bool): void {
  const vecEnd = inDim & ~3;  // inputs covered by vectors of 4
  const vec8 = inDim & ~7;    // ... of which in full 16-byte weight loads
  const xB = <usize>inDim << 2, wB = <usize>inDim << 1, outB = <usize>outDim << 2;
  if (rows == 1) {
    gemvImpl(out, x, w, vec8, vecEnd, inDim, wB, bias, o0, o1, f16, packed);
    return;
  }
  const block = scratch != 0 && rows >= PANEL_ROW_BLOCK ? PANEL_ROW_BLOCK : ROW_BLOCK;
  for (let r0 = 0; r0 < rows; r0 += block) {
    const r1 = min(rows, r0 + block);
    if (scratch != 0 && r1 - r0 >= PANEL_ROWS) {
      // Many rows: PANEL weight rows converted to float32 a block of KC inputs at a time, matmul.ts's
      // float32 tiles on each block for every row pair; the odd last row and the last < PANEL outputs
      // one element at a time (the same sums).
      // Packed: a whole tile (2 panels) per pass, its 128-byte blocks read in order.
      const pr: i32 = packed ? TILE : PANEL;
      const acc = scratch + <usize>TILE * PANEL_STRIDE;
      const rp = r0 + ((r1 - r0) & ~1);
      let o = o0;
      if (packed) for (; o < o1 && (o & (TILE - 1)) != 0; o++) {
        const wo = rowAt(w, o, wB, true);
        for (let r = r0; r < r1; r++) dot1(out + <usize>r * outB + (<usize>o << 2), x + <usize>r * xB, wo, vec8, vecEnd, inDim, bias, o, f16, true);
      }
      // The tile's 8 panel rows hold half as many inputs at a time: the same 8 KiB beside the rows' inputs in L1.
      const kc: i32 = packed ? KC / 2 : KC;
      for (; o + pr <= o1; o += pr) {
        let k = 0;
        do {
          const ke = min(vecEnd, k + kc);
          const last = ke == vecEnd;
          const n = (last ? inDim : ke) - k;
          if (packed) expandTile(scratch, rowAt(w, o, wB, true) + inAt(k, true), n, f16);
          else for (let j = 0; j < PANEL; j++) expand(scratch + <usize>j * PANEL_STRIDE, rowAt(w, o + j, wB, false) + inAt(k, false), n, f16);
          // The panel's input i sits at (scratch − 4k) + 4i: tilesK reads only inputs [k, ke) and the tail.
          for (let p = 0; p < pr; p += PANEL) {
            const panel = scratch + <usize>p * PANEL_STRIDE - (<usize>k << 2);
            tilesK(out, x, panel, PANEL_STRIDE, r0, rp, xB, outB, bias, o + p, <usize>k << 2, <usize>ke << 2, last, acc + <usize>(p / PANEL) * ACC_BYTES);
          }
          k = ke;
        } while (k < vecEnd);
        if (rp < r1) {
          const xr = x + <usize>rp * xB, po = out + <usize>rp * outB;
          for (let j = 0; j < pr; j++) dot1(po + (<usize>(o + j) << 2), xr, rowAt(w, o + j, wB, packed), vec8, vecEnd, inDim, bias, o + j, f16, packed);
        }
      }
      for (; o < o1; o++) {
        const wo = rowAt(w, o, wB, packed);
        for (let r = r0; r < r1; r++) dot1(out + <usize>r * outB + (<usize>o << 2), x + <usize>r * xB, wo, vec8, vecEnd, inDim, bias, o, f16, packed);
      }
      continue;
    }
    // A few rows: convert in registers, each converted weight vector serving 4, 2 or 1 rows, over
    // blocks of O_BLOCK outputs whose weights stay in L2 for all rows of the block. Packed: each row's
    // GEMV over the block's whole tiles (4 rows × 2 outputs would read a quarter of each block's 128 bytes
    // per pass, strided: 1.3× slower at 4 rows).
    for (let ob = o0; ob < o1; ob += O_BLOCK) {
      const ob1 = min(o1, ob + O_BLOCK);
      if (packed) {
        for (let r = r0; r < r1; r++) gemvImpl(out + <usize>r * outB, x + <usize>r * xB, w, vec8, vecEnd, inDim, wB, bias, ob, ob1, f16, true);
        continue;
      }
      let r = r0;
      for (; r + 4 <= r1; r += 4) quadRows(out, x, w, r, ob, ob1, vec8, vecEnd, inDim, xB, wB, outB, bias, f16);
      if (r + 2 <= r1) {
        pairRows(out, x, w, r, ob, ob1, vec8, vecEnd, inDim, xB, wB, outB, bias, f16);
        r += 2;
      }
      if (r < r1) gemvImpl(out + <usize>r * outB, x + <usize>r * xB, w, vec8, vecEnd, inDim, wB, bias, ob, ob1, f16, false);
    }
  }
}

/** n inputs (a multiple of 8) of a tile's 8 rows from w (input k's address in the tile) → 8 panel rows at dst. */
@inline function expandTile(dst: usize, w: usize, n: i32, f16: bool): void {
  for (let i = 0; i < n; i += 8) {
    const src = w + (<usize>i << 4), d = dst + (<usize>i << 2);
    for (let j: usize = 0; j < <usize>TILE; j++) {
      const v = v128.load(src + (j << 4));
      v128.store(d + j * PANEL_STRIDE, lo(v, f16));
      v128.store(d + j * PANEL_STRIDE, hi(v, f16), 16);
    }
  }
}

/** n 16-bit values of one row-major row from w (its input k's address) → float32 at dst. */
@inline function expand(dst: usize, w: usize, n: i32, f16: bool): void {
  const n8 = n & ~7;
  let i = 0;
  for (; i < n8; i += 8) {
    const v = v128.load(w + (<usize>i << 1));
    v128.store(dst + (<usize>i << 2), lo(v, f16));
    v128.store(dst + (<usize>i << 2), hi(v, f16), 16);
  }
  for (; i < n; i++) store<f32>(dst + (<usize>i << 2), one(w + (<usize>i << 1), f16));
}

/** Rows r..r+3, outputs [ob, ob1) of a row-major matrix: 4 rows × 2 outputs per tile. */
@inline function quadRows(out: usize, x: usize, w: usize, r: i32, ob: i32, ob1: i32, vec8: i32, vecEnd: i32, inDim: i32,
  xB: usize, wB: usize, outB: usize, bias: usize, f16: bool): void {
  const x0 = x + <usize>r * xB, x1 = x0 + xB, x2 = x1 + xB, x3 = x2 + xB;
  const p0 = out + <usize>r * outB, p1 = p0 + outB, p2 = p1 + outB, p3 = p2 + outB;
  let o = ob;
  for (; o + 2 <= ob1; o += 2) {
    const w0 = w + <usize>o * wB, w1 = w + <usize>(o + 1) * wB;
    let a0 = f32x4.splat(0), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    let i = 0;
    for (; i < vec8; i += 8) {
      const xo = <usize>i << 2;
      const v = v128.load(w0 + (<usize>i << 1)), u = v128.load(w1 + (<usize>i << 1));
      let p = lo(v, f16), q = lo(u, f16);
      let e = v128.load(x0 + xo);
      a0 = f32x4.add(a0, f32x4.mul(e, p)); b0 = f32x4.add(b0, f32x4.mul(e, q));
      e = v128.load(x1 + xo);
      a1 = f32x4.add(a1, f32x4.mul(e, p)); b1 = f32x4.add(b1, f32x4.mul(e, q));
      e = v128.load(x2 + xo);
      a2 = f32x4.add(a2, f32x4.mul(e, p)); b2 = f32x4.add(b2, f32x4.mul(e, q));
      e = v128.load(x3 + xo);
      a3 = f32x4.add(a3, f32x4.mul(e, p)); b3 = f32x4.add(b3, f32x4.mul(e, q));
      p = hi(v, f16); q = hi(u, f16);
      e = v128.load(x0 + xo, 16);
      a0 = f32x4.add(a0, f32x4.mul(e, p)); b0 = f32x4.add(b0, f32x4.mul(e, q));
      e = v128.load(x1 + xo, 16);
      a1 = f32x4.add(a1, f32x4.mul(e, p)); b1 = f32x4.add(b1, f32x4.mul(e, q));
      e = v128.load(x2 + xo, 16);
      a2 = f32x4.add(a2, f32x4.mul(e, p)); b2 = f32x4.add(b2, f32x4.mul(e, q));
      e = v128.load(x3 + xo, 16);
      a3 = f32x4.add(a3, f32x4.mul(e, p)); b3 = f32x4.add(b3, f32x4.mul(e, q));
    }
    if (i < vecEnd) {
      const xo = <usize>i << 2;
      const p = lo(v128.load64_zero(w0 + (<usize>i << 1)), f16), q = lo(v128.load64_zero(w1 + (<usize>i << 1)), f16);
      let e = v128.load(x0 + xo);
      a0 = f32x4.add(a0, f32x4.mul(e, p)); b0 = f32x4.add(b0, f32x4.mul(e, q));
      e = v128.load(x1 + xo);
      a1 = f32x4.add(a1, f32x4.mul(e, p)); b1 = f32x4.add(b1, f32x4.mul(e, q));
      e = v128.load(x2 + xo);
      a2 = f32x4.add(a2, f32x4.mul(e, p)); b2 = f32x4.add(b2, f32x4.mul(e, q));
      e = v128.load(x3 + xo);
      a3 = f32x4.add(a3, f32x4.mul(e, p)); b3 = f32x4.add(b3, f32x4.mul(e, q));
    }
    const c = <usize>o << 2;
    store<f32>(p0 + c, finish(a0, x0, w0, vecEnd, inDim, bias, o, f16));
    store<f32>(p0 + c, finish(b0, x0, w1, vecEnd, inDim, bias, o + 1, f16), 4);
    store<f32>(p1 + c, finish(a1, x1, w0, vecEnd, inDim, bias, o, f16));
    store<f32>(p1 + c, finish(b1, x1, w1, vecEnd, inDim, bias, o + 1, f16), 4);
    store<f32>(p2 + c, finish(a2, x2, w0, vecEnd, inDim, bias, o, f16));
    store<f32>(p2 + c, finish(b2, x2, w1, vecEnd, inDim, bias, o + 1, f16), 4);
    store<f32>(p3 + c, finish(a3, x3, w0, vecEnd, inDim, bias, o, f16));
    store<f32>(p3 + c, finish(b3, x3, w1, vecEnd, inDim, bias, o + 1, f16), 4);
  }
  if (o < ob1) {
    const wo = w + <usize>o * wB, c = <usize>o << 2;
    dot1(p0 + c, x0, wo, vec8, vecEnd, inDim, bias, o, f16, false);
    dot1(p1 + c, x1, wo, vec8, vecEnd, inDim, bias, o, f16, false);
    dot1(p2 + c, x2, wo, vec8, vecEnd, inDim, bias, o, f16, false);
    dot1(p3 + c, x3, wo, vec8, vecEnd, inDim, bias, o, f16, false);
  }
}

/** Rows r, r+1, outputs [ob, ob1) of a row-major matrix: 2 rows × 4 outputs per tile. */
@inline function pairRows(out: usize, x: usize, w: usize, r: i32, ob: i32, ob1: i32, vec8: i32, vecEnd: i32, inDim: i32,
  xB: usize, wB: usize, outB: usize, bias: usize, f16: bool): void {
  const x0 = x + <usize>r * xB, x1 = x0 + xB;
  const p0 = out + <usize>r * outB, p1 = p0 + outB;
  let o = ob;
  for (; o + 4 <= ob1; o += 4) {
    const w0 = w + <usize>o * wB, w1 = w + <usize>(o + 1) * wB, w2 = w + <usize>(o + 2) * wB, w3 = w + <usize>(o + 3) * wB;
    let a0 = f32x4.splat(0), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    let i = 0;
    for (; i < vec8; i += 8) {
      const xo = <usize>i << 2, wo = (<usize>i << 1);
      const u = v128.load(x0 + xo), v = v128.load(x1 + xo), uh = v128.load(x0 + xo, 16), vh = v128.load(x1 + xo, 16);
      let k = v128.load(w0 + wo);
      let q = lo(k, f16);
      a0 = f32x4.add(a0, f32x4.mul(u, q)); b0 = f32x4.add(b0, f32x4.mul(v, q));
      q = hi(k, f16);
      a0 = f32x4.add(a0, f32x4.mul(uh, q)); b0 = f32x4.add(b0, f32x4.mul(vh, q));
      k = v128.load(w1 + wo);
      q = lo(k, f16);
      a1 = f32x4.add(a1, f32x4.mul(u, q)); b1 = f32x4.add(b1, f32x4.mul(v, q));
      q = hi(k, f16);
      a1 = f32x4.add(a1, f32x4.mul(uh, q)); b1 = f32x4.add(b1, f32x4.mul(vh, q));
      k = v128.load(w2 + wo);
      q = lo(k, f16);
      a2 = f32x4.add(a2, f32x4.mul(u, q)); b2 = f32x4.add(b2, f32x4.mul(v, q));
      q = hi(k, f16);
      a2 = f32x4.add(a2, f32x4.mul(uh, q)); b2 = f32x4.add(b2, f32x4.mul(vh, q));
      k = v128.load(w3 + wo);
      q = lo(k, f16);
      a3 = f32x4.add(a3, f32x4.mul(u, q)); b3 = f32x4.add(b3, f32x4.mul(v, q));
      q = hi(k, f16);
      a3 = f32x4.add(a3, f32x4.mul(uh, q)); b3 = f32x4.add(b3, f32x4.mul(vh, q));
    }
    if (i < vecEnd) {
      const xo = <usize>i << 2, wo = <usize>i << 1;
      const u = v128.load(x0 + xo), v = v128.load(x1 + xo);
      let q = lo(v128.load64_zero(w0 + wo), f16);
      a0 = f32x4.add(a0, f32x4.mul(u, q)); b0 = f32x4.add(b0, f32x4.mul(v, q));
      q = lo(v128.load64_zero(w1 + wo), f16);
      a1 = f32x4.add(a1, f32x4.mul(u, q)); b1 = f32x4.add(b1, f32x4.mul(v, q));
      q = lo(v128.load64_zero(w2 + wo), f16);
      a2 = f32x4.add(a2, f32x4.mul(u, q)); b2 = f32x4.add(b2, f32x4.mul(v, q));
      q = lo(v128.load64_zero(w3 + wo), f16);
      a3 = f32x4.add(a3, f32x4.mul(u, q)); b3 = f32x4.add(b3, f32x4.mul(v, q));
    }
    const c = <usize>o << 2;
    store<f32>(p0 + c, finish(a0, x0, w0, vecEnd, inDim, bias, o, f16));
    store<f32>(p0 + c, finish(a1, x0, w1, vecEnd, inDim, bias, o + 1, f16), 4);
    store<f32>(p0 + c, finish(a2, x0, w2, vecEnd, inDim, bias, o + 2, f16), 8);
    store<f32>(p0 + c, finish(a3, x0, w3, vecEnd, inDim, bias, o + 3, f16), 12);
    store<f32>(p1 + c, finish(b0, x1, w0, vecEnd, inDim, bias, o, f16));
    store<f32>(p1 + c, finish(b1, x1, w1, vecEnd, inDim, bias, o + 1, f16), 4);
    store<f32>(p1 + c, finish(b2, x1, w2, vecEnd, inDim, bias, o + 2, f16), 8);
    store<f32>(p1 + c, finish(b3, x1, w3, vecEnd, inDim, bias, o + 3, f16), 12);
  }
  for (; o < ob1; o++) {
    const wo = w + <usize>o * wB, c = <usize>o << 2;
    dot1(p0 + c, x0, wo, vec8, vecEnd, inDim, bias, o, f16, false);
    dot1(p1 + c, x1, wo, vec8, vecEnd, inDim, bias, o, f16, false);
  }
}

/** One row: 8 outputs at a time, each activation vector loaded once per step for all 8 weight rows. */
@inline function gemvImpl(out: usize, x: usize, w: usize, vec8: i32, vecEnd: i32, inDim: i32, wB: usize, bias: usize, o0: i32, o1: i32, f16: bool, packed: bool): void {
  let o = o0;
  // Packed: whole tiles only (threads' ranges start on a tile; a range that does not, starts row by row).
  if (packed) for (; o < o1 && (o & (TILE - 1)) != 0; o++) dot1(out + (<usize>o << 2), x, rowAt(w, o, wB, true), vec8, vecEnd, inDim, bias, o, f16, true);
  // The next row of the 8: wB bytes on, or 16 within a tile (where 8 inputs of all 8 rows take 128 bytes).
  const step: usize = packed ? 16 : wB;
  for (; o + 8 <= o1; o += 8) {
    const w0 = rowAt(w, o, wB, packed);
    let a0 = f32x4.splat(0), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    let i = 0;
    for (; i < vec8; i += 8) {
      const xl = v128.load(x + (<usize>i << 2)), xh = v128.load(x + (<usize>i << 2), 16);
      let p = w0 + inAt(i, packed);
      let v = v128.load(p); p += step;
      a0 = f32x4.add(f32x4.add(a0, f32x4.mul(xl, lo(v, f16))), f32x4.mul(xh, hi(v, f16)));
      v = v128.load(p); p += step;
      a1 = f32x4.add(f32x4.add(a1, f32x4.mul(xl, lo(v, f16))), f32x4.mul(xh, hi(v, f16)));
      v = v128.load(p); p += step;
      a2 = f32x4.add(f32x4.add(a2, f32x4.mul(xl, lo(v, f16))), f32x4.mul(xh, hi(v, f16)));
      v = v128.load(p); p += step;
      a3 = f32x4.add(f32x4.add(a3, f32x4.mul(xl, lo(v, f16))), f32x4.mul(xh, hi(v, f16)));
      v = v128.load(p); p += step;
      a4 = f32x4.add(f32x4.add(a4, f32x4.mul(xl, lo(v, f16))), f32x4.mul(xh, hi(v, f16)));
      v = v128.load(p); p += step;
      a5 = f32x4.add(f32x4.add(a5, f32x4.mul(xl, lo(v, f16))), f32x4.mul(xh, hi(v, f16)));
      v = v128.load(p); p += step;
      a6 = f32x4.add(f32x4.add(a6, f32x4.mul(xl, lo(v, f16))), f32x4.mul(xh, hi(v, f16)));
      v = v128.load(p);
      a7 = f32x4.add(f32x4.add(a7, f32x4.mul(xl, lo(v, f16))), f32x4.mul(xh, hi(v, f16)));
    }
    if (i < vecEnd) {
      const xl = v128.load(x + (<usize>i << 2));
      let p = w0 + (<usize>i << 1);
      a0 = f32x4.add(a0, f32x4.mul(xl, lo(v128.load64_zero(p), f16))); p += wB;
      a1 = f32x4.add(a1, f32x4.mul(xl, lo(v128.load64_zero(p), f16))); p += wB;
      a2 = f32x4.add(a2, f32x4.mul(xl, lo(v128.load64_zero(p), f16))); p += wB;
      a3 = f32x4.add(a3, f32x4.mul(xl, lo(v128.load64_zero(p), f16))); p += wB;
      a4 = f32x4.add(a4, f32x4.mul(xl, lo(v128.load64_zero(p), f16))); p += wB;
      a5 = f32x4.add(a5, f32x4.mul(xl, lo(v128.load64_zero(p), f16))); p += wB;
      a6 = f32x4.add(a6, f32x4.mul(xl, lo(v128.load64_zero(p), f16))); p += wB;
      a7 = f32x4.add(a7, f32x4.mul(xl, lo(v128.load64_zero(p), f16)));
    }
    const q = out + (<usize>o << 2);
    store<f32>(q, finish(a0, x, w0, vecEnd, inDim, bias, o, f16));
    store<f32>(q, finish(a1, x, w0 + wB, vecEnd, inDim, bias, o + 1, f16), 4);
    store<f32>(q, finish(a2, x, w0 + 2 * wB, vecEnd, inDim, bias, o + 2, f16), 8);
    store<f32>(q, finish(a3, x, w0 + 3 * wB, vecEnd, inDim, bias, o + 3, f16), 12);
    store<f32>(q, finish(a4, x, w0 + 4 * wB, vecEnd, inDim, bias, o + 4, f16), 16);
    store<f32>(q, finish(a5, x, w0 + 5 * wB, vecEnd, inDim, bias, o + 5, f16), 20);
    store<f32>(q, finish(a6, x, w0 + 6 * wB, vecEnd, inDim, bias, o + 6, f16), 24);
    store<f32>(q, finish(a7, x, w0 + 7 * wB, vecEnd, inDim, bias, o + 7, f16), 28);
  }
  for (; o < o1; o++) dot1(out + (<usize>o << 2), x, rowAt(w, o, wB, packed), vec8, vecEnd, inDim, bias, o, f16, packed);
}

/**
 * `scratch`: 0, or matmul16_scratch_bytes() bytes this call may overwrite (one per thread), which lets
 * batches of many rows run on converted panels at float32 speed.
 */
export function matmul_bf16(out: usize, x: usize, w: usize, rows: i32, inDim: i32, outDim: i32, bias: usize, o0: i32, o1: i32, scratch: usize, tiled: i32): void {
  matmulImpl(out, x, w, rows, inDim, outDim, bias, o0, o1, scratch, tiled, false);
}

export function matmul_f16(out: usize, x: usize, w: usize, rows: i32, inDim: i32, outDim: i32, bias: usize, o0: i32, o1: i32, scratch: usize, tiled: i32): void {
  matmulImpl(out, x, w, rows, inDim, outDim, bias, o0, o1, scratch, tiled, true);
}

/** Scratch bytes matmul_bf16/f16 use for panels and accumulators (whatever the shape). */
export function matmul16_scratch_bytes(): i32 {
  return <i32>(<usize>TILE * PANEL_STRIDE + <usize>(TILE / PANEL) * ACC_BYTES);
}
