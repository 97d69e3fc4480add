/**
 * Cache pages on the GPU: per layer up to `arenas` buffers (as many as the kernels can bind) ("arena slots"), a page at the same offset of
 * the same slot in every layer's buffer, holding that layer's [kv head][section]. A dispatch for one
 * layer binds that layer's slots. A handle is slot << 27 | offset / 16 (offsets below 2 GiB); handle
 * offsets start at 16, so no page is 0.
 *
 * Slots grow (a bigger buffer, the old contents copied on the GPU in command order; see grow) up to the
 * device's largest storage binding, then the next slot opens. Freed pages are kept per size and
 * reused (cleared first, in command order); caches return pages only after the step that used them
 * has been issued (cache/types.ts endStep), and commands run in issue order, so a reused page is never
 * written while an earlier command still reads it.
 */

import { KiviError } from '../../util/errors.js';
import { formatBytes } from '../../util/format.js';
import { hostPageBytes } from '../host/memory.js';
import type { AttnShape, PagePool } from '../types.js';
import type { Binding, GBuf, GpuCore } from './core.js';

const OFFSET_BITS = 27;
const OFFSET_MASK = (1 << OFFSET_BITS) - 1;
/** A slot grows by doubling up to 1/GROW_PARTS of the largest binding, then by that much (grow). */
const GROW_PARTS = 16;

export const pageSlot = (page: number): number => page >>> OFFSET_BITS;
/** The page's first u32 word in its slot's buffer. */
export const pageWord = (page: number): number => (page & OFFSET_MASK) * 4;

export class WebGpuPagePool implements PagePool {
  /** The GPU runs no simulated-quantization jobs (cache/spec.ts refuses fake caches on this pool). */
  readonly fakeJobs = false;
  allocatedBytes = 0;
  peakBytes = 0;
  /** slots[s][layer]: the buffers. */
  private readonly slots: GBuf[][] = [];
  private readonly caps: number[] = [];
  private readonly tops: number[] = [];
  private readonly freeBySize = new Map<number, number[]>();
  private readonly sizes = new Map<number, number>();
  private readonly dummies: GBuf[];
  /** Arena slots per layer (one dummy binding each). */
  private readonly arenas: number;
  private readonly usage: number;

  /**
   * @param maxSlotBytes largest buffer per slot (the device's largest storage binding).
   */
  constructor(
    readonly shape: AttnShape,
    private readonly core: GpuCore,
    private readonly maxSlotBytes: number,
    dummies: GBuf[],
  ) {
    this.dummies = dummies;
    this.arenas = dummies.length;
    this.usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
  }

  resetPeak(): void {
    this.peakBytes = this.allocatedBytes;
  }

  /** Bytes a page takes, counted as the host back ends count them (so budgets agree across back ends). */
  pageBytes(sectionBytes: number): number {
    return hostPageBytes(this.shape, sectionBytes);
  }

  /** Bytes of one layer's part of a page. */
  private stride(sectionBytes: number): number {
    return this.shape.numKvHeads * sectionBytes;
  }

  alloc(sectionBytes: number): number {
    if (sectionBytes <= 0 || sectionBytes % 16 !== 0) throw new Error(`page section of ${sectionBytes} bytes`);
    const stride = this.stride(sectionBytes);
    let page = this.freeBySize.get(stride)?.pop();
    if (page !== undefined) {
      const enc = this.core.commands();
      const s = pageSlot(page),
        off = pageWord(page) * 4;
      for (const b of this.slots[s]!) enc.clearBuffer(b.buf, off, stride);
    } else {
      page = this.bump(stride);
    }
    this.sizes.set(page, stride);
    const bytes = this.pageBytes(sectionBytes);
    this.allocatedBytes += bytes;
    if (this.allocatedBytes > this.peakBytes) this.peakBytes = this.allocatedBytes;
    return page;
  }

  private bump(stride: number): number {
    if (stride > this.maxSlotBytes - 16) throw new KiviError(`webgpu: a cache page of ${stride} bytes per layer exceeds the largest GPU buffer binding`);
    let s = this.slots.length - 1;
    if (s < 0 || this.tops[s]! + stride > this.maxSlotBytes) {
      if (this.slots.length === this.arenas) {
        // Like running out of GPU memory: the server's resources, not the request (503 there).
        throw new KiviError(`webgpu: the KV cache needs more than ${this.arenas} × ${formatBytes(this.maxSlotBytes)} per layer of GPU buffers`, 503);
      }
      s = this.slots.length;
      this.slots.push([]);
      this.caps.push(0);
      this.tops.push(16);
    }
    const off = this.tops[s]!;
    this.grow(s, off + stride);
    this.tops[s] = off + stride;
    return (s << OFFSET_BITS) | (off / 16);
  }

