/**
 * One attention task of a step plan (kernels/layout.ts, imported as it is, so the records' layout is
 * defined once): for each kv head, the scores of its query heads over the key segments, one softmax,
 * and the weighted sum of the value segments. Page handles are byte addresses in this memory; a page
 * holds [layer][kv head] sections of SEG_SECTION bytes.
 */
import {
  SEG_BITS, SEG_CAP, SEG_F16, SEG_F32, SEG_G, SEG_KIND, SEG_KIVI_K, SEG_N, SEG_PAGE, SEG_ROWS, SEG_SECTION, SEG_T0,
  SEG_WORDS, TASK_K0, TASK_KN, TASK_ROW, TASK_TOKENS, TASK_V0, TASK_VN, TASK_WORDS,
} from '../../layout';
import { scores_f32, scores_f16, accum_f32, accum_f16 } from './dense';
import { scores_kivi, accum_kivi, kivi_work_bytes } from './kivi';
import { softmax } from './softmax';
import { zero16 } from './common';

@inline function word(p: usize, i: i32): i32 {
  return load<i32>(p + (<usize>i << 2));
}

/** Bytes of scratch one task needs: scores of nq heads over T tokens, then the KIVI kernels' work area. */
export function task_scratch_bytes(nq: i32, T: i32, d: i32): i32 {
  return ((nq * T * 4 + 15) & ~15) + kivi_work_bytes(d, nq);
}

/** Run task i of the table at `tasks` (segments at `segs`) on layer `layer`; qkv/att are the step's activations. */
export function attend_task(tasks: usize, segs: usize, i: i32, layer: i32, qkv: usize, att: usize,
  H: i32, KV: i32, d: i32, scratch: usize): void {
  const tp = tasks + <usize>(i * TASK_WORDS) * 4;
  const nq = H / KV;
  const qkvRow = (H + 2 * KV) * d * 4;
  const row = word(tp, TASK_ROW), T = word(tp, TASK_TOKENS);
  const scale: f32 = 1 / Mathf.sqrt(<f32>d);
  const s = scratch;
  const work = scratch + ((<usize>(nq * T) * 4 + 15) & ~15);
  const dB = d * 4;
  for (let h = 0; h < KV; h++) {
    const q = qkv + <usize>row * qkvRow + <usize>(h * nq) * dB;
    let t = 0;
    for (let k = word(tp, TASK_K0), end = k + word(tp, TASK_KN); k < end; k++) {
      const sp = segs + <usize>(k * SEG_WORDS) * 4;
      const kind = word(sp, SEG_KIND), n = word(sp, SEG_N);
      const so = s + (<usize>t << 2);
      if (kind == SEG_ROWS) {
        scores_f32(so, T, q, nq, qkv + <usize>word(sp, SEG_PAGE) * qkvRow + <usize>(H + h) * dB, qkvRow, n, d, scale);
      } else {
        const sec = <usize>word(sp, SEG_PAGE) + <usize>(layer * KV + h) * <usize>word(sp, SEG_SECTION);
        const t0 = word(sp, SEG_T0);
        if (kind == SEG_F32) scores_f32(so, T, q, nq, sec + <usize>(t0 * dB), dB, n, d, scale);
        else if (kind == SEG_F16) scores_f16(so, T, q, nq, sec + <usize>(t0 * (dB >> 1)), dB >> 1, n, d, scale);
        else {
          // A key block: codes [cap][d·b/32], float16 scales then minimums [cap/G][d].
          const bits = word(sp, SEG_BITS), G = word(sp, SEG_G), cap = word(sp, SEG_CAP);
          const scales = sec + <usize>(cap * d * bits / 8);
          const mins = scales + <usize>((cap / G) * d * 2);
          scores_kivi(so, T, q, nq, sec, scales, mins, n, d, bits, G, scale, work);
        }
      }
      t += n;
    }
    for (let j = 0; j < nq; j++) softmax(s + (<usize>(j * T) << 2), T);
    const out = att + <usize>row * <usize>(H * dB) + <usize>(h * nq) * dB;
    zero16(out, <usize>(nq * dB));
    t = 0;
    for (let k = word(tp, TASK_V0), end = k + word(tp, TASK_VN); k < end; k++) {
      const sp = segs + <usize>(k * SEG_WORDS) * 4;
      const kind = word(sp, SEG_KIND), n = word(sp, SEG_N);
      const po = s + (<usize>t << 2);
      if (kind == SEG_ROWS) {
        accum_f32(out, po, T, nq, qkv + <usize>word(sp, SEG_PAGE) * qkvRow + <usize>(H + KV + h) * dB, qkvRow, n, d);
      } else {
        const sec = <usize>word(sp, SEG_PAGE) + <usize>(layer * KV + h) * <usize>word(sp, SEG_SECTION);
        const t0 = word(sp, SEG_T0);
        if (kind == SEG_F32) accum_f32(out, po, T, nq, sec + <usize>(t0 * dB), dB, n, d);
        else if (kind == SEG_F16) accum_f16(out, po, T, nq, sec + <usize>(t0 * (dB >> 1)), dB >> 1, n, d);
        else {
          // A value page: codes [cap][d·b/32], float16 scales then minimums [cap][d/G]; from slot t0.
          const bits = word(sp, SEG_BITS), G = word(sp, SEG_G), cap = word(sp, SEG_CAP);
          const scales = sec + <usize>(cap * d * bits / 8);
          const mins = scales + <usize>(cap * (d / G) * 2);
          const pt = <usize>(t0 * (d / G) * 2);
          accum_kivi(out, po, T, nq, sec + <usize>(t0 * d * bits / 8), scales + pt, mins + pt, n, d, bits, G, work);
        }
      }
      t += n;
    }
  }
}
