/**
 * The pure-TypeScript back end: the readable reference every faster back end is tested against, and the
 * fallback where WebAssembly is unavailable. Tensors are plain typed arrays; every op runs when issued.
 */

import { KiviError } from '../../util/errors.js';
import { type HostPages, hostPageBytes, type PageViews } from '../host/memory.js';
import type { StepPlan } from '../plan.js';
import type { AttnShape, Backend, DType, HostArray, PagePool, Tensor } from '../types.js';
import { DTYPE_BYTES } from '../types.js';
import { AttnScratch, attendTasks } from './attention.js';
import { JobScratch, runJobs } from './jobs.js';
import * as ops from './ops.js';

/** A tensor of a host back end: its data as a typed array (16-bit types as their bit patterns). */
export class HostTensor implements Tensor {
  constructor(
    readonly dtype: DType,
    readonly data: Float32Array | Uint16Array | Uint32Array | Int32Array,
  ) {}
  get length(): number {
    return this.data.length;
  }
}

export function newHostArray(dtype: DType, n: number): HostTensor['data'] {
  switch (dtype) {
    case 'f32':
      return new Float32Array(n);
    case 'f16':
    case 'bf16':
      return new Uint16Array(n);
    case 'u32':
      return new Uint32Array(n);
    case 'i32':
      return new Int32Array(n);
  }
}

/** The float32 data of a host tensor (ops on activations). */
export function f32(t: Tensor): Float32Array {
  const d = (t as HostTensor).data;
  if (!(d instanceof Float32Array)) throw new Error(`expected a float32 tensor, got ${t.dtype}`);
  return d;
}

/** A weight's data and type for the matmul/embedding/norm ops. */
export function weight(t: Tensor): [ops.WeightArray, ops.WeightType] {
  const d = (t as HostTensor).data;
  if (t.dtype === 'f32' || t.dtype === 'f16' || t.dtype === 'bf16') return [d as ops.WeightArray, t.dtype];
  throw new Error(`expected a float tensor, got ${t.dtype}`);
}

/** Pages in their own buffers; a handle is an index into the page table. */
export class TsPagePool implements PagePool, HostPages {
  private readonly pages: (PageViews | null)[] = [null];
  private readonly freeIds: number[] = [];
  allocatedBytes = 0;
  peakBytes = 0;
  /** The reference runs the experimental pages too (8-bit value metadata). */
  readonly oracleJobs = true;

  resetPeak(): void {
    this.peakBytes = this.allocatedBytes;
  }

  constructor(readonly shape: AttnShape) {}

  pageBytes(sectionBytes: number): number {
    return hostPageBytes(this.shape, sectionBytes);
  }

  alloc(sectionBytes: number): number {
    const buf = new ArrayBuffer(this.pageBytes(sectionBytes));
    const v: PageViews = { f32: new Float32Array(buf), u16: new Uint16Array(buf), u32: new Uint32Array(buf), u8: new Uint8Array(buf), byteOffset: 0 };
    this.allocatedBytes += buf.byteLength;
    if (this.allocatedBytes > this.peakBytes) this.peakBytes = this.allocatedBytes;
    const id = this.freeIds.pop() ?? this.pages.length;
    this.pages[id] = v;
    return id;
  }

  free(page: number): void {
    const v = this.pages[page];
    if (!v) throw new Error(`TsPagePool.free: page ${page} is not allocated`);
    this.allocatedBytes -= v.u32.byteLength;
    this.pages[page] = null;
    this.freeIds.push(page);
  }

  views(page: number): PageViews {
    const v = this.pages[page];
    if (!v) throw new Error(`TsPagePool: page ${page} is not allocated`);
    return v;
  }

  async readPage(page: number, sectionBytes: number): Promise<Uint8Array> {
    return new Uint8Array(this.views(page).u32.buffer.slice(0, this.shape.numLayers * this.shape.numKvHeads * sectionBytes));
  }

  writePage(page: number, sectionBytes: number, bytes: Uint8Array): void {
    const n = this.shape.numLayers * this.shape.numKvHeads * sectionBytes;
    if (bytes.byteLength !== n) throw new KiviError(`page of ${n} bytes written with ${bytes.byteLength}`);
    new Uint8Array(this.views(page).u32.buffer, 0, n).set(bytes);
  }
}

