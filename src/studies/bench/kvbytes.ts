/**
 * `bench kv-bytes`: what one sequence's whole cache holds, per spec and context, for a model's shapes
 * (all layers, its kv heads and head_dim). Each cache is built for real, filled with synthetic keys and
 * values — a prefill of T−1 tokens, then one decode step (attend, fold in), the state of a sequence that
 * is generating — and asked for its bytes(), which must equal the exact formula of cache/budget.ts.
 * No forward pass is run, so contexts may exceed the model's max positions.
 */

import { cacheBytes } from '../../cache/budget.js';
import { type CacheSpec, createCache, parseKvSpec, validateSpec } from '../../cache/spec.js';
import { CacheStepper, qkvRows } from '../../cache/step.js';
import type { CacheDims } from '../../cache/types.js';
import type { Backend } from '../../kernels/types.js';
import { KiviError } from '../../util/errors.js';
import { formatBytes, formatRatio, markdownTable } from './markdown.js';
import { Gaussian, syntheticKV } from './measure.js';

export interface KvBytesOptions {
  dims: CacheDims;
  contexts: number[];
  specs: CacheSpec[];
  backend: Backend;
  seed?: number;
  onProgress?: (done: number, total: number) => void;
}

/** One cache measured; the JSON output's `results` entries. */
export interface KvBytesResult {
  kv: string;
  context: number;
  /** The cache's bytes() with `context` tokens, all layers. */
  kv_bytes: number;
  bytes_per_token: number;
  /** fp16 bytes at the same context ÷ this spec's bytes (how many times smaller than fp16). */
  vs_fp16: number;
  vs_fp32: number;
}

export async function runKvBytes(o: KvBytesOptions): Promise<KvBytesResult[]> {
  const { dims, backend } = o;
  for (const spec of o.specs) validateSpec(spec, dims);
  const contexts = [...o.contexts].sort((a, b) => a - b);
  if (contexts.some((c) => !Number.isInteger(c) || c < 2)) throw new KiviError('contexts must be integers ≥ 2');
  const { numKvHeads: KV, headDim: d, numHeads } = dims;
  const seed = o.seed ?? 1;
  const pool = backend.createPagePool(dims);
  const stepper = new CacheStepper(backend, pool);
  const FILL = Math.min(contexts[contexts.length - 1]!, 4096);
  const src = syntheticKV(FILL + 1, KV, d, seed);
  const fill = qkvRows(dims, FILL, null, src.k, src.v);
  const g = new Gaussian(seed + 1);
  const q = new Float32Array(numHeads * d);
  for (let i = 0; i < q.length; i++) q[i] = g.next();
  const last = qkvRows(dims, 1, q, src.k, src.v, FILL * KV * d, FILL * KV * d);
  const fp16 = parseKvSpec('fp16');
  const fp32 = parseKvSpec('fp32');

  const results: KvBytesResult[] = [];
  let done = 0;
  try {
    for (const T of contexts) {
      for (const spec of o.specs) {
        const cache = createCache(spec, pool);
        try {
          for (let t = 0; t < T - 1; t += FILL) await stepper.fill(cache, fill, Math.min(FILL, T - 1 - t));
          await stepper.step([{ cache, rows: last, n: 1, mode: 'decode' }]);
          const measured = cache.bytes();
          const exact = cacheBytes(spec, dims, T);
          if (measured !== exact) throw new KiviError(`${spec.name} at ${T} tokens: bytes() = ${measured} but the cache formula gives ${exact}`);
          results.push({
            kv: spec.name,
            context: T,
            kv_bytes: measured,
            bytes_per_token: measured / T,
            vs_fp16: cacheBytes(fp16, dims, T) / measured,
            vs_fp32: cacheBytes(fp32, dims, T) / measured,
          });
        } finally {
          cache.free();
        }
        o.onProgress?.(++done, contexts.length * o.specs.length);
      }
    }
  } finally {
    stepper.dispose();
  }
  return results;
}

/** One row per spec; per context: bytes per token and how many times smaller than fp16 and fp32. */
export function kvBytesMarkdown(results: readonly KvBytesResult[], dims: CacheDims): string {
  const contexts = [...new Set(results.map((r) => r.context))];
  const specs = [...new Set(results.map((r) => r.kv))];
  const label = (T: number) => (T % 1024 === 0 ? `${T / 1024}K` : String(T));
  const headers = ['spec', ...contexts.flatMap((T) => [`bytes/token @ ${label(T)}`, `cache @ ${label(T)}`, `vs fp16`, `vs fp32`])];
  const rows = specs.map((kv) => [
    kv,
    ...contexts.flatMap((T) => {
      const r = results.find((x) => x.kv === kv && x.context === T)!;
      return [r.bytes_per_token.toFixed(1), formatBytes(r.kv_bytes), formatRatio(r.vs_fp16), formatRatio(r.vs_fp32)];
    }),
  ]);
  return (
    `Cache bytes of one sequence, all ${dims.numLayers} layers (${dims.numKvHeads} kv heads, head_dim ${dims.headDim}); ` +
    '"vs" = times smaller:\n\n' +
    markdownTable(headers, rows)
  );
}
