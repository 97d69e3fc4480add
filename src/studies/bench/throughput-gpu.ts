/**
 * `bench throughput` on a back end that owns device memory (WebGPU): the KIVI paper's Figure 4 —
 * batch size, memory and throughput under one fixed KV-cache budget.
 *
 *   admitted(spec) = floor(kvBudget / peakAllocatedBytes(spec, prompt + gen, from prompt))
 *
 * The model is loaded once (random weights of a config's shapes, made on the GPU) and every
 * (spec, batch) point runs in this process through the batching engine (greedy, ignoreEos, seeded
 * synthetic prompts, joinPerStep prompts joining per step). Batches swept: powers of two up to each
 * spec's admitted batch, the admitted batch itself, and fp16's admitted batch for every spec (the
 * equal-batch comparison). Per point: end-to-end generated tokens/s (prefill included), the median
 * time of a decode step with the whole batch running, and device memory:
 *   - allocated peak = the most non-cache buffers alive (weights, activations, plans, staging) + the most
 *     cache pages held: what the model and caches hold, the analog of the paper's peak memory (PyTorch's
 *     max_memory_allocated); each run starts from the weights alone (earlier runs' buffers given back);
 *   - buffers peak = every GPU buffer alive at once (cache arenas grow ahead of the pages in them).
 */
import type { KiviModel } from '../../api.js';
import { peakAllocatedBytes } from '../../cache/budget.js';
import type { CacheSpec } from '../../cache/spec.js';
import { createCache } from '../../cache/spec.js';
import type { Sequence } from '../../engine/batch.js';
import { BatchEngine } from '../../engine/batch.js';
import type { GenerateResult } from '../../engine/generate.js';
import type { WebGpuBackend } from '../../kernels/webgpu/backend.js';
import type { WebGpuPagePool } from '../../kernels/webgpu/pool.js';
import { KiviError } from '../../util/errors.js';
import type { TopLevelSpec } from '../plot.js';
import { formatBytes, formatRatio, markdownTable } from './markdown.js';
import { now, syntheticTokens } from './measure.js';
import { weightsBytes } from './probe.js';

export interface GpuThroughputOptions {
  model: KiviModel;
  /** Bytes of cache pages every batch must fit. */
  kvBudget: number;
  prompt: number;
  gen: number;
  specs: CacheSpec[];
  /** Largest batch run (a point above it is capped and marked). */
  maxBatch: number;
  /** Prompts joining per step (their prefill rows bound a step's activations). */
  joinPerStep: number;
  seed?: number;
  onProgress?: (done: number, total: number) => void;
}

export interface GpuThroughputPoint {
  kv: string;
  batch: number;
  /** Generated tokens per second, end to end (prefill included). */
  tokens_per_second: number;
  /** Median seconds of a decode step with the whole batch running (null when no step had it). */
  decode_step_seconds: number | null;
  /** Decode tokens/s at full batch: batch / decode_step_seconds. */
  decode_tokens_per_second: number | null;
  seconds: number;
  generated_tokens: number;
  /** Most cache-page bytes held at once. */
  peak_kv_bytes: number;
  /** Weights + peak scratch buffers + peak cache pages. */
  peak_allocated_bytes: number;
  /** Every GPU buffer alive at once, at most (cache arenas included at their capacity). */
  peak_buffer_bytes: number;
}

export interface GpuThroughputReport {
  device: string;
  prompt: number;
  gen: number;
  kv_budget: number;
  max_batch: number;
  weights_bytes: number;
  specs: { kv: string; bytes_per_sequence: number; admitted: number }[];
  points: GpuThroughputPoint[];
}

