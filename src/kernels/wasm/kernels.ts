/**
 * The WebAssembly SIMD back end. Every allocation lives in one shared WebAssembly.Memory managed by a
 * free-list allocator, so kernels take plain pointers and helper threads (which instantiate the same
 * module on the same memory) see the same data. Matmul outputs and attention tasks are split over the
 * threads; each output element is computed identically wherever it runs, so the thread count never
 * changes a result. No Node APIs here: the Node loader (node.ts) supplies the module and the threads.
 */
import type { Kernels } from '../types.js';
import type { Bits } from '../../quant/quantizer.js';
import {
  type AttentionPlan, type Storage, SEG_F32, SEG_KIVI, SEG_STRIDE, TASK_STRIDE, SBITS, SDATA, SDATA_OFF, SG, SKIND, SMINS, SN,
  SP_OFF, SSCALES, TD, TK0, TKN, TKT, TNQ, TOUT, TOUT_OFF, TQ, TQ_OFF, TV0, TVN,
} from '../plan.js';
import { Allocator } from './allocator.js';
import { type KernelExports, instantiate } from './exports.js';
import { JobRunner, MAX_ITEMS, OP_ATTEND, OP_MATMUL, OP_STOP, newControl } from './jobs.js';
import { KiviError } from '../../util/errors.js';

const PAGE = 65536;
/** Bytes kept readable past the heap top: kernels load whole 16-byte vectors at the end of a row. */
const TAIL_PAD = 64;
/** Smallest matmul (multiply-adds) worth splitting over threads. */
const PARALLEL_MACS = 1 << 17;

/** What helper threads need; each instantiates `module` on `memory` and runs helperLoop. */
export interface HelperInit {
  module: WebAssembly.Module;
  memory: WebAssembly.Memory;
  ctrl: SharedArrayBuffer;
  next: SharedArrayBuffer;
}
export interface Helpers {
  terminate(): void;
}
/** Starts `count` helper threads (tids 1..count); resolves once they run. */
export type HelperFactory = (init: HelperInit, count: number) => Promise<Helpers>;

export interface WasmKernelOptions {
  module: WebAssembly.Module;
  /** Threads including the caller's (default 1). More than 1 needs `helpers`. */
  threads?: number;
  helpers?: HelperFactory;
  /** Upper bound of the memory in MiB (default 4096, the wasm32 limit). */
  maxMemoryMiB?: number;
}

interface Staged {
  ptr: number;
  src: Storage;
  off: number;
  len: number;
  out: boolean;
}

export class WasmKernels implements Kernels {
  readonly name = 'wasm';
  private buf: ArrayBuffer | SharedArrayBuffer;
  /** Every buffer object the memory has had (it changes on growth; old views stay valid). */
  private readonly bufs = new Set<ArrayBufferLike>();
  private i32: Int32Array;
  private readonly heap: Allocator;
  private readonly staged: Staged[] = [];
  private runner: JobRunner | null = null;
  private helpers: Helpers | null = null;
  private disposed = false;
  // Reused regions: plan encoding, per-thread attention scratch, kivi work for single calls.
  private taskBuf = { ptr: 0, bytes: 0 };
  private segBuf = { ptr: 0, bytes: 0 };
  private scratchBuf = { ptr: 0, bytes: 0 };
  private workBuf = { ptr: 0, bytes: 0 };
  private readonly workBytes = new Map<number, number>();
  private readonly f32Scalar = new Float32Array(1);
  private readonly i32Scalar = new Int32Array(this.f32Scalar.buffer);
  private readonly taskWords: number;
  private readonly segWords: number;

  private constructor(
    readonly memory: WebAssembly.Memory,
    private readonly k: KernelExports,
    readonly threads: number,
    private readonly maxBytes: number,
  ) {
    this.buf = memory.buffer;
    this.bufs.add(this.buf);
    this.i32 = new Int32Array(this.buf);
    this.heap = new Allocator(1024, (end) => this.ensureMemory(end + TAIL_PAD));
    this.taskWords = k.task_words();
    this.segWords = k.seg_words();
  }

  static async create(o: WasmKernelOptions): Promise<WasmKernels> {
    const threads = o.threads ?? 1;
    if (!Number.isInteger(threads) || threads < 1) throw new KiviError(`threads must be an integer ≥ 1, got ${threads}`);
    const maxMiB = o.maxMemoryMiB ?? 4096;
    const maxPages = Math.min(65536, Math.floor((maxMiB * 1024 * 1024) / PAGE));
    const memory = new WebAssembly.Memory({ initial: 16, maximum: maxPages, shared: true });
    const kernels = new WasmKernels(memory, instantiate(o.module, memory), threads, maxPages * PAGE);
    const { ctrl, next } = newControl();
    const ctx = { ctrl: new Int32Array(ctrl), next: new BigUint64Array(next), k: kernels.k, tid: 0 };
    if (threads > 1) {
      if (!o.helpers) throw new KiviError('threads > 1 needs a way to start helper threads (none on this platform)');
      kernels.helpers = await o.helpers({ module: o.module, memory, ctrl, next }, threads - 1);
      kernels.runner = new JobRunner(ctx);
    }
    return kernels;
  }

