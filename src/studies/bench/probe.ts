/**
 * Measurements that need a fresh process: a process's peak RSS covers its whole life, so each
 * capacity/throughput data point runs in its own child (`probe-main.js`), which loads the model, does one
 * job and prints one JSON line. The parent only plans and collects.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createCache, parseKvSpec } from '../../cache/spec.js';
import { CacheStepper, qkvRows } from '../../cache/step.js';
import type { KvCache } from '../../cache/types.js';
import { BatchEngine, type Sequence } from '../../engine/batch.js';
import type { GenerateResult } from '../../engine/generate.js';
import { type BackendChoice, createBackend } from '../../kernels/index.js';
import { DTYPE_BYTES, type Tensor } from '../../kernels/types.js';
import { type LoadedModel, loadModel } from '../../model/load.js';
import type { ModelWeights } from '../../model/weights.js';
import { KiviError } from '../../util/errors.js';
import { collectGarbage, fillYoungGeneration, now, peakRssBytes, settledRssBytes, syntheticKV, syntheticTokens } from './measure.js';

interface ProbeBase {
  model: string;
  backend?: BackendChoice;
  threads?: number;
  /** Tokens of the warm-up forward pass that makes the model "ready" (JIT, activation buffers). */
  warmTokens: number;
}

export interface OverheadTask extends ProbeBase {
  task: 'overhead';
  /** Also hold what the allocate task fills caches with (capacity: the base its RSS per sequence is measured from). */
  fillTool?: boolean;
}
export interface AllocateTask extends ProbeBase {
  task: 'allocate';
  kv: string;
  sequences: number;
  context: number;
}
export interface GenerateTask extends ProbeBase {
  task: 'generate';
  kv: string;
  batch: number;
  prompt: number;
  gen: number;
  /** Sequences that join per step (bounds the prefill's activation memory). */
  joinPerStep: number;
  seed: number;
}
export type ProbeTask = OverheadTask | AllocateTask | GenerateTask;

export interface OverheadResult {
  weights_bytes: number;
  rss: number;
  overhead_bytes: number;
  peak_rss: number;
}
export interface AllocateResult {
  weights_bytes: number;
  sequences: number;
  kv_bytes: number;
  allocated_bytes: number;
  rss: number;
  peak_rss: number;
}
export interface GenerateProbeResult {
  batch: number;
  generated_tokens: number;
  seconds: number;
  tokens_per_second: number;
  /** Most cache bytes held at once, sampled between steps. */
  peak_kv_bytes: number;
  peak_rss: number;
}

/** Bytes of the model's weights as loaded (in their stored types; a tied output head counted once). */
export function weightsBytes(w: ModelWeights): number {
  const seen = new Set<Tensor>();
  const add = (a: Tensor | undefined) => a && seen.add(a);
  add(w.embed);
  add(w.norm);
  add(w.lmHead);
  for (const l of w.layers) for (const a of Object.values(l) as (Tensor | undefined)[]) add(a);
  let n = 0;
  for (const a of seen) n += a.length * DTYPE_BYTES[a.dtype];
  return n;
}

async function loadReady(t: ProbeBase): Promise<LoadedModel> {
  const backend = await createBackend({ backend: t.backend, threads: t.threads });
  const m = await loadModel(t.model, backend);
  if (t.warmTokens > 0) {
    const cache = createCache(parseKvSpec('fp32'), m.model.pool);
    try {
      const n = Math.min(t.warmTokens, m.config.maxPositions);
      await m.model.forward([{ tokens: syntheticTokens(n, 3, m.config.vocabSize, 7), cache, logits: 'last' }]);
    } finally {
      cache.free();
    }
  }
  // Ready: the young generation at its working size, and the loader's garbage (the parsed tokenizer JSON,
  // read buffers: ~13 MiB in the old generation) collected, as a serving process's first major GC does.
  // Left in place, it would sit in the peak of whatever the probe does next.
  fillYoungGeneration();
  collectGarbage();
  return m;
}

export async function runProbe(t: ProbeTask): Promise<OverheadResult | AllocateResult | GenerateProbeResult> {
  const m = await loadReady(t);
  switch (t.task) {
    case 'overhead': {
      const tool = t.fillTool ? await fillTool(m) : null;
      const w = weightsBytes(m.model.weights);
      const rss = settledRssBytes();
      tool?.stepper.dispose();
      return { weights_bytes: w, rss, overhead_bytes: rss - w, peak_rss: peakRssBytes() };
    }
    case 'allocate':
      return allocate(m, t);
    case 'generate':
      return generate(m, t);
  }
}

/** Synthetic tokens a cache fill cycles through (its source stays small whatever the context), and its chunk. */
export const FILL_WINDOW = 256;

/**
 * What a cache fill needs: FILL_WINDOW rows of synthetic K/V and a stepper whose activation rows have
 * run one chunk (on a throwaway float32 cache). Both capacity children hold it, so that the RSS with the
 * caches minus the RSS without them is the caches alone.
 */
