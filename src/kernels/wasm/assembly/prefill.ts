/**
 * Prefill attention: a block of consecutive query rows of one prompt chunk, each attending the cache's
 * tokens and, causally, the chunk's own rows (kernels/layout.ts records, as task.ts reads them).
 *
 * task.ts runs one query row at a time: every row streams all earlier keys and values again, and the
 * chunk's rows sit a whole qkv row apart (4 KiB for the bundled model: every key of a column falls in
 * the same L1 sets). Here the chunk's keys and values are first packed per kv head into contiguous rows
 * (pack_rows), then a block of query rows (the host picks how many) walks them in tiles of TILE tokens, so a
 * tile is read from memory once and serves every row of the block from L1.
 *
 * Every score, softmax and weighted sum is computed by the same kernels in the same order as task.ts
 * (a score is one dot product; each output channel sums its tokens in order), so the result is bit for
 * bit attend_task's, whatever the block, the tile or the thread.
 */
import {
  SEG_BITS, SEG_CAP, SEG_F16, SEG_F32, SEG_G, SEG_KIND, SEG_N, SEG_PAGE, SEG_ROWS, SEG_SECTION, SEG_T0,
  SEG_WORDS, TASK_K0, TASK_KN, TASK_ROW, TASK_TOKENS, TASK_V0, TASK_VN, TASK_WORDS,
} from '../../layout';
import { scores_f32, scores_f16, accum_f32, accum_f16 } from './dense';
import { scores_kivi, accum_kivi, kivi_work_bytes } from './kivi';
import { softmax } from './softmax';
import { zero16 } from './common';
import { attend_task } from './task';

/** Tokens of the chunk's keys or values per tile: TILE·d·4 bytes (16 KiB at d = 128) stay in L1. */
const TILE = 32;

@inline function word(p: usize, i: i32): i32 {
  return load<i32>(p + (<usize>i << 2));
}

/** Row stride (floats) of the score matrix for T tokens: a multiple of 4. */
@inline function scoreStride(T: i32): i32 {
  return (T + 3) & ~3;
}

/** Bytes of scratch a block of `rows` query rows needs (scores of rows × nq heads over T tokens, then the KIVI work area). */
export function prefill_scratch_bytes(rows: i32, nq: i32, T: i32, d: i32): i32 {
  return ((rows * nq * scoreStride(T) * 4 + 15) & ~15) + kivi_work_bytes(d, nq);
}

/**
 * Keys and values of qkv rows [r0, r0 + n) packed per kv head: keys of head h at dst + (h·n + t)·d·4,
 * values at dst + ((KV + h)·n + t)·d·4.
 */
export function pack_rows(dst: usize, qkv: usize, r0: i32, n: i32, H: i32, KV: i32, d: i32): void {
  const dB = <usize>d << 2;
  const qkvRow = <usize>((H + 2 * KV) * d) << 2;
  for (let half = 0; half < 2; half++) {
    for (let h = 0; h < KV; h++) {
      let src = qkv + <usize>r0 * qkvRow + <usize>(H + half * KV + h) * dB;
      let out = dst + <usize>((half * KV + h) * n) * dB;
      for (let t = 0; t < n; t++) {
        memory.copy(out, src, dB);
        src += qkvRow;
        out += dB;
      }
    }
  }
}

/**
 * out[j·d + c] += Σ_t p[j·pStride + t]·v[t·d + c] for the nq heads of one query row over n packed value
 * rows: accum_f32's arithmetic (per channel, tokens in order, mul then add), without its prefetch sweep
 * (a packed tile is contiguous and already in L1 for every row but the block's first).
 */
