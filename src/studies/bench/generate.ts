/**
 * `bench generate`: what `kivi generate` achieves for one sequence — prefill tokens/s over the prompt and
 * decode tokens/s over the generated tokens — per cache spec and per way of storing the weights (the
 * checkpoint's 16-bit form, or float32), greedy, generating through EOS. The variants run in turns, round
 * after round, so load from other processes falls on all alike, in reversed order every other round (roundOrder);
 * each variant's median round is reported, and the range of its rounds.
 */
import type { KiviModel } from '../../api.js';
import { parseKvSpec } from '../../cache/spec.js';
import { CacheStepper, qkvRows } from '../../cache/step.js';
import type { KvCache } from '../../cache/types.js';
import { WasmBackend } from '../../kernels/wasm/kernels.js';
import type { WebGpuBackend } from '../../kernels/webgpu/backend.js';
import type { WeightFormat } from '../../model/weights.js';
import { KiviError } from '../../util/errors.js';
import { median } from '../numbers.js';
import { formatBytes, formatRatio, markdownTable } from './markdown.js';
import { now, syntheticKV, syntheticTokens } from './measure.js';

export interface GenerateBenchOptions {
  /** The same model loaded once per weight format (one or more), measured side by side. */
  models: { weights: WeightFormat; model: KiviModel }[];
  /** Prompt ids (BOS included as the caller wants). */
  prompt: number[];
  gen: number;
  specs: string[];
  repeats: number;
  /**
   * wasm only: how a prompt chunk's attention runs, side by side — 'blocks' (query rows in blocks over the
   * chunk's packed keys and values, the default) or 'rows' (one query row at a time, as decoded tokens).
   */
  prefillAttention?: PrefillAttention[];
  onProgress?: (done: number, total: number) => void;
}

export type PrefillAttention = 'blocks' | 'rows';
export const PREFILL_ATTENTION: readonly PrefillAttention[] = ['blocks', 'rows'];

/** One spec's medians; the JSON output's `results` entries. */
export interface GenerateBenchResult {
  /** How the weight matrices were stored ('native': as the checkpoint has them; 'f32': widened). */
  weights: WeightFormat;
  kv: string;
  prompt_tokens: number;
  generated: number;
  prefill_tokens_per_s: number;
  /** 0 where no decode step ran (one generated token: the prefill's own). */
  decode_tokens_per_s: number;
  /** The slowest and fastest timed round's decode tokens/s (the median is decode_tokens_per_s). */
  decode_range: [number, number];
  /** Each timed round's decode tokens/s, round 0 first (odd rounds ran the specs in reversed order). */
  decode_rounds: number[];
  /** Cache bytes after the last step. */
  kv_bytes: number;
  /** With --prefill-attention: how the prompt's attention ran. */
  prefill_attention?: PrefillAttention;
  /**
   * webgpu: kernels compiled inside this variant's timed rounds and the seconds they blocked (0 when the
   * untimed round compiled all it needs; a compile in a timed round is counted in its speeds).
   */
  compiled_while_timed?: { kernels: number; seconds: number };
}

/** The WebGPU back end's compile counters (none on the CPU back ends). */
export function compileCounter(model: KiviModel): { compiled: number; compileSeconds: number } | null {
  return model.backend.name === 'webgpu' ? (model.backend as WebGpuBackend).core : null;
}

/**
 * The variants in a timed round's order: reversed every other round, so that with two or more repeats
 * every spec is timed both first and last, and whatever a place in the order costs (the state the spec
 * before leaves, a warm-up that falls short) falls on each alike; decode_rounds shows it round by round.
 */
export function roundOrder<T>(variants: readonly T[], round: number): [number, T][] {
  const order = [...variants.entries()];
  return round % 2 === 1 ? order.reverse() : order;
}

/** A variant's decode fields from its timed rounds' tokens/s: the median round, the range, every round. */
function decodeFields(rounds: number[]): Pick<GenerateBenchResult, 'decode_tokens_per_s' | 'decode_range' | 'decode_rounds'> {
  return { decode_tokens_per_s: median(rounds), decode_range: [Math.min(...rounds), Math.max(...rounds)], decode_rounds: rounds };
}

/** The first n tokens of a text (BOS first), or seeded synthetic ids when there is no text. */
export function benchPrompt(model: KiviModel, n: number, text?: string): number[] {
  if (text === undefined) {
    const bos = model.tokenizer.bosId;
    return bos === null ? syntheticTokens(n, 3, model.config.vocabSize, 11) : [bos, ...syntheticTokens(n - 1, 3, model.config.vocabSize, 11)];
  }
  const ids = model.encode(text);
  if (ids.length < n) throw new KiviError(`the text has ${ids.length} tokens, fewer than --prompt ${n}`);
  return ids.slice(0, n);
}

