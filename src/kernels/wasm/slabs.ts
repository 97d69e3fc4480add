/**
 * Where the WebAssembly page pool keeps its pages: slabs of one size taken from the heap, each carved
 * into pages of one size. A freed page is reused by the next page of its size; a slab whose pages are
 * all free becomes an empty slab that a page of any size can take. So pages never leave holes that
 * only a smaller block fits (the general heap splits a freed 128 KiB residual page for a 96 KiB key
 * block and strands the rest), and what the cache pages cost in memory is the slabs they use. Pages
 * larger than a quarter slab come from the heap directly. Pure bookkeeping over byte offsets, like the
 * allocator: the heap is passed in.
 */

/** Smallest slab of pages. */
const MIN_SLAB = 4 << 20;

/** Slab bytes of a model's page pool: at least 4 MiB, and at least 4 float32 pages of 64 tokens (the largest dense page). */
export function pageSlabBytes(shape: { numLayers: number; numKvHeads: number; headDim: number }): number {
  return Math.max(MIN_SLAB, 4 * Math.ceil((shape.numLayers * shape.numKvHeads * 64 * shape.headDim * 4) / 64) * 64);
}

/** What a slab pool needs from the heap: blocks of bytes, and how much of the last one may hold old data. */
export interface SlabHeap {
  alloc(bytes: number): number;
  free(addr: number): void;
  /** Bytes at the start of the block alloc() just returned that may hold old data (the rest is zero). */
  readonly lastDirty: number;
}

interface Slab {
  base: number;
  /** Page size the slab is carved into (0 while empty). */
  pageBytes: number;
  /** Free page indices below `next`. */
  free: number[];
  /** Pages [next, capacity) have never been handed out since the slab was carved. */
  next: number;
  capacity: number;
  used: number;
  /** Bytes [clean, slabBytes) are known to be zero. */
  clean: number;
}

export class SlabPages {
  private readonly slabs = new Map<number, Slab>(); // base → slab
  /** Carved slabs with a free page, per page size. */
  private readonly partial = new Map<number, Set<Slab>>();
  private readonly empty: Slab[] = [];
  /** Held page → its slab. */
  private readonly held = new Map<number, Slab>();
  /** Held large page (straight from the heap) → its bytes. */
  private readonly large = new Map<number, number>();
  private largeBytes = 0;
  /** Bytes of the page alloc() just returned that may hold old data (the caller zeroes them). */
  lastDirty = 0;

  constructor(
    readonly slabBytes: number,
    private readonly heap: SlabHeap,
  ) {
    if (!Number.isInteger(slabBytes) || slabBytes <= 0 || slabBytes % 64 !== 0) throw new RangeError(`bad slab size ${slabBytes}`);
  }

  /** A page of `pageBytes` (a multiple of 64); `lastDirty` says how much of it to zero. */
  alloc(pageBytes: number): number {
    if (pageBytes * 4 > this.slabBytes) {
      const p = this.heap.alloc(pageBytes);
      this.lastDirty = this.heap.lastDirty;
      this.large.set(p, pageBytes);
      this.largeBytes += pageBytes;
      return p;
    }
    const s = this.slabFor(pageBytes);
    const i = s.free.length > 0 ? s.free.pop()! : s.next++;
    s.used++;
    if (s.free.length === 0 && s.next === s.capacity) this.partial.get(pageBytes)!.delete(s);
    const off = i * pageBytes;
    this.lastDirty = Math.max(0, Math.min(pageBytes, s.clean - off));
    s.clean = Math.max(s.clean, off + pageBytes);
    const p = s.base + off;
    this.held.set(p, s);
    return p;
  }

  free(page: number): void {
    const s = this.held.get(page);
    if (s === undefined) {
      const bytes = this.large.get(page);
      if (bytes === undefined) throw new Error(`free of page ${page}: not a held page`);
      this.large.delete(page);
      this.largeBytes -= bytes;
      this.heap.free(page);
      return;
    }
    this.held.delete(page);
    const bin = this.partial.get(s.pageBytes)!;
    s.used--;
    if (s.used === 0) {
      bin.delete(s);
      s.pageBytes = 0;
      s.free.length = 0;
      s.next = s.capacity = 0;
      this.empty.push(s);
      return;
    }
    s.free.push((page - s.base) / s.pageBytes);
    bin.add(s);
  }

  /** Bytes of memory the pages occupy: every slab (held, partly free or empty) and the large pages. */
  reservedBytes(): number {
    return this.slabs.size * this.slabBytes + this.largeBytes;
  }

  stats(): { slabs: number; emptySlabs: number; pages: number; reserved: number } {
    return { slabs: this.slabs.size, emptySlabs: this.empty.length, pages: this.held.size + this.large.size, reserved: this.reservedBytes() };
  }

  /** A slab of this page size with a free page: a partly used one, else an empty one, else a new one. */
  private slabFor(pageBytes: number): Slab {
    let bin = this.partial.get(pageBytes);
    if (!bin) {
      bin = new Set();
      this.partial.set(pageBytes, bin);
    }
    for (const s of bin) return s;
    let s = this.empty.pop();
    if (!s) {
      const base = this.heap.alloc(this.slabBytes);
      s = { base, pageBytes: 0, free: [], next: 0, capacity: 0, used: 0, clean: this.heap.lastDirty };
      this.slabs.set(base, s);
    }
    s.pageBytes = pageBytes;
    s.capacity = Math.floor(this.slabBytes / pageBytes);
    s.next = 0;
    bin.add(s);
    return s;
  }
}
