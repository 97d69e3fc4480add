/**
 * `bench kv-bytes`: what one sequence's whole cache holds, per spec and context, for a model's shapes
 * (all layers, its kv heads and head_dim). Each cache is built for real, filled with synthetic keys and
 * values — prefill of T−1 tokens, then one decode step (append + attend), the state of a sequence that
 * is generating — and asked for its bytes(), which must equal the exact formula of cache/budget.ts.
 * No forward pass is run, so contexts may exceed the model's max positions.
 */
import type { Kernels } from '../../kernels/types.js';
import { AttnScratch, type CacheDims } from '../../cache/types.js';
import { createCache, parseKvSpec, validateSpec } from '../../cache/spec.js';
import { cacheBytes } from '../../cache/budget.js';
import { KiviError } from '../../util/errors.js';
import { Gaussian, syntheticKV } from './measure.js';
import { formatBytes, formatRatio, markdownTable } from './markdown.js';

export interface KvBytesOptions {
  dims: CacheDims;
  contexts: number[];
  specs: string[];
  kernels: Kernels;
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

export function runKvBytes(o: KvBytesOptions): KvBytesResult[] {
  const { dims, kernels } = o;
  const specs = o.specs.map((s) => {
    const spec = parseKvSpec(s);
    validateSpec(spec, dims);
    return { name: s, spec };
  });
  const contexts = [...o.contexts].sort((a, b) => a - b);
  if (contexts.some((c) => !Number.isInteger(c) || c < 2)) throw new KiviError('contexts must be integers ≥ 2');
  const { numKvHeads: kv, headDim: d, numHeads } = dims;
  const seed = o.seed ?? 1;
  const src = syntheticKV(contexts[contexts.length - 1]!, kv, d, seed);
  const q = kernels.allocF32(numHeads * d);
  const out = kernels.allocF32(numHeads * d);
  const g = new Gaussian(seed + 1);
  for (let i = 0; i < q.length; i++) q[i] = g.next();
  const scratch = new AttnScratch();
  const row = kv * d;
  const fp16 = parseKvSpec('fp16');
  const fp32 = parseKvSpec('fp32');

  const results: KvBytesResult[] = [];
  let done = 0;
  try {
    for (const T of contexts) {
      for (const { name, spec } of specs) {
        const cache = createCache(spec, dims, kernels, name);
        try {
          for (const layer of cache.layers) {
            layer.prefill(src.k, 0, src.v, 0, T - 1);
            layer.append(src.k, (T - 1) * row, src.v, (T - 1) * row);
            layer.attend(q, 0, out, 0, scratch);
          }
          const measured = cache.bytes();
          const exact = cacheBytes(spec, dims, T);
          if (measured !== exact) throw new KiviError(`${name} at ${T} tokens: bytes() = ${measured} but the cache formula gives ${exact}`);
          results.push({
            kv: name,
            context: T,
            kv_bytes: measured,
            bytes_per_token: measured / T,
            vs_fp16: cacheBytes(fp16, dims, T) / measured,
            vs_fp32: cacheBytes(fp32, dims, T) / measured,
          });
        } finally {
          cache.free();
        }
        o.onProgress?.(++done, contexts.length * specs.length);
      }
    }
  } finally {
    kernels.free(q);
    kernels.free(out);
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
