/**
 * `bench prefix` on a small workload (1 replica; tests/server-prefix-redis.test.ts covers shared Redis):
 * every prompt token is either prefilled or reused, the configuration without a cache reuses nothing,
 * the one with a cache reuses the shared system prompt; cache-file bytes per token are the payload's.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { PrefixBenchReport } from '../src/studies/bench/prefix.js';
import { MODEL, runCli } from './bench-helpers.js';
import { WIKITEXT } from './helpers.js';

test("bench prefix --replicas 1: prefill + reused = prompt tokens; the cache reuses the system prompt's blocks; bytes per cached token", async () => {
  const r = await runCli([
    'bench',
    'prefix',
    '--model',
    MODEL,
    '--text',
    WIKITEXT,
    '--system',
    '140',
    '--conversations',
    '2',
    '--turns',
    '2',
    '--user',
    '12',
    '--gen',
    '4',
    '--block',
    '64',
    '--replicas',
    '1',
    '--json',
  ]);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout) as PrefixBenchReport;
  assert.deepEqual(
    j.configs.map((c) => [c.name, c.replicas, c.store]),
    [
      ['1 replica, no prefix cache', 1, 'none'],
      ['1 replica, in-process store', 1, 'in-process'],
    ],
  );
  for (const c of j.configs) {
    assert.equal(c.requests, 4);
    assert.equal(c.prefill_tokens + c.reused_tokens, c.prompt_tokens, c.name);
    assert.ok(c.ttft_p50 > 0 && c.ttft_p95 >= c.ttft_p50);
  }
  const [none, cached] = j.configs as [PrefixBenchReport['configs'][0], PrefixBenchReport['configs'][0]];
  assert.deepEqual([none.reused_tokens, none.hits, none.bytes_stored], [0, 0, 0]);
  // Every request has two whole blocks (128 tokens) before its last token. The two chats' first turns run
  // at once and may both miss; second turns find at least the system prompt's blocks.
  assert.equal(cached.hits + cached.misses, 4);
  assert.ok(cached.hits >= 2, `${cached.hits} hits`);
  assert.ok(cached.reused_tokens >= 2 * 128);
  // Two 64-token blocks of the system prompt: fp16 files are 128 tokens × 8 layers × 2 kv heads × 128 × (K, V) × 2 bytes plus a header.
  const fp16 = j.bytes_per_token.find((b) => b.kv === 'fp16')!;
  assert.equal(fp16.tokens, 128);
  const payload = 128 * 8 * 2 * 128 * 2 * 2;
  assert.ok(fp16.file_bytes > payload && fp16.file_bytes < payload + 4096, `${fp16.file_bytes}`);
  assert.ok(j.bytes_per_token.find((b) => b.kv === 'kivi2')!.file_bytes <= fp16.file_bytes);
});

test('bench prefix: a workload past the context, or a store URL that is not Redis, is one clear line', async () => {
  const a = await runCli(['bench', 'prefix', '--model', MODEL, '--text', WIKITEXT, '--system', '1900', '--turns', '6']);
  assert.equal(a.code, 1);
  assert.equal(a.stderr.trim(), "kivi: --system 1900 + 6 turns × (--user 40 + --gen 32) exceed the model's context of 2048");
  const b = await runCli(['bench', 'prefix', '--model', MODEL, '--text', WIKITEXT, '--prefix-store', 'localhost:6379']);
  assert.equal(b.code, 1);
  assert.match(b.stderr.trim(), /^kivi: --prefix-store must be a redis:\/\/ or rediss:\/\/ URL, got "localhost:6379"$/);
});
