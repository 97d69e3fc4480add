/**
 * `bench capacity`: how many sequences of N tokens fit in a memory budget that must hold the weights,
 * the measured runtime overhead and the caches — then allocate exactly that many, in a child process,
 * and report its peak RSS.
 *
 *   overhead  = RSS of a process with the model loaded and ready (a warm-up prefill of one fill chunk,
 *               the young generation at its working size, the loader's garbage collected, the fill tool
 *               in memory: probe.ts) − the weights' bytes; measured in a child, not guessed
 *   slack     = one page slab per page size the spec uses (slabSlack)
 *   sequences = floor((budget − weights − overhead − slack) / pages(spec, N))
 *
 * where pages(spec, N) is what one sequence of N tokens holds in pages (what a KV budget counts; exact,
 * from the cache's own page bookkeeping). Caches are filled with synthetic K/V through their storage
 * jobs, so N may exceed the model's context (no forward pass runs over them).
 */

import { cacheBytes, peakAllocatedBytes } from '../../cache/budget.js';
import { type CacheSpec, validateSpec } from '../../cache/spec.js';
import type { CacheDims } from '../../cache/types.js';
import { hostPageBytes } from '../../kernels/host/memory.js';
import type { BackendChoice } from '../../kernels/index.js';
import { pageSlabBytes } from '../../kernels/wasm/slabs.js';
import { readModelConfig } from '../../model/load.js';
import { formatBytes, formatRatio, markdownTable } from './markdown.js';
import { type AllocateResult, FILL_WINDOW, type OverheadResult, spawnProbe } from './probe.js';

export interface ProbeEnv {
  model: string;
  backend?: BackendChoice;
  threads?: number;
}

/** A memory budget: bytes, or headroom above the weights + measured overhead (`+16MiB` on the CLI). */
export type BudgetArg = number | { headroom: number };

export function resolveBudget(b: BudgetArg, weights: number, overhead: number): number {
  return typeof b === 'number' ? b : weights + overhead + b.headroom;
}

export interface CapacityOptions extends ProbeEnv {
  budget: BudgetArg;
  context: number;
  specs: CacheSpec[];
  onProgress?: (done: number, total: number) => void;
}

/** The JSON output's `results` entries are exactly these fields. */
export interface CapacityResult {
  kv: string;
  sequences: number;
  /** Peak RSS (bytes) of a process that loaded the model and allocated that many filled caches. */
  peak_rss: number;
  /**
   * Resident bytes one sequence took: (settled RSS with the caches − settled RSS without them) / sequences;
   * null when no sequence fits.
   */
  rss_per_sequence: number | null;
}

export interface CapacityReport {
  budget: number;
  context: number;
  model_context: number;
  weights_bytes: number;
  overhead_bytes: number;
  /** Settled RSS (after GC) of the process that measured the overhead: model loaded and ready, no caches. */
  base_rss: number;
  results: CapacityResult[];
  /**
   * Per spec: one sequence's pages at N tokens (what the budget counts) and its cached data (bytes()),
   * and what the child actually held.
   */
  detail: { kv: string; per_sequence_bytes: number; per_sequence_data_bytes: number; kv_bytes: number; allocated_bytes: number; rss: number }[];
}

/**
 * Tokens of the warm-up forward pass that makes a model "ready" for capacity purposes: one prefill chunk
 * of the size the caches are filled in, so the activation scratch such a chunk needs is sized once and
 * counted in the overhead (as in a server that has prefilled a chunk), not found later in the peak.
 */
export const CAPACITY_WARM_TOKENS = FILL_WINDOW;

export async function modelDims(model: string): Promise<{ dims: CacheDims; maxPositions: number; vocab: number }> {
  const c = await readModelConfig(model);
  return {
    dims: { numLayers: c.numLayers, numHeads: c.numHeads, numKvHeads: c.numKvHeads, headDim: c.headDim },
    maxPositions: c.maxPositions,
    vocab: c.vocabSize,
  };
}

/**
 * Memory the page pool may hold beyond its pages: pages come from slabs of one page size each
 * (kernels/wasm/slabs.ts), and the slab of each size that is being filled may be partly unused. Fixed, not
 * per sequence: admission counts it with the overhead.
 */
export function slabSlack(dims: CacheDims, pageSizes: number): number {
  return pageSizes * pageSlabBytes(dims);
}

/** Sequences that fit: floor((budget − weights − overhead) / perSequence), never negative. */
export function sequencesThatFit(budget: number, weights: number, overhead: number, perSequence: number): number {
  return Math.max(0, Math.floor((budget - weights - overhead) / perSequence));
}

