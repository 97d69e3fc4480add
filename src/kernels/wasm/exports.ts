/**
 * A 16-bit-weight matmul (assembly/matmul16.ts). `scratch`: 0, or matmul16_scratch_bytes() bytes of this
 * thread's own (batches then run on float32 panels). `tiled`: rows of w stored in 8-row tiles (tiles.ts;
 * 0: row-major).
 */
type Matmul16 = (
  out: number,
  x: number,
  w: number,
  rows: number,
  inDim: number,
  outDim: number,
  bias: number,
  o0: number,
  o1: number,
  scratch: number,
  tiled: number,
) => void;

/** The kernel module's exports (assembly/index.ts); pointers are byte offsets into the shared memory. */
export interface KernelExports {
  matmul(out: number, x: number, w: number, rows: number, inDim: number, outDim: number, bias: number, o0: number, o1: number): void;
  /** `calls` runs of the batch kernel's 2×4 tile over inDim inputs of 2 rows and 4 outputs (bench gemv's compute bound). */
  tile_peak(out: number, x: number, w: number, inDim: number, calls: number): void;
  matmul_bf16: Matmul16;
  matmul_f16: Matmul16;
  matmul16_scratch_bytes(): number;
  scores_f32(s: number, sStride: number, q: number, nq: number, k: number, kRow: number, n: number, d: number, scale: number): void;
  scores_f16(s: number, sStride: number, q: number, nq: number, k: number, kRow: number, n: number, d: number, scale: number): void;
  accum_f32(out: number, p: number, pStride: number, nq: number, v: number, vRow: number, n: number, d: number): void;
  accum_f16(out: number, p: number, pStride: number, nq: number, v: number, vRow: number, n: number, d: number): void;
  scores_kivi(
    s: number,
    sStride: number,
    q: number,
    nq: number,
    codes: number,
    scales: number,
    mins: number,
    n: number,
    d: number,
    bits: number,
    G: number,
    scale: number,
    work: number,
  ): void;
  accum_kivi(
    out: number,
    p: number,
    pStride: number,
    nq: number,
    codes: number,
    scales: number,
    mins: number,
    n: number,
    d: number,
    bits: number,
    G: number,
    work: number,
  ): void;
  /** accum_kivi over one chunk of ≤ 256 tokens given as a list of value segments ([codes, scales, mins, n] words each). */
  accum_kivi_list(
    out: number,
    p: number,
    pStride: number,
    nq: number,
    list: number,
    nseg: number,
    m: number,
    d: number,
    bits: number,
    G: number,
    work: number,
  ): void;
  kivi_work_bytes(d: number, nq: number): number;
  softmax(row: number, n: number): void;
  swiglu(act: number, gu: number, rows: number, I: number): void;
  attend_task(tasks: number, segs: number, i: number, layer: number, qkv: number, att: number, H: number, KV: number, d: number, scratch: number): void;
  task_scratch_bytes(nq: number, T: number, d: number): number;
  pack_rows(dst: number, qkv: number, r0: number, n: number, H: number, KV: number, d: number): void;
  /** Item i of the (first task, count) pairs at `items` (assembly/prefill.ts). */
  prefill_item(
    items: number,
    i: number,
    tasks: number,
    segs: number,
    layer: number,
    qkv: number,
    att: number,
    H: number,
    KV: number,
    d: number,
    packed: number,
    p0: number,
    np: number,
    scratch: number,
  ): void;
  prefill_scratch_bytes(rows: number, nq: number, T: number, d: number): number;
  /** JOB_ROTATE: Walsh–Hadamard transform in place of `heads` heads of d floats in each of `rows` rows `stride` floats apart. */
  fwht_rows(x: number, rows: number, heads: number, stride: number, d: number, scale: number): void;
  /**
   * JOB_STORE, JOB_QKEY and JOB_QVAL of a plan (assembly/jobs.ts), bit for bit the reference: 0 when done,
   * 1 when the caller must run the reference on the job instead (it then throws, or does what only it does).
   */
  cache_job(
    kind: number,
    half: number,
    src0: number,
    srcN: number,
    dst: number,
    segs: number,
    layer: number,
    qkv: number,
    H: number,
    KV: number,
    d: number,
    scratch: number,
  ): number;
  cache_job_scratch_bytes(n: number, d: number): number;
  /** ops.rmsnorm bit for bit on rows [r0, r1) (assembly/rows.ts); wKind: W_F32, W_BF16 or W_F16 (jobs.ts). */
  rmsnorm_rows(out: number, x: number, w: number, wKind: number, r0: number, r1: number, D: number, eps: number): void;
  /** ops.rope bit for bit on rows [r0, r1); positions: i32 per row. */
  rope_rows(x: number, r0: number, r1: number, rowStride: number, heads: number, d: number, positions: number, cos: number, sin: number): void;
  /** x[i] += y[i] for i in [i0, i1). */
  add_range(x: number, y: number, i0: number, i1: number): void;
}

/** Instantiate the module on a memory (synchronous: the module is already compiled). */
export function instantiate(module: WebAssembly.Module, memory: WebAssembly.Memory): KernelExports {
  return new WebAssembly.Instance(module, { env: { memory } }).exports as unknown as KernelExports;
}
