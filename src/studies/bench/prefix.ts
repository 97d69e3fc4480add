/**
 * `bench prefix`: a multi-turn chat workload against `kivi serve` replicas, with and without the prefix
 * cache. `conversations` chats run at once, each `turns` turns long, all over one shared system prompt
 * of `system` tokens; turn t's prompt is the system prompt, the earlier turns (user message + the
 * answer, re-tokenized) and a new `user`-token message, answered greedily with `gen` tokens. Turn t of
 * chat c goes to replica (c + t) mod R, so consecutive turns change replica: a store of one's own helps
 * only with what that replica saw, a shared store with everything.
 *
 * Configurations, each on fresh replicas (child processes): 1 and 2 replicas without a prefix cache,
 * with in-process stores, and (with --prefix-store) sharing Redis. Figures: time to first token (client
 * side, from sending the request to the first streamed text) p50/p95, prompt tokens prefilled, tokens
 * reused, and the store's bytes; and, from caches built here, the cache-file bytes per cached token for
 * fp16 and kivi2. The system prompt starts with a few random tokens, so that entries left in a Redis by an
 * earlier run are never reused.
 */
import { randomInt } from 'node:crypto';
import type { KiviModel } from '../../api.js';
import { parseMetrics } from '../../server/metrics.js';
import { KiviError } from '../../util/errors.js';
import { textWindows } from '../eval/windows.js';
import { mean, quantile } from '../numbers.js';
import { formatBytes, formatRatio, markdownTable } from './markdown.js';
import { type Replica, startReplica } from './replicas.js';

export interface PrefixBenchOptions {
  model: KiviModel;
  modelDir: string;
  text: string;
  kv: string;
  system: number;
  conversations: number;
  turns: number;
  user: number;
  gen: number;
  block: number;
  /** The in-process store's size, per replica. */
  cacheBytes: number;
  /** redis://… to add the shared-store configuration (with 2 replicas). */
  store?: string;
  /** Replica counts to run (default 1 and 2). */
  replicas?: number[];
  /** Extra `kivi serve` flags (back end, threads). */
  serveArgs: string[];
  onProgress?: (done: number, total: number) => void;
}

export interface PrefixConfigResult {
  name: string;
  replicas: number;
  store: 'none' | 'in-process' | 'redis';
  requests: number;
  ttft_p50: number;
  ttft_p95: number;
  ttft_mean: number;
  prompt_tokens: number;
  /** Prompt tokens the replicas ran through prefill forwards. */
  prefill_tokens: number;
  reused_tokens: number;
  hits: number;
  misses: number;
  bytes_stored: number;
  bytes_fetched: number;
  seconds: number;
}

export interface BytesPerToken {
  kv: string;
  tokens: number;
  file_bytes: number;
  bytes_per_token: number;
}

export interface PrefixBenchReport {
  kv: string;
  block: number;
  system: number;
  conversations: number;
  turns: number;
  user: number;
  gen: number;
  configs: PrefixConfigResult[];
  bytes_per_token: BytesPerToken[];
}

interface Workload {
  system: number[];
  /** users[c][t]: chat c's message at turn t. */
  users: number[][][];
}

function workload(o: PrefixBenchOptions): Workload {
  const { model } = o;
  const last = o.system + o.turns * (o.user + o.gen) + 8;
  if (last > model.config.maxPositions) {
    throw new KiviError(
      `--system ${o.system} + ${o.turns} turns × (--user ${o.user} + --gen ${o.gen}) exceed the model's context of ${model.config.maxPositions}`,
    );
  }
  const need = o.system + o.conversations * o.turns * o.user;
  const w = textWindows(model.tokenizer, o.text, { window: Math.min(need + 1, 1 << 30), context: Infinity, maxWindows: 1 })[0]!;
  // A nonce after BOS: this run's prompts are its own, in any store.
  const nonce = Array.from({ length: 4 }, () => 3 + randomInt(model.config.vocabSize - 3));
  const system = [w[0]!, ...nonce, ...w.slice(1, o.system - nonce.length)];
  let at = o.system;
  const users = Array.from({ length: o.conversations }, () =>
    Array.from({ length: o.turns }, () => {
      at += o.user;
      return w.slice(at - o.user, at);
    }),
  );
  return { system, users };
}

