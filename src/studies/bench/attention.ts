/**
 * `bench attention`: decode attention time per step for one layer of one sequence, per cache spec and
 * context length, with the cache's bytes. Each cache is filled with synthetic keys/values (storage jobs
 * only, no attention), then one decode step (plan, attend, fold the token in, end) is timed repeatedly
 * after warm-up, the specs in turns (median per spec).
 * No model is involved, so contexts may exceed any model's max positions.
 */

import { cacheBytes } from '../../cache/budget.js';
import { type CacheSpec, createCache, validateSpec } from '../../cache/spec.js';
import { CacheStepper, qkvRows } from '../../cache/step.js';
import type { CacheDims, KvCache } from '../../cache/types.js';
import { endStep } from '../../cache/types.js';
import { StepPlan } from '../../kernels/plan.js';
import type { Backend, PagePool } from '../../kernels/types.js';
import { KiviError } from '../../util/errors.js';
import type { TopLevelSpec } from '../plot.js';
import { formatBytes, formatRatio, formatSeconds, markdownTable } from './markdown.js';
import { DEFAULT_REPEATS, Gaussian, type RepeatOptions, syntheticKV, timeInterleavedAsync } from './measure.js';

export interface AttentionBenchOptions {
  contexts: number[];
  specs: CacheSpec[];
  heads: number;
  kvHeads: number;
  headDim: number;
  backend: Backend;
  repeats?: RepeatOptions;
  seed?: number;
  onProgress?: (done: number, total: number) => void;
  /**
   * Also time the attention kernel alone (one decode step's attend, replayed `replays` times on the same
   * plan and cache, then synced): what a GPU's bandwidth is judged on, without the host's planning.
   * Results are appended to `results`.
   */
  kernel?: { results: AttentionKernelResult[]; replays?: number };
}

/** The attention of one decode step alone (bench attention's `gpu` field). */
export interface AttentionKernelResult {
  kv: string;
  context: number;
  /** Median seconds of one attend call (every kv head of the layer). */
  seconds: number;
  /** Cache bytes read per second (kv_bytes / seconds), 1e9. */
  gbps: number;
}

/** One measurement; the JSON output's `results` entries are exactly these four fields. */
export interface AttentionResult {
  kv: string;
  context: number;
  /** Median seconds of one decode step (append + attend). */
  seconds: number;
  /** The cache's bytes() after prefilling `context` tokens (equal to cacheBytes(), checked). */
  kv_bytes: number;
}

/** Distinct tokens fed by the timed steps (cycled). */
const STEP_TOKENS = 64;

export function attentionDims(o: Pick<AttentionBenchOptions, 'heads' | 'kvHeads' | 'headDim'>): CacheDims {
  const { heads, kvHeads, headDim } = o;
  if (heads % kvHeads !== 0) throw new KiviError(`--heads ${heads} must be a multiple of --kv-heads ${kvHeads}`);
  return { numLayers: 1, numHeads: heads, numKvHeads: kvHeads, headDim };
}