function accumPacked(out: usize, p: usize, pStride: i32, nq: i32, v: usize, n: i32, d: i32): void {
  const dB = <usize>d << 2;
  const pB = <usize>pStride << 2;
  if ((d & 15) != 0 || (nq & 1) != 0) {
    accum_f32(out, p, pStride, nq, v, <i32>dB, n, d);
    return;
  }
  for (let j = 0; j < nq; j += 2) {
    const o0 = out + <usize>j * dB, o1 = o0 + dB;
    const p0 = p + <usize>j * pB, p1 = p0 + pB;
    for (let c: usize = 0; c < dB; c += 64) {
      let a0 = v128.load(o0 + c), a1 = v128.load(o0 + c, 16), a2 = v128.load(o0 + c, 32), a3 = v128.load(o0 + c, 48);
      let b0 = v128.load(o1 + c), b1 = v128.load(o1 + c, 16), b2 = v128.load(o1 + c, 32), b3 = v128.load(o1 + c, 48);
      let vt = v + c;
      const pe = p0 + (<usize>n << 2);
      for (let pt = p0, qt = p1; pt < pe; pt += 4, qt += 4, vt += dB) {
        const x = v128.load32_splat(pt), y = v128.load32_splat(qt);
        let e = v128.load(vt);
        a0 = f32x4.add(a0, f32x4.mul(x, e)); b0 = f32x4.add(b0, f32x4.mul(y, e));
        e = v128.load(vt, 16);
        a1 = f32x4.add(a1, f32x4.mul(x, e)); b1 = f32x4.add(b1, f32x4.mul(y, e));
        e = v128.load(vt, 32);
        a2 = f32x4.add(a2, f32x4.mul(x, e)); b2 = f32x4.add(b2, f32x4.mul(y, e));
        e = v128.load(vt, 48);
        a3 = f32x4.add(a3, f32x4.mul(x, e)); b3 = f32x4.add(b3, f32x4.mul(y, e));
      }
      v128.store(o0 + c, a0); v128.store(o0 + c, a1, 16); v128.store(o0 + c, a2, 32); v128.store(o0 + c, a3, 48);
      v128.store(o1 + c, b0); v128.store(o1 + c, b1, 16); v128.store(o1 + c, b2, 32); v128.store(o1 + c, b3, 48);
    }
  }
}

/**
 * Item i of a prefill attend: items holds (first task, count) pairs; count 0 runs that task alone
 * (attend_task), otherwise tasks [i0, i0 + count) run as a block. A block's tasks (checked by the host)
 * have consecutive rows, the same cache segments, and as last key and last value segment the chunk's
 * rows [r0, row] (SEG_ROWS at r0); `packed` holds rows [p0, p0 + np) as pack_rows wrote them.
 */