export async function runCapacity(o: CapacityOptions): Promise<CapacityReport> {
  const { dims, maxPositions } = await modelDims(o.model);
  const specs = o.specs;
  for (const spec of specs) validateSpec(spec, dims);
  const pool = { shape: dims, pageBytes: (b: number) => hostPageBytes(dims, b) };
  const env = { model: o.model, backend: o.backend, threads: o.threads, warmTokens: CAPACITY_WARM_TOKENS };
  const total = specs.length + 1;
  const base = await spawnProbe<OverheadResult>({ task: 'overhead', ...env, fillTool: true });
  o.onProgress?.(1, total);
  const weights = base.weights_bytes;
  const overhead = base.overhead_bytes;
  const budget = resolveBudget(o.budget, weights, overhead);
  const results: CapacityResult[] = [];
  const detail: CapacityReport['detail'] = [];
  for (let i = 0; i < specs.length; i++) {
    const kv = specs[i]!.name;
    const sizes = new Set<number>();
    const counted = {
      shape: dims,
      pageBytes: (b: number) => {
        sizes.add(b);
        return pool.pageBytes(b);
      },
    };
    const per = peakAllocatedBytes(specs[i]!, counted, o.context, o.context);
    const data = cacheBytes(specs[i]!, dims, o.context);
    const sequences = sequencesThatFit(budget, weights, overhead + slabSlack(dims, sizes.size), per);
    const r = await spawnProbe<AllocateResult>({ task: 'allocate', ...env, kv, sequences, context: o.context });
    if (r.kv_bytes !== sequences * data || r.allocated_bytes !== sequences * per) {
      throw new Error(
        `${kv}: the child held ${r.kv_bytes} cache bytes in ${r.allocated_bytes} of pages, expected ${sequences} × ${data} in ${sequences} × ${per}`,
      );
    }
    results.push({ kv, sequences, peak_rss: r.peak_rss, rss_per_sequence: sequences > 0 ? (r.rss - base.rss) / sequences : null });
    detail.push({ kv, per_sequence_bytes: per, per_sequence_data_bytes: data, kv_bytes: r.kv_bytes, allocated_bytes: r.allocated_bytes, rss: r.rss });
    o.onProgress?.(i + 2, total);
  }
  return {
    budget,
    context: o.context,
    model_context: maxPositions,
    weights_bytes: weights,
    overhead_bytes: overhead,
    base_rss: base.rss,
    results,
    detail,
  };
}

/** Memory one sequence actually took: (settled RSS with the caches − without them) / sequences. */
export function measuredPerSequence(r: CapacityReport, i: number): number {
  return r.results[i]!.rss_per_sequence ?? NaN;
}

export function capacityMarkdown(r: CapacityReport): string {
  const fp16 = r.results.find((x) => x.kv === 'fp16');
  const fp16Measured = fp16 ? measuredPerSequence(r, r.results.indexOf(fp16)) : NaN;
  const rows = r.results.map((x, i) => {
    const d = r.detail[i]!;
    const measured = measuredPerSequence(r, i);
    return [
      x.kv,
      formatBytes(d.per_sequence_bytes),
      x.sequences,
      fp16 && fp16.sequences > 0 ? formatRatio(x.sequences / fp16.sequences) : '–',
      formatBytes(d.allocated_bytes),
      formatBytes(x.peak_rss),
      `${((100 * x.peak_rss) / r.budget).toFixed(1)}%`,
      Number.isFinite(measured) ? formatBytes(measured) : '–',
      formatRatio(fp16Measured / measured),
    ];
  });
  const head =
    `Budget ${formatBytes(r.budget)} = weights ${formatBytes(r.weights_bytes)} + measured overhead ${formatBytes(r.overhead_bytes)} ` +
    `+ one page slab per page size + caches; sequences of ${r.context} tokens` +
    (r.context > r.model_context ? ` (beyond the model's context of ${r.model_context}: caches filled with synthetic K/V)` : '') +
    '.' +
    (r.budget < r.weights_bytes + r.overhead_bytes ? ' The budget does not even cover weights + overhead.' : '') +
    ' "RSS / sequence": resident memory after GC with the caches minus without them (' +
    formatBytes(r.base_rss) +
    '), per sequence.\n\n';
  return (
    head +
    markdownTable(
      ['kv', 'pages / sequence', 'sequences', 'vs fp16', 'cache pages held', 'peak RSS', 'peak RSS / budget', 'RSS / sequence', 'fp16 ÷ this'],
      rows,
    )
  );
}