export async function runAttentionBench(o: AttentionBenchOptions): Promise<AttentionResult[]> {
  const dims = attentionDims(o);
  for (const spec of o.specs) validateSpec(spec, dims);
  const contexts = [...o.contexts].sort((a, b) => a - b);
  if (contexts.some((c) => !Number.isInteger(c) || c < 1)) throw new KiviError('contexts must be positive integers');
  const { kvHeads: KV, headDim: d, heads, backend } = o;
  const seed = o.seed ?? 1;
  const pool = backend.createPagePool(dims);
  const stepper = new CacheStepper(backend, pool);
  // Fill rows: FILL tokens of synthetic K/V cycled (a cache's bytes do not depend on which values it holds).
  const FILL = Math.min(contexts[contexts.length - 1]!, 4096);
  const src = syntheticKV(FILL, KV, d, seed);
  const fill = qkvRows(dims, FILL, null, src.k, src.v);
  const step = syntheticKV(STEP_TOKENS, KV, d, seed + 1);
  const g = new Gaussian(seed + 2);
  const q = new Float32Array(STEP_TOKENS * heads * d);
  for (let i = 0; i < q.length; i++) q[i] = g.next();
  const stepRows = qkvRows(dims, STEP_TOKENS, q, step.k, step.v);
  const rowLen = (heads + 2 * KV) * d;

  const results: AttentionResult[] = [];
  try {
    for (const T of contexts) {
      // Every spec's cache at this context at once, timed in turns: load from other processes falls on
      // all specs alike, and each step finds its cache as cold as in a model's decode (the other layers
      // and the weights pass through the CPU caches in between).
      const caches = o.specs.map((spec) => createCache(spec, pool));
      try {
        const bytes: number[] = [];
        for (const [si, cache] of caches.entries()) {
          await stepper.fillCycled(cache, fill, FILL, T);
          const exact = cacheBytes(o.specs[si]!, dims, T);
          if (cache.bytes() !== exact) throw new Error(`${o.specs[si]!.name} at ${T} tokens: bytes() = ${cache.bytes()} but cacheBytes() = ${exact}`);
          bytes.push(exact);
        }
        const steps = caches.map((cache) => {
          let i = 0;
          return async () => {
            const off = (i++ % STEP_TOKENS) * rowLen;
            await stepper.step([{ cache, rows: stepRows.subarray(off, off + rowLen), n: 1, mode: 'decode' }]);
          };
        });
        const times = await timeInterleavedAsync(steps, o.repeats ?? DEFAULT_REPEATS);
        o.specs.forEach((spec, si) => {
          results.push({ kv: spec.name, context: T, seconds: times[si]!.seconds, kv_bytes: bytes[si]! });
        });
        if (o.kernel) {
          const att = await attendAlone(backend, pool, caches, stepRows.subarray(0, rowLen), o.kernel.replays ?? 20, o.repeats ?? DEFAULT_REPEATS);
          o.specs.forEach((spec, si) => {
            o.kernel!.results.push({ kv: spec.name, context: T, seconds: att[si]!, gbps: bytes[si]! / att[si]! / 1e9 });
          });
        }
      } finally {
        for (const c of caches) c.free();
      }
      o.onProgress?.(results.length, contexts.length * o.specs.length);
    }
  } finally {
    stepper.dispose();
  }
  return results;
}

/**
 * Median seconds of one decode step's attention per cache: the step is planned once
 * (the token's own key and value rows included), attend is issued `replays` times on that plan and
 * synced, then the step's storage jobs run so the cache stays consistent.
 */
async function attendAlone(backend: Backend, pool: PagePool, caches: KvCache[], row: Float32Array, replays: number, repeats: RepeatOptions): Promise<number[]> {
  const { numHeads: H, headDim: d } = pool.shape;
  const qkv = backend.tensor('f32', row.length);
  const att = backend.tensor('f32', H * d);
  const plans = caches.map(() => {
    const p = new StepPlan();
    p.pageRuns = backend.pageRuns === true;
    return p;
  });
  try {
    backend.write(qkv, row);
    caches.forEach((c, i) => {
      plans[i]!.clear();
      plans[i]!.beginSubstep();
      c.plan(plans[i]!, 0, 1);
      plans[i]!.validate();
    });
    // One spec after the other (not in turns): a back end uploads a plan's tables once, on first use.
    const times: { seconds: number }[] = [];
    for (const plan of plans) {
      const fn = async () => {
        for (let r = 0; r < replays; r++) backend.attend(plan, 0, 0, qkv, att, pool);
        await backend.sync();
      };
      times.push((await timeInterleavedAsync([fn], repeats))[0]!);
    }
    for (const plan of plans) backend.cacheJobs(plan, 0, 'post', 0, qkv, pool);
    await backend.sync();
    return times.map((t) => t.seconds / replays);
  } finally {
    for (const plan of plans) endStep(plan, pool);
    backend.release(qkv);
    backend.release(att);
  }
}

/**
 * The attention kernel alone against the GPU's streaming-read bandwidth: time per step, cache GB/s and
 * its share of the probe's, contexts down and specs across.
 */
