/**
 * The WebAssembly SIMD back end. Every tensor and page lives in one shared WebAssembly.Memory managed by
 * a free-list allocator, so kernels take plain addresses, plan records name pages by their address, and
 * helper threads (which instantiate the same module on the same memory) see the same data. Matmul
 * outputs and attention tasks are split over the threads; each output element is computed identically
 * wherever it runs, so the thread count never changes a result. The cache jobs that store and quantize
 * tokens (assembly/jobs.ts) and RMSNorm, RoPE and add (assembly/rows.ts) run in the module too, bit for
 * bit the TypeScript reference; the embedding, gather, argmax and the rarer cache jobs run in TypeScript
 * on views of the same memory. No Node APIs here: the Node loader (node.ts)
 * supplies the module and the threads.
 */

import { KiviError } from '../../util/errors.js';
import { type HostPages, hostPageBytes, type PageViews } from '../host/memory.js';
import { JOB_DST, JOB_HALF, JOB_KIND, JOB_ROTATE, JOB_SRC0, JOB_SRCN, JOB_WORDS, SEG_KIND, SEG_N, SEG_PAGE, SEG_ROWS, SEG_WORDS } from '../layout.js';
import type { StepPlan } from '../plan.js';
import { JobScratch, runJob } from '../ts/jobs.js';
import * as ops from '../ts/ops.js';
import type { AttnShape, Backend, DType, HostArray, PagePool, Tensor } from '../types.js';
import { DTYPE_BYTES } from '../types.js';
import { Allocator } from './allocator.js';
import { instantiate, type KernelExports } from './exports.js';
import {
  f64ToWords,
  JobRunner,
  MAX_ITEMS,
  newControl,
  OP_ATTEND,
  OP_MATMUL,
  OP_PREFILL,
  OP_ROWS,
  OP_STOP,
  ROWS_ADD,
  ROWS_RMSNORM,
  ROWS_ROPE,
  ROWS_SWIGLU,
  W_BF16,
  W_F16,
  W_F32,
} from './jobs.js';
import { type PrefillItems, PrefillPlanner } from './prefill.js';
import { pageSlabBytes, SlabPages } from './slabs.js';
import { readRow, scatterTiled, TILE_ROWS, tiledRows } from './tiles.js';

const PAGE = 65536;
/** Bytes kept readable past the heap top: kernels load whole 16-byte vectors at the end of a row. */
const TAIL_PAD = 64;
/** Smallest matmul (multiply-adds) worth splitting over threads. */
const PARALLEL_MACS = 1 << 17;
/** Fewest rows a light per-row op (norm, RoPE, SwiGLU) is split over threads for (a prefill's, not a decode step's). */
const PARALLEL_ROWS = 64;

/** The kernels' code for a weight tensor's type (W_F32, W_BF16, W_F16: matmul's and rmsnorm_rows's). */
function weightKind(w: Tensor, op: string): number {
  if (w.dtype === 'f32') return W_F32;
  if (w.dtype === 'bf16') return W_BF16;
  if (w.dtype === 'f16') return W_F16;
  throw new Error(`wasm ${op}: ${w.dtype} weights`);
}

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

export interface WasmBackendOptions {
  module: WebAssembly.Module;
  /** Threads including the caller's (default 1). More than 1 needs `helpers`. */
  threads?: number;
  helpers?: HelperFactory;
  /** Upper bound of the memory in MiB (default 4096, the wasm32 limit). */
  maxMemoryMiB?: number;
}

/** A tensor in the linear memory: its address and a view of it (views of shared memory stay valid as it grows). */
export class WasmTensor implements Tensor {
  constructor(
    readonly dtype: DType,
    readonly length: number,
    readonly addr: number,
    readonly data: Float32Array | Uint16Array | Uint32Array | Int32Array,
    /** A weight matrix's row length, where its first `tiled` rows are stored in tiles (tiles.ts). */
    readonly cols = 0,
    readonly tiled = 0,
  ) {}
}

function viewOf(buf: ArrayBufferLike, dtype: DType, addr: number, n: number): WasmTensor['data'] {
  switch (dtype) {
    case 'f32':
      return new Float32Array(buf, addr, n);
    case 'f16':
    case 'bf16':
      return new Uint16Array(buf, addr, n);
    case 'u32':
      return new Uint32Array(buf, addr, n);
    case 'i32':
      return new Int32Array(buf, addr, n);
  }
}

