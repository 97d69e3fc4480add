/**
 * The compute back end: one op table per back end (the TypeScript reference, WebAssembly SIMD, WebGPU).
 * The model and the caches say what to compute; a back end owns where tensors live and when results
 * are ready. Ops are issued in order and may run later (WebGPU records them into command buffers);
 * only read() and argmax() hand results back, as promises. The TypeScript reference runs every op at
 * once and is the oracle the other back ends are tested against, op by op.
 *
 * Conventions: matrices are row-major; a linear weight is [outDim][inDim] as in Hugging Face Linear;
 * activations are float32; weights are float32 or the checkpoint's 16-bit type.
 */
import type { StepPlan } from './plan.js';

export type BackendName = 'ts' | 'wasm' | 'webgpu';

/** Element types of tensors. f16 and bf16 hold 16-bit patterns. */
export type DType = 'f32' | 'f16' | 'bf16' | 'u32' | 'i32';

export const DTYPE_BYTES: Record<DType, number> = { f32: 4, f16: 2, bf16: 2, u32: 4, i32: 4 };

/** A back end's tensor: a handle to storage the back end owns. */
export interface Tensor {
  readonly dtype: DType;
  /** Elements. */
  readonly length: number;
}

/** Host data a tensor can be written from. */
export type HostArray = Float32Array | Uint16Array | Uint32Array | Int32Array;

/** The shapes attention and the caches work with. */
export interface AttnShape {
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
}

/**
 * Cache storage: pages from a pool. A page holds the same token slots for every layer and kv head; its
 * layout per (layer, kv head) is a "section" whose size the cache gives (kernels/pages.ts). Handles are
 * the back end's own (an address, an index) and appear in plan records as they are.
 */
export interface PagePool {
  readonly shape: AttnShape;
  /** A zeroed page of numLayers × numKvHeads sections of `sectionBytes` (a multiple of 16). */
  alloc(sectionBytes: number): number;
  free(page: number): void;
  /** Bytes of pages allocated now (what a KV budget counts). */
  readonly allocatedBytes: number;
  /** The most bytes allocated at once since the pool was made or resetPeak() was called. */
  readonly peakBytes: number;
  resetPeak(): void;
  /** Bytes one page of sections of `sectionBytes` takes from the pool. */
  pageBytes(sectionBytes: number): number;
  /** A page's bytes, [layer][kvHead][section] (for saving a cache). */
  readPage(page: number, sectionBytes: number): Promise<Uint8Array>;
  /** Overwrite a page's bytes, laid out as readPage returns them. */
  writePage(page: number, sectionBytes: number, bytes: Uint8Array): void;
  /** False where the back end cannot run simulated-quantization (fake) jobs: the GPU. */
  readonly fakeJobs?: boolean;
  /**
   * True where the back end runs the TypeScript reference's experimental records (SEG_KIVI_V8: the KIVI
   * option vmeta=8): the ts back end only. (JOB_ROTATE, rot=hadamard, runs on every back end.)
   */
  readonly oracleJobs?: boolean;
}

export interface Backend {
  readonly name: BackendName;
  /** Threads the back end computes on (1 for the TypeScript reference; 0 where the GPU computes). */
  readonly threads: number;
  /** Takes page-run segments (StepPlan.pageRuns: a cache's page lists kept on the device). */
  readonly pageRuns?: boolean;
  /** What computes, in words ("wasm SIMD, 2 threads", "webgpu: NVIDIA H200"). */
  readonly description: string;
  /**
   * The error that left the back end unable to compute (a GPU out of memory, or lost), once one happened;
   * null while it works. Back ends that cannot fail so (the CPU's) leave it out.
   */
  failure?(): string | null;