  // ---- memory -----------------------------------------------------------------------------------

  allocF32(n: number): Float32Array {
    const p = this.heap.alloc(n * 4);
    return this.zeroed(new Float32Array(this.buf, p, n));
  }

  allocU32(n: number): Uint32Array {
    const p = this.heap.alloc(n * 4);
    return this.zeroed(new Uint32Array(this.buf, p, n));
  }

  allocU16(n: number): Uint16Array {
    const p = this.heap.alloc(n * 2);
    return this.zeroed(new Uint16Array(this.buf, p, n));
  }

  /** Zero what the allocator says may hold old data (fresh memory is zero: no pages touched). */
  private zeroed<T extends Storage>(a: T): T {
    const dirty = this.heap.lastDirty;
    if (dirty > 0) a.fill(0, 0, Math.min(a.length, Math.ceil(dirty / a.BYTES_PER_ELEMENT)));
    return a;
  }

  free(a: Float32Array | Uint32Array | Uint16Array): void {
    if (this.disposed) return;
    if (!this.bufs.has(a.buffer)) throw new Error('WasmKernels.free: array was not allocated by these kernels');
    this.heap.free(a.byteOffset);
  }

  /** Allocator statistics (bytes). */
  memoryStats(): { used: number; top: number; free: number; blocks: number; memory: number } {
    return { ...this.heap.stats(), memory: this.buf.byteLength };
  }

  private ensureMemory(end: number): void {
    const have = this.buf.byteLength;
    if (end <= have) return;
    if (end > this.maxBytes) {
      throw new KiviError(`out of WebAssembly memory: ${Math.ceil(end / 2 ** 20)} MiB needed, the limit is ${this.maxBytes / 2 ** 20} MiB`);
    }
    // Grow by at least 1/8 of the current size (and 16 MiB) so growth is rare.
    const want = Math.min(this.maxBytes, Math.max(end, have + Math.max(have >> 3, 16 << 20)));
    this.memory.grow(Math.ceil((want - have) / PAGE));
    this.buf = this.memory.buffer;
    this.bufs.add(this.buf);
    this.i32 = new Int32Array(this.buf);
  }

  /** A reusable region of at least `bytes`. */
  private region(r: { ptr: number; bytes: number }, bytes: number): number {
    if (r.bytes < bytes) {
      if (r.ptr) this.heap.free(r.ptr);
      r.bytes = Math.max(bytes, r.bytes * 2);
      r.ptr = this.heap.alloc(r.bytes);
    }
    return r.ptr;
  }

  /** Byte address of a[off]; an array outside this memory is copied in (and back out after the call if `out`). */
  private ptr(a: Storage, off: number, len: number, out = false): number {
    const b = a.buffer;
    if (b === this.buf || this.bufs.has(b)) return a.byteOffset + off * a.BYTES_PER_ELEMENT;
    return this.stage(a, off, len, out);
  }

  // One call site per array type (the plan encoder's hot path): V8 keeps these property loads monomorphic.
  private ptrF32(a: Float32Array, off: number, len: number, out = false): number {
    const b = a.buffer;
    if (b === this.buf || this.bufs.has(b)) return a.byteOffset + off * 4;
    return this.stage(a, off, len, out);
  }

  private ptrU16(a: Uint16Array, off: number, len: number): number {
    const b = a.buffer;
    if (b === this.buf || this.bufs.has(b)) return a.byteOffset + off * 2;
    return this.stage(a, off, len, false);
  }

  private ptrU32(a: Uint32Array, off: number, len: number): number {
    const b = a.buffer;
    if (b === this.buf || this.bufs.has(b)) return a.byteOffset + off * 4;
    return this.stage(a, off, len, false);
  }

  private stage(a: Storage, off: number, len: number, out: boolean): number {
    const bytes = len * a.BYTES_PER_ELEMENT;
    const p = this.heap.alloc(bytes);
    const view = new (a.constructor as new (b: ArrayBufferLike, o: number, n: number) => Storage)(this.buf, p, len);
    view.set(a.subarray(off, off + len));
    this.staged.push({ ptr: p, src: a, off, len, out });
    return p;
  }

  private unstage(): void {
    for (const s of this.staged) {
      if (s.out) {
        const view = new (s.src.constructor as new (b: ArrayBufferLike, o: number, n: number) => Storage)(this.buf, s.ptr, s.len);
        s.src.set(view, s.off);
      }
      this.heap.free(s.ptr);
    }
    this.staged.length = 0;
  }

