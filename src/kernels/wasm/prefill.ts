/**
 * Which attention tasks of a sub-step can run as prefill blocks (assembly/prefill.ts): runs of
 * consecutive query rows of one chunk that attend the same cache segments and, causally, the chunk's own
 * rows. Found once per plan and sub-step (the same plan serves every layer).
 */

import { SEG_KIND, SEG_N, SEG_PAGE, SEG_ROWS, SEG_WORDS, TASK_K0, TASK_KN, TASK_ROW, TASK_V0, TASK_VN, TASK_WORDS } from '../layout.js';
import type { StepPlan } from '../plan.js';

/** Most query rows per block: a key tile read once serves them all from L1. */
export const PREFILL_BLOCK = 16;
/** Bytes of scores a block may hold (rows × query heads per kv head × tokens × 4): fewer rows at long contexts. */
const BLOCK_SCORE_BYTES = 1 << 21;

/** Query rows per block for tasks attending up to maxTokens tokens with nq query heads per kv head (≥ 2). */
export function prefillBlockRows(nq: number, maxTokens: number): number {
  return Math.max(2, Math.min(PREFILL_BLOCK, Math.floor(BLOCK_SCORE_BYTES / (nq * (maxTokens + 4) * 4))));
}

export interface PrefillItems {
  /** (first task, count) pairs; count 0: a task run alone. */
  items: Int32Array;
  nItems: number;
  /** Most query rows in one block. */
  blockRows: number;
  /** Tasks in blocks (0: nothing to gain, run the tasks as usual). */
  blocked: number;
  /** Activation rows the blocks read keys and values from: [p0, p0 + np). */
  p0: number;
  np: number;
}

/** The chunk-rows segment that ends task o's keys (or values), or -1. */
function rowsSeg(tasks: Int32Array, segs: Int32Array, o: number, first: number, count: number): number {
  if (tasks[o + count]! === 0) return -1;
  const s = (tasks[o + first]! + tasks[o + count]! - 1) * SEG_WORDS;
  return segs[s + SEG_KIND] === SEG_ROWS ? s : -1;
}

/** Task o's last key and value segments are the same causal rows [r0, row]: its r0, or -1. */
function causalStart(tasks: Int32Array, segs: Int32Array, o: number): number {
  const k = rowsSeg(tasks, segs, o, TASK_K0, TASK_KN);
  const v = rowsSeg(tasks, segs, o, TASK_V0, TASK_VN);
  if (k < 0 || v < 0) return -1;
  const r0 = segs[k + SEG_PAGE]!;
  const n = segs[k + SEG_N]!;
  if (segs[v + SEG_PAGE] !== r0 || segs[v + SEG_N] !== n || r0 + n - 1 !== tasks[o + TASK_ROW]) return -1;
  return r0;
}

/** Tasks a and b (record offsets) attend the same segments before their last (key and value) ones. */
function sameCacheSegs(tasks: Int32Array, segs: Int32Array, a: number, b: number): boolean {
  for (const [first, count] of [
    [TASK_K0, TASK_KN],
    [TASK_V0, TASK_VN],
  ] as const) {
    const n = tasks[a + count]!;
    if (tasks[b + count] !== n) return false;
    const sa = tasks[a + first]! * SEG_WORDS,
      sb = tasks[b + first]! * SEG_WORDS;
    for (let i = 0; i < (n - 1) * SEG_WORDS; i++) if (segs[sa + i] !== segs[sb + i]) return false;
  }
  return true;
}

export class PrefillPlanner {
  private key = { plan: null as StepPlan | null, epoch: -1, sub: -1 };
  private out: PrefillItems = { items: new Int32Array(256), nItems: 0, blockRows: PREFILL_BLOCK, blocked: 0, p0: 0, np: 0 };

  /** The items of tasks [t0, t0 + nt) of `plan` (sub-step `sub`), for nq query heads per kv head. */
  items(plan: StepPlan, sub: number, t0: number, nt: number, nq: number): PrefillItems {
    const k = this.key;
    if (k.plan === plan && k.epoch === plan.epoch && k.sub === sub) return this.out;
    k.plan = plan;
    k.epoch = plan.epoch;
    k.sub = sub;
    const out = this.out;
    const maxRows = prefillBlockRows(nq, plan.maxTokens);
    out.blockRows = maxRows;
    if (out.items.length < nt * 2) out.items = new Int32Array(Math.max(nt * 2, out.items.length * 2));
    const { tasks, segs } = plan;
    const items = out.items;
    let n = 0;
    let blocked = 0;
    let lo = Infinity,
      hi = -Infinity;
    // The open block: its first task, size, r0 and last row.
    let b0 = -1,
      bn = 0,
      br0 = -1,
      bRow = -1;
    // A block of one task (a decoded token) gains nothing: it runs alone.
    const close = () => {
      if (b0 < 0) return;
      items[n * 2] = b0;
      items[n * 2 + 1] = bn > 1 ? bn : 0;
      n++;
      if (bn > 1) {
        blocked += bn;
        lo = Math.min(lo, br0);
        hi = Math.max(hi, bRow + 1);
      }
      b0 = -1;
    };
    for (let i = t0; i < t0 + nt; i++) {
      const o = i * TASK_WORDS;
      const r0 = causalStart(tasks, segs, o);
      if (r0 < 0) {
        close();
        items[n * 2] = i;
        items[n * 2 + 1] = 0;
        n++;
        continue;
      }
      const row = tasks[o + TASK_ROW]!;
      const joins = b0 >= 0 && bn < maxRows && r0 === br0 && row === bRow + 1 && sameCacheSegs(tasks, segs, b0 * TASK_WORDS, o);
      if (!joins) {
        close();
        b0 = i;
        bn = 0;
        br0 = r0;
      }
      bn++;
      bRow = row;
    }
    close();
    out.nItems = n;
    out.blocked = blocked;
    out.p0 = blocked > 0 ? lo : 0;
    out.np = blocked > 0 ? hi - lo : 0;
    return out;
  }
}