/** Stream one completion; seconds to the first streamed text, and the text. */
async function ask(url: string, modelName: string, prompt: number[], gen: number): Promise<{ ttft: number; text: string }> {
  const t0 = performance.now();
  const r = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: modelName, prompt, max_tokens: gen, temperature: 0, stream: true }),
  });
  if (r.status !== 200 || !r.body) throw new KiviError(`bench prefix: HTTP ${r.status}: ${await r.text()}`);
  let ttft = 0;
  let text = '';
  let buf = '';
  const dec = new TextDecoder();
  for await (const chunk of r.body as unknown as AsyncIterable<Uint8Array>) {
    buf += dec.decode(chunk, { stream: true });
    for (let i = buf.indexOf('\n\n'); i >= 0; i = buf.indexOf('\n\n')) {
      const ev = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (!ev.startsWith('data: ') || ev === 'data: [DONE]') continue;
      const j = JSON.parse(ev.slice(6));
      if (j.error) throw new KiviError(`bench prefix: ${j.error.message}`);
      const piece = j.choices?.[0]?.text ?? '';
      if (piece !== '' && ttft === 0) ttft = (performance.now() - t0) / 1000;
      text += piece;
    }
  }
  return { ttft: ttft || (performance.now() - t0) / 1000, text };
}

async function metricsOf(r: Replica): Promise<Map<string, number>> {
  return parseMetrics(await (await fetch(`${r.url}/metrics`)).text());
}

async function runConfig(
  o: PrefixBenchOptions,
  w: Workload,
  name: string,
  replicas: number,
  store: PrefixConfigResult['store'],
  progress: () => void,
): Promise<PrefixConfigResult> {
  const storeArgs =
    store === 'none'
      ? []
      : ['--prefix-block', String(o.block), ...(store === 'redis' ? ['--prefix-store', o.store!] : ['--prefix-cache', String(o.cacheBytes)])];
  const args = ['--model', o.modelDir, '--kv', o.kv, ...storeArgs, ...o.serveArgs];
  const rs = await Promise.all(Array.from({ length: replicas }, () => startReplica(args)));
  try {
    const modelName = ((await (await fetch(`${rs[0]!.url}/v1/models`)).json()) as { data: { id: string }[] }).data[0]!.id;
    const ttfts: number[] = [];
    let promptTokens = 0;
    const t0 = performance.now();
    await Promise.all(
      w.users.map(async (turns, c) => {
        let history = [...w.system];
        for (const [t, user] of turns.entries()) {
          const prompt = [...history, ...user];
          const r = await ask(rs[(c + t) % replicas]!.url, modelName, prompt, o.gen);
          ttfts.push(r.ttft);
          promptTokens += prompt.length;
          history = [...prompt, ...o.model.encode(r.text, { bos: false })];
          progress();
        }
      }),
    );
    const seconds = (performance.now() - t0) / 1000;
    const ms = await Promise.all(rs.map(metricsOf));
    const sum = (k: string) => ms.reduce((a, m) => a + (m.get(k) ?? 0), 0);
    return {
      name,
      replicas,
      store,
      requests: ttfts.length,
      ttft_p50: quantile(ttfts, 0.5),
      ttft_p95: quantile(ttfts, 0.95),
      ttft_mean: mean(ttfts),
      prompt_tokens: promptTokens,
      prefill_tokens: sum('kivi_prefill_tokens_total'),
      reused_tokens: sum('kivi_prefix_tokens_reused_total'),
      hits: sum('kivi_prefix_hits_total'),
      misses: sum('kivi_prefix_misses_total'),
      bytes_stored: sum('kivi_prefix_bytes_stored_total'),
      bytes_fetched: sum('kivi_prefix_bytes_fetched_total'),
      seconds,
    };
  } finally {
    await Promise.all(rs.map((r) => r.stop()));
  }
}