export async function runGenerateBench(o: GenerateBenchOptions): Promise<GenerateBenchResult[]> {
  const max = o.models[0]!.model.config.maxPositions;
  if (o.prompt.length + o.gen > max) {
    throw new KiviError(`prompt ${o.prompt.length} + generated ${o.gen} tokens exceed the model's context of ${max}`);
  }
  const modes = o.prefillAttention ?? [undefined];
  for (const { model } of o.models) {
    if (o.prefillAttention && !(model.backend instanceof WasmBackend)) throw new KiviError('--prefill-attention applies to the wasm back end');
  }
  const variants = o.models.flatMap(({ weights, model }) => o.specs.flatMap((kv) => modes.map((mode) => ({ weights, model, kv, mode }))));
  const runs = variants.map(() => [] as { prefill: number; decode: number; bytes: number }[]);
  const compiles = variants.map(() => ({ kernels: 0, seconds: 0 }));
  let done = 0;
  const total = (o.repeats + 1) * variants.length;
  const use = (model: KiviModel, mode: PrefillAttention | undefined) => {
    if (mode) (model.backend as WasmBackend).prefillBlocks = mode === 'blocks';
  };
  // One untimed round first, the whole prompt and every generated token: it compiles every kernel the
  // timed rounds run (on the GPU the kernel of a cache's quantized blocks first runs once the first key
  // block is quantized; compiling it inside a timed round cost a 7B decode 40% of its speed) and sizes
  // the scratch buffers.
  for (let round = -1; round < o.repeats; round++) {
    for (const [i, { model, kv, mode }] of roundOrder(variants, Math.max(round, 0))) {
      use(model, mode);
      const counter = compileCounter(model);
      const [k0, s0] = [counter?.compiled ?? 0, counter?.compileSeconds ?? 0];
      const r = await model.complete(o.prompt, { kv, maxTokens: o.gen, ignoreEos: true });
      o.onProgress?.(++done, total);
      if (round < 0) continue;
      // One generated token is the prefill's own: no decode step ran, and decode speed is 0 (as kivi generate says).
      runs[i]!.push({ prefill: r.promptTokens / r.prefillSeconds, decode: r.decodeSteps > 0 ? r.decodeSteps / r.decodeSeconds : 0, bytes: r.kvBytes });
      if (counter) {
        compiles[i]!.kernels += counter.compiled - k0;
        compiles[i]!.seconds += counter.compileSeconds - s0;
      }
    }
  }
  for (const { model } of o.models) use(model, o.prefillAttention ? 'blocks' : undefined);
  return variants.map(({ weights, kv, mode }, i) => ({
    weights,
    kv,
    prompt_tokens: o.prompt.length,
    generated: o.gen,
    prefill_tokens_per_s: median(runs[i]!.map((r) => r.prefill)),
    ...decodeFields(runs[i]!.map((r) => r.decode)),
    kv_bytes: runs[i]![0]!.bytes,
    ...(mode ? { prefill_attention: mode } : {}),
    ...(compileCounter(variants[i]!.model) ? { compiled_while_timed: compiles[i]! } : {}),
  }));
}

/** Tokens of synthetic keys and values a --fill cache takes per storage step. */
const FILL_CHUNK = 4096;

/** The rows a --fill cycles through: FILL_CHUNK tokens of synthetic keys and values for a model's shape. */
export interface FillRows {
  rows: Float32Array;
  chunk: number;
}

export function fillRows(m: KiviModel): FillRows {
  const shape = m.transformer.pool.shape;
  const src = syntheticKV(FILL_CHUNK, shape.numKvHeads, shape.headDim, 5);
  return { rows: qkvRows(shape, FILL_CHUNK, null, src.k, src.v), chunk: FILL_CHUNK };
}

/**
 * A new cache of spec `kv` holding `context` tokens of synthetic keys and values, stored through its own
 * jobs in every layer (up to FILL_CHUNK tokens a step): what a prompt that long leaves, without its prefill.
 */
export async function filledCache(m: KiviModel, kv: string, context: number, src: FillRows = fillRows(m)): Promise<KvCache> {
  const cache = m.newCache(parseKvSpec(kv));
  const stepper = new CacheStepper(m.backend, m.transformer.pool);
  try {
    await stepper.fillCycled(cache, src.rows, Math.min(src.chunk, context), context);
  } catch (e) {
    cache.free();
    throw e;
  } finally {
    stepper.dispose();
  }
  return cache;
}

/** One greedy decode step of one sequence: the next token's id. */
async function decodeStep(m: KiviModel, cache: KvCache, id: number): Promise<number> {
  return (await m.forward([{ tokens: [id], cache, logits: 'argmax', mode: 'decode' }]))[0] as number;
}

