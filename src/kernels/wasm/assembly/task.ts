/**
 * One attention task of a step plan (kernels/layout.ts, imported as it is, so the records' layout is
 * defined once). For each kv head, one fused pass over the tokens in chunks: the scores of the head's
 * query heads over a chunk's keys (into a chunk-sized buffer that stays in L1), an online-softmax update
 * (running maximum and sum per query head; the output so far is rescaled when the maximum grows), and
 * the chunk's values accumulated with the unnormalized weights; the output is divided by the sum at the
 * end. Scores are never written out for the whole context and read back. Page handles are byte
 * addresses in this memory; a page holds [layer][kv head] sections of SEG_SECTION bytes.
 */
import {
  SEG_BITS, SEG_CAP, SEG_F16, SEG_F32, SEG_G, SEG_KIND, SEG_N, SEG_PAGE, SEG_ROWS, SEG_SECTION, SEG_T0,
  SEG_WORDS, TASK_K0, TASK_KN, TASK_ROW, TASK_TOKENS, TASK_V0, TASK_WORDS,
} from '../../layout';
import { scores_f32, scores_f16, accum_f32, accum_f16 } from './dense';
import { scores_kivi, accum_kivi_list, kivi_work_bytes } from './kivi';
import { online_softmax_chunk } from './softmax';
import { zero16 } from './common';

/**
 * Tokens per fused chunk (a multiple of every key group size up to it; a larger group is one chunk).
 * 256 is the value kernel's chunk (assembly/kivi.ts VCHUNK): its per-call work is spread over as many
 * tokens as it can take, and nq·256 scores stay in L1.
 */
const CHUNK = 256;
/** Value pages one accum_kivi_list call takes at most (a chunk spans 4–5 pages of 64 tokens). */
const MAX_LIST = 16;
/** Tokens one accum_kivi_list call takes at most (assembly/kivi.ts VCHUNK). */
const VCHUNK = 256;

@inline function word(p: usize, i: i32): i32 {
  return load<i32>(p + (<usize>i << 2));
}

@inline function align16(n: usize): usize {
  return (n + 15) & ~15;
}

/**
 * Bytes of scratch one task needs: the running maximum and sum per query head, the list of a chunk's
 * value pages, the scores of nq heads over one chunk (rows of T tokens: a chunk never holds more), then
 * the KIVI kernels' work area.
 */
export function task_scratch_bytes(nq: i32, T: i32, d: i32): i32 {
  return 2 * ((nq * 4 + 15) & ~15) + MAX_LIST * 16 + ((nq * T * 4 + 15) & ~15) + kivi_work_bytes(d, nq);
}