const T = (t: Tensor) => t as WasmTensor;
const F = (t: Tensor) => (t as WasmTensor).data as Float32Array;

export class WasmBackend implements Backend {
  readonly name = 'wasm' as const;
  private buf: ArrayBuffer | SharedArrayBuffer;
  readonly heap: Allocator;
  private runner: JobRunner | null = null;
  private helpers: Helpers | null = null;
  private disposed = false;
  private readonly jobScratch = new JobScratch();
  /** The plan's task and segment tables, copied into the memory once per plan. */
  private planCopy = { plan: null as StepPlan | null, epoch: -1, tasks: 0, segs: 0, tasksBytes: 0, segsBytes: 0 };
  private scratch = { ptr: 0, bytes: 0 };
  private jobRegion = { ptr: 0, bytes: 0 };
  private positions = { ptr: 0, bytes: 0 };
  /** Prefill blocks of the plan's tasks, their item table, and the chunk's keys and values packed per kv head. */
  private readonly prefill = new PrefillPlanner();
  /** False: a prefill chunk's query rows attend one task at a time, as decoded tokens do (same bits; tests and benchmarks compare). */
  prefillBlocks = true;
  private prefillItems = { ptr: 0, bytes: 0 };
  private packed = { ptr: 0, bytes: 0 };
  /** Per-thread float32 panels of 16-bit weight rows for batch matmuls. */
  private panels = { ptr: 0, bytes: 0 };
  /** matmulAdd's products before they are added. */
  private sums = { ptr: 0, bytes: 0 };
  private readonly panelBytes: number;

  private constructor(
    readonly memory: WebAssembly.Memory,
    private readonly k: KernelExports,
    readonly threads: number,
    private readonly maxBytes: number,
  ) {
    this.buf = memory.buffer;
    this.heap = new Allocator(1024, (end) => this.ensureMemory(end + TAIL_PAD));
    this.panelBytes = Math.ceil(k.matmul16_scratch_bytes() / 64) * 64;
  }

  get description(): string {
    return `wasm SIMD, ${this.threads} thread${this.threads === 1 ? '' : 's'}`;
  }

  static async create(o: WasmBackendOptions): Promise<WasmBackend> {
    const threads = o.threads ?? 1;
    if (!Number.isInteger(threads) || threads < 1) throw new KiviError(`threads must be an integer ≥ 1, got ${threads}`);
    const maxMiB = o.maxMemoryMiB ?? 4096;
    const maxPages = Math.min(65536, Math.floor((maxMiB * 1024 * 1024) / PAGE));
    const memory = new WebAssembly.Memory({ initial: 16, maximum: maxPages, shared: true });
    const b = new WasmBackend(memory, instantiate(o.module, memory), threads, maxPages * PAGE);
    const { ctrl, next } = newControl();
    const ctx = { ctrl: new Int32Array(ctrl), next: new BigUint64Array(next), k: b.k, tid: 0 };
    if (threads > 1) {
      if (!o.helpers) throw new KiviError('threads > 1 needs a way to start helper threads (none on this platform)');
      b.helpers = await o.helpers({ module: o.module, memory, ctrl, next }, threads - 1);
      b.runner = new JobRunner(ctx);
    }
    return b;
  }

  /**
   * `calls` runs of the batch kernel's 2×4 tile over 1024 inputs held in L1, on this thread (`bench gemv`'s
   * compute bound: the kernels' arithmetic with no memory to wait for); returns the float operations done.
   */
  tilePeak(calls: number): number {
    const IN = 1024; // 2 rows and 4 weight rows of 1024 floats: 24 KiB, in L1
    const x = this.tensor('f32', 6 * IN + 8);
    try {
      const a = T(x).addr;
      F(x).fill(1e-3);
      this.k.tile_peak(a + 24 * IN, a, a + 8 * IN, IN, calls);
      return 16 * IN * calls;
    } finally {
      this.release(x);
    }
  }

  // ---- memory -----------------------------------------------------------------------------------