export function attentionKernelMarkdown(results: AttentionKernelResult[], probe: { gbps: number; bytes: number }): string {
  const gb = (x: number) => (x >= 100 ? x.toFixed(0) : x.toPrecision(2));
  const specs = [...new Set(results.map((r) => r.kv))];
  const contexts = [...new Set(results.map((r) => r.context))];
  const rows = contexts.map((T) => [
    T,
    ...specs.map((kv) => {
      const r = results.find((x) => x.kv === kv && x.context === T);
      const f = results.find((x) => x.kv === 'fp16' && x.context === T);
      if (!r) return '–';
      const vs = f && kv !== 'fp16' ? `, ${formatRatio(f.seconds / r.seconds)} fp16's speed` : '';
      return `${formatSeconds(r.seconds)}, ${gb(r.gbps)} GB/s (${((100 * r.gbps) / probe.gbps).toFixed(0)}%)${vs}`;
    }),
  ]);
  return (
    `\nAttention kernel alone on the GPU (a decode step's attend, replayed): time, cache bytes read per second, ` +
    `its share of a streaming read of ${formatBytes(probe.bytes)} on the same GPU (${gb(probe.gbps)} GB/s), ` +
    `and its speed relative to fp16's kernel:\n\n` +
    markdownTable(['context', ...specs], rows)
  );
}

/**
 * Two Markdown tables, contexts down and specs across: time per step (speed relative to fp32), and cache
 * bytes per token (how many times smaller than fp16).
 */
export function attentionMarkdown(results: AttentionResult[]): string {
  const specs = [...new Set(results.map((r) => r.kv))];
  const contexts = [...new Set(results.map((r) => r.context))];
  const at = (kv: string, T: number) => results.find((r) => r.kv === kv && r.context === T);
  const pivot = (cell: (r: AttentionResult) => string) =>
    markdownTable(
      ['context', ...specs],
      contexts.map((T) => [
        T,
        ...specs.map((kv) => {
          const r = at(kv, T);
          return r ? cell(r) : '–';
        }),
      ]),
    );
  const ratio = (base: string, r: AttentionResult, f: (b: AttentionResult, r: AttentionResult) => number) => {
    const b = at(base, r.context);
    return b ? ` (${formatRatio(f(b, r))})` : '';
  };
  return (
    'Decode attention per step, one layer of one sequence (append + attend; in parentheses: speed relative to fp32):\n\n' +
    pivot((r) => formatSeconds(r.seconds) + ratio('fp32', r, (b, x) => b.seconds / x.seconds)) +
    '\nCache bytes per token, one layer (in parentheses: times smaller than fp16):\n\n' +
    pivot((r) => (r.kv_bytes / r.context).toFixed(1) + ratio('fp16', r, (b, x) => b.kv_bytes / x.kv_bytes))
  );
}

/** Two panels: time per step vs context, and bytes per token vs context (log scales). */
export function attentionChart(results: AttentionResult[], title: string): TopLevelSpec {
  const values = results.map((r) => ({ kv: r.kv, context: r.context, ms: r.seconds * 1e3, bytesPerToken: r.kv_bytes / r.context }));
  const x = { field: 'context', type: 'quantitative', scale: { type: 'log', base: 2 }, title: 'context (tokens)' } as const;
  const color = { field: 'kv', type: 'nominal', title: 'kv cache', legend: { labelLimit: 400 } } as const;
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title,
    data: { values },
    hconcat: [
      {
        width: 320,
        height: 240,
        mark: { type: 'line', point: true },
        encoding: { x, y: { field: 'ms', type: 'quantitative', scale: { type: 'log' }, title: 'decode attention per step (ms)' }, color },
      },
      {
        width: 320,
        height: 240,
        mark: { type: 'line', point: true },
        encoding: { x, y: { field: 'bytesPerToken', type: 'quantitative', scale: { type: 'log' }, title: 'cache bytes per token (one layer)' }, color },
      },
    ],
  };
}