/** Run task i of the table at `tasks` (segments at `segs`) on layer `layer`; qkv/att are the step's activations. */
export function attend_task(tasks: usize, segs: usize, i: i32, layer: i32, qkv: usize, att: usize,
  H: i32, KV: i32, d: i32, scratch: usize): void {
  const tp = tasks + <usize>(i * TASK_WORDS) * 4;
  const nq = H / KV;
  const qkvRow = (H + 2 * KV) * d * 4;
  const row = word(tp, TASK_ROW), T = word(tp, TASK_TOKENS);
  const scale: f32 = 1 / Mathf.sqrt(<f32>d);
  const runMax = scratch, runSum = runMax + align16(<usize>nq << 2);
  const list = runSum + align16(<usize>nq << 2);
  const s = list + MAX_LIST * 16; // scores [nq][T] (only a chunk's worth of each row is used)
  const work = s + align16(<usize>(nq * T) << 2);
  const dB = d * 4;
  const k0 = word(tp, TASK_K0), kEnd = k0 + word(tp, TASK_KN);
  const v0 = word(tp, TASK_V0);
  for (let h = 0; h < KV; h++) {
    const q = qkv + <usize>row * qkvRow + <usize>(h * nq) * dB;
    const out = att + <usize>row * <usize>(H * dB) + <usize>(h * nq) * dB;
    zero16(out, <usize>(nq * dB));
    for (let j = 0; j < nq; j++) {
      store<f32>(runMax + (<usize>j << 2), -Infinity);
      store<f32>(runSum + (<usize>j << 2), 0);
    }
    // Cursors: key segment k at token kOff of it, value segment v at token vOff of it.
    let k = k0, kOff = 0, v = v0, vOff = 0;
    while (k < kEnd) {
      // Scores of one chunk: whole key groups of KIVI blocks, any run of full-precision keys.
      let m = 0;
      while (k < kEnd && m < CHUNK) {
        const sp = segs + <usize>(k * SEG_WORDS) * 4;
        const kind = word(sp, SEG_KIND), n = word(sp, SEG_N);
        const so = s + (<usize>m << 2);
        let take = min(n - kOff, CHUNK - m);
        if (kind == SEG_ROWS) {
          scores_f32(so, T, q, nq, qkv + <usize>(word(sp, SEG_PAGE) + kOff) * qkvRow + <usize>(H + h) * dB, qkvRow, take, d, scale);
        } else {
          const sec = <usize>word(sp, SEG_PAGE) + <usize>(layer * KV + h) * <usize>word(sp, SEG_SECTION);
          const t0 = word(sp, SEG_T0) + kOff;
          if (kind == SEG_F32) scores_f32(so, T, q, nq, sec + <usize>(t0 * dB), dB, take, d, scale);
          else if (kind == SEG_F16) scores_f16(so, T, q, nq, sec + <usize>(t0 * (dB >> 1)), dB >> 1, take, d, scale);
          else {
            // A key block: codes [cap][d·b/32], float16 scales then minimums [cap/G][d]; whole groups only.
            const bits = word(sp, SEG_BITS), G = word(sp, SEG_G), cap = word(sp, SEG_CAP);
            take = take / G * G;
            if (take == 0 && n > kOff) {
              if (m > 0) break; // the next group does not fit: it starts the next chunk
              take = G;
            }
            const scales = sec + <usize>(cap * d * bits / 8);
            const mins = scales + <usize>((cap / G) * d * 2);
            const pg = <usize>(kOff / G * d * 2);
            scores_kivi(so, T, q, nq, sec + <usize>(kOff * d * bits / 8), scales + pg, mins + pg, take, d, bits, G, scale, work);
          }
        }
        m += take;
        kOff += take;
        if (kOff == n) {
          k++;
          kOff = 0;
        }
      }
      online_softmax_chunk(s, T, nq, m, runMax, runSum, out, d);
      // The chunk's values, from as many value segments as cover it; consecutive KIVI value pages go to
      // the kernel as one list (pending: nList pages from chunk token listAt, tokens listN in all).
      let nList = 0, listAt = 0, listN = 0, listBits = 0, listG = 0;
      for (let done = 0; done < m; ) {
        const sp = segs + <usize>(v * SEG_WORDS) * 4;
        const kind = word(sp, SEG_KIND), n = word(sp, SEG_N);
        const take = min(n - vOff, m - done);
        const po = s + (<usize>done << 2);
        const isKivi = kind != SEG_ROWS && kind != SEG_F32 && kind != SEG_F16;
        const bits = word(sp, SEG_BITS), G = word(sp, SEG_G);
        // The pending list ends before a segment of another kind or layout.
        if (nList > 0 && (!isKivi || bits != listBits || G != listG)) {
          accum_kivi_list(out, s + (<usize>listAt << 2), T, nq, list, nList, listN, d, listBits, listG, work);
          nList = 0;
        }
        if (kind == SEG_ROWS) {
          accum_f32(out, po, T, nq, qkv + <usize>(word(sp, SEG_PAGE) + vOff) * qkvRow + <usize>(H + KV + h) * dB, qkvRow, take, d);
        } else {
          const sec = <usize>word(sp, SEG_PAGE) + <usize>(layer * KV + h) * <usize>word(sp, SEG_SECTION);
          const t0 = word(sp, SEG_T0) + vOff;
          if (kind == SEG_F32) accum_f32(out, po, T, nq, sec + <usize>(t0 * dB), dB, take, d);
          else if (kind == SEG_F16) accum_f16(out, po, T, nq, sec + <usize>(t0 * (dB >> 1)), dB >> 1, take, d);
          else {
            // A value page: codes [cap][d·b/32], float16 scales then minimums [cap][d/G]; from slot t0.
            const cap = word(sp, SEG_CAP);
            const scales = sec + <usize>(cap * d * bits / 8);
            const mins = scales + <usize>(cap * (d / G) * 2);
            for (let a = 0; a < take; ) {
              // ... and when full (pages or VCHUNK tokens), or after an odd count (pairs never straddle pages).
              if (nList > 0 && (nList == MAX_LIST || listN == VCHUNK || (listN & 1) != 0)) {
                accum_kivi_list(out, s + (<usize>listAt << 2), T, nq, list, nList, listN, d, listBits, listG, work);
                nList = 0;
              }
              if (nList == 0) {
                listAt = done + a;
                listN = 0;
                listBits = bits;
                listG = G;
              }
              const piece = min(take - a, VCHUNK - listN);
              const pt = <usize>((t0 + a) * (d / G) * 2);
              const le = list + (<usize>nList << 4);
              store<u32>(le, <u32>(sec + <usize>((t0 + a) * d * bits / 8)));
              store<u32>(le, <u32>(scales + pt), 4);
              store<u32>(le, <u32>(mins + pt), 8);
              store<i32>(le, piece, 12);
              nList++;
              listN += piece;
              a += piece;
            }
          }
        }
        done += take;
        vOff += take;
        if (vOff == n) {
          v++;
          vOff = 0;
        }
      }
      if (nList > 0) accum_kivi_list(out, s + (<usize>listAt << 2), T, nq, list, nList, listN, d, listBits, listG, work);
    }
    for (let j = 0; j < nq; j++) {
      const o = out + <usize>(j * dB);
      const inv = f32x4.splat(1 / load<f32>(runSum + (<usize>j << 2)));
      let c: usize = 0;
      for (; c + 16 <= <usize>dB; c += 16) v128.store(o + c, f32x4.mul(v128.load(o + c), inv));
      for (; c < <usize>dB; c += 4) store<f32>(o + c, load<f32>(o + c) * f32x4.extract_lane(inv, 0));
    }
  }
}