  /** A block of at least `bytes`, zeroed where the allocator says it may hold old data. */
  private allocZeroed(bytes: number): number {
    const p = this.heap.alloc(bytes);
    const dirty = this.heap.lastDirty;
    if (dirty > 0) new Uint8Array(this.buf, p, Math.min(bytes, dirty)).fill(0);
    return p;
  }

  tensor(dtype: DType, length: number): Tensor {
    const addr = this.allocZeroed(length * DTYPE_BYTES[dtype]);
    return new WasmTensor(dtype, length, addr, viewOf(this.buf, dtype, addr, length));
  }

  /** 16-bit matrices keep their whole 8-row tiles packed for the GEMV (tiles.ts); others are plain tensors. */
  matrix(dtype: DType, rows: number, cols: number): Tensor {
    const t = T(this.tensor(dtype, rows * cols));
    const tiled = dtype === 'bf16' || dtype === 'f16' ? tiledRows(rows, cols) : 0;
    return tiled > 0 ? new WasmTensor(dtype, t.length, t.addr, t.data, cols, tiled) : t;
  }

  write(t: Tensor, data: HostArray, offset = 0): void {
    const { data: dst, tiled, cols } = T(t);
    if (dst.BYTES_PER_ELEMENT !== data.BYTES_PER_ELEMENT) throw new Error(`write: ${data.constructor.name} into a ${t.dtype} tensor`);
    if (offset < 0 || offset + data.length > dst.length) throw new Error(`write: elements [${offset}, ${offset + data.length}) of ${dst.length}`);
    if (tiled > 0) scatterTiled(dst as Uint16Array, data as Uint16Array, offset, cols, tiled);
    else (dst as Uint32Array).set(data as Uint32Array, offset);
  }

  async read(t: Tensor, offset: number, length: number): Promise<Float32Array> {
    return F(t).slice(offset, offset + length);
  }

  release(t: Tensor): void {
    if (!this.disposed) this.heap.free(T(t).addr);
  }

  createPagePool(shape: AttnShape): WasmPagePool {
    return new WasmPagePool(shape, this);
  }

  /** Views of the whole memory (fresh after growth). */
  memoryViews(): { f32: Float32Array<ArrayBufferLike>; u16: Uint16Array<ArrayBufferLike>; u32: Uint32Array<ArrayBufferLike> } {
    if (this.views.buf !== this.buf) {
      this.views = { buf: this.buf, f32: new Float32Array(this.buf), u16: new Uint16Array(this.buf), u32: new Uint32Array(this.buf) };
    }
    return this.views;
  }
  private views = {
    buf: null as ArrayBufferLike | null,
    f32: new Float32Array(0) as Float32Array<ArrayBufferLike>,
    u16: new Uint16Array(0) as Uint16Array<ArrayBufferLike>,
    u32: new Uint32Array(0) as Uint32Array<ArrayBufferLike>,
  };

  /** Zero `bytes` bytes at `addr`. */
  zero(addr: number, bytes: number): void {
    if (bytes > 0) new Uint8Array(this.buf, addr, bytes).fill(0);
  }