  /**
   * Make slot s hold at least `bytes` in every layer: by doubling up to 1/GROW_PARTS of the largest binding,
   * then by that much at a time, so that a large cache leaves at most that much of a layer's slot unused
   * (doubling left up to half: at 800K tokens Llama-3-8B's fp16 cache asked the H200 for 30 GiB more than
   * its pages, and ran out of memory). Each layer's buffer is replaced and its copy submitted in turn, so
   * that the old one can be released (once the GPU has copied it; when Dawn frees it was not measured)
   * before the next layer's new one is made, not only after all of them.
   */
  private grow(s: number, bytes: number): void {
    const c = this.caps[s]!;
    if (bytes <= c) return;
    const step = Math.max(256, Math.floor(this.maxSlotBytes / GROW_PARTS / 256) * 256);
    const cap = Math.min(this.maxSlotBytes, Math.max(bytes, Math.min(2 * c, c + step), Math.min(1 << 20, step)));
    const old = this.slots[s]!;
    const next: GBuf[] = [];
    for (let l = 0; l < this.shape.numLayers; l++) {
      const b = this.core.buffer(cap, this.usage, `kv arena ${s} layer ${l}`);
      next.push(b);
      const o = old[l];
      if (o) {
        this.core.commands().copyBufferToBuffer(o.buf, 0, b.buf, 0, this.tops[s]!);
        this.core.destroy(o);
        this.core.flush();
      }
    }
    this.slots[s] = next;
    this.caps[s] = next[0]!.size;
  }

  free(page: number): void {
    const stride = this.sizes.get(page);
    if (stride === undefined) throw new Error(`WebGpuPagePool.free: page ${page} is not allocated`);
    this.sizes.delete(page);
    this.allocatedBytes -= this.pageBytes(stride / this.shape.numKvHeads);
    const list = this.freeBySize.get(stride);
    if (list) list.push(page);
    else this.freeBySize.set(stride, [page]);
  }

  /** The storage bindings of layer `layer`'s slots (a small dummy where a slot is unused). */
  bindings(layer: number): Binding[] {
    const out: Binding[] = [];
    for (let s = 0; s < this.arenas; s++) out.push({ b: s < this.slots.length ? this.slots[s]![layer]! : this.dummies[s]! });
    return out;
  }

  /** Arena slots in use (at least 1: kernels are generated for this many bindings). */
  get slotsInUse(): number {
    return Math.max(1, this.slots.length);
  }

  /** Give every arena back to the GPU; only when no page is allocated (between benchmark runs). */
  trim(): void {
    if (this.sizes.size > 0) return;
    for (const slot of this.slots) for (const b of slot) this.core.destroy(b);
    this.slots.length = 0;
    this.caps.length = 0;
    this.tops.length = 0;
    this.freeBySize.clear();
  }

  /** Bytes of the pool's GPU buffers that no page has reached yet (every layer and slot). */
  get unusedBytes(): number {
    return this.caps.reduce((a, c, s) => a + c - this.tops[s]!, 0) * this.shape.numLayers;
  }

  /** Bytes of GPU buffers the pool holds (every layer and slot). */
  get bufferBytes(): number {
    return this.caps.reduce((a, c) => a + c, 0) * this.shape.numLayers;
  }

  async readPage(page: number, sectionBytes: number): Promise<Uint8Array> {
    const stride = this.checkPage(page, sectionBytes);
    const out = new Uint8Array(this.shape.numLayers * stride);
    const s = pageSlot(page),
      off = pageWord(page) * 4;
    for (let l = 0; l < this.shape.numLayers; l++) {
      out.set(new Uint8Array(await this.core.readBytes(this.slots[s]![l]!, off, stride)), l * stride);
    }
    return out;
  }

  writePage(page: number, sectionBytes: number, bytes: Uint8Array): void {
    const stride = this.checkPage(page, sectionBytes);
    const n = this.shape.numLayers * stride;
    if (bytes.byteLength !== n) throw new KiviError(`page of ${n} bytes written with ${bytes.byteLength}`);
    const s = pageSlot(page),
      off = pageWord(page) * 4;
    for (let l = 0; l < this.shape.numLayers; l++) this.core.write(this.slots[s]![l]!, off, bytes.subarray(l * stride, (l + 1) * stride));
  }

  private checkPage(page: number, sectionBytes: number): number {
    const stride = this.sizes.get(page);
    if (stride === undefined) throw new Error(`WebGpuPagePool: page ${page} is not allocated`);
    if (stride !== this.stride(sectionBytes))
      throw new Error(`WebGpuPagePool: page ${page} has sections of ${stride / this.shape.numKvHeads} bytes, not ${sectionBytes}`);
    return stride;
  }

  dispose(): void {
    for (const slot of this.slots) for (const b of slot) this.core.destroy(b);
    this.slots.length = 0;
  }
}