/**
 * Decode speed at long context without the prefill's quadratic cost: each spec's cache is filled with
 * `context` tokens of synthetic keys and values through its own storage jobs (every layer; the same
 * pages, quantization and residual a prefill leaves), then `gen` greedy decode steps run through the
 * whole model. Decode work does not depend on the cached values, so this times what a real prompt of
 * that length would give (prefill_tokens_per_s is 0: no prefill ran).
 */
export async function runFilledDecodeBench(o: Omit<GenerateBenchOptions, 'prompt'> & { context: number }): Promise<GenerateBenchResult[]> {
  const first = o.models[0]!.model;
  if (o.context + o.gen > first.config.maxPositions) {
    throw new KiviError(`--fill ${o.context} + generated ${o.gen} tokens exceed the model's context of ${first.config.maxPositions}`);
  }
  const variants = o.models.flatMap(({ weights, model }) => o.specs.map((kv) => ({ weights, model, kv, src: fillRows(model) })));
  const runs = variants.map(() => [] as { decode: number; bytes: number }[]);
  // Untimed first, every variant: `gen` decode steps on a cache filled as the timed rounds fill theirs, so
  // the kernels of that size compile here (a larger cache spans more bindings: another attention kernel).
  // With a 4096-token warm-up the first timed round on the H200 compiled one for 2 s in its untimed step and
  // decoded 21–29% slower than the rounds after it: the steps after a long compile run slow, likely while
  // the GPU's clocks climb back (docs/perf/webgpu-h200.md, "What the first round pays for").
  for (const { model: m, kv, src } of variants) {
    const cache = await filledCache(m, kv, o.context, src);
    try {
      let id = 3;
      for (let g = 0; g < o.gen; g++) id = await decodeStep(m, cache, id);
    } finally {
      cache.free();
    }
  }
  let done = 0;
  for (let round = 0; round < o.repeats; round++) {
    for (const [i, { model: m, kv, src }] of roundOrder(variants, round)) {
      const cache = await filledCache(m, kv, o.context, src);
      try {
        let id = 3;
        // One untimed step (kernels for this length compiled, scratch sized), then the timed ones.
        id = await decodeStep(m, cache, id);
        const t0 = now();
        for (let g = 1; g < o.gen; g++) id = await decodeStep(m, cache, id);
        runs[i]!.push({ decode: (o.gen - 1) / (now() - t0), bytes: cache.bytes() });
      } finally {
        cache.free();
      }
      o.onProgress?.(++done, o.repeats * variants.length);
    }
  }
  return variants.map(({ weights, kv }, i) => ({
    weights,
    kv,
    prompt_tokens: o.context,
    generated: o.gen,
    prefill_tokens_per_s: 0,
    ...decodeFields(runs[i]!.map((r) => r.decode)),
    kv_bytes: runs[i]![0]!.bytes,
  }));
}

/** One row per weight format and spec; speeds relative to the first row. */
export function generateBenchMarkdown(results: readonly GenerateBenchResult[], what: string): string {
  const base = results[0]!;
  return (
    `${what}: ${base.prefill_tokens_per_s === 0 ? `caches filled with ${base.prompt_tokens} tokens of synthetic keys/values (no prefill)` : `${base.prompt_tokens}-token prompt`}, ` +
    `${base.generated} generated (greedy); medians of ${base.decode_rounds.length} round(s)${
      base.decode_rounds.length > 1 ? ', the specs in reversed order every other round (decode: the median, then the slowest–fastest round)' : ''
    }; ` +
    `in parentheses: relative to ${base.kv} with ${base.weights} weights:\n\n` +
    markdownTable(
      ['weights', 'kv', ...(base.prefill_attention ? ['prefill attention'] : []), 'prefill tokens/s', 'decode tokens/s', 'cache after'],
      results.map((r) => [
        r.weights,
        r.kv,
        ...(base.prefill_attention ? [r.prefill_attention ?? ''] : []),
        r.prefill_tokens_per_s === 0 ? '–' : `${r.prefill_tokens_per_s.toFixed(0)} (${formatRatio(r.prefill_tokens_per_s / base.prefill_tokens_per_s)})`,
        r.decode_tokens_per_s === 0
          ? '– (no decode step)'
          : `${r.decode_tokens_per_s.toFixed(1)} (${formatRatio(r.decode_tokens_per_s / base.decode_tokens_per_s)})${
              r.decode_rounds.length > 1 ? `, ${r.decode_range[0].toFixed(1)}–${r.decode_range[1].toFixed(1)}` : ''
            }`,
        formatBytes(r.kv_bytes),
      ]),
    ) +
    results
      .filter((r) => (r.compiled_while_timed?.kernels ?? 0) > 0)
      .map(
        (r) =>
          `\n${r.kv} (${r.weights}): ${r.compiled_while_timed!.kernels} kernel(s) compiled inside its timed rounds (${r.compiled_while_timed!.seconds.toFixed(2)} s, counted in its speeds)\n`,
      )
      .join('')
  );
}