  freeBlock(addr: number): void {
    if (!this.disposed) this.heap.free(addr);
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
    // Grow by at least 1/8 of the current size (and 16 MiB) so growth is rare (no `>>`: sizes pass 2 GiB).
    const want = Math.min(this.maxBytes, Math.max(end, have + Math.max(Math.floor(have / 8), 16 << 20)));
    this.memory.grow(Math.ceil((want - have) / PAGE));
    this.buf = this.memory.buffer;
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

  // ---- ops ----------------------------------------------------------------------------------------

  /**
   * Weights stay as the checkpoint stores them: 16-bit matrices are converted to float32 inside the
   * matmul kernels (assembly/matmul16.ts), bit for bit the float32 matmul of their expansion.
   */
  weightDType(file: 'f32' | 'f16' | 'bf16'): DType {
    return file;
  }

  embed(out: Tensor, table: Tensor, ids: Int32Array, D: number): void {
    const t = T(table);
    if (t.tiled === 0) {
      ops.embed(F(out), t.data as ops.WeightArray, table.dtype as ops.WeightType, ids, D);
      return;
    }
    // A tiled table: each id's row gathered row-major into scratch, then embedded from there.
    const s = this.embedScratch;
    if (s.rows.length < ids.length * D || s.ids.length < ids.length) {
      s.rows = new Uint16Array(ids.length * D);
      s.ids = Int32Array.from({ length: ids.length }, (_, i) => i);
    }
    for (let r = 0; r < ids.length; r++) readRow(t.data as Uint16Array, ids[r]!, D, t.tiled, s.rows, r * D);
    ops.embed(F(out), s.rows, table.dtype as ops.WeightType, s.ids.subarray(0, ids.length), D);
  }
  private embedScratch = { rows: new Uint16Array(0), ids: new Int32Array(0) };

  /** Rows per item when a light op of `rows` rows is split over the threads; 0: run it on this thread. */
  private rowChunk(rows: number): number {
    if (this.runner === null || rows < PARALLEL_ROWS || !this.runner.parallel) return 0;
    return Math.ceil(rows / (2 * this.threads));
  }

  rmsnorm(out: Tensor, x: Tensor, w: Tensor, rows: number, D: number, eps: number): void {
    const kind = weightKind(w, 'rmsnorm');
    const chunk = this.rowChunk(rows);
    if (chunk > 0) {
      const [lo, hi] = f64ToWords(eps);
      this.runner!.run(OP_ROWS, [ROWS_RMSNORM, T(out).addr, T(x).addr, T(w).addr, kind, rows, D, chunk, lo, hi], Math.ceil(rows / chunk));
    } else {
      this.k.rmsnorm_rows(T(out).addr, T(x).addr, T(w).addr, kind, 0, rows, D, eps);
    }
  }

  matmul(out: Tensor, x: Tensor, w: Tensor, rows: number, inDim: number, outDim: number, bias?: Tensor): void {
    this.product(T(out).addr, x, w, rows, inDim, outDim, bias ? T(bias).addr : 0);
  }

  /** The product into a scratch region, then the add: on the CPU a fused epilogue would save no pass worth having. */
  matmulAdd(out: Tensor, x: Tensor, w: Tensor, rows: number, inDim: number, outDim: number): void {
    const n = rows * outDim;
    const sums = this.region(this.sums, n * 4);
    this.product(sums, x, w, rows, inDim, outDim, 0);
    this.addAt(T(out).addr, sums, n);
  }

  /** out = x · wᵀ (+ bias) at heap address po (pb: the bias's address or 0). */
  private product(po: number, x: Tensor, w: Tensor, rows: number, inDim: number, outDim: number, pb: number): void {
    const kind = weightKind(w, 'matmul');
    const { tiled, cols } = T(w);
    if (tiled > 0 && cols !== inDim) throw new Error(`matmul: a matrix of rows of ${cols} used with ${inDim} inputs`);
    const px = T(x).addr,
      pw = T(w).addr;
    const parallel = this.runner !== null && rows * inDim * outDim >= PARALLEL_MACS && outDim >= 16 && this.runner.parallel;
    // 16-bit weights and a batch: float32 panels in per-thread scratch (only batches of ≥ 16 rows use it).
    const stride = kind !== W_F32 && rows >= 16 ? this.panelBytes : 0;
    const scratch = stride ? this.region(this.panels, stride * (parallel ? this.threads : 1)) : 0;
    if (parallel) {
      // Items of ≥ 8 outputs (whole tiles), about 4 per thread so a late thread is covered by the others.
      const chunk = Math.max(TILE_ROWS, Math.ceil(outDim / (this.threads * 4) / TILE_ROWS) * TILE_ROWS);
      this.runner!.run(OP_MATMUL, [po, px, pw, rows, inDim, outDim, pb, chunk, kind, scratch, stride, tiled], Math.ceil(outDim / chunk));
    } else if (kind === W_F32) {
      this.k.matmul(po, px, pw, rows, inDim, outDim, pb, 0, outDim);
    } else {
      (kind === W_BF16 ? this.k.matmul_bf16 : this.k.matmul_f16)(po, px, pw, rows, inDim, outDim, pb, 0, outDim, scratch, tiled);
    }
  }

  rope(qkv: Tensor, rows: number, positions: Int32Array, cos: Tensor, sin: Tensor, shape: AttnShape): void {
    const { numHeads: H, numKvHeads: KV, headDim: d } = shape;
    const pos = this.region(this.positions, rows * 4);
    new Int32Array(this.buf, pos, rows).set(positions.subarray(0, rows));
    const [px, pc, ps] = [T(qkv).addr, T(cos).addr, T(sin).addr];
    const stride = (H + 2 * KV) * d;
    const chunk = this.rowChunk(rows);
    if (chunk > 0) this.runner!.run(OP_ROWS, [ROWS_ROPE, px, rows, stride, H + KV, d, pos, pc, ps, chunk], Math.ceil(rows / chunk));
    else this.k.rope_rows(px, 0, rows, stride, H + KV, d, pos, pc, ps);
  }

  swiglu(act: Tensor, gu: Tensor, rows: number, I: number): void {
    const chunk = this.rowChunk(rows);
    if (chunk > 0) this.runner!.run(OP_ROWS, [ROWS_SWIGLU, T(act).addr, T(gu).addr, rows, I, chunk], Math.ceil(rows / chunk));
    else this.k.swiglu(T(act).addr, T(gu).addr, rows, I);
  }

  add(x: Tensor, y: Tensor, n: number): void {
    this.addAt(T(x).addr, T(y).addr, n);
  }

  /** x[i] += y[i] at heap addresses px, py. */
  private addAt(px: number, py: number, n: number): void {
    // Split like a light op of n / 512 rows, in pieces of whole vectors.
    const rows = this.rowChunk(Math.floor(n / 512));
    if (rows > 0) {
      const chunk = Math.ceil(n / (2 * this.threads) / 16) * 16;
      this.runner!.run(OP_ROWS, [ROWS_ADD, px, py, n, chunk], Math.ceil(n / chunk));
    } else {
      this.k.add_range(px, py, 0, n);
    }
  }

  gather(out: Tensor, x: Tensor, rows: Int32Array, D: number): void {
    ops.gather(F(out), F(x), rows, D);
  }

  cacheJobs(plan: StepPlan, sub: number, phase: 'pre' | 'post', layer: number, qkv: Tensor, pool: PagePool): void {
    const r = plan.sub(sub);
    const [j0, n] = phase === 'pre' ? [r[2]!, r[3]!] : [r[4]!, r[5]!];
    if (n === 0) return;
    const jobs = phase === 'pre' ? plan.pre : plan.post;
    const { numHeads: H, numKvHeads: KV, headDim: d } = pool.shape;
    const { segs } = this.copyPlan(plan);
    for (let j = j0; j < j0 + n; j++) {
      const o = j * JOB_WORDS;
      const kind = jobs[o + JOB_KIND]!;
      if (kind === JOB_ROTATE) {
        this.rotateRows(plan, j, qkv, pool.shape);
        continue;
      }
      const dst = jobs[o + JOB_DST]!;
      const scratch = this.region(this.jobRegion, this.k.cache_job_scratch_bytes(Math.max(0, plan.segs[dst * SEG_WORDS + SEG_N]!), d));
      const r = this.k.cache_job(kind, jobs[o + JOB_HALF]!, jobs[o + JOB_SRC0]!, jobs[o + JOB_SRCN]!, dst, segs, layer, T(qkv).addr, H, KV, d, scratch);
      // 1: the reference's job (what only it does, or an error it reports).
      if (r !== 0) runJob(jobs, j, plan.segs, layer, F(qkv), pool.shape, pool as WasmPagePool, this.jobScratch);
    }
  }

  /** JOB_ROTATE j: every query and key head of its rows, by the SIMD kernel (assembly/hadamard.ts). */
  private rotateRows(plan: StepPlan, j: number, qkv: Tensor, shape: AttnShape): void {
    const { numHeads: H, numKvHeads: KV, headDim: d } = shape;
    const dst = plan.pre[j * JOB_WORDS + JOB_DST]! * SEG_WORDS;
    if (plan.segs[dst + SEG_KIND] !== SEG_ROWS) throw new Error(`wasm cache job ${j}: a rotation works on activation rows`);
    const stride = (H + 2 * KV) * d;
    const r0 = plan.segs[dst + SEG_PAGE]!;
    this.k.fwht_rows(T(qkv).addr + r0 * stride * 4, plan.segs[dst + SEG_N]!, H + KV, stride, d, Math.fround(1 / Math.sqrt(d)));
  }

  attend(plan: StepPlan, sub: number, layer: number, qkv: Tensor, att: Tensor, pool: PagePool): void {
    const r = plan.sub(sub);
    const t0 = r[0]!,
      nt = r[1]!;
    if (nt === 0) return;
    const { tasks, segs } = this.copyPlan(plan);
    const { numHeads: H, numKvHeads: KV, headDim: d } = pool.shape;
    if (this.prefillBlocks) {
      const pf = this.prefill.items(plan, sub, t0, nt, H / KV);
      if (pf.blocked > 0) {
        this.attendPrefill(pf, tasks, segs, plan.maxTokens, layer, T(qkv).addr, T(att).addr, H, KV, d);
        return;
      }
    }
    const stride = Math.ceil(this.k.task_scratch_bytes(H / KV, plan.maxTokens, d) / 64) * 64;
    const parallel = this.runner !== null && nt > 1 && this.runner.parallel;
    const scratch = this.region(this.scratch, stride * (parallel ? this.threads : 1));
    const taskBase = tasks + t0 * 4 * 8;
    if (parallel) {
      for (let i0 = 0; i0 < nt; i0 += MAX_ITEMS) {
        this.runner!.run(OP_ATTEND, [taskBase + i0 * 32, segs, layer, T(qkv).addr, T(att).addr, H, KV, d, scratch, stride], Math.min(MAX_ITEMS, nt - i0));
      }
    } else {
      for (let i = 0; i < nt; i++) this.k.attend_task(taskBase, segs, i, layer, T(qkv).addr, T(att).addr, H, KV, d, scratch);
    }
  }

  /**
   * A prefill chunk's tasks in blocks of query rows (assembly/prefill.ts), bit for bit attend_task's
   * results: the chunk's keys and values packed per kv head first, then the items over the threads.
   */
  private attendPrefill(
    pf: PrefillItems,
    tasks: number,
    segs: number,
    maxTokens: number,
    layer: number,
    qkv: number,
    att: number,
    H: number,
    KV: number,
    d: number,
  ): void {
    const nq = H / KV;
    const items = this.region(this.prefillItems, pf.nItems * 8);
    new Int32Array(this.buf, items, pf.nItems * 2).set(pf.items.subarray(0, pf.nItems * 2));
    const packed = this.region(this.packed, pf.np * KV * 2 * d * 4);
    this.k.pack_rows(packed, qkv, pf.p0, pf.np, H, KV, d);
    const need = Math.max(this.k.task_scratch_bytes(nq, maxTokens, d), this.k.prefill_scratch_bytes(pf.blockRows, nq, maxTokens, d));
    const stride = Math.ceil(need / 64) * 64;
    const parallel = this.runner !== null && pf.nItems > 1 && this.runner.parallel;
    const scratch = this.region(this.scratch, stride * (parallel ? this.threads : 1));
    if (parallel) {
      const args = [tasks, segs, layer, qkv, att, H, KV, d, packed, pf.p0, pf.np, scratch, stride];
      for (let i0 = 0; i0 < pf.nItems; i0 += MAX_ITEMS) {
        this.runner!.run(OP_PREFILL, [items + i0 * 8, ...args], Math.min(MAX_ITEMS, pf.nItems - i0));
      }
    } else {
      for (let i = 0; i < pf.nItems; i++) this.k.prefill_item(items, i, tasks, segs, layer, qkv, att, H, KV, d, packed, pf.p0, pf.np, scratch);
    }
  }

  /** The plan's task and segment tables in the memory, copied once per plan (they serve every layer). */
  private copyPlan(plan: StepPlan): { tasks: number; segs: number } {
    const c = this.planCopy;
    if (c.plan !== plan || c.epoch !== plan.epoch) {
      const tb = plan.nTasks * 32,
        sb = plan.nSegs * 32;
      if (c.tasksBytes < tb) {
        if (c.tasks) this.heap.free(c.tasks);
        c.tasksBytes = Math.max(tb, c.tasksBytes * 2, 1024);
        c.tasks = this.heap.alloc(c.tasksBytes);
      }
      if (c.segsBytes < sb) {
        if (c.segs) this.heap.free(c.segs);
        c.segsBytes = Math.max(sb, c.segsBytes * 2, 4096);
        c.segs = this.heap.alloc(c.segsBytes);
      }
      new Int32Array(this.buf, c.tasks, plan.nTasks * 8).set(plan.tasks.subarray(0, plan.nTasks * 8));
      new Int32Array(this.buf, c.segs, plan.nSegs * 8).set(plan.segs.subarray(0, plan.nSegs * 8));
      c.plan = plan;
      c.epoch = plan.epoch;
    }
    return c;
  }

  async sync(): Promise<void> {
    /* ops run as they are issued */
  }

  async argmax(x: Tensor, rows: number, n: number): Promise<Int32Array> {
    return ops.argmax(F(x), rows, n);
  }

  fillRandom(t: Tensor, seed: number, scale: number): void {
    if (t.dtype !== 'f32' && t.dtype !== 'f16' && t.dtype !== 'bf16') throw new Error(`fillRandom: a ${t.dtype} tensor`);
    if (T(t).tiled === 0) {
      ops.randomFill(T(t).data as Float32Array | Uint16Array, t.dtype, seed, scale);
      return;
    }
    // A tiled matrix: the same values by row-major index, generated a chunk at a time and scattered.
    const chunk = new Uint16Array(Math.min(t.length, 1 << 20));
    for (let first = 0; first < t.length; first += chunk.length) {
      const part = chunk.subarray(0, Math.min(chunk.length, t.length - first));
      ops.randomFill(part, t.dtype, seed, scale, first);
      this.write(t, part, first);
    }
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

/** Pages as blocks of the linear memory, in slabs (slabs.ts); a handle is the page's address. */
export class WasmPagePool implements PagePool, HostPages {
  allocatedBytes = 0;
  peakBytes = 0;

  resetPeak(): void {
    this.peakBytes = this.allocatedBytes;
  }
  private readonly sizes = new Map<number, number>();
  private readonly v: PageViews = { f32: new Float32Array(0), u16: new Uint16Array(0), u32: new Uint32Array(0), byteOffset: 0 };

  private readonly slabs: SlabPages;

  constructor(
    readonly shape: AttnShape,
    private readonly b: WasmBackend,
  ) {
    const heap = b.heap;
    this.slabs = new SlabPages(pageSlabBytes(shape), {
      alloc: (n) => heap.alloc(n),
      free: (addr) => b.freeBlock(addr),
      get lastDirty() {
        return heap.lastDirty;
      },
    });
  }

  pageBytes(sectionBytes: number): number {
    return hostPageBytes(this.shape, sectionBytes);
  }

  /** Bytes of memory the pool's slabs and large pages occupy (held pages, free pages and empty slabs). */
  reservedBytes(): number {
    return this.slabs.reservedBytes();
  }

  alloc(sectionBytes: number): number {
    const bytes = this.pageBytes(sectionBytes);
    const p = this.slabs.alloc(bytes);
    this.b.zero(p, this.slabs.lastDirty);
    this.sizes.set(p, bytes);
    this.allocatedBytes += bytes;
    if (this.allocatedBytes > this.peakBytes) this.peakBytes = this.allocatedBytes;
    return p;
  }

  free(page: number): void {
    const bytes = this.sizes.get(page);
    if (bytes === undefined) throw new Error(`WasmPagePool.free: page ${page} is not allocated`);
    this.sizes.delete(page);
    this.allocatedBytes -= bytes;
    this.slabs.free(page);
  }

  views(page: number): PageViews {
    const m = this.b.memoryViews();
    const v = this.v;
    v.f32 = m.f32;
    v.u16 = m.u16;
    v.u32 = m.u32;
    v.byteOffset = page >>> 0; // plan records hold handles as int32: addresses past 2 GiB come back negative
    return v;
  }

  async readPage(page: number, sectionBytes: number): Promise<Uint8Array> {
    const n = this.shape.numLayers * this.shape.numKvHeads * sectionBytes;
    return new Uint8Array(this.b.memoryViews().u32.buffer, page, n).slice();
  }

  writePage(page: number, sectionBytes: number, bytes: Uint8Array): void {
    const n = this.shape.numLayers * this.shape.numKvHeads * sectionBytes;
    if (bytes.byteLength !== n) throw new KiviError(`page of ${n} bytes written with ${bytes.byteLength}`);
    new Uint8Array(this.b.memoryViews().u32.buffer, page, n).set(bytes);
  }
}
