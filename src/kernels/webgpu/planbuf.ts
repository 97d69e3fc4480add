/**
 * A step plan (kernels/plan.ts) as the WebGPU kernels read it: one u32 table uploaded once per plan,
 * holding GPU segment records (page handles resolved to arena slot and word offset, or page runs
 * resolved to their page table's place in pagetables.ts; each segment's first token within its task or job), task records, the job tables, and per sub-step the work lists of each
 * dispatch: attention items (a task's kv head and a run of its tokens: long tasks are split so that the
 * GPU has enough workgroups), merge items, and job items (job, kv head).
 */

import { KiviError } from '../../util/errors.js';
import {
  JOB_DST,
  JOB_FAKE_CHANNEL,
  JOB_FAKE_TOKEN,
  JOB_KIND,
  JOB_QKEY,
  JOB_QVAL,
  JOB_SRC0,
  JOB_SRCN,
  JOB_STORE,
  JOB_WORDS,
  SEG_BITS,
  SEG_CAP,
  SEG_F16,
  SEG_F32,
  SEG_G,
  SEG_KIND,
  SEG_KIVI_K,
  SEG_KIVI_V,
  SEG_N,
  SEG_PAGE,
  SEG_ROWS,
  SEG_RUN,
  SEG_SECTION,
  SEG_T0,
  SEG_WORDS,
  TASK_K0,
  TASK_KN,
  TASK_ROW,
  TASK_TOKENS,
  TASK_V0,
  TASK_VN,
  TASK_WORDS,
} from '../layout.js';
import type { StepPlan } from '../plan.js';
import type { AttnShape } from '../types.js';
import { partialFloats, TILE } from './attention.js';
import type { PageTables } from './pagetables.js';
import { pageSlot, pageWord } from './pool.js';
import { GSEG_WORDS, GTASK_WORDS, ITEM_WORDS, JOBITEM_WORDS, MERGE_WORDS, NO_PARTIAL } from './records.js';

/** Word 0 of a GPU segment record that is a page run (its word 2: the plan buffer's word where its page table starts). */
export const GSEG_RUN = 0x80000000;

/**
 * Attention work items wanted per plan: enough workgroups to fill a large GPU (an H200 holds about a
 * thousand of these at once) while the partials stay few (the merge reads them from L2). Items are
 * whole tiles of TILE tokens, at least one.
 */
const TARGET_ITEMS = targetItems();

/** KIVI_WEBGPU_ATTN_ITEMS (Node) overrides the 2048, for sweeping the split on a GPU in one session. */
function targetItems(): number {
  const v = typeof process !== 'undefined' ? process.env?.KIVI_WEBGPU_ATTN_ITEMS : undefined;
  const n = v ? Number(v) : Number.NaN;
  return Number.isInteger(n) && n >= 1 && n <= 1 << 20 ? n : 2048;
}

export interface SubLists {
  attn: number;
  nAttn: number;
  /** Items of the bulk kernel (bulk.ts): runs of whole 32-token blocks in quantized key and value pages. */
  bulk: number;
  nBulk: number;
  merge: number;
  nMerge: number;
  pre: number;
  nPre: number;
  post: number;
  nPost: number;
}

export interface GpuPlan {
  words: Uint32Array;
  used: number;
  tasks: number;
  preJobs: number;
  postJobs: number;
  subs: SubLists[];
  /** Partials (splits) of the whole plan. */
  partials: number;
  /** Code width of the plan's bulk items (0: none). */
  bulkBits: number;
  /**
   * Floats of the bulk items' scores (a float a token and query head), kept after the partials in the
   * partials buffer when the bulk kernel runs split (bulk.ts BulkPhase); a bulk item's word 7 is where
   * its scores start there.
   */
  bulkScores: number;
  /** Most tokens one task hands the bulk kernel (its build for long plans: BulkBuild.long). */
  bulkLongest: number;
  /** Words holding a page run's table offset within the table space (the uploader adds where that space starts). */
  runWords: number[];
}

