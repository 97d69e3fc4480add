/**
 * A heap allocator for one linear memory: 64-byte aligned blocks, free blocks kept in size-class bins
 * (4 classes per power of two) and coalesced with free neighbours, the top of the heap handed back
 * when the highest block is freed. Pure bookkeeping over byte offsets: growing the memory is the
 * caller's job (the `grow` callback), so the logic is testable without WebAssembly.
 */
export const ALIGN = 64;

/** Size-class index of a byte size (a multiple of ALIGN). */
function classOf(size: number): number {
  const u = size / ALIGN;
  if (u < 16) return u;
  const e = Math.floor(Math.log2(u));
  return 16 + (e - 4) * 4 + Math.floor(u / 2 ** (e - 2)) - 4;
}

export class Allocator {
  private top: number;
  private readonly used = new Map<number, number>();
  private readonly freeAt = new Map<number, number>(); // start → size
  private readonly freeEnd = new Map<number, number>(); // end → start
  private readonly bins: Set<number>[] = [];
  private usedBytes = 0;
  /** The highest top ever reached: memory above it has never been handed out (still zero). */
  private highWater: number;
  /** Bytes at the start of the last block that may hold old data (the rest is untouched, zero memory). */
  lastDirty = 0;

  /**
   * @param base first usable byte offset (rounded up to ALIGN)
   * @param grow called with a byte end the memory must reach; throws if it cannot
   */
  constructor(
    base: number,
    private readonly grow: (end: number) => void,
  ) {
    this.top = Math.ceil(base / ALIGN) * ALIGN;
    this.highWater = this.top;
  }

  /** A block of at least `bytes` bytes (contents unspecified). */
  alloc(bytes: number): number {
    if (!Number.isInteger(bytes) || bytes < 0) throw new RangeError(`bad allocation size ${bytes}`);
    const size = Math.max(ALIGN, Math.ceil(bytes / ALIGN) * ALIGN);
    const start = this.takeFree(size) ?? this.takeTop(size);
    this.used.set(start, size);
    this.usedBytes += size;
    return start;
  }

  free(ptr: number): void {
    const size = this.used.get(ptr);
    if (size === undefined) throw new Error(`free of ${ptr}: not an allocated block (double free?)`);
    this.used.delete(ptr);
    this.usedBytes -= size;
    let start = ptr;
    let end = ptr + size;
    const before = this.freeEnd.get(start);
    if (before !== undefined) {
      this.removeFree(before);
      start = before;
    }
    const afterSize = this.freeAt.get(end);
    if (afterSize !== undefined) {
      this.removeFree(end);
      end += afterSize;
    }
    if (end === this.top) this.top = start;
    else this.addFree(start, end - start);
  }

  /** Size of an allocated block, or undefined. */
  sizeOf(ptr: number): number | undefined {
    return this.used.get(ptr);
  }

  stats(): { used: number; top: number; free: number; blocks: number } {
    let free = 0;
    for (const s of this.freeAt.values()) free += s;
    return { used: this.usedBytes, top: this.top, free, blocks: this.used.size };
  }

  private takeTop(size: number): number {
    const start = this.top;
    this.grow(start + size);
    this.top = start + size;
    this.lastDirty = Math.max(0, Math.min(size, this.highWater - start));
    this.highWater = Math.max(this.highWater, this.top);
    return start;
  }

  private takeFree(size: number): number | undefined {
    const c0 = classOf(size);
    for (let c = c0; c < this.bins.length; c++) {
      const bin = this.bins[c];
      if (!bin || bin.size === 0) continue;
      for (const start of bin) {
        const have = this.freeAt.get(start)!;
        if (have < size) continue; // only possible in the request's own class
        this.removeFree(start);
        if (have > size) this.addFree(start + size, have - size);
        this.lastDirty = size;
        return start;
      }
    }
    return undefined;
  }

  private addFree(start: number, size: number): void {
    this.freeAt.set(start, size);
    this.freeEnd.set(start + size, start);
    const c = classOf(size);
    while (this.bins.length <= c) this.bins.push(new Set());
    this.bins[c]!.add(start);
  }

  private removeFree(start: number): void {
    const size = this.freeAt.get(start)!;
    this.freeAt.delete(start);
    this.freeEnd.delete(start + size);
    this.bins[classOf(size)]!.delete(start);
  }
}
