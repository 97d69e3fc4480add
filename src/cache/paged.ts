/**
 * A run of tokens kept in full precision (float32 or float16), in pages of `cap` slots from a pool:
 * token t lives in pages[floor((t − base) / cap)] at slot (t − base) mod cap. Dense caches keep every
 * token this way; KIVI keeps its residuals this way, dropping pages from the front as their tokens are
 * quantized. Pages are taken as the first token lands in them, so memory follows the tokens held.
 */

import { JOB_STORE, SEG_ROWS } from '../kernels/layout.js';
import { sectionBytes } from '../kernels/pages.js';
import { PageList, type StepPlan } from '../kernels/plan.js';
import type { PagePool } from '../kernels/types.js';
import { KiviError } from '../util/errors.js';
import type { CacheImage, ImageReader } from './types.js';

export class PagedRows {
  private readonly list = new PageList();
  readonly pages = this.list.pages;
  /** Token index of slot 0 of pages[0] (a multiple of cap). */
  base = 0;
  /** First token held (tokens before it were dropped). */
  start = 0;
  /** One past the last token held. */
  end = 0;
  readonly sectionBytes: number;

  constructor(
    private readonly pool: PagePool,
    readonly kind: number,
    readonly cap: number,
    d: number,
    /**
     * Listed as one page run where the back end takes them: only for runs that drop no tokens while a
     * plan is built (dense caches; a KIVI residual drops tokens as it folds them, after its tasks).
     */
    private readonly runs = false,
  ) {
    this.sectionBytes = sectionBytes(kind, cap, d);
  }

  get count(): number {
    return this.end - this.start;
  }

  /** Add the held tokens [from, to) as key (or value) segments of the plan's open task. */
  segments(plan: StepPlan, values: boolean, from = this.start, to = this.end): void {
    if (this.runs && plan.pageRuns) {
      if (values) plan.valueRun(this.kind, this.list, from - this.base, to - from, this.cap, this.sectionBytes);
      else plan.keyRun(this.kind, this.list, from - this.base, to - from, this.cap, this.sectionBytes);
      return;
    }
    for (let t = from; t < to; ) {
      const i = Math.floor((t - this.base) / this.cap);
      const slot = t - this.base - i * this.cap;
      const n = Math.min(this.cap - slot, to - t);
      if (values) plan.value(this.kind, this.pages[i]!, slot, n, this.cap, this.sectionBytes);
      else plan.key(this.kind, this.pages[i]!, slot, n, this.cap, this.sectionBytes);
      t += n;
    }
  }

  /** Add the held tokens [from, to) as sources of the plan's open job. */
  sources(plan: StepPlan, from: number, to: number): void {
    for (let t = from; t < to; ) {
      const i = Math.floor((t - this.base) / this.cap);
      const slot = t - this.base - i * this.cap;
      const n = Math.min(this.cap - slot, to - t);
      plan.src(this.kind, this.pages[i]!, slot, n, this.cap, this.sectionBytes);
      t += n;
    }
  }

  /** Append n tokens from activation rows [row, row + n) with store jobs (post phase), taking pages as needed. */
  store(plan: StepPlan, half: number, row: number, n: number, phase: 'pre' | 'post' = 'post'): void {
    if (this.pages.length === 0) this.base = this.end - (this.end % this.cap);
    for (let k = 0; k < n; ) {
      const t = this.end;
      const i = Math.floor((t - this.base) / this.cap);
      const slot = t - this.base - i * this.cap;
      if (i === this.pages.length) this.pages.push(this.pool.alloc(this.sectionBytes));
      const m = Math.min(this.cap - slot, n - k);
      plan.job(phase, JOB_STORE, half);
      plan.src(SEG_ROWS, row + k, 0, m);
      plan.dst(this.kind, this.pages[i]!, slot, m, this.cap, this.sectionBytes);
      this.end += m;
      k += m;
    }
  }

  /** Extend the run by n slots that a job of the plan writes, taking pages as needed. */
  reserve(n: number): void {
    if (this.pages.length === 0) this.base = this.end - (this.end % this.cap);
    this.end += n;
    while (this.base + this.pages.length * this.cap < this.end) this.pages.push(this.pool.alloc(this.sectionBytes));
  }

  /** Slots [from, to) (within one page) as the destination of the plan's open job. */
  destination(plan: StepPlan, from: number, to: number, G = 0): void {
    const i = Math.floor((from - this.base) / this.cap);
    const slot = from - this.base - i * this.cap;
    if (slot + (to - from) > this.cap) throw new Error('PagedRows.destination: slots span two pages');
    plan.dst(this.kind, this.pages[i]!, slot, to - from, this.cap, this.sectionBytes, 0, G);
  }

  /** Forget tokens before t, returning pages that hold none of the rest (after the plan has run). */
  dropBefore(plan: StepPlan | null, t: number): void {
    this.start = Math.max(this.start, t);
    while (this.pages.length > 0 && this.base + this.cap <= this.start) {
      this.release(plan, this.pages.shift()!);
      this.base += this.cap;
      this.list.reset();
    }
    if (this.count === 0) this.clearAt(plan, this.end);
  }

  /** Drop everything; the next token stored will be token `at`. */
  clearAt(plan: StepPlan | null, at: number): void {
    for (const p of this.pages) this.release(plan, p);
    this.pages.length = 0;
    this.list.reset();
    this.base = at - (at % this.cap);
    this.start = this.end = at;
  }

  /** Append the run's counters and pages to an image. */
  async save(img: CacheImage): Promise<void> {
    img.state.push(this.base, this.start, this.end, this.pages.length);
    for (const p of this.pages) img.pages.push({ section: this.sectionBytes, bytes: await this.pool.readPage(p, this.sectionBytes) });
  }

  /** Take the counters and pages save() wrote (the run must be empty). */
  restore(r: ImageReader): void {
    if (this.pages.length > 0) throw new Error('PagedRows.restore into a non-empty run');
    const [base, start, end, n] = [r.num(), r.num(), r.num(), r.num()];
    if (base % this.cap !== 0 || start < base || end < start || end > base + n * this.cap || n > 1 << 24) {
      throw new KiviError('corrupt cache image: inconsistent token run');
    }
    this.base = base;
    this.start = start;
    this.end = end;
    for (let i = 0; i < n; i++) this.restorePage(r.page(this.sectionBytes).bytes);
  }

  private restorePage(bytes: Uint8Array): void {
    const p = this.pool.alloc(this.sectionBytes);
    this.pages.push(p);
    this.pool.writePage(p, this.sectionBytes, bytes);
  }

  /** Bytes of the pages held. */
  allocatedBytes(): number {
    return this.pages.length * this.pool.pageBytes(this.sectionBytes);
  }

  private release(plan: StepPlan | null, page: number): void {
    if (plan) plan.deferFree(page);
    else this.pool.free(page);
  }
}