class Words {
  a = new Uint32Array(4096);
  n = 0;
  ensure(k: number): void {
    if (this.n + k > this.a.length) {
      const b = new Uint32Array(Math.max(this.n + k, this.a.length * 2));
      b.set(this.a.subarray(0, this.n));
      this.a = b;
    }
  }
}

const w = new Words();
const bw = new Words();
const runWords: number[] = [];

/**
 * Which tasks' quantized prefix goes to the bulk kernel: `cw(bits)` is the channels a bulk thread owns
 * at that code width (0: no bulk kernel for it on this device), `minTokens` the shortest prefix worth a
 * bulk item, `itemTokens` the fewest tokens a bulk item is given (a whole pass of its lanes), `items` the
 * bulk items wanted per plan (a step's tokens cut as for the general kernel's TARGET_ITEMS; 0: that count).
 */
export interface BulkPolicy {
  cw(bits: number): number;
  minTokens: number;
  itemTokens: number;
  items: number;
}

/** Tokens per bulk block (bulk.ts BLOCK). */
const BULK_BLOCK = 32;
/** Per task of the plan being built: tokens [0, n) that go to the bulk kernel. */
let bulkTokens = new Uint32Array(64);

/** Build the GPU tables of a plan (the returned words are valid until the next build). */
export function buildPlan(plan: StepPlan, shape: AttnShape, tables: PageTables | null = null, bulk: BulkPolicy | null = null): GpuPlan {
  const { numKvHeads: KV } = shape;
  const sg = plan.segs;
  w.n = 0;
  runWords.length = 0;
  // Segment records; `start` filled per list below.
  const nSegs = plan.nSegs;
  w.ensure(nSegs * GSEG_WORDS);
  for (let i = 0; i < nSegs; i++) {
    const o = i * SEG_WORDS;
    const kind = sg[o + SEG_KIND]!,
      page = sg[o + SEG_PAGE]!;
    const g = i * GSEG_WORDS;
    const rows = kind === SEG_ROWS;
    if (kind & SEG_RUN) {
      if (!tables) throw new Error('webgpu: a page run without page tables');
      w.a[g] = (kind & ~SEG_RUN) | (sg[o + SEG_BITS]! << 8) | GSEG_RUN;
      w.a[g + 2] = tables.offset(plan.lists[page]!);
      runWords.push(g + 2);
    } else {
      w.a[g] = kind | (sg[o + SEG_BITS]! << 8) | ((rows ? 0 : pageSlot(page)) << 16);
      w.a[g + 2] = rows ? page : pageWord(page);
    }
    w.a[g + 1] = sg[o + SEG_N]!;
    w.a[g + 3] = sg[o + SEG_T0]!;
    w.a[g + 4] = sg[o + SEG_CAP]!;
    w.a[g + 5] = sg[o + SEG_G]!;
    w.a[g + 6] = sg[o + SEG_SECTION]! / 4;
    w.a[g + 7] = 0;
  }
  w.n = nSegs * GSEG_WORDS;
  const starts = (s0: number, n: number) => {
    let t = 0;
    for (let s = s0; s < s0 + n; s++) {
      w.a[s * GSEG_WORDS + 7] = t;
      t += sg[s * SEG_WORDS + SEG_N]!;
    }
  };

  // Tasks.
  const tasks = w.n;
  let bulkBits = 0,
    bulkLongest = 0;
  if (bulkTokens.length < plan.nTasks) bulkTokens = new Uint32Array(Math.max(plan.nTasks, bulkTokens.length * 2));
  w.ensure(plan.nTasks * GTASK_WORDS);
  const tk = plan.tasks;
  for (let i = 0; i < plan.nTasks; i++) {
    const o = i * TASK_WORDS;
    const k0 = tk[o + TASK_K0]!,
      kn = tk[o + TASK_KN]!,
      v0 = tk[o + TASK_V0]!,
      vn = tk[o + TASK_VN]!;
    starts(k0, kn);
    starts(v0, vn);
    // KIVI key blocks come first, whole groups each, so key groups sit at multiples of G from token 0.
    let kb = 0,
      kbits = 0,
      kG = 0,
      // Whether every quantized page of the task holds whole bulk blocks (bulk.ts) from a block boundary.
      blocks = true;
    for (let s = k0; s < k0 + kn; s++) {
      const so = s * SEG_WORDS;
      const kind = sg[so + SEG_KIND]! & ~SEG_RUN;
      checkKind(kind, false);
      if (kind !== SEG_KIVI_K) continue;
      const G = sg[so + SEG_G]!,
        n = sg[so + SEG_N]!,
        b = sg[so + SEG_BITS]!;
      if (kb !== w.a[s * GSEG_WORDS + 7] || sg[so + SEG_T0]! % G !== 0 || n % G !== 0 || (kG && (G !== kG || b !== kbits))) {
        throw new Error('webgpu: KIVI key segments must come first in a task, whole groups of one spec');
      }
      kb += n;
      kG = G;
      kbits = b;
      if (sg[so + SEG_CAP]! % BULK_BLOCK !== 0 || sg[so + SEG_T0]! % BULK_BLOCK !== 0) blocks = false;
    }
    let vbits = 0,
      vG = 0,
      // Quantized value tokens at the head of the task.
      vq = 0,
      lead = true;
    if (kb % BULK_BLOCK !== 0) blocks = false;
    for (let s = v0; s < v0 + vn; s++) {
      const so = s * SEG_WORDS;
      const kind = sg[so + SEG_KIND]! & ~SEG_RUN;
      checkKind(kind, true);
      if (kind !== SEG_KIVI_V) {
        lead = false;
        continue;
      }
      const G = sg[so + SEG_G]!,
        b = sg[so + SEG_BITS]!;
      if (vG && (G !== vG || b !== vbits)) throw new Error("webgpu: a task's KIVI value segments must share one spec");
      vG = G;
      vbits = b;
      if (lead) {
        vq += sg[so + SEG_N]!;
        if (sg[so + SEG_CAP]! % BULK_BLOCK !== 0 || sg[so + SEG_T0]! % BULK_BLOCK !== 0) blocks = false;
      }
    }
    let nb = 0;
    // One code width of bulk items a plan (one bulk dispatch): tasks of another width take the general kernel.
    if (bulk && blocks && kbits === vbits && kG % BULK_BLOCK === 0 && (bulkBits === 0 || bulkBits === kbits)) {
      const cw = bulk.cw(kbits);
      if (cw > 0 && vG % cw === 0) nb = Math.floor(Math.min(kb, vq) / BULK_BLOCK) * BULK_BLOCK;
      if (nb < bulk.minTokens) nb = 0;
      if (nb > 0) bulkBits = kbits;
    }
    bulkTokens[i] = nb;
    bulkLongest = Math.max(bulkLongest, nb);
    const g = tasks + i * GTASK_WORDS;
    w.a[g] = tk[o + TASK_ROW]!;
    w.a[g + 1] = k0;
    w.a[g + 2] = kn;
    w.a[g + 3] = v0;
    w.a[g + 4] = vn;
    w.a[g + 5] = tk[o + TASK_TOKENS]!;
    w.a[g + 6] = kb;
    w.a[g + 7] = vbits | (vG << 8);
  }
  w.n = tasks + plan.nTasks * GTASK_WORDS;

  // Job tables (as the plan has them; sources' starts within each job).
  const jobTable = (jobs: Int32Array, n: number): number => {
    const at = w.n;
    w.ensure(n * JOB_WORDS);
    for (let j = 0; j < n; j++) {
      const o = j * JOB_WORDS;
      const kind = jobs[o + JOB_KIND]!;
      if (kind === JOB_FAKE_TOKEN || kind === JOB_FAKE_CHANNEL) {
        throw new KiviError('simulated-quantization (fake) caches run on the CPU back ends only (ts, wasm), not on webgpu');
      }
      if (kind !== JOB_STORE && kind !== JOB_QKEY && kind !== JOB_QVAL) throw new Error(`webgpu: unknown cache job kind ${kind}`);
      checkJob(plan, jobs, j);
      starts(jobs[o + JOB_SRC0]!, jobs[o + JOB_SRCN]!);
      for (let k = 0; k < JOB_WORDS; k++) w.a[at + o + k] = jobs[o + k]!;
    }
    w.n = at + n * JOB_WORDS;
    return at;
  };
  const preJobs = jobTable(plan.pre, plan.nPre);
  const postJobs = jobTable(plan.post, plan.nPost);

  // Attention items of every sub-step, contiguous in sub-step order (so the sub-steps' attention can be
  // one dispatch, see backend.ts), partials numbered across the plan; then merge items likewise.
  let total = 0;
  for (let i = 0; i < plan.nTasks; i++) total += tk[i * TASK_WORDS + TASK_TOKENS]! * KV;
  const cut = (items: number) => Math.max(1, Math.ceil(total / items / TILE)) * TILE;
  const split = cut(TARGET_ITEMS);
  const splitB = bulk ? Math.max(bulk.items ? cut(bulk.items) : split, bulk.itemTokens) : split;
  const subs: SubLists[] = [];
  let partials = 0;
  const merges: number[] = [];
  const mergeAt: number[] = [];
  const bulkAt: number[] = [];
  bw.n = 0;
  const NQ = shape.numHeads / KV;
  let bulkScores = 0;
  // One item of task i, kv head h over tokens [a, b) into list l, from segment cursors ks, vs.
  const item = (l: Words, i: number, h: number, a: number, b: number, ks: number, vs: number, pidx: number, scores = 0): void => {
    l.ensure(ITEM_WORDS);
    const g = l.n;
    l.a[g] = i;
    l.a[g + 1] = h;
    l.a[g + 2] = a;
    l.a[g + 3] = b;
    l.a[g + 4] = ks;
    l.a[g + 5] = vs;
    l.a[g + 6] = pidx;
    l.a[g + 7] = scores;
    l.n += ITEM_WORDS;
  };
  for (let s = 0; s < plan.nSubs; s++) {
    const r = plan.sub(s);
    const t0 = r[0]!,
      nt = r[1]!;
    const attn = w.n;
    mergeAt.push(merges.length);
    bulkAt.push(bw.n);
    for (let i = t0; i < t0 + nt; i++) {
      const o = i * TASK_WORDS;
      const T = tk[o + TASK_TOKENS]!;
      const nb = bulkTokens[i]!;
      const bulkPieces = Math.ceil(nb / splitB);
      const pieces = Math.ceil((T - nb) / split);
      const k0 = tk[o + TASK_K0]!,
        v0 = tk[o + TASK_V0]!;
      for (let h = 0; h < KV; h++) {
        let ks = k0,
          vs = v0;
        const p0 = partials;
        const seek = (a: number) => {
          while (a >= w.a[ks * GSEG_WORDS + 7]! + w.a[ks * GSEG_WORDS + 1]!) ks++;
          while (a >= w.a[vs * GSEG_WORDS + 7]! + w.a[vs * GSEG_WORDS + 1]!) vs++;
        };
        for (let q = 0; q < bulkPieces; q++) {
          const a = q * splitB;
          seek(a);
          const b = Math.min(nb, a + splitB);
          item(bw, i, h, a, b, ks, vs, pieces + bulkPieces === 1 ? NO_PARTIAL : partials++, bulkScores);
          bulkScores += (b - a) * NQ;
        }
        for (let q = 0; q < pieces; q++) {
          const a = nb + q * split;
          seek(a);
          item(w, i, h, a, Math.min(T, a + split), ks, vs, pieces + bulkPieces === 1 ? NO_PARTIAL : partials++);
        }
        if (pieces + bulkPieces > 1) merges.push(i, h, p0, pieces + bulkPieces);
      }
    }
    subs.push({
      attn,
      nAttn: (w.n - attn) / ITEM_WORDS,
      bulk: 0,
      nBulk: (bw.n - bulkAt[s]!) / ITEM_WORDS,
      merge: 0,
      nMerge: 0,
      pre: 0,
      nPre: 0,
      post: 0,
      nPost: 0,
    });
  }
  // The bulk items of every sub-step, contiguous in sub-step order like the general ones; their scores
  // after the plan's partials.
  const scores0 = partials * partialFloats(shape);
  for (let g = 0; g < bw.n; g += ITEM_WORDS) bw.a[g + 7] += scores0;
  const bulk0 = w.n;
  w.ensure(bw.n);
  w.a.set(bw.a.subarray(0, bw.n), w.n);
  w.n += bw.n;
  for (let s = 0; s < plan.nSubs; s++) subs[s]!.bulk = bulk0 + bulkAt[s]!;
  const merge0 = w.n;
  w.ensure(merges.length);
  for (let k = 0; k < merges.length; k++) w.a[w.n++] = merges[k]!;
  for (let s = 0; s < plan.nSubs; s++) {
    const end = s + 1 < plan.nSubs ? mergeAt[s + 1]! : merges.length;
    subs[s]!.merge = merge0 + mergeAt[s]!;
    subs[s]!.nMerge = (end - mergeAt[s]!) / MERGE_WORDS;
  }
  // Job items per sub-step: (job, kv head).
  const items = (j0: number, n: number): number => {
    const at = w.n;
    w.ensure(n * KV * JOBITEM_WORDS);
    for (let j = j0; j < j0 + n; j++) {
      for (let h = 0; h < KV; h++) {
        w.a[w.n++] = j;
        w.a[w.n++] = h;
      }
    }
    return at;
  };
  for (let s = 0; s < plan.nSubs; s++) {
    const r = plan.sub(s);
    const sub = subs[s]!;
    sub.pre = items(r[2]!, r[3]!);
    sub.nPre = r[3]! * KV;
    sub.post = items(r[4]!, r[5]!);
    sub.nPost = r[5]! * KV;
  }
  return { words: w.a, used: w.n, tasks, preJobs, postJobs, subs, partials, runWords, bulkBits, bulkScores, bulkLongest };
}

