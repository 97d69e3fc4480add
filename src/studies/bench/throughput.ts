/**
 * `bench throughput`: end-to-end generation with the largest batch each cache spec admits under a
 * memory budget — the analog of the KIVI paper's throughput figure.
 *
 *   admitted = floor((budget − weights − overhead) / peakAllocatedBytes(spec, prompt + gen, from prompt))
 *
 * Every (spec, batch) point runs in its own child process (peak RSS per run) through the batching
 * engine with ignoreEos, greedy decoding and seeded synthetic prompts. Sequences join PREFILL_ROWS /
 * prompt at a time, one group per step, so a step's prefill activations stay bounded (the batch ramps up
 * over the first steps and down over the last ones, as in a server). The overhead is measured with a
 * warm-up forward pass as large as the largest step (a group of prompts joining a full batch). Batches
 * run are capped at --max-batch to keep the command's time reasonable; a capped point under-reports what
 * the budget admits. With --repeats, points run in rounds and the median-time run is reported.
 */

import { peakAllocatedBytes } from '../../cache/budget.js';
import { parseKvSpec, validateSpec } from '../../cache/spec.js';
import type { CacheDims } from '../../cache/types.js';
import { hostPageBytes } from '../../kernels/host/memory.js';
import { KiviError } from '../../util/errors.js';
import type { TopLevelSpec } from '../plot.js';
import { type BudgetArg, modelDims, type ProbeEnv, resolveBudget, sequencesThatFit } from './capacity.js';
import { formatBytes, formatRatio, markdownTable } from './markdown.js';
import { type GenerateProbeResult, type OverheadResult, spawnProbe } from './probe.js';

/** Most prompt rows prefilled in one step. */
export const PREFILL_ROWS = 512;

/** Warm-up forward pass of a generation run (JIT only). */
const GENERATE_WARM_TOKENS = 8;

export interface ThroughputOptions extends ProbeEnv {
  budgets: BudgetArg[];
  prompt: number;
  gen: number;
  specs: string[];
  maxBatch: number;
  /** Runs of each (spec, batch) point, in rounds (default 1); the median-time run is reported. */
  repeats?: number;
  seed?: number;
  onProgress?: (done: number, total: number) => void;
}

export interface ThroughputResult {
  kv: string;
  budget: number;
  /** Sequences the budget admits. */
  admitted: number;
  /** Sequences actually run: min(admitted, max batch). */
  batch: number;
  /** Generated tokens per second, end to end (prefill included); 0 when nothing fits. */
  tokens_per_second: number;
  generated_tokens: number;
  seconds: number;
  /** Peak RSS of the child process that ran the batch, the most over its runs (null when nothing ran). */
  peak_rss: number | null;
  /** Runs behind this point (0 when nothing fits). */
  runs: number;
}

export interface ThroughputReport {
  prompt: number;
  gen: number;
  max_batch: number;
  weights_bytes: number;
  overhead_bytes: number;
  results: ThroughputResult[];
}

export function joinPerStep(prompt: number): number {
  return Math.max(1, Math.floor(PREFILL_ROWS / prompt));
}

/** Most rows one step can have: a group of prompts joining, plus the decode rows of those already in. */
export function largestStepRows(prompt: number, maxBatch: number): number {
  const j = Math.min(joinPerStep(prompt), maxBatch);
  return j * prompt + (maxBatch - j);
}

/** Sequences whose peak pages (prefilled with the prompt, decoded to prompt + gen) fit what the budget leaves for caches. */
export function admittedBatch(budget: number, weights: number, overhead: number, spec: string, dims: CacheDims, prompt: number, gen: number): number {
  const pool = { shape: dims, pageBytes: (b: number) => hostPageBytes(dims, b) };
  return sequencesThatFit(budget, weights, overhead, peakAllocatedBytes(parseKvSpec(spec), pool, prompt + gen, prompt));
}

