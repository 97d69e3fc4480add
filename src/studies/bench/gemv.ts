/**
 * `bench gemv`: the linear layers' kernel (kernels.matmul) on a weight matrix much larger than the
 * last-level cache, against the machine's measured memory-bandwidth bound. With one activation row the
 * kernel must stream every weight once per call, so GB/s (weight bytes / time) is the figure of merit;
 * more rows reuse each weight and move the kernel toward compute-bound (GFLOP/s), against a second bound on
 * wasm: the batch kernel's own 2×4 tile timed on operands that stay in L1. Weights are float32,
 * bf16 or f16 (the same values, rounded), side by side: 16-bit weights halve the bytes a GEMV must move.
 * The bound and the kernels are timed in turns (medians). On a GPU (webgpu) the bound is a streaming read
 * of the same GPU, and each sample is CALLS_PER_GPU_SAMPLE calls in one submission (a single call of a
 * few microseconds would time the host's round trip, not the kernel).
 */

import { Rng } from '../../engine/sampling.js';
import { type Backend, DTYPE_BYTES, type Tensor } from '../../kernels/types.js';
import type { WasmBackend } from '../../kernels/wasm/kernels.js';
import { newMatrix } from '../../model/weights.js';
import { toHalfBits } from '../../quant/float16.js';
import { type BandwidthResult, ReadBandwidthProbe } from './bandwidth.js';
import { formatBytes, formatSeconds, markdownTable } from './markdown.js';
import { DEFAULT_REPEATS, type RepeatOptions, timeInterleavedAsync } from './measure.js';

export interface GemvOptions {
  backend: Backend;
  inDim: number;
  outDim: number;
  rows: number[];
  /** Weight storage types, side by side (default f32, bf16, f16). */
  weights?: GemvWeightType[];
  /** Threads of the bandwidth bound (the kernels' thread count). */
  threads: number;
  /** Bytes the bandwidth probe reads (default 512 MiB, 16× a 32 MiB L3). */
  bandwidthBytes?: number;
  repeats?: RepeatOptions;
}

/** Runs of the compute bound's tile per sample: 1 GFLOP, a few tens of milliseconds. */
const PEAK_CALLS = 2 ** 16;

/** Matmul calls per timed sample on a GPU (their time divided by this). */
export const CALLS_PER_GPU_SAMPLE = 20;

export type GemvWeightType = 'f32' | 'bf16' | 'f16';
export const GEMV_WEIGHT_TYPES: readonly GemvWeightType[] = ['f32', 'bf16', 'f16'];

export interface GemvResult {
  /** How the weights are stored. */
  weights: GemvWeightType;
  rows: number;
  in: number;
  out: number;
  /** Median seconds per matmul call. */
  seconds: number;
  gflops: number;
  /** Bytes the call must move at least (weights + activations in and out) per second, 1e9. */
  gbps: number;
  /** gbps / the bound at the kernels' thread count. */
  of_bound: number;
  /** gflops / the compute bound times the kernels' threads (null where there is no compute bound). */
  of_compute: number | null;
}

/** The wasm kernels' compute bound: their batch tile's arithmetic on operands in L1, one thread. */
export interface ComputeBound {
  repeats: number;
  /** Median GFLOP/s of one thread. */
  gflops: number;
}

export interface GemvReport {
  backend: string;
  bound: BandwidthResult;
  /** The single-thread bound too, when the bound above used more threads. */
  bound_1_thread: BandwidthResult | null;
  /** wasm only: the compute bound (GFLOP/s a thread), timed in the same turns. */
  compute: ComputeBound | null;
  results: GemvResult[];
}

export async function runGemvBench(o: GemvOptions): Promise<GemvReport> {
  const { inDim, outDim, backend: K } = o;
  const repeats = o.repeats ?? DEFAULT_REPEATS;
  const rng = new Rng(5);
  const random = (n: number, scale: number) => {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = (rng.next() * 2 - 1) * scale;
    return a;
  };
  const dtypes = o.weights ?? GEMV_WEIGHT_TYPES;
  const wf = random(inDim * outDim, 1 / Math.sqrt(inDim));
  const ws = dtypes.map((t) => weightsAs(K, wf, t, inDim));
  const xs = o.rows.map((rows) => {
    const x = K.tensor('f32', rows * inDim);
    K.write(x, random(rows * inDim, 1));
    return x;
  });
  const ys = o.rows.map((rows) => K.tensor('f32', rows * outDim));
  const probes: ReadBandwidthProbe[] = [];
  try {
    const bwBytes = o.bandwidthBytes ?? 512 * 2 ** 20;
    if (K.name === 'webgpu') return await gpuRuns(o, K, ws, xs, ys, bwBytes);
    probes.push(await ReadBandwidthProbe.start(bwBytes, o.threads));
    if (o.threads > 1) probes.push(await ReadBandwidthProbe.start(bwBytes, 1));
    // The bounds and the kernel in turns, so that load from other processes falls on all alike.
    const runs = dtypes.flatMap((_, d) => o.rows.map((rows, i) => ({ d, rows, i })));
    const wasm = K.name === 'wasm' ? (K as WasmBackend) : null;
    let peakFlops = 0;
    const times = await timeInterleavedAsync(
      [
        ...probes.map((p) => async () => void p.sample()),
        ...(wasm
          ? [
              async () => {
                peakFlops = wasm.tilePeak(PEAK_CALLS);
              },
            ]
          : []),
        ...runs.map(({ d, rows, i }) => async () => {
          K.matmul(ys[i]!, xs[i]!, ws[d]!, rows, inDim, outDim);
          await K.sync();
        }),
      ],
      repeats,
    );
    const bw = probes.map(
      (p, i): BandwidthResult => ({
        bytes: p.bytes,
        threads: p.threads,
        repeats: times[i]!.samples.length,
        gbps: p.bytes / times[i]!.seconds / 1e9,
      }),
    );
    const bound = bw[0]!;
    const peak = wasm ? times[probes.length]! : null;
    const compute = peak ? { repeats: peak.samples.length, gflops: peakFlops / peak.seconds / 1e9 } : null;
    const first = probes.length + (wasm ? 1 : 0);
    const results = runs.map(({ d, rows }, j) => result(o, dtypes[d]!, rows, times[first + j]!.seconds, bound, compute));
    return { backend: K.name, bound, bound_1_thread: bw[1] ?? null, compute, results };
  } finally {
    for (const p of probes) await p.close();
    for (const a of [...ws, ...xs, ...ys]) K.release(a);
  }
}

