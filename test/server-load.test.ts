/**
 * A bounded load test on 127.0.0.1: 32 concurrent openai clients against a small KV budget. Every request
 * succeeds or gets a clean 429; each answer equals the same request run alone; some clients disconnect
 * mid-stream; afterwards no KV bytes are in use.
 */

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type OpenAI from 'openai';
import { APIError } from 'openai';
import type { KiviServer } from '../src/server/app.js';
import { client, MODEL_NAME, metric, metrics, startServer, until } from './server-helpers.js';

// Residual and groups of 16 tokens: prompts of 8–20 tokens plus 8 new ones cross several quantization flushes.
// A float32 residual: the sizes below (six requests running, eight waiting, then 429s) were set with it.
const KV = 'kivi:k=2,v=2,g=16,r=16,residual=fp32';
const MAX_TOKENS = 8;

interface Template {
  chat: boolean;
  prompt: string;
  temperature: number;
  seed?: number;
}

const TEMPLATES: Template[] = [
  { chat: false, prompt: 'The river flows through the old town and', temperature: 0 },
  { chat: false, prompt: 'In 1923 the company built a new factory in the north of the country, where', temperature: 0 },
  { chat: false, prompt: 'She was born in', temperature: 0 },
  { chat: false, prompt: 'The album was released on', temperature: 0.8, seed: 7 },
  { chat: true, prompt: 'Tell me about the castle.', temperature: 0 },
  { chat: true, prompt: 'Who won the match?', temperature: 0.7, seed: 99 },
];

type Outcome = { kind: 'ok'; text: string } | { kind: '429' } | { kind: 'disconnected' };

/** Run one template's request; with `disconnectAfter`, stream and drop the connection after that many chunks. */
async function run(ai: OpenAI, t: Template, stream: boolean, disconnectAfter?: number): Promise<Outcome> {
  const common = { model: MODEL_NAME, max_tokens: MAX_TOKENS, temperature: t.temperature, ...(t.seed !== undefined ? { seed: t.seed } : {}) };
  try {
    if (!stream) {
      if (t.chat) {
        const r = await ai.chat.completions.create({ ...common, messages: [{ role: 'user', content: t.prompt }] });
        return { kind: 'ok', text: r.choices[0]!.message.content ?? '' };
      }
      const r = await ai.completions.create({ ...common, prompt: t.prompt });
      return { kind: 'ok', text: r.choices[0]!.text };
    }
    let text = '';
    let n = 0;
    const s = t.chat
      ? await ai.chat.completions.create({ ...common, messages: [{ role: 'user', content: t.prompt }], stream: true })
      : await ai.completions.create({ ...common, prompt: t.prompt, stream: true });
    for await (const c of s) {
      const ch = c.choices[0];
      if (ch) text += 'delta' in ch ? (ch.delta.content ?? '') : ch.text;
      if (disconnectAfter !== undefined && ++n >= disconnectAfter) {
        s.controller.abort();
        return { kind: 'disconnected' };
      }
    }
    return { kind: 'ok', text };
  } catch (e) {
    if (e instanceof APIError && e.status === 429) {
      // A clean 429: an OpenAI-style error body.
      const body = e.error as { type?: string; message?: string };
      assert.equal(body.type, 'rate_limit_error');
      assert.equal(typeof body.message, 'string');
      return { kind: '429' };
    }
    throw e;
  }
}