  private kiviWork(d: number, nq: number): number {
    const key = d * 1024 + nq;
    let b = this.workBytes.get(key);
    if (b === undefined) {
      b = this.k.kivi_work_bytes(d, nq);
      this.workBytes.set(key, b);
    }
    return b;
  }

  // ---- kernels ----------------------------------------------------------------------------------

  matmul(out: Float32Array, x: Float32Array, w: Float32Array, rows: number, inDim: number, outDim: number, bias?: Float32Array): void {
    const po = this.ptr(out, 0, rows * outDim, true);
    const px = this.ptr(x, 0, rows * inDim);
    const pw = this.ptr(w, 0, outDim * inDim);
    const pb = bias ? this.ptr(bias, 0, outDim) : 0;
    if (this.runner && rows * inDim * outDim >= PARALLEL_MACS && outDim >= 16 && this.runner.parallel) {
      // Items of ≥ 8 outputs, about 4 per thread so a late thread is covered by the others.
      const chunk = Math.max(8, Math.ceil(outDim / (this.threads * 4) / 8) * 8);
      this.runner.run(OP_MATMUL, [po, px, pw, rows, inDim, outDim, pb, chunk], Math.ceil(outDim / chunk));
    } else {
      this.k.matmul(po, px, pw, rows, inDim, outDim, pb, 0, outDim);
    }
    if (this.staged.length) this.unstage();
  }

  swiglu(act: Float32Array, gu: Float32Array, rows: number, I: number): void {
    const pa = this.ptr(act, 0, rows * I, true);
    const pg = this.ptr(gu, 0, rows * 2 * I);
    this.k.swiglu(pa, pg, rows, I);
    if (this.staged.length) this.unstage();
  }

  scoresDense(s: Float32Array, sOff: number, sStride: number, q: Float32Array, qOff: number, nq: number,
    k: Float32Array | Uint16Array, kOff: number, n: number, d: number, scale: number): void {
    if (n === 0) return;
    const ps = this.ptr(s, sOff, (nq - 1) * sStride + n, true);
    const pq = this.ptr(q, qOff, nq * d);
    const pk = this.ptr(k, kOff, n * d);
    if (k instanceof Float32Array) this.k.scores_f32(ps, sStride, pq, nq, pk, n, d, scale);
    else this.k.scores_f16(ps, sStride, pq, nq, pk, n, d, scale);
    if (this.staged.length) this.unstage();
  }

  accumDense(out: Float32Array, oOff: number, p: Float32Array, pOff: number, pStride: number, nq: number,
    v: Float32Array | Uint16Array, vOff: number, n: number, d: number): void {
    if (n === 0) return;
    const po = this.ptr(out, oOff, nq * d, true);
    const pp = this.ptr(p, pOff, (nq - 1) * pStride + n);
    const pv = this.ptr(v, vOff, n * d);
    if (v instanceof Float32Array) this.k.accum_f32(po, pp, pStride, nq, pv, n, d);
    else this.k.accum_f16(po, pp, pStride, nq, pv, n, d);
    if (this.staged.length) this.unstage();
  }

  scoresKivi(s: Float32Array, sOff: number, sStride: number, q: Float32Array, qOff: number, nq: number,
    codes: Uint32Array, cOff: number, scales: Uint16Array, mins: Uint16Array, pOff: number,
    n: number, d: number, bits: Bits, G: number, scale: number): void {
    if (n === 0) return;
    const work = this.region(this.workBuf, this.kiviWork(d, nq));
    const ps = this.ptr(s, sOff, (nq - 1) * sStride + n, true);
    const pq = this.ptr(q, qOff, nq * d);
    const pc = this.ptr(codes, cOff, (n * d * bits) / 32);
    const psc = this.ptr(scales, pOff, (n / G) * d);
    const pm = this.ptr(mins, pOff, (n / G) * d);
    this.k.scores_kivi(ps, sStride, pq, nq, pc, psc, pm, n, d, bits, G, scale, work);
    if (this.staged.length) this.unstage();
  }

  accumKivi(out: Float32Array, oOff: number, p: Float32Array, pOff: number, pStride: number, nq: number,
    codes: Uint32Array, cOff: number, scales: Uint16Array, mins: Uint16Array, pIdx: number,
    n: number, d: number, bits: Bits, G: number): void {
    if (n === 0) return;
    const work = this.region(this.workBuf, this.kiviWork(d, nq));
    const po = this.ptr(out, oOff, nq * d, true);
    const pp = this.ptr(p, pOff, (nq - 1) * pStride + n);
    const pc = this.ptr(codes, cOff, (n * d * bits) / 32);
    const psc = this.ptr(scales, pIdx, n * (d / G));
    const pm = this.ptr(mins, pIdx, n * (d / G));
    this.k.accum_kivi(po, pp, pStride, nq, pc, psc, pm, n, d, bits, G, work);
    if (this.staged.length) this.unstage();
  }

