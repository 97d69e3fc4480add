/** The OpenAI-compatible server through the official `openai` client: shapes, equality with the library, errors. */

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type OpenAI from 'openai';
import { APIError } from 'openai';
import type { KiviModel } from '../src/api.js';
import type { KiviServer } from '../src/server/app.js';
import { FALLBACK_STOP } from '../src/server/chat.js';
import { bundledModel } from './helpers.js';
import { client, MODEL_NAME, metric, postJson, startServer, until } from './server-helpers.js';

const KV = 'kivi:k=2,v=2,g=32,r=32';

describe('kivi serve: OpenAI API', () => {
  let m: KiviModel;
  let server: KiviServer;
  let ai: OpenAI;

  before(async () => {
    m = await bundledModel();
    server = await startServer({ kv: KV, budgetBytes: 64 * 1024 ** 2, bodyLimit: 64 * 1024 });
    ai = client(server);
  });
  after(() => server.close());

  test("completion, not streamed, greedy: the library's text and usage", async () => {
    const prompt = 'The history of the city begins';
    const r = await ai.completions.create({ model: MODEL_NAME, prompt, max_tokens: 40, temperature: 0 });
    const ref = await m.complete(prompt, { maxTokens: 40, kv: KV });
    assert.equal(r.object, 'text_completion');
    assert.equal(r.model, MODEL_NAME);
    assert.match(r.id, /^cmpl-/);
    assert.equal(r.choices.length, 1);
    assert.equal(r.choices[0]!.text, ref.text);
    assert.equal(r.choices[0]!.finish_reason, ref.finishReason === 'length' ? 'length' : 'stop');
    assert.deepEqual(r.usage, { prompt_tokens: ref.promptTokens, completion_tokens: ref.ids.length, total_tokens: ref.promptTokens + ref.ids.length });
    assert.equal(ref.promptTokens, m.encode(prompt).length);
  });

  test('completion, streamed: chunks join to the same text, then the finish chunk and usage', async () => {
    const prompt = [1, 450, 3681, 310, 278, 4272];
    const ref = await m.complete(prompt, { maxTokens: 12, kv: KV });
    const stream = await ai.completions.create({
      model: MODEL_NAME,
      prompt,
      max_tokens: 12,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    const reasons: (string | null)[] = [];
    let u: OpenAI.CompletionUsage | undefined;
    for await (const c of stream) {
      assert.equal(c.object, 'text_completion');
      if (c.usage) u = c.usage;
      for (const ch of c.choices) {
        text += ch.text;
        reasons.push(ch.finish_reason);
      }
    }
    assert.equal(text, ref.text);
    assert.equal(reasons.at(-1), 'length');
    assert.ok(reasons.slice(0, -1).every((x) => x === null));
    assert.deepEqual(u, { prompt_tokens: 6, completion_tokens: 12, total_tokens: 18 });
  });

  test('raw stream ends with data: [DONE]', async () => {
    const r = await fetch(`${server.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL_NAME, prompt: 'Hello', max_tokens: 3, stream: true }),
    });
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type') ?? '', /^text\/event-stream/);
    const events = (await r.text()).split('\n\n').filter((e) => e !== '');
    assert.ok(events.every((e) => e.startsWith('data: ')));
    assert.equal(events.at(-1), 'data: [DONE]');
    const last = JSON.parse(events.at(-2)!.slice(6));
    assert.equal(last.choices[0].finish_reason, 'length');
  });

  test('stop strings end the text before the stop string, finish_reason "stop"', async () => {
    const prompt = 'In 1990 the team moved to';
    const ref = await m.complete(prompt, { maxTokens: 24, kv: KV });
    // A stop string that first occurs inside the greedy text, after its first token.
    const words = ref.text.split(' ').filter((w) => w.length >= 3);
    const stop = words[2]!;
    const cut = ref.text.indexOf(stop);
    assert.ok(cut > 0);
    const r = await ai.completions.create({ model: MODEL_NAME, prompt, max_tokens: 24, temperature: 0, stop: [stop, 'zzzz'] });
    assert.equal(r.choices[0]!.text, ref.text.slice(0, cut));
    assert.equal(r.choices[0]!.finish_reason, 'stop');
  });

  test('seeded sampling: reproducible, and the same as the library with the same seed', async () => {
    const req = { model: MODEL_NAME, prompt: 'Once upon a time', max_tokens: 16, temperature: 0.9, top_p: 0.95, seed: 1234 };
    const a = await ai.completions.create(req);
    const b = await ai.completions.create(req);
    const ref = await m.complete('Once upon a time', { maxTokens: 16, temperature: 0.9, topP: 0.95, seed: 1234, kv: KV });
    assert.equal(a.choices[0]!.text, ref.text);
    assert.equal(b.choices[0]!.text, ref.text);
    const greedy = await m.complete('Once upon a time', { maxTokens: 16, kv: KV });
    assert.notEqual(ref.text, greedy.text);
  });

  test("chat, not streamed and streamed: the plain-text transcript's greedy answer", async () => {
    const messages = [
      { role: 'system' as const, content: 'You are a historian.' },
      { role: 'user' as const, content: 'Tell me about the river.' },
    ];
    const ids = m.encode('System: You are a historian.\nUser: Tell me about the river.\nAssistant:');
    const ref = await m.complete(ids, { maxTokens: 20, kv: KV, stop: [FALLBACK_STOP] });
    const r = await ai.chat.completions.create({ model: MODEL_NAME, messages, max_tokens: 20, temperature: 0 });
    assert.equal(r.object, 'chat.completion');
    assert.match(r.id, /^chatcmpl-/);
    assert.equal(r.choices[0]!.message.role, 'assistant');
    assert.equal(r.choices[0]!.message.content, ref.text);
    assert.deepEqual(r.usage, { prompt_tokens: ids.length, completion_tokens: ref.ids.length, total_tokens: ids.length + ref.ids.length });

    const stream = await ai.chat.completions.create({ model: MODEL_NAME, messages, max_completion_tokens: 20, temperature: 0, stream: true });
    let text = '';
    let role: string | undefined;
    let reason: string | null = null;
    for await (const c of stream) {
      assert.equal(c.object, 'chat.completion.chunk');
      const ch = c.choices[0]!;
      role ??= ch.delta.role;
      text += ch.delta.content ?? '';
      reason = ch.finish_reason;
    }
    assert.equal(role, 'assistant');
    assert.equal(text, ref.text);
    assert.equal(reason, ref.finishReason === 'length' ? 'length' : 'stop');
  });

  test('chat content given as text parts is the same as a string', async () => {
    const a = await ai.chat.completions.create({ model: MODEL_NAME, messages: [{ role: 'user', content: 'Name a river.' }], max_tokens: 6, temperature: 0 });
    const b = await ai.chat.completions.create({
      model: MODEL_NAME,
      max_tokens: 6,
      temperature: 0,
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'Name a ' },
            { type: 'text', text: 'river.' },
          ],
        },
      ],
    });
    assert.equal(a.choices[0]!.message.content, b.choices[0]!.message.content);
    assert.equal(a.usage!.prompt_tokens, b.usage!.prompt_tokens);
  });

  test('models and health', async () => {
    const list = await ai.models.list();
    assert.deepEqual(
      list.data.map((x) => x.id),
      [MODEL_NAME],
    );
    const one = await ai.models.retrieve(MODEL_NAME);
    assert.equal(one.id, MODEL_NAME);
    await assert.rejects(ai.models.retrieve('gpt-4'), (e: unknown) => e instanceof APIError && e.status === 404);
    const h = await fetch(`${server.url}/health`);
    assert.equal(h.status, 200);
    assert.equal((await h.json()).status, 'ok');
  });

  test('health is 503 with the error once the back end can compute no more (a GPU out of memory, say)', async () => {
    // A stand-in for a failed GPU: no device can be made to fail on purpose in CI.
    const backend = (await bundledModel()).backend;
    const failure = 'webgpu: out of GPU memory (vkAllocateMemory failed with VK_ERROR_OUT_OF_DEVICE_MEMORY)';
    backend.failure = () => failure;
    try {
      const h = await fetch(`${server.url}/health`);
      assert.equal(h.status, 503);
      assert.deepEqual(await h.json(), { status: 'error', model: MODEL_NAME, error: failure });
    } finally {
      delete backend.failure;
    }
    assert.equal((await fetch(`${server.url}/health`)).status, 200);
  });

  test('the openai client sees 4xx errors with status, param and code', async () => {
    await assert.rejects(
      ai.completions.create({ model: 'gpt-4', prompt: 'x' }),
      (e: unknown) => e instanceof APIError && e.status === 404 && e.param === 'model' && e.code === 'model_not_found',
    );
    await assert.rejects(
      ai.completions.create({ model: MODEL_NAME, prompt: 'x', max_tokens: 0 }),
      (e: unknown) => e instanceof APIError && e.status === 400 && e.param === 'max_tokens' && e.type === 'invalid_request_error',
    );
  });

  test('bad requests: one OpenAI-style JSON error each, the right status, and the server stays up', async () => {
    const ok = { model: MODEL_NAME, prompt: 'hi' };
    const cases: [string, unknown, number, string | null][] = [
      ['/v1/completions', { model: MODEL_NAME, prompt: 5 }, 400, 'prompt'],
      ['/v1/completions', { ...ok, max_tokens: 0 }, 400, 'max_tokens'],
      ['/v1/completions', { ...ok, max_tokens: 2.5 }, 400, 'max_tokens'],
      ['/v1/completions', { ...ok, max_tokens: 'ten' }, 400, 'max_tokens'],
      ['/v1/completions', { ...ok, temperature: -1 }, 400, 'temperature'],
      ['/v1/completions', { ...ok, top_p: 0 }, 400, 'top_p'],
      ['/v1/completions', { ...ok, stream: 'yes' }, 400, 'stream'],
      ['/v1/completions', { ...ok, stop: ['a', 'b', 'c', 'd', 'e'] }, 400, 'stop'],
      ['/v1/completions', { ...ok, n: 2 }, 400, 'n'],
      ['/v1/completions', { ...ok, logprobs: 5 }, 400, 'logprobs'],
      ['/v1/completions', { ...ok, foo: 1 }, 400, 'foo'],
      ['/v1/completions', { prompt: 'hi' }, 400, 'model'],
      ['/v1/completions', { ...ok, model: 'llama-2-7b' }, 404, 'model'],
      ['/v1/completions', { ...ok, prompt: ['a', 'b'] }, 400, 'prompt'],
      ['/v1/completions', { ...ok, prompt: [] }, 400, 'prompt'],
      ['/v1/completions', { ...ok, prompt: [1, 99999] }, 400, 'prompt'],
      ['/v1/completions', { ...ok, prompt: [1, -2] }, 400, 'prompt.1'],
      ['/v1/completions', { ...ok, prompt: new Array(2100).fill(5) }, 400, 'prompt'],
      ['/v1/completions', { ...ok, prompt: [1, 2, 3], max_tokens: 2046 }, 400, 'max_tokens'],
      ['/v1/completions', [ok], 400, null],
      ['/v1/completions', '{"model": ', 400, null],
      ['/v1/chat/completions', { model: MODEL_NAME, messages: [] }, 400, 'messages'],
      ['/v1/chat/completions', { model: MODEL_NAME, messages: [{ role: 'wizard', content: 'x' }] }, 400, 'messages.0.role'],
      [
        '/v1/chat/completions',
        { model: MODEL_NAME, messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] },
        400,
        'messages.0.content',
      ],
      ['/v1/chat/completions', { model: MODEL_NAME, messages: [{ role: 'user', content: 'x' }], max_completion_tokens: -1 }, 400, 'max_completion_tokens'],
      ['/v1/chat/completions', { model: 'nope', messages: [{ role: 'user', content: 'x' }] }, 404, 'model'],
    ];
    for (const [route, body, status, param] of cases) {
      const r = await postJson(server, route, body);
      const what = `${route} ${JSON.stringify(body).slice(0, 80)}`;
      assert.equal(r.status, status, what);
      const e = r.json.error;
      assert.equal(typeof e.message, 'string', what);
      assert.ok(!e.message.includes('\n'), what);
      assert.equal(e.type, 'invalid_request_error', what);
      assert.equal(e.param, param, what);
      assert.ok('code' in e, what);
    }
    const long = await postJson(server, '/v1/completions', { ...ok, prompt: new Array(2100).fill(5) });
    assert.equal(long.json.error.code, 'context_length_exceeded');
    // Too large a body: 413; an unsupported content type: 415.
    const big = await postJson(server, '/v1/completions', { ...ok, prompt: 'a'.repeat(100 * 1024) });
    assert.equal(big.status, 413);
    assert.equal(big.json.error.type, 'invalid_request_error');
    const xml = await postJson(server, '/v1/completions', '<a/>', { 'content-type': 'application/xml' });
    assert.equal(xml.status, 415);
    assert.equal(typeof xml.json.error.message, 'string');
    const nf = await fetch(`${server.url}/v2/nothing`);
    assert.equal(nf.status, 404);
    assert.equal(typeof (await nf.json()).error.message, 'string');
    assert.equal((await fetch(`${server.url}/health`)).status, 200);
    assert.equal(await metric(server, 'kivi_sequences_running'), 0);
    assert.equal(await metric(server, 'kivi_kv_bytes_used'), 0);
  });

  test('metrics: Prometheus text with the promised series; nothing in use at rest', async () => {
    const r = await fetch(`${server.url}/metrics`);
    assert.match(r.headers.get('content-type') ?? '', /^text\/plain/);
    const text = await r.text();
    for (const name of ['kivi_sequences_running', 'kivi_sequences_queued', 'kivi_kv_bytes_used', 'kivi_kv_bytes_budget', 'kivi_generated_tokens_total']) {
      assert.match(text, new RegExp(`^# TYPE ${name} (gauge|counter)$`, 'm'));
    }
    assert.match(text, /^# TYPE kivi_time_per_output_token_seconds histogram$/m);
    const m1 = (await import('../src/server/metrics.js')).parseMetrics(text);
    assert.equal(m1.get('kivi_kv_bytes_budget'), 64 * 1024 ** 2);
    assert.equal(m1.get('kivi_kv_bytes_used'), 0);
    assert.equal(m1.get('kivi_kv_bytes_reserved'), 0);
    assert.equal(m1.get('kivi_kv_bytes_allocated'), 0);
    // Earlier tests ran several requests of ≥ 2 tokens: the histogram counted each.
    assert.ok(m1.get('kivi_time_per_output_token_seconds_count')! >= 5);
    assert.equal(m1.get('kivi_time_per_output_token_seconds_bucket{le="+Inf"}'), m1.get('kivi_time_per_output_token_seconds_count'));
    assert.ok(m1.get('kivi_generated_tokens_total')! >= 100);
    assert.ok(m1.get('kivi_requests_total{endpoint="completions",outcome="ok"}')! >= 6);
  });
});

describe('kivi serve: per-request timeout', () => {
  let server: KiviServer;
  before(async () => {
    server = await startServer({ kv: 'kivi2', timeoutSeconds: 0.3 });
  });
  after(() => server.close());

  test('a request past its timeout gets a 408 and its cache is freed', async () => {
    const r = await postJson(server, '/v1/completions', { model: MODEL_NAME, prompt: 'The', max_tokens: 1000, temperature: 0 });
    assert.equal(r.status, 408);
    assert.equal(r.json.error.type, 'timeout_error');
    await until(async () => (await metric(server, 'kivi_sequences_running')) === 0, 'the sequence to leave');
    assert.equal(await metric(server, 'kivi_kv_bytes_used'), 0);
    assert.equal(await metric(server, 'kivi_requests_total{endpoint="completions",outcome="timeout"}'), 1);
  });

  test('a streamed request past its timeout ends with an error event and [DONE]', async () => {
    const r = await fetch(`${server.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      // Greedy, as above: a sampled continuation may end (EOS) before the timeout on a fast machine.
      body: JSON.stringify({ model: MODEL_NAME, prompt: 'The', max_tokens: 1000, temperature: 0, stream: true }),
    });
    const events = (await r.text()).split('\n\n').filter((e) => e !== '');
    assert.equal(events.at(-1), 'data: [DONE]');
    assert.equal(JSON.parse(events.at(-2)!.slice(6)).error.type, 'timeout_error');
    assert.equal(await metric(server, 'kivi_kv_bytes_used'), 0);
  });
});