async function fillTool(m: LoadedModel): Promise<{ rows: Float32Array; stepper: CacheStepper }> {
  const dims = m.model.dims;
  const src = syntheticKV(FILL_WINDOW, dims.numKvHeads, dims.headDim, 11);
  const rows = qkvRows(dims, FILL_WINDOW, null, src.k, src.v);
  const stepper = new CacheStepper(m.model.backend, m.model.pool);
  const scrap = createCache(parseKvSpec('fp32'), m.model.pool);
  try {
    await stepper.fill(scrap, rows, FILL_WINDOW);
  } finally {
    scrap.free();
  }
  return { rows, stepper };
}

/**
 * Allocate `sequences` caches, each filled to `context` tokens of synthetic K/V (no model context limit),
 * in chunks of FILL_WINDOW tokens through the caches' own storage jobs (no attention). The cache holds
 * exactly what `context` tokens hold (the parent checks the bytes), but the source is FILL_WINDOW
 * tokens, not `context`, so it does not inflate the peak RSS.
 */
async function allocate(m: LoadedModel, t: AllocateTask): Promise<AllocateResult> {
  const { rows, stepper } = await fillTool(m);
  const spec = parseKvSpec(t.kv);
  const caches: KvCache[] = [];
  try {
    for (let i = 0; i < t.sequences; i++) {
      const c = createCache(spec, m.model.pool);
      caches.push(c);
      for (let tok = 0; tok < t.context; tok += FILL_WINDOW) await stepper.fill(c, rows, Math.min(FILL_WINDOW, t.context - tok));
    }
    let kvBytes = 0;
    let allocated = 0;
    for (const c of caches) {
      kvBytes += c.bytes();
      allocated += c.allocatedBytes();
    }
    stepper.dispose();
    const rss = settledRssBytes();
    return {
      weights_bytes: weightsBytes(m.model.weights),
      sequences: t.sequences,
      kv_bytes: kvBytes,
      allocated_bytes: allocated,
      rss,
      peak_rss: peakRssBytes(),
    };
  } finally {
    for (const c of caches) c.free();
  }
}

/** Generate `gen` tokens for each of `batch` sequences through the batching engine; end-to-end tokens/s. */
async function generate(m: LoadedModel, t: GenerateTask): Promise<GenerateProbeResult> {
  const engine = new BatchEngine(m.model, m.tokenizer);
  const V = m.config.vocabSize;
  const spec = parseKvSpec(t.kv);
  const seqs: Sequence[] = [];
  const drains: Promise<GenerateResult>[] = [];
  let peakKv = 0;
  let seen = -1;
  const t0 = now();
  while (seqs.length < t.batch || seqs.some((s) => !s.done)) {
    if (engine.steps !== seen) {
      // Between two steps: sample the cache bytes held, then let the next sequences join.
      seen = engine.steps;
      let held = 0;
      for (const s of seqs) held += s.kvBytes();
      peakKv = Math.max(peakKv, held);
      for (let j = 0; j < t.joinPerStep && seqs.length < t.batch; j++) {
        const ids = syntheticTokens(t.prompt, 3, V, t.seed + seqs.length);
        const s = engine.add(ids, createCache(spec, m.model.pool), { maxTokens: t.gen, ignoreEos: true });
        seqs.push(s);
        drains.push(drain(s));
      }
    }
    await new Promise<void>((r) => setImmediate(r));
  }
  const results = await Promise.all(drains);
  const seconds = now() - t0;
  const generated = results.reduce((a, r) => a + r.ids.length, 0);
  return { batch: t.batch, generated_tokens: generated, seconds, tokens_per_second: generated / seconds, peak_kv_bytes: peakKv, peak_rss: peakRssBytes() };
}

async function drain(s: Sequence): Promise<GenerateResult> {
  const it = s.stream();
  for (;;) {
    const r = await it.next();
    if (r.done) return r.value;
  }
}

const PROBE_MAIN = fileURLToPath(new URL('./probe-main.js', import.meta.url));

/** Run one task in a child process and return its JSON result; a child's KiviError comes back as one. */
export function spawnProbe<R>(task: ProbeTask): Promise<R> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['--expose-gc', PROBE_MAIN, JSON.stringify(task)], { maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
      if (err) {
        const line = stderr.split('\n').find((l) => l.startsWith('kivi: '));
        if (line) reject(new KiviError(line.slice(6)));
        else reject(new Error(`benchmark child process failed (${err.message.split('\n')[0]}): ${stderr.trim().split('\n').slice(-3).join(' | ')}`));
        return;
      }
      const last = stdout.trim().split('\n').pop() ?? '';
      try {
        resolve(JSON.parse(last) as R);
      } catch {
        reject(new Error(`benchmark child process printed no JSON result: ${last.slice(0, 200)}`));
      }
    });
  });
}