/** Cache-file bytes per token of a prefix of whole blocks, prefilled as the server does. */
async function bytesPerToken(o: PrefixBenchOptions, system: number[], kv: string): Promise<BytesPerToken> {
  const tokens = Math.max(o.block, Math.floor(system.length / o.block) * o.block);
  const ids = system.slice(0, tokens);
  const cache = await o.model.prefill(ids, { kv, prefillChunk: o.block });
  try {
    const file = await o.model.saveCache(cache, ids);
    return { kv, tokens: ids.length, file_bytes: file.byteLength, bytes_per_token: file.byteLength / ids.length };
  } finally {
    cache.free();
  }
}

export async function runPrefixBench(o: PrefixBenchOptions): Promise<PrefixBenchReport> {
  const w = workload(o);
  const plan: [string, number, PrefixConfigResult['store']][] = [];
  for (const n of o.replicas ?? [1, 2]) {
    const rs = n === 1 ? '1 replica' : `${n} replicas`;
    plan.push([`${rs}, no prefix cache`, n, 'none'], [`${rs}, in-process store${n === 1 ? '' : 's'}`, n, 'in-process']);
    if (o.store && n > 1) plan.push([`${rs}, shared Redis`, n, 'redis']);
  }
  const total = plan.length * o.conversations * o.turns;
  let done = 0;
  o.onProgress?.(0, total);
  const configs: PrefixConfigResult[] = [];
  for (const [name, replicas, store] of plan) {
    configs.push(await runConfig(o, w, name, replicas, store, () => o.onProgress?.(++done, total)));
  }
  const kvs = [...new Set(['fp16', 'kivi2', o.kv])];
  const bytes: BytesPerToken[] = [];
  for (const kv of kvs) bytes.push(await bytesPerToken(o, w.system, kv));
  return {
    kv: o.kv,
    block: o.block,
    system: o.system,
    conversations: o.conversations,
    turns: o.turns,
    user: o.user,
    gen: o.gen,
    configs,
    bytes_per_token: bytes,
  };
}

export function prefixBenchMarkdown(r: PrefixBenchReport): string {
  const base = (replicas: number) => r.configs.find((c) => c.replicas === replicas && c.store === 'none');
  const rows = r.configs.map((c) => [
    c.name,
    `${(c.ttft_p50 * 1000).toFixed(0)} ms`,
    `${(c.ttft_p95 * 1000).toFixed(0)} ms`,
    c.prefill_tokens,
    `${((100 * c.prefill_tokens) / c.prompt_tokens).toFixed(1)}%`,
    c.reused_tokens,
    c.store === 'none' ? '–' : `${c.hits}/${c.hits + c.misses}`,
    c.store === 'none' ? '–' : formatBytes(c.bytes_stored),
    base(c.replicas) && c.ttft_p50 > 0 ? formatRatio(base(c.replicas)!.ttft_p50 / c.ttft_p50) : '–',
    `${c.seconds.toFixed(1)} s`,
  ]);
  const fp16 = r.bytes_per_token.find((b) => b.kv === 'fp16');
  const bytes = r.bytes_per_token.map((b) => [
    b.kv,
    b.tokens,
    formatBytes(b.file_bytes),
    b.bytes_per_token.toFixed(0),
    fp16 ? formatRatio(fp16.bytes_per_token / b.bytes_per_token) : '–',
  ]);
  return (
    `${r.conversations} chats × ${r.turns} turns over a shared ${r.system}-token system prompt (user messages of ${r.user} tokens, ` +
    `${r.gen}-token greedy answers), kv ${r.kv}, blocks of ${r.block}; turn t of chat c on replica (c + t) mod R.\n\n` +
    markdownTable(
      ['configuration', 'TTFT p50', 'TTFT p95', 'prefill tokens', 'of prompt tokens', 'reused tokens', 'hits', 'stored', 'p50 speed-up', 'wall'],
      rows,
    ) +
    `\nCache files of a ${r.bytes_per_token[0]?.tokens}-token prefix (what the store keeps per entry):\n\n` +
    markdownTable(['kv', 'tokens', 'file', 'bytes per token', 'vs fp16'], bytes)
  );
}