describe('kivi serve under load', () => {
  let server: KiviServer;
  let ai: OpenAI;
  let budget: number;

  before(async () => {
    // Room for about six of the largest requests at once; eight more may wait.
    const probe = await startServer({ kv: KV, port: 0 });
    const largest = probe.scheduler.reservation(40, MAX_TOKENS);
    await probe.close();
    budget = 6 * largest;
    server = await startServer({ kv: KV, budgetBytes: budget, maxQueue: 8 });
    ai = client(server);
  });
  after(() => server.close());

  test('32 concurrent clients: success or a clean 429, results as if alone, no bytes left, budget kept', async () => {
    // Each request alone first (greedy and seeded sampling alike must not change under batching).
    const alone: string[] = [];
    for (const t of TEMPLATES) {
      const r = await run(ai, t, false);
      assert.equal(r.kind, 'ok');
      alone.push((r as { text: string }).text);
    }
    assert.ok(alone.every((x) => x.length > 0));
    const before = await metrics(server);

    const CLIENTS = 32;
    const outcomes = await Promise.all(
      Array.from({ length: CLIENTS }, async (_, c) => {
        const mine: { t: number; o: Outcome }[] = [];
        // Eight clients send a second request after the first: later arrivals find a busy server too.
        for (let k = 0; k < (c < 8 ? 2 : 1); k++) {
          const t = (c + k) % TEMPLATES.length;
          // Every eighth client drops its stream after two chunks.
          const o = await run(ai, TEMPLATES[t]!, c % 2 === 0, c % 8 === 7 && k === 0 ? 2 : undefined);
          mine.push({ t, o });
        }
        return mine;
      }),
    );
    const all = outcomes.flat();
    assert.equal(all.length, 40);
    let ok = 0;
    let rejected = 0;
    for (const { t, o } of all) {
      if (o.kind === 'ok') {
        ok++;
        assert.equal(o.text, alone[t], `template ${t}`);
      } else if (o.kind === '429') rejected++;
    }
    const disconnected = all.filter((x) => x.o.kind === 'disconnected').length;
    assert.equal(ok + rejected + disconnected, 40);
    assert.ok(ok >= 14, `only ${ok} succeeded`);
    assert.ok(rejected >= 1, 'the bounded queue was never full');

    await until(async () => (await metric(server, 'kivi_sequences_running')) === 0, 'all sequences to end');
    const after = await metrics(server);
    assert.equal(after.get('kivi_kv_bytes_used'), 0);
    assert.equal(after.get('kivi_kv_bytes_reserved'), 0);
    assert.equal(after.get('kivi_kv_bytes_allocated'), 0);
    assert.equal(after.get('kivi_sequences_queued'), 0);
    assert.equal(after.get('kivi_queue_rejections_total')! - before.get('kivi_queue_rejections_total')!, rejected);
    // Memory: never more pages held than the budget (within steps too), and the budget was actually used.
    assert.ok(after.get('kivi_kv_bytes_allocated_max')! <= budget, `${after.get('kivi_kv_bytes_allocated_max')} > ${budget}`);
    assert.ok(after.get('kivi_kv_bytes_used_max')! <= after.get('kivi_kv_bytes_allocated_max')!);
    assert.ok(after.get('kivi_kv_bytes_used_max')! > budget / 4);
    assert.ok(after.get('kivi_sequences_running_max')! >= 6);
    const okCount = (ep: string) =>
      (after.get(`kivi_requests_total{endpoint="${ep}",outcome="ok"}`) ?? 0) - (before.get(`kivi_requests_total{endpoint="${ep}",outcome="ok"}`) ?? 0);
    assert.equal(okCount('completions') + okCount('chat'), ok);
  });

  test('a client that disconnects mid-stream frees its cache at once; one that leaves the queue frees its place', async () => {
    // Long enough that two of them do not fit the budget together: the second one waits in the queue.
    let n = 16;
    while (2 * server.scheduler.reservation(4, n) <= budget) n += 16;
    assert.ok(server.scheduler.reservation(4, n) <= budget && n < 2000, `n = ${n}`);
    const stream = await ai.completions.create({ model: MODEL_NAME, prompt: [1, 450, 1370, 4689], max_tokens: n, temperature: 0, stream: true });
    const ac = new AbortController();
    const queued = ai.completions.create({ model: MODEL_NAME, prompt: [1, 7280, 727, 931], max_tokens: n }, { signal: ac.signal });
    const it = stream[Symbol.asyncIterator]();
    assert.equal((await it.next()).done, false);
    await until(async () => (await metric(server, 'kivi_sequences_queued')) === 1, 'the second request to queue');
    const held = await metric(server, 'kivi_kv_bytes_used');
    assert.ok(held > 0);
    // The waiting client leaves: its place in the queue goes, the running one is untouched.
    ac.abort();
    await assert.rejects(queued);
    await until(async () => (await metric(server, 'kivi_sequences_queued')) === 0, 'the queue to empty', 5000);
    assert.equal(await metric(server, 'kivi_sequences_running'), 1);
    // The streaming client leaves after a few chunks: its cache is freed at once.
    await it.next();
    await it.next();
    stream.controller.abort();
    await until(async () => (await metric(server, 'kivi_sequences_running')) === 0, 'the cancelled sequence to leave', 5000);
    const m = await metrics(server);
    assert.equal(m.get('kivi_kv_bytes_used'), 0);
    assert.equal(m.get('kivi_kv_bytes_reserved'), 0);
    const gen = m.get('kivi_generated_tokens_total')!;
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(await metric(server, 'kivi_generated_tokens_total'), gen, 'the engine kept generating for a gone client');
    assert.ok((m.get('kivi_requests_total{endpoint="completions",outcome="cancelled"}') ?? 0) >= 2);
  });
});