function checkKind(kind: number, values: boolean): void {
  const ok = kind === SEG_ROWS || kind === SEG_F32 || kind === SEG_F16 || kind === (values ? SEG_KIVI_V : SEG_KIVI_K);
  if (!ok) throw new Error(`webgpu: a ${values ? 'value' : 'key'} segment of kind ${kind}`);
}

function checkJob(plan: StepPlan, jobs: Int32Array, j: number): void {
  const o = j * JOB_WORDS;
  const kind = jobs[o + JOB_KIND]!;
  const d = jobs[o + JOB_DST]! * SEG_WORDS;
  const sg = plan.segs;
  const dKind = sg[d + SEG_KIND]!;
  if (dKind & SEG_RUN) throw new Error(`cache job ${j}: a page run as destination`);
  let n = 0;
  for (let s = jobs[o + JOB_SRC0]!, e = s + jobs[o + JOB_SRCN]!; s < e; s++) {
    const k = sg[s * SEG_WORDS + SEG_KIND]!;
    if (k !== SEG_ROWS && k !== SEG_F32 && k !== SEG_F16) throw new Error(`cache job ${j}: source of kind ${k}`);
    n += sg[s * SEG_WORDS + SEG_N]!;
  }
  if (n !== sg[d + SEG_N]!) throw new Error(`cache job ${j}: ${n} source tokens for ${sg[d + SEG_N]} destination slots`);
  if (kind === JOB_STORE && dKind !== SEG_F32 && dKind !== SEG_F16) throw new Error(`cache job ${j}: store into a page of kind ${dKind}`);
  if (kind === JOB_QKEY && (dKind !== SEG_KIVI_K || sg[d + SEG_T0] !== 0 || sg[d + SEG_N] !== sg[d + SEG_CAP])) {
    throw new Error(`cache job ${j}: a key block must be written whole`);
  }
  if (kind === JOB_QVAL && dKind !== SEG_KIVI_V) throw new Error(`cache job ${j}: values quantized into a page of kind ${dKind}`);
}
