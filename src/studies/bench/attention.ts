/**
 * `bench attention`: decode attention time per step for one layer of one sequence, per cache spec and
 * context length, with the cache's bytes. Each cache is prefilled with synthetic keys/values (prefill
 * stores; it does not attend), then one decode step (append + attend) is timed repeatedly after warm-up,
 * the specs in turns (median per spec).
 * No model is involved, so contexts may exceed any model's max positions.
 */
import type { Kernels } from '../../kernels/types.js';
import { AttnScratch, type CacheDims } from '../../cache/types.js';
import { layerFactory, parseKvSpec, validateSpec } from '../../cache/spec.js';
import { cacheBytes } from '../../cache/budget.js';
import { KiviError } from '../../util/errors.js';
import { DEFAULT_REPEATS, Gaussian, type RepeatOptions, syntheticKV, timeInterleaved } from './measure.js';
import { formatBytes, formatRatio, formatSeconds, markdownTable } from './markdown.js';
import type { TopLevelSpec } from '../plot.js';

export interface AttentionBenchOptions {
  contexts: number[];
  specs: string[];
  heads: number;
  kvHeads: number;
  headDim: number;
  kernels: Kernels;
  repeats?: RepeatOptions;
  seed?: number;
  onProgress?: (done: number, total: number) => void;
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

export function runAttentionBench(o: AttentionBenchOptions): AttentionResult[] {
  const dims = attentionDims(o);
  const specs = o.specs.map((s) => {
    const spec = parseKvSpec(s);
    validateSpec(spec, dims);
    return spec;
  });
  const contexts = [...o.contexts].sort((a, b) => a - b);
  if (contexts.some((c) => !Number.isInteger(c) || c < 1)) throw new KiviError('contexts must be positive integers');
  const { kvHeads: kv, headDim: d, heads, kernels } = o;
  const seed = o.seed ?? 1;
  // One synthetic prompt at the largest context serves every cache (prefill reads its first T rows).
  const src = syntheticKV(contexts[contexts.length - 1]!, kv, d, seed);
  const step = syntheticKV(STEP_TOKENS, kv, d, seed + 1);
  // Query and output in the back end's memory, as the model's activations are (no copies per call).
  const q = kernels.allocF32(heads * d);
  const out = kernels.allocF32(heads * d);
  const g = new Gaussian(seed + 2);
  for (let i = 0; i < q.length; i++) q[i] = g.next();
  const scratch = new AttnScratch();
  const row = kv * d;

  const results: AttentionResult[] = [];
  try {
    for (const T of contexts) {
      // Every spec's cache at this context at once, timed in turns: load from other processes falls on
      // all specs alike, and each step finds its cache as cold as in a model's decode (the other layers
      // and the weights pass through the CPU caches in between).
      const caches = specs.map((spec) => layerFactory(spec)(dims, kernels));
      try {
        const bytes = caches.map((cache, si) => {
          cache.prefill(src.k, 0, src.v, 0, T);
          const exact = cacheBytes(specs[si]!, dims, T);
          if (cache.bytes() !== exact) throw new Error(`${o.specs[si]} at ${T} tokens: bytes() = ${cache.bytes()} but cacheBytes() = ${exact}`);
          return exact;
        });
        const steps = caches.map((cache) => {
          let i = 0;
          return () => {
            const off = (i++ % STEP_TOKENS) * row;
            cache.append(step.k, off, step.v, off);
            cache.attend(q, 0, out, 0, scratch);
          };
        });
        const times = timeInterleaved(steps, o.repeats ?? DEFAULT_REPEATS);
        o.specs.forEach((kvName, si) => results.push({ kv: kvName, context: T, seconds: times[si]!.seconds, kv_bytes: bytes[si]! }));
      } finally {
        for (const c of caches) c.free();
      }
      o.onProgress?.(results.length, contexts.length * specs.length);
    }
  } finally {
    kernels.free(q);
    kernels.free(out);
  }
  return results;
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
    markdownTable(['context', ...specs], contexts.map((T) => [T, ...specs.map((kv) => {
      const r = at(kv, T);
      return r ? cell(r) : '–';
    })]));
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
        width: 320, height: 240,
        mark: { type: 'line', point: true },
        encoding: { x, y: { field: 'ms', type: 'quantitative', scale: { type: 'log' }, title: 'decode attention per step (ms)' }, color },
      },
      {
        width: 320, height: 240,
        mark: { type: 'line', point: true },
        encoding: { x, y: { field: 'bytesPerToken', type: 'quantitative', scale: { type: 'log' }, title: 'cache bytes per token (one layer)' }, color },
      },
    ],
  };
}
