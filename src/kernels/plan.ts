/**
 * A step plan: the cache and attention work of one forward call, written by the caches as int32
 * records (layout.ts) and run by a back end layer after layer. Sequences' work is listed per sub-step:
 * sub-step j holds the j-th decoded token of every decoding sequence (and, at j = 0, every chunk that is
 * prefilled at once), because a sequence's decoded tokens must pass through its cache one after the
 * other. Each sub-step has three phases, run in order for every layer:
 *   pre:  jobs whose results the attention reads (only simulated-quantization caches have any);
 *   attention tasks (one per query row);
 *   post: jobs that fold the new tokens into the caches (store, quantize).
 * Jobs of one phase never read what another job of that phase writes, so a back end may run them in any
 * order or in parallel; pages freed while planning are returned only after the plan has run, so no page
 * is written by one phase while an earlier one still reads it.
 */
import {
  JOB_BITS,
  JOB_DST,
  JOB_HALF,
  JOB_KIND,
  JOB_SRC0,
  JOB_SRCN,
  JOB_WORDS,
  SEG_BITS,
  SEG_CAP,
  SEG_G,
  SEG_KIND,
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
} from './layout.js';

/**
 * A cache's pages that only grow at the end until reset(): a back end that takes page runs keeps a
 * copy on its device and sends only the pages added since, so planning a step costs O(pages added),
 * not O(pages held).
 */
export class PageList {
  readonly pages: number[] = [];
  /** Set by a back end holding a copy; called once at the next reset(). */
  onReset: (() => void) | null = null;

  /** Entries other than at the end changed (cleared, dropped): a device copy is stale. */
  reset(): void {
    const f = this.onReset;
    this.onReset = null;
    f?.();
  }
}

/** A run of tokens for a plan: where it is (a page or activation rows) and in what format. */
export interface SegmentSpec {
  kind: number;
  page: number;
  t0: number;
  n: number;
  cap: number;
  bits: number;
  G: number;
  section: number;
}

export type Phase = 'pre' | 'post';

/** Per sub-step ranges: first task, tasks, first pre job, pre jobs, first post job, post jobs. */
export const SUB_WORDS = 6;

export class StepPlan {
  segs: Int32Array = new Int32Array(SEG_WORDS * 256);
  nSegs = 0;
  tasks: Int32Array = new Int32Array(TASK_WORDS * 64);
  nTasks = 0;
  pre: Int32Array = new Int32Array(JOB_WORDS * 16);
  nPre = 0;
  post: Int32Array = new Int32Array(JOB_WORDS * 64);
  nPost = 0;
  subs: Int32Array = new Int32Array(SUB_WORDS * 4);
  nSubs = 0;
  /**
   * Caches may add whole page lists as one segment (keyRun, valueRun) instead of a segment per page:
   * set by the plan's user where its back end takes them (Backend.pageRuns).
   */
  pageRuns = false;
  /** The page lists that run segments name (SEG_PAGE indexes this). */
  readonly lists: PageList[] = [];
  private readonly listAt = new Map<PageList, number>();
  /** Pages to return to their pool once the plan has run. */
  readonly freed: number[] = [];
  /** Largest number of tokens any task attends (sizes back ends' scratch). */
  maxTokens = 0;
  private openTask = -1;
  private inValues = false;
  private openJob: { phase: Phase; index: number } | null = null;

  private readonly dry: boolean;
  private readonly noTasks: boolean;

  /** False where task() and its segments are ignored ('jobs', 'dry'): caches skip listing their pages then. */
  get takesTasks(): boolean {
    return !this.noTasks;
  }

  /**
   * @param mode 'full': every record; 'jobs': the cache jobs only (filling caches without attending);
   *   'dry': nothing but the freed pages (page bookkeeping for budgets).
   */
  constructor(readonly mode: 'full' | 'jobs' | 'dry' = 'full') {
    this.dry = mode === 'dry';
    this.noTasks = mode !== 'full';
  }

  /** Counts clear() calls: a back end that copies the tables can tell a new plan from the same one. */
  epoch = 0;

  clear(): void {
    this.epoch++;
    this.nSegs = this.nTasks = this.nPre = this.nPost = this.nSubs = 0;
    this.freed.length = 0;
    this.lists.length = 0;
    this.listAt.clear();
    this.maxTokens = 0;
    this.openTask = -1;
    this.openJob = null;
  }