  attend(plan: AttentionPlan): void {
    plan.validate();
    const nt = plan.tasks;
    if (nt === 0) return;
    const { t } = plan;
    const TW = this.taskWords;
    const segPtr = this.region(this.segBuf, plan.segs * this.segWords * 4);
    const taskPtr = this.region(this.taskBuf, nt * TW * 4);
    let scratch = 0;
    for (let i = 0; i < nt; i++) {
      const o = i * TASK_STRIDE;
      const nq = t[o + TNQ]!, d = t[o + TD]!, T = t[o + TKT]!;
      const k0 = t[o + TK0]!, kn = t[o + TKN]!, v0 = t[o + TV0]!, vn = t[o + TVN]!;
      for (let j = k0; j < k0 + kn; j++) this.encodeSeg(plan, j, segPtr, d, true);
      for (let j = v0; j < v0 + vn; j++) this.encodeSeg(plan, j, segPtr, d, false);
      const qP = this.ptrF32(plan.refs[t[o + TQ]!] as Float32Array, t[o + TQ_OFF]!, nq * d);
      const outP = this.ptrF32(plan.refs[t[o + TOUT]!] as Float32Array, t[o + TOUT_OFF]!, nq * d, true);
      this.f32Scalar[0] = plan.scale[i]!;
      const m = this.i32; // after ptr(): copying an array in may have grown the memory
      const w = (taskPtr >> 2) + i * TW;
      m[w] = qP;
      m[w + 1] = outP;
      m[w + 2] = nq;
      m[w + 3] = d;
      m[w + 4] = T;
      m[w + 5] = this.i32Scalar[0]!;
      m[w + 6] = k0;
      m[w + 7] = kn;
      m[w + 8] = v0;
      m[w + 9] = vn;
      scratch = Math.max(scratch, ((nq * T * 4 + 15) & ~15) + this.kiviWork(d, nq));
    }
    const stride = Math.ceil(scratch / 64) * 64;
    const parallel = this.runner !== null && nt > 1 && this.runner.parallel;
    const scratchPtr = this.region(this.scratchBuf, stride * (parallel ? this.threads : 1));
    if (parallel) {
      for (let i0 = 0; i0 < nt; i0 += MAX_ITEMS) {
        this.runner!.run(OP_ATTEND, [taskPtr + i0 * TW * 4, segPtr, scratchPtr, stride], Math.min(MAX_ITEMS, nt - i0));
      }
    } else {
      for (let i = 0; i < nt; i++) this.k.attend_task(taskPtr, segPtr, i, scratchPtr);
    }
    if (this.staged.length) this.unstage();
  }

  /** Segment j as the module's record: kind, tokens, data pointer, scales, mins, bits, G. */
  private encodeSeg(plan: AttentionPlan, j: number, segPtr: number, d: number, key: boolean): void {
    const { s: sg, refs } = plan;
    const o = j * SEG_STRIDE;
    const n = sg[o + SN]!, bits = sg[o + SBITS]!, G = sg[o + SG]!;
    const data = refs[sg[o + SDATA]!]!;
    let dataP: number, scP = 0, mnP = 0;
    const kind = sg[o + SKIND]!;
    if (kind === SEG_KIVI) {
      dataP = this.ptrU32(data as Uint32Array, sg[o + SDATA_OFF]!, (n * d * bits) / 32);
      const params = key ? (n / G) * d : n * (d / G);
      scP = this.ptrU16(refs[sg[o + SSCALES]!] as Uint16Array, sg[o + SP_OFF]!, params);
      mnP = this.ptrU16(refs[sg[o + SMINS]!] as Uint16Array, sg[o + SP_OFF]!, params);
    } else if (kind === SEG_F32) {
      dataP = this.ptrF32(data as Float32Array, sg[o + SDATA_OFF]!, n * d);
    } else {
      dataP = this.ptrU16(data as Uint16Array, sg[o + SDATA_OFF]!, n * d);
    }
    const m = this.i32;
    const w = (segPtr >> 2) + j * this.segWords;
    m[w] = kind;
    m[w + 1] = n;
    m[w + 2] = dataP;
    m[w + 3] = scP;
    m[w + 4] = mnP;
    m[w + 5] = bits;
    m[w + 6] = G;
  }

  /** Sum of a float32 array read 64 bytes per step: the memory read-bandwidth probe. */
  readSum(a: Float32Array): number {
    const r = this.k.read_sum(this.ptr(a, 0, a.length), a.byteLength);
    if (this.staged.length) this.unstage();
    return r;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    if (this.runner) this.runner.run(OP_STOP, [], 0);
    this.helpers?.terminate();
    this.runner = null;
    this.helpers = null;
  }
}
