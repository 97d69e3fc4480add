/**
 * One attention task = the nq query heads of one kv head of one token, over a list of key segments and a
 * list of value segments (the cache's blocks, in token order): scores, one softmax, weighted values.
 * Tasks and segments are int32 records written by the JS side (src/kernels/wasm/encode.ts).
 */
import { scores_f32, scores_f16, accum_f32, accum_f16 } from './dense';
import { scores_kivi, accum_kivi } from './kivi';
import { softmax } from './softmax';

@inline function zeroOut(p: usize, bytes: usize): void {
  const e = p + bytes;
  for (; p + 16 <= e; p += 16) v128.store(p, i32x4.splat(0));
  for (; p < e; p += 4) store<f32>(p, 0);
}

// Task record (int32 words).
const T_Q = 0, T_OUT = 1, T_NQ = 2, T_D = 3, T_LEN = 4, T_SCALE = 5, T_K0 = 6, T_KN = 7, T_V0 = 8, T_VN = 9;
export const TASK_WORDS = 10;
// Segment record (int32 words).
const S_KIND = 0, S_N = 1, S_DATA = 2, S_SCALES = 3, S_MINS = 4, S_BITS = 5, S_G = 6;
export const SEG_WORDS = 7;
const KIND_F32 = 0, KIND_F16 = 1;

@inline function word(p: usize, i: i32): i32 {
  return load<i32>(p + (<usize>i << 2));
}

export function task_words(): i32 { return TASK_WORDS; }
export function seg_words(): i32 { return SEG_WORDS; }

export function attend_task(tasks: usize, segs: usize, i: i32, scratch: usize): void {
  const tp = tasks + <usize>(i * TASK_WORDS) * 4;
  const q = <usize>word(tp, T_Q), out = <usize>word(tp, T_OUT);
  const nq = word(tp, T_NQ), d = word(tp, T_D), T = word(tp, T_LEN);
  const scale = reinterpret<f32>(word(tp, T_SCALE));
  const s = scratch;
  const work = scratch + ((<usize>(nq * T) * 4 + 15) & ~15);
  let t = 0;
  for (let k = word(tp, T_K0), end = k + word(tp, T_KN); k < end; k++) {
    const sp = segs + <usize>(k * SEG_WORDS) * 4;
    const kind = word(sp, S_KIND), n = word(sp, S_N), data = <usize>word(sp, S_DATA);
    const so = s + (<usize>t << 2);
    if (kind == KIND_F32) scores_f32(so, T, q, nq, data, n, d, scale);
    else if (kind == KIND_F16) scores_f16(so, T, q, nq, data, n, d, scale);
    else scores_kivi(so, T, q, nq, data, <usize>word(sp, S_SCALES), <usize>word(sp, S_MINS), n, d, word(sp, S_BITS), word(sp, S_G), scale, work);
    t += n;
  }
  for (let j = 0; j < nq; j++) softmax(s + (<usize>(j * T) << 2), T);
  zeroOut(out, <usize>(nq * d) << 2);
  t = 0;
  for (let k = word(tp, T_V0), end = k + word(tp, T_VN); k < end; k++) {
    const sp = segs + <usize>(k * SEG_WORDS) * 4;
    const kind = word(sp, S_KIND), n = word(sp, S_N), data = <usize>word(sp, S_DATA);
    const po = s + (<usize>t << 2);
    if (kind == KIND_F32) accum_f32(out, po, T, nq, data, n, d);
    else if (kind == KIND_F16) accum_f16(out, po, T, nq, data, n, d);
    else accum_kivi(out, po, T, nq, data, <usize>word(sp, S_SCALES), <usize>word(sp, S_MINS), n, d, word(sp, S_BITS), word(sp, S_G), work);
    t += n;
  }
}