  /** Start sub-step nSubs; tasks and jobs added from now on belong to it. */
  beginSubstep(): void {
    this.closeTask();
    if (this.subs.length < (this.nSubs + 1) * SUB_WORDS) this.subs = grow(this.subs, (this.nSubs + 1) * SUB_WORDS);
    const o = this.nSubs * SUB_WORDS;
    this.subs[o] = this.nTasks;
    this.subs[o + 1] = 0;
    this.subs[o + 2] = this.nPre;
    this.subs[o + 3] = 0;
    this.subs[o + 4] = this.nPost;
    this.subs[o + 5] = 0;
    this.nSubs++;
  }

  /** Start the attention task of activation row `row`, attending `tokens` tokens (segments follow). */
  task(row: number, tokens: number): void {
    if (this.noTasks) return;
    this.closeTask();
    if (this.nSubs === 0) throw new Error('StepPlan: task before any sub-step');
    if (this.tasks.length < (this.nTasks + 1) * TASK_WORDS) this.tasks = grow(this.tasks, (this.nTasks + 1) * TASK_WORDS);
    const o = this.nTasks * TASK_WORDS;
    const t = this.tasks;
    t[o + TASK_ROW] = row;
    t[o + TASK_K0] = this.nSegs;
    t[o + TASK_KN] = 0;
    t[o + TASK_V0] = this.nSegs;
    t[o + TASK_VN] = 0;
    t[o + TASK_TOKENS] = tokens;
    this.openTask = this.nTasks++;
    this.inValues = false;
    this.subs[(this.nSubs - 1) * SUB_WORDS + 1]++;
    if (tokens > this.maxTokens) this.maxTokens = tokens;
  }

  /** Add a key segment to the open task (all keys before any value). */
  key(kind: number, page: number, t0: number, n: number, cap = 0, section = 0, bits = 0, G = 0): void {
    if (this.noTasks) return;
    if (n === 0) return;
    if (this.openTask < 0 || this.inValues) throw new Error('StepPlan: key segment outside a task, or after its values');
    this.seg(kind, page, t0, n, cap, section, bits, G);
    this.tasks[this.openTask * TASK_WORDS + TASK_KN]++;
  }

  /** Add a value segment to the open task. */
  value(kind: number, page: number, t0: number, n: number, cap = 0, section = 0, bits = 0, G = 0): void {
    if (this.noTasks) return;
    if (n === 0) return;
    if (this.openTask < 0) throw new Error('StepPlan: value segment outside a task');
    const o = this.openTask * TASK_WORDS;
    if (!this.inValues) {
      this.inValues = true;
      this.tasks[o + TASK_V0] = this.nSegs;
    }
    this.seg(kind, page, t0, n, cap, section, bits, G);
    this.tasks[o + TASK_VN]++;
  }

  /**
   * Tokens [t0, t0 + n) of a page list of `cap` tokens a page, as one key segment (pageRuns only).
   * The list may only grow at its end until the plan has run.
   */
  keyRun(kind: number, list: PageList, t0: number, n: number, cap: number, section: number, bits = 0, G = 0): void {
    if (!this.pageRuns) throw new Error('StepPlan: a page run in a plan without pageRuns');
    this.key(kind | SEG_RUN, this.listIndex(list), t0, n, cap, section, bits, G);
  }

  /** Tokens of a page list as one value segment (see keyRun). */
  valueRun(kind: number, list: PageList, t0: number, n: number, cap: number, section: number, bits = 0, G = 0): void {
    if (!this.pageRuns) throw new Error('StepPlan: a page run in a plan without pageRuns');
    this.value(kind | SEG_RUN, this.listIndex(list), t0, n, cap, section, bits, G);
  }

  private listIndex(list: PageList): number {
    let i = this.listAt.get(list);
    if (i === undefined) {
      i = this.lists.push(list) - 1;
      this.listAt.set(list, i);
    }
    return i;
  }

  /** Rows [row, row + n) of the step's activations as a key or value segment. */
  keyRows(row: number, n: number): void {
    this.key(SEG_ROWS, row, 0, n);
  }

  valueRows(row: number, n: number): void {
    this.value(SEG_ROWS, row, 0, n);
  }