export async function runThroughput(o: ThroughputOptions): Promise<ThroughputReport> {
  const { dims, maxPositions } = await modelDims(o.model);
  for (const s of o.specs) validateSpec(parseKvSpec(s), dims);
  if (o.prompt + o.gen > maxPositions) {
    throw new KiviError(`--prompt ${o.prompt} + --gen ${o.gen} exceeds the model's context of ${maxPositions}`);
  }
  const join = joinPerStep(o.prompt);
  const env = { model: o.model, backend: o.backend, threads: o.threads };
  // The overhead includes the activation buffers of the largest step any run can take; the generation
  // runs themselves only warm up the JIT.
  const base = await spawnProbe<OverheadResult>({ task: 'overhead', ...env, warmTokens: largestStepRows(o.prompt, o.maxBatch) });
  const W = base.weights_bytes;
  const O = base.overhead_bytes;

  const budgets = o.budgets.map((b) => resolveBudget(b, W, O));
  const plan = budgets.flatMap((budget) =>
    o.specs.map((kv) => {
      const admitted = admittedBatch(budget, W, O, kv, dims, o.prompt, o.gen);
      return { kv, budget, admitted, batch: Math.min(admitted, o.maxBatch) };
    }),
  );
  // A (spec, batch) point does the same work whatever budget admitted it: run each once per round,
  // every point in turn, so that load from other processes falls on all points alike.
  const key = (kv: string, b: number) => `${kv}\u0000${b}`;
  const todo = [...new Set(plan.filter((p) => p.batch > 0).map((p) => key(p.kv, p.batch)))];
  const runs = new Map<string, GenerateProbeResult[]>(todo.map((k) => [k, []]));
  const repeats = o.repeats ?? 1;
  let done = 0;
  o.onProgress?.(0, todo.length * repeats);
  for (let round = 0; round < repeats; round++) {
    for (const k of todo) {
      const [kv, b] = k.split('\u0000') as [string, string];
      runs.get(k)!.push(
        await spawnProbe<GenerateProbeResult>({
          task: 'generate',
          ...env,
          warmTokens: GENERATE_WARM_TOKENS,
          kv,
          batch: Number(b),
          prompt: o.prompt,
          gen: o.gen,
          joinPerStep: join,
          seed: o.seed ?? 1000,
        }),
      );
      o.onProgress?.(++done, todo.length * repeats);
    }
  }
  const results = plan.map((p): ThroughputResult => {
    const rs = runs.get(key(p.kv, p.batch)) ?? [];
    // The run of median time (the upper one of an even count) speaks for the point; peak RSS is the most.
    const r = [...rs].sort((a, b) => a.seconds - b.seconds)[rs.length >> 1];
    return {
      ...p,
      tokens_per_second: r?.tokens_per_second ?? 0,
      generated_tokens: r?.generated_tokens ?? 0,
      seconds: r?.seconds ?? 0,
      peak_rss: r ? Math.max(...rs.map((x) => x.peak_rss)) : null,
      runs: rs.length,
    };
  });
  return { prompt: o.prompt, gen: o.gen, max_batch: o.maxBatch, weights_bytes: W, overhead_bytes: O, results };
}

export function throughputMarkdown(r: ThroughputReport): string {
  const rows = r.results.map((x) => {
    const fp16 = r.results.find((y) => y.kv === 'fp16' && y.budget === x.budget);
    return [
      formatBytes(x.budget),
      formatBytes(x.budget - r.weights_bytes - r.overhead_bytes),
      x.kv,
      x.admitted,
      x.batch + (x.batch < x.admitted ? ' (capped)' : ''),
      x.tokens_per_second.toFixed(1),
      fp16 && fp16.tokens_per_second > 0 ? formatRatio(x.tokens_per_second / fp16.tokens_per_second) : '–',
      x.peak_rss === null ? '–' : formatBytes(x.peak_rss),
      x.peak_rss === null ? '–' : `${((100 * x.peak_rss) / x.budget).toFixed(1)}%`,
    ];
  });
  return (
    `Prompt ${r.prompt} + ${r.gen} generated tokens per sequence; weights ${formatBytes(r.weights_bytes)}, ` +
    `measured overhead ${formatBytes(r.overhead_bytes)}; batches capped at ${r.max_batch}; ` +
    `median of ${Math.max(...r.results.map((x) => x.runs), 1)} run(s) per point.\n\n` +
    markdownTable(['budget', 'above weights + overhead', 'kv', 'admitted', 'batch run', 'tokens/s', 'vs fp16', 'peak RSS', 'peak RSS / budget'], rows)
  );
}

/** Two panels: tokens/s vs batch size (the paper's figure), and tokens/s vs memory budget. */
export function throughputChart(r: ThroughputReport, title: string): TopLevelSpec {
  const ran = r.results.filter((x) => x.batch > 0);
  const byBatch = [...new Map(ran.map((x) => [`${x.kv}/${x.batch}`, { kv: x.kv, batch: x.batch, tps: x.tokens_per_second }])).values()];
  const byBudget = r.results.map((x) => ({ kv: x.kv, budgetMiB: x.budget / 2 ** 20, tps: x.tokens_per_second, batch: x.batch }));
  const color = { field: 'kv', type: 'nominal', title: 'kv cache', legend: { labelLimit: 400 } } as const;
  const y = { field: 'tps', type: 'quantitative', title: 'generated tokens / s' } as const;
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title,
    hconcat: [
      {
        width: 320,
        height: 240,
        data: { values: byBatch },
        mark: { type: 'line', point: true },
        encoding: { x: { field: 'batch', type: 'quantitative', title: 'batch size (sequences)', axis: { format: 'd', tickMinStep: 1 } }, y, color },
      },
      {
        width: 320,
        height: 240,
        data: { values: byBudget },
        mark: { type: 'line', point: true },
        encoding: { x: { field: 'budgetMiB', type: 'quantitative', title: 'memory budget (MiB, weights included)' }, y, color },
      },
    ],
  };
}