export class TsBackend implements Backend {
  readonly name = 'ts' as const;
  readonly threads = 1;
  readonly description = 'TypeScript reference (1 thread)';
  private readonly attnScratch = new AttnScratch();
  private readonly jobScratch = new JobScratch();

  tensor(dtype: DType, length: number): Tensor {
    return new HostTensor(dtype, newHostArray(dtype, length));
  }

  write(t: Tensor, data: HostArray, offset = 0): void {
    const dst = (t as HostTensor).data;
    if (dst.BYTES_PER_ELEMENT !== data.BYTES_PER_ELEMENT || DTYPE_BYTES[t.dtype] !== data.BYTES_PER_ELEMENT) {
      throw new Error(`write: ${data.constructor.name} into a ${t.dtype} tensor`);
    }
    (dst as Uint32Array).set(data as Uint32Array, offset);
  }

  async read(t: Tensor, offset: number, length: number): Promise<Float32Array> {
    return f32(t).slice(offset, offset + length);
  }

  release(): void {
    /* garbage collected */
  }

  createPagePool(shape: AttnShape): TsPagePool {
    return new TsPagePool(shape);
  }

  embed(out: Tensor, table: Tensor, ids: Int32Array, D: number): void {
    const [w, wt] = weight(table);
    ops.embed(f32(out), w, wt, ids, D);
  }

  rmsnorm(out: Tensor, x: Tensor, w: Tensor, rows: number, D: number, eps: number): void {
    const [wd, wt] = weight(w);
    ops.rmsnorm(f32(out), f32(x), wd, wt, rows, D, eps);
  }

  matmul(out: Tensor, x: Tensor, w: Tensor, rows: number, inDim: number, outDim: number, bias?: Tensor): void {
    const [wd, wt] = weight(w);
    ops.matmul(f32(out), f32(x), wd, wt, rows, inDim, outDim, bias ? f32(bias) : undefined);
  }

  matmulAdd(out: Tensor, x: Tensor, w: Tensor, rows: number, inDim: number, outDim: number): void {
    const [wd, wt] = weight(w);
    ops.matmul(f32(out), f32(x), wd, wt, rows, inDim, outDim, undefined, 0, outDim, true);
  }

  rope(qkv: Tensor, rows: number, positions: Int32Array, cos: Tensor, sin: Tensor, shape: AttnShape): void {
    const { numHeads: H, numKvHeads: KV, headDim: d } = shape;
    ops.rope(f32(qkv), rows, (H + 2 * KV) * d, H + KV, d, positions, f32(cos), f32(sin));
  }

  swiglu(act: Tensor, gu: Tensor, rows: number, I: number): void {
    ops.swiglu(f32(act), f32(gu), rows, I);
  }

  add(x: Tensor, y: Tensor, n: number): void {
    ops.add(f32(x), f32(y), n);
  }

  gather(out: Tensor, x: Tensor, rows: Int32Array, D: number): void {
    ops.gather(f32(out), f32(x), rows, D);
  }

  cacheJobs(plan: StepPlan, sub: number, phase: 'pre' | 'post', layer: number, qkv: Tensor, pool: PagePool): void {
    const r = plan.sub(sub);
    const [j0, n] = phase === 'pre' ? [r[2]!, r[3]!] : [r[4]!, r[5]!];
    if (n === 0) return;
    runJobs(phase === 'pre' ? plan.pre : plan.post, j0, n, plan.segs, layer, f32(qkv), pool.shape, pool as TsPagePool, this.jobScratch);
  }

  attend(plan: StepPlan, sub: number, layer: number, qkv: Tensor, att: Tensor, pool: PagePool): void {
    const r = plan.sub(sub);
    attendTasks(plan, r[0]!, r[1]!, layer, f32(qkv), f32(att), pool.shape, pool as TsPagePool, this.attnScratch);
  }

  async sync(): Promise<void> {
    /* ops run as they are issued */
  }

  async argmax(x: Tensor, rows: number, n: number): Promise<Int32Array> {
    return ops.argmax(f32(x), rows, n);
  }

  fillRandom(t: Tensor, seed: number, scale: number): void {
    const [d, wt] = weight(t);
    ops.randomFill(d, wt, seed, scale);
  }

  dispose(): void {
    /* nothing held */
  }
}
