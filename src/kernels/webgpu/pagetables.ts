/**
 * Page tables on the GPU: a copy of each cache page list (kernels/plan.ts PageList) that run segments
 * name, one page handle (pool.ts) per u32, in power-of-two regions of a table space that the back end
 * keeps behind each step's records in the plan buffer (backend.ts upload). A list's pages are sent once,
 * as they are added, so a decode step over millions of cached tokens sends a few words, not a record per
 * page. A list's reset() (a cache freed) returns its region. Writes go through the queue after the
 * commands issued before them, so a region is never rewritten under an earlier step.
 */

import type { PageList } from '../plan.js';

interface Region {
  /** First word in the table space. */
  at: number;
  /** Words it holds. */
  cap: number;
  /** Pages of the list written into the region so far (sent, or pending in `dirty`). */
  sent: number;
}

const MIN_REGION = 64;

export class PageTables {
  /** Words of table space in use (regions free or held). */
  top = 0;
  private readonly free = new Map<number, number[]>();
  private readonly regions = new Map<PageList, Region>();
  /** Pages to send: [list, region, first page] per list with new pages since the last flush. */
  private readonly dirty: [PageList, Region, number][] = [];
  private scratch = new Uint32Array(1024);

  /** Lists holding a region (for tests). */
  get lists(): number {
    return this.regions.size;
  }

  /** First word of the list's table in the table space; its new pages go out at the next flush(). */
  offset(list: PageList): number {
    const n = list.pages.length;
    let r = this.regions.get(list);
    if (r && n > r.cap) {
      // Outgrown: a region twice the size, every page sent again (amortized O(1) a page).
      this.release(r);
      r = undefined;
    }
    if (!r) {
      let cap = MIN_REGION;
      while (cap < n) cap *= 2;
      r = { at: this.alloc(cap), cap, sent: 0 };
      this.regions.set(list, r);
      const reg = r;
      list.onReset = () => {
        this.release(reg);
        this.regions.delete(list);
      };
    }
    if (n > r.sent) {
      this.dirty.push([list, r, r.sent]);
      r.sent = n;
    }
    return r.at;
  }

  /** Send the pages added since the last flush: write(word in the table space, handles). */
  flush(write: (word: number, data: Uint32Array) => void): void {
    for (const [list, r, from] of this.dirty) {
      // The region may have been released (list reset) or outgrown since: then it is not the list's now.
      if (this.regions.get(list) !== r) continue;
      const k = r.sent - from;
      if (this.scratch.length < k) this.scratch = new Uint32Array(Math.max(k, this.scratch.length * 2));
      for (let i = 0; i < k; i++) this.scratch[i] = list.pages[from + i]!;
      write(r.at + from, this.scratch.subarray(0, k));
    }
    this.dirty.length = 0;
  }

  private alloc(cap: number): number {
    const reuse = this.free.get(cap)?.pop();
    if (reuse !== undefined) return reuse;
    const at = this.top;
    this.top += cap;
    return at;
  }

  private release(r: Region): void {
    const list = this.free.get(r.cap);
    if (list) list.push(r.at);
    else this.free.set(r.cap, [r.at]);
  }

  dispose(): void {
    for (const list of this.regions.keys()) list.onReset = null;
    this.regions.clear();
    this.dirty.length = 0;
  }
}