export async function runGpuThroughput(o: GpuThroughputOptions): Promise<GpuThroughputReport> {
  const m = o.model;
  const backend = m.backend as WebGpuBackend;
  if (backend.name !== 'webgpu') throw new KiviError('the device-memory throughput study runs on --backend webgpu');
  if (o.prompt + o.gen > m.config.maxPositions) {
    throw new KiviError(`--prompt ${o.prompt} + --gen ${o.gen} exceeds the model's context of ${m.config.maxPositions}`);
  }
  const pool = m.transformer.pool as WebGpuPagePool;
  const specs = o.specs.map((spec) => {
    const bytes = peakAllocatedBytes(spec, pool, o.prompt + o.gen, o.prompt);
    return { spec, kv: spec.name, bytes_per_sequence: bytes, admitted: Math.floor(o.kvBudget / bytes) };
  });
  const fp16 = specs.find((s) => s.kv === 'fp16');
  const points: { spec: CacheSpec; batch: number }[] = [];
  for (const s of specs) {
    const bs = new Set<number>();
    for (let b = 1; b <= s.admitted; b *= 2) bs.add(b);
    bs.add(s.admitted);
    if (fp16 && fp16.admitted <= s.admitted) bs.add(fp16.admitted);
    for (const b of [...bs].filter((b) => b > 0).sort((a, b) => a - b)) points.push({ spec: s.spec, batch: Math.min(b, o.maxBatch) });
  }
  const todo = [...new Map(points.map((p) => [`${p.spec.name}/${p.batch}`, p])).values()];
  const W = weightsBytes(m.transformer.weights);
  // Warm up the kernels (pipelines compile on first use) with a small batch of the first spec.
  if (todo.length > 0) await runPoint(m, backend, pool, { spec: todo[0]!.spec, batch: 1 }, { ...o, gen: 2 });
  const out: GpuThroughputPoint[] = [];
  o.onProgress?.(0, todo.length);
  for (const p of todo) {
    out.push(await runPoint(m, backend, pool, p, o));
    o.onProgress?.(out.length, todo.length);
  }
  return {
    device: backend.description,
    prompt: o.prompt,
    gen: o.gen,
    kv_budget: o.kvBudget,
    max_batch: o.maxBatch,
    weights_bytes: W,
    specs: specs.map(({ kv, bytes_per_sequence, admitted }) => ({ kv, bytes_per_sequence, admitted })),
    points: out,
  };
}

async function runPoint(
  m: KiviModel,
  backend: WebGpuBackend,
  pool: WebGpuPagePool,
  p: { spec: CacheSpec; batch: number },
  o: Pick<GpuThroughputOptions, 'prompt' | 'gen' | 'joinPerStep' | 'seed'>,
): Promise<GpuThroughputPoint> {
  // Each run from the weights alone: activation buffers and cache arenas of earlier runs given back.
  m.transformer.releaseScratch();
  pool.trim();
  await backend.sync();
  const engine = new BatchEngine(m.transformer, m.tokenizer);
  const V = m.config.vocabSize;
  pool.resetPeak();
  const core = backend.core;
  core.peakLiveBytes = core.liveBytes;
  // Buffers other than cache arenas (weights, activations, plans, staging), at most.
  let peakOther = core.liveBytes - pool.bufferBytes;
  const seqs: Sequence[] = [];
  const drains: Promise<GenerateResult>[] = [];
  // Decode steps with the whole batch in: their durations (busy seconds of the forward pass).
  const full: number[] = [];
  let busy = 0;
  let prefilled = 0;
  const off = engine.onStep(() => {
    const dt = engine.busySeconds - busy;
    busy = engine.busySeconds;
    const prefill = engine.prefilledTokens !== prefilled;
    prefilled = engine.prefilledTokens;
    if (!prefill && seqs.length === p.batch && engine.size === p.batch) full.push(dt);
    peakOther = Math.max(peakOther, core.liveBytes - pool.bufferBytes);
  });
  let seen = -1;
  const t0 = now();
  try {
    while (seqs.length < p.batch || seqs.some((s) => !s.done)) {
      if (engine.steps !== seen) {
        seen = engine.steps;
        for (let j = 0; j < o.joinPerStep && seqs.length < p.batch; j++) {
          const ids = syntheticTokens(o.prompt, 3, V, (o.seed ?? 1000) + seqs.length);
          const s = engine.add(ids, createCache(p.spec, pool), { maxTokens: o.gen, ignoreEos: true });
          seqs.push(s);
          drains.push(drain(s));
        }
      }
      await new Promise<void>((r) => setImmediate(r));
    }
    const results = await Promise.all(drains);
    const seconds = now() - t0;
    const generated = results.reduce((a, r) => a + r.ids.length, 0);
    full.sort((a, b) => a - b);
    const step = full.length > 0 ? full[full.length >> 1]! : null;
    return {
      kv: p.spec.name,
      batch: p.batch,
      tokens_per_second: generated / seconds,
      decode_step_seconds: step,
      decode_tokens_per_second: step === null ? null : p.batch / step,
      seconds,
      generated_tokens: generated,
      peak_kv_bytes: pool.peakBytes,
      peak_allocated_bytes: peakOther + pool.peakBytes,
      peak_buffer_bytes: core.peakLiveBytes,
    };
  } finally {
    off();
    for (const s of seqs) if (!s.done) s.cancel();
  }
}

