/**
 * The WebGPU back end: tensors are GPU buffers, ops are compute dispatches recorded in order and
 * submitted in batches (core.ts), and only read() and argmax() bring data back (argmax ids for greedy
 * decoding, logits rows otherwise). Weights stay 16-bit on the GPU (weightDType): float16 for float32
 * and float16 checkpoints; bfloat16 checkpoints stay bfloat16, which widens exactly with a shift, where
 * converting to float16 would round away its range (|x| < 6e-5 and > 65504) for nothing: both are
 * 2 bytes a weight. Cache pages live in per-layer arenas (pool.ts); the cache work of each sub-step
 * and layer is a few dispatches for all sequences (attention.ts, planbuf.ts).
 */

import { KiviError } from '../../util/errors.js';
import { JOB_DST, JOB_KIND, JOB_ROTATE, JOB_WORDS, SEG_KIND, SEG_N, SEG_PAGE, SEG_ROWS, SEG_WORDS } from '../layout.js';
import type { StepPlan } from '../plan.js';
import { randomScale } from '../ts/ops.js';
import type { AttnShape, Backend, DType, HostArray, PagePool, Tensor } from '../types.js';
import { DTYPE_BYTES } from '../types.js';
import { arenaCount } from './arenas.js';
import { type AttnGeometry, attendWgsl, attnGeometry, partialFloats } from './attention.js';
import { DEFAULT_VARIANT, parseAttnVariant } from './attn-variant.js';
import {
  BLOCK,
  type BulkBuild,
  type BulkGeometry,
  type BulkPhase,
  type BulkSetting,
  bulkGeometry,
  bulkSubgroups,
  bulkWgsl,
  parseBulkSetting,
  resolveBulk,
} from './bulk.js';
import { type Binding, type GBuf, GpuCore, type Kernel } from './core.js';
import {
  ARGMAX,
  addWgsl,
  embedWgsl,
  fillRandomWgsl,
  GATHER,
  GEMM_TILE,
  GEMV_TABLE,
  type GemvTable,
  gemmWgsl,
  gemvShape,
  gemvWgsl,
  MM_ADD,
  MM_BIAS,
  matmulSerialWgsl,
  parseGemvTable,
  ROPE,
  rmsnormWgsl,
  SCATTER16,
  SWIGLU,
  type WType,
} from './dense.js';
import { findAdapter, type GpuDevice, openDevice, type WebGpuOptions, wgslFeatures } from './device.js';
import { jobsWgsl } from './jobs.js';
import { mergeWgsl } from './merge.js';
import { PageTables } from './pagetables.js';
import { type BulkPolicy, buildPlan, type GpuPlan } from './planbuf.js';
import { WebGpuPagePool } from './pool.js';
import { ITEM_WORDS, MERGE_WORDS } from './records.js';
import { rotateWgsl } from './rotate.js';

/** A tensor in a GPU buffer (16-bit types as u32 words, element i in half i & 1). */
export class GpuTensor implements Tensor {
  constructor(
    readonly dtype: DType,
    readonly length: number,
    readonly g: GBuf,
  ) {}
}

const T = (t: Tensor): GpuTensor => {
  if (!(t instanceof GpuTensor)) throw new Error('webgpu: a tensor of another back end');
  return t;
};

function wtype(t: Tensor): WType {
  if (t.dtype === 'f32' || t.dtype === 'f16' || t.dtype === 'bf16') return t.dtype;
  throw new Error(`webgpu: expected a float tensor, got ${t.dtype}`);
}

function f32(t: Tensor): GpuTensor {
  if (t.dtype !== 'f32') throw new Error(`webgpu: expected a float32 tensor, got ${t.dtype}`);
  return T(t);
}

/** Storage bindings of every matmul kernel: x, weights, bias, out. */
const MATMUL_BINDINGS: ('read' | 'rw')[] = ['read', 'read', 'read', 'rw'];

/** A window of rows of a buffer larger than one binding. */
interface Window {
  row0: number;
  row1: number;
  offset: number;
  size: number | undefined;
  /** Element offset of row0 within the window. */
  base: number;
}