export function prefill_item(items: usize, i: i32, tasks: usize, segs: usize, layer: i32, qkv: usize, att: usize,
  H: i32, KV: i32, d: i32, packed: usize, p0: i32, np: i32, scratch: usize): void {
  const i0 = load<i32>(items + (<usize>i << 3)), count = load<i32>(items + (<usize>i << 3), 4);
  if (count == 0) {
    attend_task(tasks, segs, i0, layer, qkv, att, H, KV, d, scratch);
    return;
  }
  const nq = H / KV;
  const dB = d * 4;
  const qkvRow = (H + 2 * KV) * dB;
  const scale: f32 = 1 / Mathf.sqrt(<f32>d);
  const first = tasks + <usize>(i0 * TASK_WORDS) * 4;
  const last = first + <usize>((count - 1) * TASK_WORDS) * 4;
  const row0 = word(first, TASK_ROW);
  const KN = word(first, TASK_KN), VN = word(first, TASK_VN);
  // The chunk's rows segment of the first task, and the tokens before it (the cache's).
  const rowsSeg0 = segs + <usize>((word(first, TASK_K0) + KN - 1) * SEG_WORDS) * 4;
  const r0 = word(rowsSeg0, SEG_PAGE);
  const n0 = word(rowsSeg0, SEG_N);
  const cacheT = word(first, TASK_TOKENS) - n0;
  const stride = scoreStride(word(last, TASK_TOKENS));
  const sRow = <usize>(nq * stride) << 2; // bytes of one task's scores
  const s = scratch;
  const work = scratch + ((<usize>(count * nq * stride) * 4 + 15) & ~15);
  for (let h = 0; h < KV; h++) {
    const kp = packed + <usize>(h * np + (r0 - p0)) * <usize>dB;
    const vp = packed + <usize>((KV + h) * np + (r0 - p0)) * <usize>dB;
    const qh = qkv + <usize>(h * nq) * <usize>dB;
    // Scores over the cache's segments (the same for every task of the block): segment by segment, so a
    // page is read once for the block.
    let t = 0;
    for (let k = word(first, TASK_K0), end = k + KN - 1; k < end; k++) {
      const sp = segs + <usize>(k * SEG_WORDS) * 4;
      const kind = word(sp, SEG_KIND), n = word(sp, SEG_N);
      const sec = <usize>word(sp, SEG_PAGE) + <usize>(layer * KV + h) * <usize>word(sp, SEG_SECTION);
      const t0 = word(sp, SEG_T0);
      for (let r = 0; r < count; r++) {
        const so = s + <usize>r * sRow + (<usize>t << 2);
        const q = qh + <usize>(row0 + r) * <usize>qkvRow;
        if (kind == SEG_ROWS) {
          scores_f32(so, stride, q, nq, qkv + <usize>word(sp, SEG_PAGE) * qkvRow + <usize>(H + h) * dB, qkvRow, n, d, scale);
        } else if (kind == SEG_F32) {
          scores_f32(so, stride, q, nq, sec + <usize>(t0 * dB), dB, n, d, scale);
        } else if (kind == SEG_F16) {
          scores_f16(so, stride, q, nq, sec + <usize>(t0 * (dB >> 1)), dB >> 1, n, d, scale);
        } else {
          const bits = word(sp, SEG_BITS), G = word(sp, SEG_G), cap = word(sp, SEG_CAP);
          const scales = sec + <usize>(cap * d * bits / 8);
          const mins = scales + <usize>((cap / G) * d * 2);
          scores_kivi(so, stride, q, nq, sec, scales, mins, n, d, bits, G, scale, work);
        }
      }
      t += n;
    }
    // Scores over the chunk's rows, causally: row r of the block sees n0 + r of them.
    const nLast = n0 + count - 1;
    for (let tb = 0; tb < nLast; tb += TILE) {
      for (let r = 0; r < count; r++) {
        const nr = n0 + r;
        if (nr <= tb) continue;
        const te = min(tb + TILE, nr);
        const so = s + <usize>r * sRow + (<usize>(cacheT + tb) << 2);
        scores_f32(so, stride, qh + <usize>(row0 + r) * <usize>qkvRow, nq, kp + <usize>tb * <usize>dB, dB, te - tb, d, scale);
      }
    }
    for (let r = 0; r < count; r++) {
      const T = cacheT + n0 + r;
      for (let j = 0; j < nq; j++) softmax(s + <usize>r * sRow + (<usize>(j * stride) << 2), T);
      zero16(att + <usize>(row0 + r) * <usize>(H * dB) + <usize>(h * nq) * <usize>dB, <usize>(nq * dB));
    }
    // Weighted sums over the cache's value segments, then over the chunk's rows.
    t = 0;
    for (let k = word(first, TASK_V0), end = k + VN - 1; k < end; k++) {
      const sp = segs + <usize>(k * SEG_WORDS) * 4;
      const kind = word(sp, SEG_KIND), n = word(sp, SEG_N);
      const sec = <usize>word(sp, SEG_PAGE) + <usize>(layer * KV + h) * <usize>word(sp, SEG_SECTION);
      const t0 = word(sp, SEG_T0);
      for (let r = 0; r < count; r++) {
        const out = att + <usize>(row0 + r) * <usize>(H * dB) + <usize>(h * nq) * <usize>dB;
        const po = s + <usize>r * sRow + (<usize>t << 2);
        if (kind == SEG_ROWS) {
          accum_f32(out, po, stride, nq, qkv + <usize>word(sp, SEG_PAGE) * qkvRow + <usize>(H + KV + h) * dB, qkvRow, n, d);
        } else if (kind == SEG_F32) {
          accum_f32(out, po, stride, nq, sec + <usize>(t0 * dB), dB, n, d);
        } else if (kind == SEG_F16) {
          accum_f16(out, po, stride, nq, sec + <usize>(t0 * (dB >> 1)), dB >> 1, n, d);
        } else {
          const bits = word(sp, SEG_BITS), G = word(sp, SEG_G), cap = word(sp, SEG_CAP);
          const scales = sec + <usize>(cap * d * bits / 8);
          const mins = scales + <usize>(cap * (d / G) * 2);
          const pt = <usize>(t0 * (d / G) * 2);
          accum_kivi(out, po, stride, nq, sec + <usize>(t0 * d * bits / 8), scales + pt, mins + pt, n, d, bits, G, work);
        }
      }
      t += n;
    }
    for (let tb = 0; tb < nLast; tb += TILE) {
      for (let r = 0; r < count; r++) {
        const nr = n0 + r;
        if (nr <= tb) continue;
        const te = min(tb + TILE, nr);
        const out = att + <usize>(row0 + r) * <usize>(H * dB) + <usize>(h * nq) * <usize>dB;
        accumPacked(out, s + <usize>r * sRow + (<usize>(cacheT + tb) << 2), stride, nq, vp + <usize>tb * <usize>dB, te - tb, d);
      }
    }
  }
}