async function drain(s: Sequence): Promise<GenerateResult> {
  const it = s.stream();
  for (;;) {
    const r = await it.next();
    if (r.done) return r.value;
  }
}

export function gpuThroughputMarkdown(r: GpuThroughputReport): string {
  const fp16At = (batch: number) => r.points.find((x) => x.kv === 'fp16' && x.batch === batch);
  const fp16Max = r.specs.find((s) => s.kv === 'fp16');
  const rows = r.points.map((x) => {
    const f = fp16At(x.batch);
    return [
      x.kv,
      x.batch,
      x.tokens_per_second.toFixed(1),
      x.decode_step_seconds === null ? '–' : (x.decode_step_seconds * 1000).toFixed(2),
      x.decode_tokens_per_second === null ? '–' : x.decode_tokens_per_second.toFixed(0),
      f && f !== x && f.decode_step_seconds && x.decode_step_seconds ? formatRatio(x.decode_step_seconds / f.decode_step_seconds) : '–',
      formatBytes(x.peak_kv_bytes),
      formatBytes(x.peak_allocated_bytes),
      formatBytes(x.peak_buffer_bytes),
    ];
  });
  const best = (kv: string) => {
    const s = r.specs.find((y) => y.kv === kv)!;
    return r.points.find((x) => x.kv === kv && x.batch === Math.min(s.admitted, r.max_batch));
  };
  const summary = r.specs.map((s) => {
    const b = best(s.kv),
      f = fp16Max ? best('fp16') : undefined;
    const atFp16Batch = fp16Max ? r.points.find((x) => x.kv === s.kv && x.batch === Math.min(fp16Max.admitted, r.max_batch)) : undefined;
    const fp16Point = fp16Max ? fp16At(Math.min(fp16Max.admitted, r.max_batch)) : undefined;
    return [
      s.kv,
      formatBytes(s.bytes_per_sequence),
      s.admitted,
      fp16Max && fp16Max.admitted > 0 ? formatRatio(s.admitted / fp16Max.admitted) : '–',
      b ? b.tokens_per_second.toFixed(1) : '–',
      b && f && f.tokens_per_second > 0 ? formatRatio(b.tokens_per_second / f.tokens_per_second) : '–',
      atFp16Batch && fp16Point ? formatRatio(fp16Point.peak_allocated_bytes / atFp16Batch.peak_allocated_bytes) : '–',
    ];
  });
  return (
    `${r.device}; prompt ${r.prompt} + ${r.gen} generated tokens per sequence; KV budget ${formatBytes(r.kv_budget)}; ` +
    `weights ${formatBytes(r.weights_bytes)}; batches capped at ${r.max_batch}.\n\n` +
    markdownTable(
      ['kv', 'cache bytes / sequence (peak)', 'largest batch', 'vs fp16', 'tokens/s at it', 'vs fp16 at its own', "peak memory at fp16's batch: fp16 ÷ this"],
      summary,
    ) +
    '\n\n' +
    markdownTable(
      [
        'kv',
        'batch',
        'tokens/s (end to end)',
        'decode step ms (full batch)',
        'decode tokens/s',
        'step time vs fp16, same batch',
        'peak KV',
        'peak allocated',
        'peak GPU buffers',
      ],
      rows,
    )
  );
}

/** Tokens/s against batch size per spec (the paper's Figure 4), end to end and decode-only. */
export function gpuThroughputChart(r: GpuThroughputReport, title: string): TopLevelSpec {
  const values = r.points.flatMap((x) => [
    { kv: x.kv, batch: x.batch, tps: x.tokens_per_second, what: 'end to end (prefill included)' },
    ...(x.decode_tokens_per_second === null ? [] : [{ kv: x.kv, batch: x.batch, tps: x.decode_tokens_per_second, what: 'decode steps, full batch' }]),
  ]);
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title,
    data: { values },
    facet: { column: { field: 'what', type: 'nominal', title: null } },
    spec: {
      width: 320,
      height: 240,
      mark: { type: 'line', point: true },
      encoding: {
        x: { field: 'batch', type: 'quantitative', title: 'batch size (sequences)', scale: { type: 'log', base: 2 } },
        y: { field: 'tps', type: 'quantitative', title: 'generated tokens / s' },
        color: { field: 'kv', type: 'nominal', title: 'kv cache', legend: { labelLimit: 400 } },
      },
    },
    resolve: { scale: { y: 'independent' } },
  } as TopLevelSpec;
}
