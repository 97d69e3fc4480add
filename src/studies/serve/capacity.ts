/**
 * Serving capacity: how many sequences the server runs at once under one --kv-budget, per cache spec,
 * measured through its own /metrics on the same load.
 *
 * The load: `clients` concurrent clients, each sending one greedy completion of a distinct `prompt`-token
 * slice of WikiText-2 with max_tokens `gen`. The budget is `fp16Seqs` × one fp16 request's reservation,
 * so fp16 fills it exactly and any rounding goes against the quantized specs. Every request runs to the
 * end; the figures are the server's `kivi_sequences_running_max` and `kivi_kv_bytes_allocated_max` gauges (pages held, within steps too).
 *
 *   kivi bench serve --model DIR --text FILE [--prompt 1920] [--gen 16] [--clients 16] [--fp16-seqs 3] \
 *     [--kv fp16,kivi2,kivi:k=2,v=2,g=32,r=128,residual=fp32]
 */
import type { KiviModel } from '../../api.js';
import { cacheBytes, peakAllocatedBytes } from '../../cache/budget.js';
import { parseKvSpec } from '../../cache/spec.js';
import { KiviServer } from '../../server/app.js';
import { parseMetrics } from '../../server/metrics.js';
import { formatBytes } from '../../server/scheduler.js';
import { KiviError } from '../../util/errors.js';
import { textWindows } from '../eval/windows.js';

export interface CapacityOptions {
  prompt: number;
  gen: number;
  clients: number;
  /** The budget in fp16 requests. */
  fp16Seqs: number;
  specs: string[];
  /** Token-id prompts, at least `clients` of `prompt` tokens. */
  prompts: number[][];
}

export interface CapacityRow {
  kv: string;
  /** One request's reservation: its cache's peak bytes. */
  reservation: number;
  /** fp16's reservation ÷ this one: the ratio of sequences a large budget fits. */
  bytesRatio: number;
  runningMax: number;
  kvPagesMax: number;
  completed: number;
  seconds: number;
}

/**
 * Distinct prompts of `len` tokens: the evaluation windows of the text (BOS + consecutive slices, as
 * `eval ppl` cuts them), exactly `count` of them.
 */
export function textPrompts(model: KiviModel, text: string, count: number, len: number): number[][] {
  const prompts = textWindows(model.tokenizer, text, { window: len, context: model.config.maxPositions, maxWindows: count });
  if (prompts.length < count) throw new KiviError(`the text gives only ${prompts.length} prompts of ${len} tokens; ${count} needed`);
  return prompts;
}

export async function measureCapacity(model: KiviModel, o: CapacityOptions): Promise<{ budget: number; rows: CapacityRow[] }> {
  // The scheduler's reservation: the peak pages from the prompt to the last token fed back.
  const pool = model.transformer.pool;
  const reserve = (kv: string) => peakAllocatedBytes(parseKvSpec(kv), pool, o.prompt + o.gen - 1, o.prompt);
  const budget = o.fp16Seqs * reserve('fp16');
  const rows: CapacityRow[] = [];
  for (const kv of o.specs) {
    const server = await KiviServer.start(model, { kv, budgetBytes: budget, maxQueue: o.clients, port: 0 });
    const t0 = performance.now();
    try {
      const done = await Promise.all(
        o.prompts.slice(0, o.clients).map(async (prompt) => {
          const r = await fetch(`${server.url}/v1/completions`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ model: server.modelName, prompt, max_tokens: o.gen, temperature: 0 }),
          });
          if (r.status !== 200) throw new Error(`${kv}: HTTP ${r.status}: ${await r.text()}`);
          return 1;
        }),
      );
      const m = parseMetrics(await (await fetch(`${server.url}/metrics`)).text());
      if (m.get('kivi_kv_bytes_used') !== 0) throw new Error(`${kv}: KV bytes still in use after the load`);
      rows.push({
        kv,
        reservation: reserve(kv),
        bytesRatio: reserve('fp16') / reserve(kv),
        runningMax: m.get('kivi_sequences_running_max')!,
        kvPagesMax: m.get('kivi_kv_bytes_allocated_max')!,
        completed: done.length,
        seconds: (performance.now() - t0) / 1000,
      });
    } finally {
      await server.close();
    }
  }
  return { budget, rows };
}

/** The measured table (Markdown). */
export function capacityTable(budget: number, rows: CapacityRow[]): string {
  const fp16 = rows.find((r) => r.kv === 'fp16');
  const lines = [
    '| kv | reservation per request | fp16 bytes ÷ these | running at once (max) | × fp16 | KV pages held (max) | requests done | wall s |',
    '|---|---|---|---|---|---|---|---|',
  ];
  for (const r of rows) {
    const vs = fp16 ? `${(r.runningMax / fp16.runningMax).toFixed(2)}×` : '–';
    lines.push(
      `| ${r.kv} | ${formatBytes(r.reservation)} | ${r.bytesRatio.toFixed(2)}× | ${r.runningMax} | ${vs} | ` +
        `${formatBytes(r.kvPagesMax)} of ${formatBytes(budget)} | ${r.completed} | ${r.seconds.toFixed(0)} |`,
    );
  }
  return lines.join('\n');
}

/** fp16 bytes ÷ each spec's bytes for a sequence of T tokens (exact, cache/budget.ts), as a Markdown table. */
export function ratioTable(model: KiviModel, specs: string[], lengths: number[]): string {
  const dims = model.dims;
  const fp16 = parseKvSpec('fp16');
  const head = [`| tokens | ${specs.join(' | ')} |`, `|---|${specs.map(() => '---|').join('')}`];
  const rows = lengths.map(
    (T) => `| ${T} | ${specs.map((kv) => `${(cacheBytes(fp16, dims, T) / cacheBytes(parseKvSpec(kv), dims, T)).toFixed(2)}×`).join(' | ')} |`,
  );
  return [...head, ...rows].join('\n');
}

/** The whole report: the measured table and the exact byte ratios by length. */
export function serveCapacityMarkdown(
  model: KiviModel,
  o: { prompt: number; gen: number; clients: number; fp16Seqs: number; specs: string[] },
  budget: number,
  rows: CapacityRow[],
): string {
  return (
    `${o.clients} clients, prompts of ${o.prompt} tokens, max_tokens ${o.gen}, --kv-budget ${budget} bytes ` +
    `(${o.fp16Seqs} fp16 requests)\n\n${capacityTable(budget, rows)}\n\nBytes of one sequence's cache, fp16 ÷ spec, by length:\n\n` +
    `${ratioTable(
      model,
      o.specs,
      [128, 512, 1024, 1536, 1920, 1935, 2047].filter((T) => T <= model.config.maxPositions),
    )}\n`
  );
}
