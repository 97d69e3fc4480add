/**
 * Replicas sharing a prefix cache through a real Redis (Debian's redis-server on a free loopback port,
 * no persistence; .ci/run installs it; under CI=true a missing redis-server fails rather than skips).
 * Three `kivi serve` child processes: A computes a ~1900-token prefix cold; B reuses it from Redis (lower
 * time to first token, reuse in its /metrics, greedy output equal to the same request prefilled cold in
 * the same chunks); a garbage entry is dropped; a stopped (slow) Redis and a killed one cost cold
 * prefills and counted errors, never a failed request; C starts while its Redis is down and uses it once
 * it comes up.
 */

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { Redis } from 'ioredis';
import type { KiviModel } from '../src/api.js';
import { tokenHash } from '../src/cache/file.js';
import { parseMetrics } from '../src/server/metrics.js';
import { freePort, type RedisServer, type Replica, startRedis, startReplica } from '../src/studies/bench/replicas.js';
import { textWindows } from '../src/studies/eval/windows.js';
import { bundledModel, MODEL_DIR, WIKITEXT } from './helpers.js';
import { MODEL_NAME } from './server-helpers.js';

const KV = 'kivi2';
const B = 256;
const SHARED = 1900;
const GEN = 8;

const hasRedis = spawnSync('redis-server', ['--version']).status === 0;
function noRedis(t: { skip(message: string): void }): boolean {
  if (hasRedis) return false;
  const why = 'no redis-server on PATH (apt-get install redis-server)';
  if (process.env.CI === 'true') assert.fail(`${why}; under CI=true the Redis tests must run (.ci/run installs it)`);
  t.skip(why);
  return true;
}

async function metricsOf(r: Replica): Promise<Map<string, number>> {
  return parseMetrics(await (await fetch(`${r.url}/metrics`)).text());
}