  // ---- memory --------------------------------------------------------------------------------------
  /** A zeroed tensor. */
  tensor(dtype: DType, length: number): Tensor;
  /** Copy host data into t[offset ..] (same element size). */
  write(t: Tensor, data: HostArray, offset?: number): void;
  /** t[offset .. offset + length) of a float32 tensor, once every op issued before has run. */
  read(t: Tensor, offset: number, length: number): Promise<Float32Array>;
  /** Give a tensor's storage back; the tensor is unusable afterwards. */
  release(t: Tensor): void;
  /**
   * The type this back end keeps a weight matrix of a 16-bit or float32 checkpoint in (the default: the
   * checkpoint's own; the loader converts when they differ).
   */
  weightDType?(file: 'f32' | 'f16' | 'bf16'): DType;
  /**
   * A weight matrix [rows][cols] that only matmul (as `w`, inDim = cols) and embed (as the table) read,
   * laid out as this back end's kernels read it best; write() and fillRandom() take its elements in
   * row-major order all the same. Without it, matrices are plain tensors.
   */
  matrix?(dtype: DType, rows: number, cols: number): Tensor;
  /** A page pool for caches of a model of this shape. */
  createPagePool(shape: AttnShape): PagePool;

  // ---- ops (issued in order) -----------------------------------------------------------------------
  /** out[r] = table[ids[r]] as float32, rows of D. */
  embed(out: Tensor, table: Tensor, ids: Int32Array, D: number): void;
  /** out[r] = x[r] / rms(x[r]) · w, rows of D (out may be x). */
  rmsnorm(out: Tensor, x: Tensor, w: Tensor, rows: number, D: number, eps: number): void;
  /** out[r·outDim + o] = Σ_i x[r·inDim + i] · w[o·inDim + i] (+ bias[o]). */
  matmul(out: Tensor, x: Tensor, w: Tensor, rows: number, inDim: number, outDim: number, bias?: Tensor): void;
  /**
   * out[r·outDim + o] += Σ_i x[r·inDim + i] · w[o·inDim + i]: a residual connection's add fused into the
   * product (bit for bit matmul into a scratch, then add; on the GPU one dispatch instead of two).
   */
  matmulAdd(out: Tensor, x: Tensor, w: Tensor, rows: number, inDim: number, outDim: number): void;
  /**
   * Rotary embedding in place on the q and k heads of qkv rows ([rows][(H + 2·KV)·d]), Hugging Face's
   * rotate-half pairs (i, i + d/2), row r at position positions[r]; cos/sin are [positions][d/2] tables.
   */
  rope(qkv: Tensor, rows: number, positions: Int32Array, cos: Tensor, sin: Tensor, shape: AttnShape): void;
  /** act[r·I + i] = silu(gu[r·2I + i]) · gu[r·2I + I + i]. */
  swiglu(act: Tensor, gu: Tensor, rows: number, I: number): void;
  /** x[i] += y[i], i < n. */
  add(x: Tensor, y: Tensor, n: number): void;
  /** out[i] = x[rows[i]], rows of D. */
  gather(out: Tensor, x: Tensor, rows: Int32Array, D: number): void;
  /** Run the jobs of one phase of sub-step `sub` of the plan on layer `layer`'s part of the pages. */
  cacheJobs(plan: StepPlan, sub: number, phase: 'pre' | 'post', layer: number, qkv: Tensor, pool: PagePool): void;
  /**
   * Run the attention tasks of sub-step `sub` on layer `layer`: per task, every query head's scores over
   * its kv head's key segments (scaled by 1/√d), one softmax over all the task's tokens, and the weighted
   * sum of the value segments, written to att[row] ([rows][H·d]).
   */
  attend(plan: StepPlan, sub: number, layer: number, qkv: Tensor, att: Tensor, pool: PagePool): void;
  /** Resolves once every op issued so far has run (timing; a host back end has already run them). */
  sync(): Promise<void>;
  /** Index of the largest of each row of a float32 [rows][n] tensor (the lowest index on ties). */
  argmax(x: Tensor, rows: number, n: number): Promise<Int32Array>;
  /**
   * Fill a float tensor with normal-ish values of mean 0 and standard deviation `scale`, the same on
   * every back end for a seed (random-weight models for benchmarks; kernels/ts/ops.ts randomFill).
   */
  fillRandom?(t: Tensor, seed: number, scale: number): void;

  /**
   * Fill a float tensor with normal-ish values of standard deviation `scale` that depend only on (seed,
   * index), the same on every back end: random-weight models for benchmarks, generated where they live.
   */
  fillRandom?(t: Tensor, seed: number, scale: number): void;

  /** Release threads, device and memory; the back end is unusable afterwards. Idempotent. */
  dispose(): void;
}
