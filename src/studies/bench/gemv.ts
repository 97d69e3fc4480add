/**
 * `bench gemv`: the linear layers' kernel (kernels.matmul) on a weight matrix much larger than the
 * last-level cache, against the machine's measured memory-bandwidth bound. With one activation row the
 * kernel must stream every weight once per call, so GB/s (weight bytes / time) is the figure of merit;
 * more rows reuse each weight and move the kernel toward compute-bound (GFLOP/s).
 */
import type { Kernels } from '../../kernels/types.js';
import { Rng } from '../../engine/sampling.js';
import { DEFAULT_REPEATS, type RepeatOptions, timeRepeated } from './measure.js';
import { measureReadBandwidth, type BandwidthResult } from './bandwidth.js';
import { formatBytes, formatSeconds, markdownTable } from './markdown.js';

export interface GemvOptions {
  kernels: Kernels;
  inDim: number;
  outDim: number;
  rows: number[];
  /** Threads of the bandwidth bound (the kernels' thread count). */
  threads: number;
  /** Bytes the bandwidth probe reads (default 512 MiB, 16× a 32 MiB L3). */
  bandwidthBytes?: number;
  repeats?: RepeatOptions;
}

export interface GemvResult {
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
}

export interface GemvReport {
  backend: string;
  bound: BandwidthResult;
  /** The single-thread bound too, when the bound above used more threads. */
  bound_1_thread: BandwidthResult | null;
  results: GemvResult[];
}

export async function runGemvBench(o: GemvOptions): Promise<GemvReport> {
  const bwBytes = o.bandwidthBytes ?? 512 * 2 ** 20;
  const bound = await measureReadBandwidth(bwBytes, o.threads);
  const bound1 = o.threads > 1 ? await measureReadBandwidth(bwBytes, 1) : null;
  const { inDim, outDim, kernels: K } = o;
  const w = K.allocF32(inDim * outDim);
  const rng = new Rng(5);
  const s = 1 / Math.sqrt(inDim);
  for (let i = 0; i < w.length; i++) w[i] = (rng.next() * 2 - 1) * s;
  const results: GemvResult[] = [];
  try {
    for (const rows of o.rows) {
      const x = K.allocF32(rows * inDim);
      const y = K.allocF32(rows * outDim);
      try {
        for (let i = 0; i < x.length; i++) x[i] = rng.next() * 2 - 1;
        const { seconds } = timeRepeated(() => K.matmul(y, x, w, rows, inDim, outDim), o.repeats ?? DEFAULT_REPEATS);
        const bytes = 4 * (inDim * outDim + rows * (inDim + outDim));
        const gbps = bytes / seconds / 1e9;
        results.push({ rows, in: inDim, out: outDim, seconds, gflops: (2 * rows * inDim * outDim) / seconds / 1e9, gbps, of_bound: gbps / bound.gbps });
      } finally {
        K.free(x);
        K.free(y);
      }
    }
  } finally {
    K.free(w);
  }
  return { backend: K.name, bound, bound_1_thread: bound1, results };
}

export function gemvMarkdown(r: GemvReport): string {
  const b = r.bound;
  const head =
    `Memory-bandwidth bound: ${b.gbps.toFixed(1)} GB/s reading ${formatBytes(b.bytes)} on ${b.threads} thread${b.threads > 1 ? 's' : ''}` +
    (r.bound_1_thread ? ` (${r.bound_1_thread.gbps.toFixed(1)} GB/s on 1 thread)` : '') + `; backend ${r.backend}.\n\n`;
  const rows = r.results.map((x) => [
    x.rows, `${x.out}×${x.in}`, formatBytes(4 * x.in * x.out), formatSeconds(x.seconds), x.gflops.toFixed(2), x.gbps.toFixed(2),
    `${(100 * x.of_bound).toFixed(1)}%`,
  ]);
  return head + markdownTable(['rows', 'weight', 'weight bytes', 'time / call', 'GFLOP/s', 'GB/s', 'of bound'], rows);
}