async function waitFor(cond: () => Promise<boolean>, what: string, ms = 30_000): Promise<void> {
  const t0 = Date.now();
  while (!(await cond())) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function complete(r: Replica, prompt: number[]): Promise<{ text: string; cached: number }> {
  const res = await fetch(`${r.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL_NAME, prompt, max_tokens: GEN, temperature: 0 }),
  });
  // biome-ignore lint/suspicious/noExplicitAny: the answer's fields are read as the server sent them
  const j = (await res.json()) as any;
  assert.equal(res.status, 200, JSON.stringify(j));
  return { text: j.choices[0].text, cached: j.usage.prompt_tokens_details.cached_tokens };
}

describe('replicas sharing a prefix cache through Redis', { concurrency: false }, () => {
  let redis: RedisServer | undefined;
  let redis2: RedisServer | undefined;
  let port2 = 0;
  let A: Replica | undefined;
  let B2: Replica | undefined;
  let C: Replica | undefined;
  let m: KiviModel;
  let q1: number[];
  let q2: number[];
  let q3: number[];
  let short: number[];
  let ref2: string;
  let refShort: string;
  const stopAll = () => {
    for (const p of [A, B2, C, redis, redis2]) if (p && p.child.exitCode === null) p.child.kill('SIGKILL');
  };
  process.on('exit', stopAll);

  before(async () => {
    if (!hasRedis) return;
    m = await bundledModel();
    // Two conversations over one 1900-token shared prefix, and a third unrelated prompt.
    const w = textWindows(m.tokenizer, fs.readFileSync(WIKITEXT, 'utf8'), { window: 1940, context: 2048, maxWindows: 2 });
    q1 = w[0]!.slice(0, SHARED + 20);
    q2 = [...w[0]!.slice(0, SHARED), ...w[0]!.slice(SHARED + 20, SHARED + 40)];
    q3 = w[1]!.slice(0, 900);
    // A short prompt in the same conversation: one whole block before its last token.
    short = w[0]!.slice(0, 300);
    redis = await startRedis();
    port2 = await freePort();
    const args = (url: string) => ['--model', MODEL_DIR, '--kv', KV, '--prefix-store', url, '--prefix-block', String(B), '--prefix-timeout', '300'];
    // C starts while nothing listens on its Redis port.
    [A, B2, C] = await Promise.all([startReplica(args(redis.url)), startReplica(args(redis.url)), startReplica(args(`redis://127.0.0.1:${port2}`))]);
    // The same request prefilled cold in the same chunks, in this process.
    ref2 = (await m.complete(q2, { kv: KV, prefillChunk: B, maxTokens: GEN })).text;
    refShort = (await m.complete(short, { kv: KV, prefillChunk: B, maxTokens: GEN })).text;
  });
  after(async () => {
    await Promise.all([A, B2, C, redis, redis2].map((p) => p?.stop()));
  });

  test("a second replica reuses the first one's prefix: lower time to first token, reuse in /metrics, the same greedy output", async (t) => {
    if (noRedis(t)) return;
    const a = await complete(A!, q1);
    assert.equal(a.cached, 0);
    // Blocks of 256 … 1792 tokens, written after the request's chunks.
    await waitFor(async () => (await metricsOf(A!)).get('kivi_prefix_entries_stored_total') === 7, 'A to store 7 blocks');
    const b = await complete(B2!, q2);
    assert.equal(b.cached, 1792);
    assert.equal(b.text, ref2, 'restored from Redis and continued = prefilled cold in the same chunks');
    const [ma, mb] = [await metricsOf(A!), await metricsOf(B2!)];
    assert.equal(mb.get('kivi_prefix_hits_total'), 1);
    assert.equal(mb.get('kivi_prefix_tokens_reused_total'), 1792);
    assert.equal(mb.get('kivi_prefill_tokens_total'), q2.length - 1792);
    assert.equal(ma.get('kivi_prefill_tokens_total'), q1.length);
    assert.ok(mb.get('kivi_prefix_bytes_fetched_total')! > 0);
    // One request each: the histograms' sums are those requests' times to first token.
    const cold = ma.get('kivi_time_to_first_token_seconds_sum')!;
    const warm = mb.get('kivi_time_to_first_token_seconds_sum')!;
    assert.ok(warm < cold, `time to first token: reused ${warm} s, cold ${cold} s`);
    // A serves the same request from the same store: the same text.
    assert.equal((await complete(A!, q2)).text, ref2);
  });

  test('garbage under a key is detected, deleted, counted; the request prefills cold and stores the block again', async (t) => {
    if (noRedis(t)) return;
    const client = new Redis(redis!.url, { protocol: 2, lazyConnect: true });
    await client.connect();
    try {
      const hash = await tokenHash(short, B);
      const keys = await client.keys(`kivi:prefix:*${hash}`);
      assert.equal(keys.length, 1);
      const good = await client.getBuffer(keys[0]!);
      await client.set(keys[0]!, Buffer.from('garbage, not a cache file'));
      const before = (await metricsOf(B2!)).get('kivi_prefix_corrupt_dropped_total')!;
      const b = await complete(B2!, short);
      assert.equal(b.text, refShort);
      assert.equal(b.cached, 0);
      assert.equal((await metricsOf(B2!)).get('kivi_prefix_corrupt_dropped_total'), before + 1);
      await waitFor(async () => (await client.getBuffer(keys[0]!))?.equals(good!) ?? false, 'the block stored again');
    } finally {
      client.disconnect();
    }
  });

  test('a stopped Redis: requests succeed within the store timeout, cold, and the timeouts are counted', async (t) => {
    if (noRedis(t)) return;
    redis!.pause();
    try {
      const t0 = performance.now();
      const a = await complete(A!, short);
      assert.equal(a.text, refShort);
      assert.equal(a.cached, 0);
      const x = await metricsOf(A!);
      assert.ok((x.get('kivi_prefix_store_errors_total{op="lookup",reason="timeout"}') ?? 0) >= 1, 'lookup timeout counted');
      assert.ok(performance.now() - t0 < 60_000);
    } finally {
      redis!.resume();
    }
  });

  test('Redis killed in the middle of a request: it and the next ones succeed, cold; errors counted; store down in /metrics', async (t) => {
    if (noRedis(t)) return;
    const m0 = (await metricsOf(A!)).get('kivi_prefill_tokens_total')!;
    const pending = complete(A!, q3);
    // Killed once A has prefilled a chunk of q3 (its block writes are under way or next).
    await waitFor(async () => (await metricsOf(A!)).get('kivi_prefill_tokens_total')! > m0, 'the first chunk of q3');
    const logged = A!.stderr().length;
    await redis!.kill();
    assert.equal((await pending).cached, 0);
    const b = await complete(B2!, short);
    assert.equal(b.text, refShort);
    assert.equal(b.cached, 0);
    for (const r of [A!, B2!]) {
      const x = await metricsOf(r);
      assert.equal(x.get('kivi_prefix_store_up'), 0);
      const errors = [...x].filter(([k]) => k.startsWith('kivi_prefix_store_errors_total')).reduce((s, [, v]) => s + v, 0);
      assert.ok(errors >= 1, 'store errors counted');
    }
    assert.equal(
      A!
        .stderr()
        .slice(logged)
        .match(/prefix store redis:\/\/127\.0\.0\.1:\d+: .*prefilling cold/g)?.length,
      1,
      'one log line',
    );
  });

  test('a replica started while its Redis is down serves cold, logs one line, and uses Redis once it is up', async (t) => {
    if (noRedis(t)) return;
    const c = await complete(C!, short);
    assert.equal(c.cached, 0);
    let x = await metricsOf(C!);
    assert.equal(x.get('kivi_prefix_store_up'), 0);
    assert.ok((x.get('kivi_prefix_store_errors_total{op="lookup",reason="unavailable"}') ?? 0) >= 1);
    assert.equal(C!.stderr().match(/prefix store redis:\/\/127\.0\.0\.1:\d+: .*prefilling cold/g)?.length, 1, 'one log line while down');
    redis2 = await startRedis({ port: port2 });
    await waitFor(async () => (await metricsOf(C!)).get('kivi_prefix_store_up') === 1, 'C to reconnect');
    assert.match(C!.stderr(), /connected/);
    await complete(C!, short);
    await waitFor(async () => (await metricsOf(C!)).get('kivi_prefix_entries_stored_total') === 1, 'C to store its block');
    const again = await complete(C!, short);
    assert.equal(again.cached, B);
    assert.equal(again.text, refShort);
    x = await metricsOf(C!);
    assert.equal(x.get('kivi_prefix_hits_total'), 1);
  });
});