/** The plan as the GPU's job tables see it: no pre-phase jobs (rotateRows runs those). */
function withoutPreJobs(plan: StepPlan): StepPlan {
  return new Proxy(plan, {
    get(target, key) {
      if (key === 'nPre') return 0;
      if (key === 'sub') {
        return (s: number) => {
          const r = target.sub(s).slice();
          r[2] = 0;
          r[3] = 0;
          return r;
        };
      }
      const v = Reflect.get(target, key, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

export class WebGpuBackend implements Backend {
  readonly name = 'webgpu' as const;
  readonly threads = 0;
  readonly description: string;
  readonly core: GpuCore;
  /** Largest storage binding used (bytes, a multiple of 256). */
  readonly maxBinding: number;
  /** Whether this runs on a software adapter (SwiftShader): for tests, never for timing. */
  readonly fallback: boolean;
  /** Matmul one thread per output (software adapters; the same bits as GEMV/GEMM; tests switch it). */
  serialMatmul: boolean;
  /** GEMV shapes by number of rows; more rows than its last entry take the tiled GEMM. */
  readonly gemvTable: GemvTable;
  private readonly kernels = new Map<string, Kernel>();
  /** Diagnostic only: an attention kernel variant (attn-variant.ts parseAttnVariant; scripts/gpu/attn-ablate.mjs). */
  attnVariant = '';
  /**
   * The bulk kernel (bulk.ts) for the quantized prefix of KIVI tasks, as parseBulkSetting reads it: ''
   * (its defaults: on where it measured faster), '0' (off), 'on', or builds to time (`cw16,sb8`). From
   * KIVI_WEBGPU_BULK in Node. Off while a diagnostic attnVariant of the general kernel runs.
   */
  bulk = typeof process !== 'undefined' ? (process.env?.KIVI_WEBGPU_BULK ?? '') : '';
  private bulkParsed: { key: string | null; setting: BulkSetting } = { key: null, setting: parseBulkSetting('') };
  private bulkBuilds = new Map<string, BulkBuild>();
  private bulkBuildsOf: BulkSetting | null = null;
  private readonly geometries = new Map<string, AttnGeometry>();
  private readonly dummies: GBuf[];
  /** Arena bindings per layer (cache pages). */
  private readonly arenas: number;
  private readonly dummy: GBuf;
  private readonly pools: WebGpuPagePool[] = [];
  private planBuf: GBuf | null = null;
  /** Words of the plan buffer for a step's records; the page tables' words behind them. */
  private planWords = 0;
  private tableWords = 0;
  /** Caches' page lists on the GPU: a decode step sends the pages added, not every page's record. */
  readonly pageRuns = true;
  private readonly tables: PageTables;
  private planOf: { plan: StepPlan | null; epoch: number; gp: GpuPlan | null; bulk: string } = { plan: null, epoch: -1, gp: null, bulk: '' };
  private partials: GBuf | null = null;
  private ids: GBuf | null = null;
  /** The tensors of attention calls deferred to a layer's last sub-step (see attend). */
  private deferred: { qkv: Tensor; att: Tensor; layer: number } | null = null;
  private disposed = false;

  private constructor(
    private readonly dev: GpuDevice,
    o: WebGpuOptions,
    gemvTable: GemvTable,
  ) {
    this.core = new GpuCore(dev.device);
    const L = dev.device.limits;
    const most = Math.min(L.maxStorageBufferBindingSize, L.maxBufferSize, o.maxBindingBytes ?? Infinity, 2 ** 31 - 256);
    this.maxBinding = Math.floor(most / 256) * 256;
    this.fallback = dev.fallback;
    this.serialMatmul = o.serialMatmul ?? dev.fallback;
    this.gemvTable = gemvTable;
    this.description = `webgpu: ${dev.name}${dev.fallback ? ' (software adapter: for tests, not for speed)' : ''}`;
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
    this.arenas = arenaCount(L.maxStorageBuffersPerShaderStage, o.maxArenas);
    this.dummies = Array.from({ length: this.arenas }, () => this.core.buffer(16, usage, 'unused arena'));
    this.dummy = this.core.buffer(16, usage, 'no bias');
    this.tables = new PageTables();
  }

  /** Open the WebGPU device (any adapter, software ones included: `auto` decides elsewhere). */
  static async create(o: WebGpuOptions = {}): Promise<WebGpuBackend> {
    const env = typeof process !== 'undefined' ? process.env?.KIVI_WEBGPU_GEMV : undefined;
    const table = parseGemvTable(o.gemvTable ?? env ?? GEMV_TABLE);
    const adapter = await findAdapter(o, false);
    if (!adapter) throw new KiviError('--backend webgpu: no WebGPU adapter here (no GPU driver found by WebGPU)');
    return new WebGpuBackend(await openDevice(adapter, await wgslFeatures(o)), o, table);
  }

  private kernel(key: string, make: () => [string, ('read' | 'rw')[], boolean?]): Kernel {
    let k = this.kernels.get(key);
    if (!k) {
      const [code, storage, data] = make();
      k = this.core.kernel(key, code, storage, data ?? false);
      this.kernels.set(key, k);
    }
    return k;
  }

  // ---- memory -------------------------------------------------------------------------------------

  tensor(dtype: DType, length: number): Tensor {
    const bytes = dtype === 'f16' || dtype === 'bf16' ? Math.ceil(length / 2) * 4 : length * DTYPE_BYTES[dtype];
    const g = this.core.buffer(bytes, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST);
    return new GpuTensor(dtype, length, g);
  }

  write(t: Tensor, data: HostArray, offset = 0): void {
    const g = T(t);
    if (DTYPE_BYTES[t.dtype] !== data.BYTES_PER_ELEMENT) throw new Error(`write: ${data.constructor.name} into a ${t.dtype} tensor`);
    if (offset < 0 || offset + data.length > t.length) throw new Error(`write: elements [${offset}, ${offset + data.length}) of a tensor of ${t.length}`);
    if (data.length === 0) return;
    if (data.BYTES_PER_ELEMENT === 4) {
      this.core.write(g.g, offset * 4, data);
      return;
    }
    // 16-bit: whole words directly; an odd start or end through a kernel that keeps the neighbour half.
    const lead = offset & 1;
    const body = (data.length - lead) & ~1;
    if (body > 0) this.core.write(g.g, (offset + lead) * 2, data.subarray(lead, lead + body));
    for (const [from, n] of [
      [0, lead],
      [lead + body, data.length - lead - body],
    ] as const) {
      if (n === 0) continue;
      const words = new Uint32Array(Math.ceil(n / 2));
      new Uint16Array(words.buffer).set(data.subarray(from, from + n) as Uint16Array);
      const off = offset + from;
      const w0 = off >> 1,
        w1 = (off + n - 1) >> 1;
      const k = this.kernel('scatter16', () => [SCATTER16, ['rw'], true]);
      this.core.dispatch(
        k,
        [{ b: g.g }],
        Math.ceil((w1 - w0 + 1) / 256),
        (u, _f, at, d) => {
          u.set([off, n, d[0]!, w0, w1 - w0 + 1], at);
        },
        [words],
      );
    }
  }

  async read(t: Tensor, offset: number, length: number): Promise<Float32Array> {
    const g = f32(t);
    if (offset < 0 || offset + length > t.length) throw new Error(`read: elements [${offset}, ${offset + length}) of a tensor of ${t.length}`);
    if (length === 0) return new Float32Array(0);
    return new Float32Array(await this.core.readBytes(g.g, offset * 4, length * 4));
  }

  release(t: Tensor): void {
    if (!this.disposed) this.core.destroy(T(t).g);
  }

  weightDType(file: 'f32' | 'f16' | 'bf16'): DType {
    return file === 'bf16' ? 'bf16' : 'f16';
  }

  createPagePool(shape: AttnShape): WebGpuPagePool {
    const { numHeads: H, numKvHeads: KV, headDim: D } = shape;
    if (H % KV !== 0) throw new KiviError(`webgpu: ${H} heads are not a multiple of ${KV} kv heads`);
    if (D % 16 !== 0 || D > 256) throw new KiviError(`webgpu: head_dim ${D} is not supported (a multiple of 16, at most 256)`);
    this.geometry(shape);
    const pool = new WebGpuPagePool(shape, this.core, this.maxBinding, this.dummies);
    this.pools.push(pool);
    return pool;
  }

  private geometry(shape: AttnShape): AttnGeometry {
    const key = `${shape.numHeads}:${shape.numKvHeads}:${shape.headDim}`;
    let g = this.geometries.get(key);
    if (!g) {
      g = attnGeometry(shape, this.dev.device.limits.maxComputeWorkgroupStorageSize);
      this.geometries.set(key, g);
    }
    return g;
  }

  /** Row windows of a weight buffer: the whole buffer, or pieces that each fit one binding. */
  private windows(g: GBuf, rows: number, rowElems: number, dtype: DType): Window[] {
    if (g.size <= this.maxBinding) return [{ row0: 0, row1: rows, offset: 0, size: undefined, base: 0 }];
    const eb = DTYPE_BYTES[dtype];
    const rowBytes = rowElems * eb;
    const out: Window[] = [];
    for (let r = 0; r < rows; ) {
      const start = r * rowBytes;
      const off = Math.floor(start / 256) * 256;
      const n = Math.min(rows - r, Math.floor((this.maxBinding - (start - off)) / rowBytes));
      if (n < 1) throw new KiviError(`webgpu: a weight row of ${rowBytes} bytes does not fit one GPU binding`);
      const size = Math.min(g.size - off, Math.ceil(((r + n) * rowBytes - off) / 16) * 16);
      out.push({ row0: r, row1: r + n, offset: off, size, base: (start - off) / eb });
      r += n;
    }
    return out;
  }

  // ---- ops ----------------------------------------------------------------------------------------

  embed(out: Tensor, table: Tensor, ids: Int32Array, D: number): void {
    const wt = wtype(table);
    const o = f32(out),
      tb = T(table);
    if (ids.length === 0) return;
    const k = this.kernel(`embed:${wt}`, () => [embedWgsl(wt), ['read', 'rw'], true]);
    for (const w of this.windows(tb.g, table.length / D, D, wt)) {
      this.core.dispatch(
        k,
        [{ b: tb.g, offset: w.offset, size: w.size }, { b: o.g }],
        Math.ceil((ids.length * D) / 256),
        (u, _f, at, d) => {
          u.set([ids.length, D, d[0]!, w.row0, w.row1, w.base], at);
        },
        [ids],
      );
    }
  }

  rmsnorm(out: Tensor, x: Tensor, w: Tensor, rows: number, D: number, eps: number): void {
    const wt = wtype(w);
    const inplace = out === x;
    const k = this.kernel(`rmsnorm:${wt}:${inplace}`, () => [rmsnormWgsl(wt, inplace), inplace ? ['read', 'rw'] : ['read', 'read', 'rw']]);
    const b: Binding[] = inplace ? [{ b: T(w).g }, { b: f32(out).g }] : [{ b: f32(x).g }, { b: T(w).g }, { b: f32(out).g }];
    this.core.dispatch(k, b, rows, (u, f, at) => {
      u[at] = rows;
      u[at + 1] = D;
      f[at + 2] = eps;
    });
  }

  matmul(out: Tensor, x: Tensor, w: Tensor, rows: number, inDim: number, outDim: number, bias?: Tensor): void {
    this.product(out, x, w, rows, inDim, outDim, bias, false);
  }

  matmulAdd(out: Tensor, x: Tensor, w: Tensor, rows: number, inDim: number, outDim: number): void {
    this.product(out, x, w, rows, inDim, outDim, undefined, true);
  }

  /** out = x · wᵀ (+ bias), or out += x · wᵀ: the add in the kernel's epilogue, one dispatch. */
  private product(out: Tensor, x: Tensor, w: Tensor, rows: number, inDim: number, outDim: number, bias: Tensor | undefined, add: boolean): void {
    const wt = wtype(w);
    if (out === x) throw new Error('webgpu matmul: out must differ from x');
    if (rows === 0) return;
    const vec = inDim % 8 === 0;
    const wg = T(w).g;
    const chunks = Math.ceil(inDim / 8);
    // The kernel and, per window of n outputs, its grid of workgroups and its number of row blocks.
    let k: Kernel;
    const sh = this.serialMatmul ? null : gemvShape(this.gemvTable, rows);
    let grid: (n: number) => { count: number; blocks: number };
    if (this.serialMatmul) {
      k = this.kernel(`serial:${wt}:${vec}`, () => [matmulSerialWgsl(wt, vec), MATMUL_BINDINGS]);
      grid = (n) => ({ count: Math.ceil((rows * n) / 64), blocks: 1 });
    } else if (sh) {
      k = this.kernel(`gemv:${wt}:${vec}:${sh.R}:${sh.OT}:${sh.U}:${sh.G}:${sh.X}`, () => [gemvWgsl(wt, vec, sh), MATMUL_BINDINGS]);
      const { R, G, OT } = sh;
      const blocks = Math.ceil(rows / R);
      grid = (n) => ({ count: Math.ceil(n / (G * OT)) * blocks, blocks });
    } else {
      k = this.kernel(`gemm:${wt}:${vec}`, () => [gemmWgsl(wt, vec), MATMUL_BINDINGS]);
      const blocks = Math.ceil(rows / GEMM_TILE);
      grid = (n) => ({ count: Math.ceil(n / GEMM_TILE) * blocks, blocks });
    }
    for (const win of this.windows(wg, outDim, inDim, wt)) {
      const b: Binding[] = [{ b: f32(x).g }, { b: wg, offset: win.offset, size: win.size }, { b: bias ? f32(bias).g : this.dummy }, { b: f32(out).g }];
      const { count, blocks } = grid(win.row1 - win.row0);
      this.core.dispatch(k, b, count, (u, _f, at) => {
        u.set([rows, inDim, outDim, win.row0, win.row1, win.base, chunks, (bias ? MM_BIAS : 0) | (add ? MM_ADD : 0), blocks], at);
      });
    }
  }

  rope(qkv: Tensor, rows: number, positions: Int32Array, cos: Tensor, sin: Tensor, shape: AttnShape): void {
    const { numHeads: H, numKvHeads: KV, headDim: d } = shape;
    const k = this.kernel('rope', () => [ROPE, ['rw', 'read', 'read'], true]);
    const heads = H + KV;
    this.core.dispatch(
      k,
      [{ b: f32(qkv).g }, { b: f32(cos).g }, { b: f32(sin).g }],
      Math.ceil((rows * heads * (d / 2)) / 256),
      (u, _f, at, dd) => {
        u.set([rows, d / 2, heads, (H + 2 * KV) * d, d, dd[0]!], at);
      },
      [positions.subarray(0, rows)],
    );
  }

  swiglu(act: Tensor, gu: Tensor, rows: number, I: number): void {
    const k = this.kernel('swiglu', () => [SWIGLU, ['read', 'rw']]);
    this.core.dispatch(k, [{ b: f32(gu).g }, { b: f32(act).g }], Math.ceil((rows * I) / 256), (u, _f, at) => u.set([rows, I], at));
  }

  add(x: Tensor, y: Tensor, n: number): void {
    const self = x === y;
    const k = this.kernel(`add:${self}`, () => [addWgsl(self), self ? ['rw'] : ['rw', 'read']]);
    this.core.dispatch(k, self ? [{ b: f32(x).g }] : [{ b: f32(x).g }, { b: f32(y).g }], Math.ceil(n / 256), (u, _f, at) => {
      u[at] = n;
    });
  }

  gather(out: Tensor, x: Tensor, rows: Int32Array, D: number): void {
    if (out === x) throw new Error('webgpu gather: out must differ from x');
    if (rows.length === 0) return;
    const k = this.kernel('gather', () => [GATHER, ['read', 'rw'], true]);
    this.core.dispatch(
      k,
      [{ b: f32(x).g }, { b: f32(out).g }],
      Math.ceil((rows.length * D) / 256),
      (u, _f, at, d) => {
        u.set([rows.length, D, d[0]!], at);
      },
      [rows],
    );
  }

  async argmax(x: Tensor, rows: number, n: number): Promise<Int32Array> {
    if (rows === 0) return new Int32Array(0);
    if (!this.ids || this.ids.size < rows * 4) {
      if (this.ids) this.core.destroy(this.ids);
      this.ids = this.core.buffer(Math.max(rows * 4, 256), GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC);
    }
    const k = this.kernel('argmax', () => [ARGMAX, ['read', 'rw']]);
    this.core.dispatch(k, [{ b: f32(x).g }, { b: this.ids }], rows, (u, _f, at) => u.set([rows, n], at));
    return new Int32Array(await this.core.readBytes(this.ids, 0, rows * 4));
  }

  /** Fill a float tensor with normal-ish values of standard deviation `scale` (ts/ops.ts randomFill, bit for bit). */
  fillRandom(t: Tensor, seed: number, scale: number): void {
    const wt = wtype(t);
    const k = this.kernel(`fill:${wt}`, () => [fillRandomWgsl(wt), ['rw']]);
    const units = wt === 'f32' ? t.length : Math.ceil(t.length / 2);
    this.core.dispatch(k, [{ b: T(t).g }], Math.ceil(units / 256), (u, f, at) => {
      u[at] = t.length;
      u[at + 1] = seed >>> 0;
      f[at + 2] = randomScale(scale);
    });
  }

  // ---- cache work ---------------------------------------------------------------------------------

  /**
   * The plan's GPU tables, built and uploaded once per plan. The plan buffer holds the step's records in
   * words [0, planWords) and the page tables (pagetables.ts) behind them, sent as pages are added; when
   * either outgrows its part, a bigger buffer takes the tables by a copy on the GPU.
   */
  private upload(plan: StepPlan, shape: AttnShape): GpuPlan {
    const c = this.planOf;
    const bulkKey = this.bulkKey();
    if (c.plan === plan && c.epoch === plan.epoch && c.gp && c.bulk === bulkKey) return c.gp;
    // The GPU's pre jobs are rotations only (fake caches are refused here), run by rotateRows, not the job tables.
    const gp = buildPlan(plan.nPre === 0 ? plan : withoutPreJobs(plan), shape, this.tables, this.bulkPolicy(shape));
    const tw = this.tables.top;
    if (!this.planBuf || gp.used > this.planWords || tw > this.tableWords) {
      const S = Math.max(gp.used, gp.used > this.planWords ? this.planWords * 2 : this.planWords, 1 << 14);
      const T = Math.max(tw, tw > this.tableWords ? this.tableWords * 2 : this.tableWords, 1 << 12);
      const next = this.core.buffer((S + T) * 4, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC, 'plan');
      if (this.planBuf) {
        if (this.tableWords > 0) this.core.commands().copyBufferToBuffer(this.planBuf.buf, this.planWords * 4, next.buf, S * 4, this.tableWords * 4);
        this.core.destroy(this.planBuf);
      }
      this.planBuf = next;
      this.planWords = S;
      this.tableWords = T;
    }
    for (const k of gp.runWords) gp.words[k]! += this.planWords;
    if (gp.used > 0) this.core.write(this.planBuf, 0, gp.words.subarray(0, gp.used));
    const buf = this.planBuf,
      base = this.planWords;
    this.tables.flush((word, data) => this.core.write(buf, (base + word) * 4, data));
    c.plan = plan;
    c.epoch = plan.epoch;
    c.gp = gp;
    c.bulk = bulkKey;
    return gp;
  }

  /** The bulk setting in force ('0' while a diagnostic variant of the general kernel runs). */
  private bulkKey(): string {
    return this.attnVariant ? '0' : this.bulk;
  }

  /** The bulk setting in force, parsed once per text. */
  private bulkSetting(): BulkSetting {
    const key = this.bulkKey();
    if (this.bulkParsed.key !== key) this.bulkParsed = { key, setting: parseBulkSetting(key, this.dev.dot4, this.dev.subgroupMin > 0) };
    return this.bulkParsed.setting;
  }

  /** The bulk setting resolved for a shape on this device, once per setting and shape. */
  private bulkBuild(shape: AttnShape): BulkBuild {
    const o = this.bulkSetting();
    const key = `${shape.numHeads}:${shape.numKvHeads}:${shape.headDim}`;
    let b = this.bulkBuilds.get(key);
    if (!b || this.bulkBuildsOf !== o) {
      if (this.bulkBuildsOf !== o) this.bulkBuilds.clear();
      this.bulkBuildsOf = o;
      b = resolveBulk(o, shape, this.dev.subgroupMin, this.dev.device.limits.maxComputeWorkgroupStorageSize);
      this.bulkBuilds.set(key, b);
    }
    return b;
  }

  private bulkGeometry(shape: AttnShape, bits: number, phase: BulkPhase = 'all', o: BulkBuild = this.bulkBuild(shape)): BulkGeometry | null {
    return bulkGeometry(shape, bits, this.dev.device.limits.maxComputeWorkgroupStorageSize, phase === 'values' ? o.vcw : o.cw, o.sb);
  }

  /** The build a plan's bulk items take: the shape's, or its build for long steps where a task reaches that. */
  private planBulkBuild(shape: AttnShape, gp: GpuPlan): BulkBuild {
    const o = this.bulkBuild(shape);
    return o.long && gp.bulkLongest >= o.long.min ? o.long : o;
  }

  private bulkPolicy(shape: AttnShape): BulkPolicy | null {
    const o = this.bulkBuild(shape);
    if (!o.on) return null;
    const g2 = this.bulkGeometry(shape, 2);
    return {
      cw: (bits) => this.bulkGeometry(shape, bits)?.cw ?? 0,
      minTokens: o.min,
      itemTokens: (g2?.lanes ?? 1) * BLOCK,
      items: o.items,
    };
  }

  cacheJobs(plan: StepPlan, sub: number, phase: 'pre' | 'post', layer: number, qkv: Tensor, pool: PagePool): void {
    const r = plan.sub(sub);
    if ((phase === 'pre' ? r[3]! : r[5]!) === 0) return;
    // Pre jobs on the GPU are rotations (fake caches are refused here), run before the step's attention.
    if (phase === 'pre') {
      const rotations = this.rotateRows(plan, r[2]!, r[3]!, qkv, pool.shape);
      if (rotations !== r[3]!) throw new Error('webgpu: pre-phase cache jobs other than rotations');
      return;
    }
    const p = pool as WebGpuPagePool;
    const gp = this.upload(plan, pool.shape);
    const s = gp.subs[sub]!;
    const n = s.nPost;
    const na = p.slotsInUse;
    const k = this.shapeKernel(`jobs${na}`, pool.shape, () => jobsWgsl(pool.shape, na), ['read', 'read', ...Array<'rw'>(this.arenas).fill('rw')]);
    this.core.dispatch(k, [{ b: this.planBuf! }, { b: f32(qkv).g }, ...p.bindings(layer)], n, (u, _f, at) => u.set([s.post, n, gp.postJobs], at));
  }

  /** Run the JOB_ROTATE jobs among pre jobs [j0, j0 + n) (rotate.ts); returns how many there were. */
  private rotateRows(plan: StepPlan, j0: number, n: number, qkv: Tensor, shape: AttnShape): number {
    const { numHeads: H, numKvHeads: KV, headDim: d } = shape;
    let rotations = 0;
    for (let j = j0; j < j0 + n; j++) {
      if (plan.pre[j * JOB_WORDS + JOB_KIND] !== JOB_ROTATE) continue;
      rotations++;
      const dst = plan.pre[j * JOB_WORDS + JOB_DST]! * SEG_WORDS;
      if (plan.segs[dst + SEG_KIND] !== SEG_ROWS) throw new Error(`webgpu cache job ${j}: a rotation works on activation rows`);
      const r0 = plan.segs[dst + SEG_PAGE]!,
        rows = plan.segs[dst + SEG_N]!;
      const k = this.kernel(`rotate:${d}`, () => [rotateWgsl(d), ['rw']]);
      this.core.dispatch(k, [{ b: f32(qkv).g }], rows * (H + KV), (u, f, at) => {
        u.set([r0, rows, H + KV, (H + 2 * KV) * d], at);
        f[at + 4] = Math.fround(1 / Math.sqrt(d));
      });
    }
    return rotations;
  }

  /**
   * Attention of sub-step `sub`. When the plan has several sub-steps (decoded tokens of a sequence go
   * one per sub-step) and no pre-phase jobs, every sub-step's attention of the layer is issued as one
   * dispatch at the last sub-step's call, after the earlier sub-steps' storage jobs: those only append
   * (new slots, new pages; freed pages are not reused within a step), so each task still reads exactly
   * the tokens its records name, and the GPU gets all tasks of the layer at once.
   */
  attend(plan: StepPlan, sub: number, layer: number, qkv: Tensor, att: Tensor, pool: PagePool): void {
    const p = pool as WebGpuPagePool;
    const shape = pool.shape;
    const batch = plan.nSubs > 1 && plan.nPre === 0;
    if (batch && sub < plan.nSubs - 1) {
      if (sub === 0) this.deferred = { qkv, att, layer };
      else if (!this.deferred || this.deferred.qkv !== qkv || this.deferred.att !== att || this.deferred.layer !== layer) {
        throw new Error('webgpu attend: the sub-steps of a layer must use the same tensors');
      }
      return;
    }
    const gp = this.upload(plan, shape);
    const first = gp.subs[batch ? 0 : sub]!,
      last = gp.subs[sub]!;
    const nAttn = (last.attn - first.attn) / ITEM_WORDS + last.nAttn;
    const nBulk = (last.bulk - first.bulk) / ITEM_WORDS + last.nBulk;
    const nMerge = (last.merge - first.merge) / MERGE_WORDS + last.nMerge;
    this.deferred = null;
    if (nAttn === 0 && nBulk === 0) return;
    const { numHeads: H, numKvHeads: KV } = shape;
    // The partials, then (the bulk kernel split in two) the bulk items' scores.
    const bo = this.planBulkBuild(shape, gp);
    const split = nBulk > 0 && bo.split;
    const partBytes = Math.max(16, (gp.partials * partialFloats(shape) + (split ? gp.bulkScores : 0)) * 4);
    if (!this.partials || this.partials.size < partBytes) {
      if (this.partials) this.core.destroy(this.partials);
      this.partials = this.core.buffer(Math.max(partBytes, (this.partials?.size ?? 0) * 2), GPUBufferUsage.STORAGE, 'partials');
    }
    const v = this.attnVariant;
    const variant = v ? parseAttnVariant(v) : DEFAULT_VARIANT;
    // A variant's own layout (its channels, its workgroup memory); the shape's cached one otherwise.
    const g = v ? attnGeometry(shape, this.dev.device.limits.maxComputeWorkgroupStorageSize, variant) : this.geometry(shape);
    const na = Math.min(this.arenas, Math.max(p.slotsInUse, variant.na));
    const k = this.shapeKernel(`attend${na}${v ? `-${v}` : ''}`, shape, () => attendWgsl(shape, g, na, variant), [
      'read',
      'read',
      'rw',
      'rw',
      ...Array<'read'>(this.arenas).fill('read'),
    ]);
    const bind = [{ b: this.planBuf! }, { b: f32(qkv).g }, { b: f32(att).g }, { b: this.partials }, ...p.bindings(layer)];
    if (nAttn > 0) this.core.dispatch(k, bind, nAttn, (u, _f, at) => u.set([first.attn, nAttn, gp.tasks], at));
    if (nBulk > 0) {
      // Every bulk item of a plan has one code width: a plan's tasks share the layer's cache spec.
      const bits = gp.bulkBits;
      const bg = this.bulkGeometry(shape, bits, 'all', bo);
      if (!bg) throw new Error(`webgpu: bulk items without a bulk kernel for ${bits} bits`);
      if (bo.sg && !bulkSubgroups(bg, this.dev.subgroupMin)) {
        throw new KiviError(
          `KIVI_WEBGPU_BULK: sg needs a lane's ${bg.nch} threads in one subgroup (this device's have at least ${this.dev.subgroupMin}) and a round of at least ${bg.nch} scores (it has ${bg.sb} tokens × ${bg.nq} heads)`,
        );
      }
      const name = `bulk${na}-${bits}-${bg.cw}-sb${bg.sb}-u${bo.u}${bo.ex ? '' : '-noex'}${bo.ik ? '-ik' : ''}${bo.sg ? '-sg' : ''}${bo.aw ? '' : '-av'}${bo.vx ? '' : '-vm'}${[...bo.skip].map((x) => `-${x}`).join('')}`;
      for (const phase of split ? (['keys', 'values'] as const) : (['all'] as const)) {
        const pg = phase === 'values' ? this.bulkGeometry(shape, bits, phase, bo) : bg;
        if (!pg) throw new KiviError(`KIVI_WEBGPU_BULK: vcw${bo.vcw} does not fit this shape`);
        const vname = phase === 'values' && pg.cw !== bg.cw ? `-vcw${pg.cw}` : '';
        const kb = this.shapeKernel(phase === 'all' ? name : `${name}-${phase}${vname}`, shape, () => bulkWgsl(shape, pg, na, bo, phase), [
          'read',
          'read',
          'rw',
          'rw',
          ...Array<'read'>(this.arenas).fill('read'),
        ]);
        this.core.dispatch(kb, bind, nBulk, (u, _f, at) => u.set([first.bulk, nBulk, gp.tasks], at));
      }
    }
    if (nMerge > 0) {
      const m = this.shapeKernel('merge', shape, () => mergeWgsl(shape), ['read', 'read', 'rw']);
      // One merge workgroup per (item, query head).
      this.core.dispatch(m, [{ b: this.planBuf! }, { b: this.partials }, { b: f32(att).g }], nMerge * (H / KV), (u, _f, at) =>
        u.set([first.merge, nMerge, gp.tasks], at),
      );
    }
  }

  private shapeKernel(name: string, shape: AttnShape, code: () => string, storage: ('read' | 'rw')[]): Kernel {
    return this.kernel(`${name}:${shape.numHeads}:${shape.numKvHeads}:${shape.headDim}`, () => [code(), storage]);
  }

  async sync(): Promise<void> {
    await this.core.sync();
  }

  /** The device's first error (GpuCore.check's message), once it reported one. */
  failure(): string | null {
    return this.core.failure;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    try {
      this.core.flush();
    } catch {
      /* the device may be lost already */
    }
    for (const p of this.pools) p.dispose();
    this.tables.dispose();
    this.core.dispose();
    this.dev.device.destroy();
  }
}