  /** Start a job; add its sources with src() and end it with dst(). */
  job(phase: Phase, kind: number, half: number, bits = 0): void {
    if (this.dry) return;
    this.closeTask();
    if (this.nSubs === 0) throw new Error('StepPlan: job before any sub-step');
    if (this.openJob) throw new Error('StepPlan: job started before the previous one got its destination');
    const pre = phase === 'pre';
    const count = pre ? this.nPre : this.nPost;
    let arr = pre ? this.pre : this.post;
    if (arr.length < (count + 1) * JOB_WORDS) {
      arr = grow(arr, (count + 1) * JOB_WORDS);
      if (pre) this.pre = arr;
      else this.post = arr;
    }
    const o = count * JOB_WORDS;
    arr[o + JOB_KIND] = kind;
    arr[o + JOB_HALF] = half;
    arr[o + JOB_SRC0] = this.nSegs;
    arr[o + JOB_SRCN] = 0;
    arr[o + JOB_DST] = -1;
    arr[o + JOB_BITS] = bits;
    this.openJob = { phase, index: count };
    if (pre) this.nPre++;
    else this.nPost++;
    this.subs[(this.nSubs - 1) * SUB_WORDS + (pre ? 3 : 5)]++;
  }

  /** A source segment of the open job. */
  src(kind: number, page: number, t0: number, n: number, cap = 0, section = 0, bits = 0, G = 0): void {
    if (this.dry) return;
    const j = this.openJob;
    if (!j) throw new Error('StepPlan: source outside a job');
    if (n === 0) return;
    const arr = j.phase === 'pre' ? this.pre : this.post;
    this.seg(kind, page, t0, n, cap, section, bits, G);
    arr[j.index * JOB_WORDS + JOB_SRCN]++;
  }

  /** The open job's destination; ends the job. */
  dst(kind: number, page: number, t0: number, n: number, cap: number, section: number, bits = 0, G = 0): void {
    if (this.dry) return;
    const j = this.openJob;
    if (!j) throw new Error('StepPlan: destination outside a job');
    const arr = j.phase === 'pre' ? this.pre : this.post;
    arr[j.index * JOB_WORDS + JOB_DST] = this.nSegs;
    this.seg(kind, page, t0, n, cap, section, bits, G);
    this.openJob = null;
  }

  /** Return `page` to its pool after the plan has run. */
  deferFree(page: number): void {
    this.freed.push(page);
  }

  /** Check every task and job is complete. */
  validate(): void {
    this.closeTask();
    if (this.openJob) throw new Error('StepPlan: a job has no destination');
  }

  /** Ranges of sub-step s: [task0, tasks, pre0, pres, post0, posts]. */
  sub(s: number): Int32Array {
    return this.subs.subarray(s * SUB_WORDS, (s + 1) * SUB_WORDS);
  }

  /** A segment's fields, for tests and back ends that prefer objects off the hot path. */
  segment(i: number): SegmentSpec {
    const o = i * SEG_WORDS;
    const s = this.segs;
    return {
      kind: s[o + SEG_KIND]!,
      n: s[o + SEG_N]!,
      page: s[o + SEG_PAGE]!,
      t0: s[o + SEG_T0]!,
      cap: s[o + SEG_CAP]!,
      bits: s[o + SEG_BITS]!,
      G: s[o + SEG_G]!,
      section: s[o + SEG_SECTION]!,
    };
  }

  private seg(kind: number, page: number, t0: number, n: number, cap: number, section: number, bits: number, G: number): void {
    if (this.segs.length < (this.nSegs + 1) * SEG_WORDS) this.segs = grow(this.segs, (this.nSegs + 1) * SEG_WORDS);
    const o = this.nSegs * SEG_WORDS;
    const s = this.segs;
    s[o + SEG_KIND] = kind;
    s[o + SEG_N] = n;
    s[o + SEG_PAGE] = page;
    s[o + SEG_T0] = t0;
    s[o + SEG_CAP] = cap;
    s[o + SEG_BITS] = bits;
    s[o + SEG_G] = G;
    s[o + SEG_SECTION] = section;
    this.nSegs++;
  }

  private closeTask(): void {
    if (this.openTask < 0) return;
    const o = this.openTask * TASK_WORDS;
    const t = this.tasks;
    let kt = 0,
      vt = 0;
    for (let i = t[o + TASK_K0]!, e = i + t[o + TASK_KN]!; i < e; i++) kt += this.segs[i * SEG_WORDS + SEG_N]!;
    for (let i = t[o + TASK_V0]!, e = i + t[o + TASK_VN]!; i < e; i++) vt += this.segs[i * SEG_WORDS + SEG_N]!;
    if (kt !== t[o + TASK_TOKENS] || vt !== kt) {
      throw new Error(`StepPlan: task ${this.openTask} promises ${t[o + TASK_TOKENS]} tokens, has ${kt} keys and ${vt} values`);
    }
    this.openTask = -1;
  }
}

function grow(a: Int32Array, n: number): Int32Array {
  const b = new Int32Array(Math.max(n, a.length * 2));
  b.set(a);
  return b;
}