/** The GPU's runs: its streaming-read probe, then each shape's calls in one submission a sample. */
async function gpuRuns(o: GemvOptions, K: Backend, ws: Tensor[], xs: Tensor[], ys: Tensor[], bwBytes: number): Promise<GemvReport> {
  const { streamingRead } = await import('../../kernels/webgpu/probe.js');
  const gpu = K as import('../../kernels/webgpu/backend.js').WebGpuBackend;
  const probe = await streamingRead(gpu, Math.min(bwBytes, gpu.maxBinding));
  const bound: BandwidthResult = { bytes: probe.bytes, threads: 0, repeats: 7, gbps: probe.gbps };
  const dtypes = o.weights ?? GEMV_WEIGHT_TYPES;
  const runs = dtypes.flatMap((_, d) => o.rows.map((rows, i) => ({ d, rows, i })));
  const times = await timeInterleavedAsync(
    runs.map(({ d, rows, i }) => async () => {
      for (let c = 0; c < CALLS_PER_GPU_SAMPLE; c++) K.matmul(ys[i]!, xs[i]!, ws[d]!, rows, o.inDim, o.outDim);
      await K.sync();
    }),
    o.repeats ?? DEFAULT_REPEATS,
  );
  return {
    backend: K.name,
    bound,
    bound_1_thread: null,
    compute: null,
    results: runs.map(({ d, rows }, j) => result(o, dtypes[d]!, rows, times[j]!.seconds / CALLS_PER_GPU_SAMPLE, bound, null)),
  };
}

function result(o: GemvOptions, weights: GemvWeightType, rows: number, seconds: number, bound: BandwidthResult, compute: ComputeBound | null): GemvResult {
  const bytes = DTYPE_BYTES[weights] * o.inDim * o.outDim + 4 * rows * (o.inDim + o.outDim);
  const gbps = bytes / seconds / 1e9;
  const gflops = (2 * rows * o.inDim * o.outDim) / seconds / 1e9;
  const of_compute = compute ? gflops / (compute.gflops * o.threads) : null;
  return { weights, rows, in: o.inDim, out: o.outDim, seconds, gflops, gbps, of_bound: gbps / bound.gbps, of_compute };
}

/** The float32 weights stored as `t` (16-bit: rounded to nearest, ties to even), laid out as a model's are. */
function weightsAs(K: Backend, w: Float32Array, t: GemvWeightType, inDim: number): Tensor {
  const out = newMatrix(K, t, w.length / inDim, inDim);
  if (t === 'f32') {
    K.write(out, w);
    return out;
  }
  const bits = new Uint16Array(w.length);
  const u = new Uint32Array(w.buffer, w.byteOffset, w.length);
  for (let i = 0; i < w.length; i++) bits[i] = t === 'f16' ? toHalfBits(w[i]!) : (u[i]! + 0x7fff + ((u[i]! >>> 16) & 1)) >>> 16;
  K.write(out, bits);
  return out;
}

export function gemvMarkdown(r: GemvReport): string {
  const b = r.bound;
  const on = b.threads === 0 ? 'on the GPU (a streaming read)' : `on ${b.threads} thread${b.threads > 1 ? 's' : ''}`;
  const head =
    `Memory-bandwidth bound: ${b.gbps.toFixed(1)} GB/s reading ${formatBytes(b.bytes)} ${on}` +
    (r.bound_1_thread ? ` (${r.bound_1_thread.gbps.toFixed(1)} GB/s on 1 thread)` : '') +
    `; backend ${r.backend}.\n` +
    (r.compute ? `Compute bound: ${r.compute.gflops.toFixed(1)} GFLOP/s a thread (the batch kernel's 2×4 tile on operands in L1).\n` : '') +
    '\n';
  const rows = r.results.map((x) => [
    x.weights,
    x.rows,
    `${x.out}×${x.in}`,
    formatBytes(DTYPE_BYTES[x.weights] * x.in * x.out),
    formatSeconds(x.seconds),
    x.gflops.toFixed(2),
    x.gbps.toFixed(2),
    `${(100 * x.of_bound).toFixed(1)}%`,
    ...(r.compute ? [`${(100 * x.of_compute!).toFixed(1)}%`] : []),
  ]);
  const cols = ['weights', 'rows', 'weight', 'weight bytes', 'time / call', 'GFLOP/s', 'GB/s', 'of bound'];
  return head + markdownTable(r.compute ? [...cols, 'of compute'] : cols, rows);
}
