/**
 * The server's prefix cache with the in-process store: blocks stored after each whole block, the longest
 * stored prefix restored, output bit for bit that of the same chunked prefill without the store,
 * corrupt or wrongly keyed entries dropped, metrics; the LRU store; a hanging or failing store costs a
 * bounded wait and a cold prefill, nothing more.
 */

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { KiviModel } from '../src/api.js';
import { tokenHash } from '../src/cache/file.js';
import { parseKvSpec } from '../src/cache/spec.js';
import type { KiviServer } from '../src/server/app.js';
import { PrefixCache } from '../src/server/prefix-cache.js';
import { MemoryStore, type PrefixStore } from '../src/server/prefix-store.js';
import { bundledModel, golden } from './helpers.js';
import { MODEL_NAME, metrics, postJson, startServer } from './server-helpers.js';

const KV = 'kivi2';
const B = 64;
const W = golden().windows[0]!;
const TURN1 = W.slice(0, 300);
const TURN2 = W.slice(0, 350);

test('the in-process store: least recently used out first, by bytes; an entry larger than the store is not kept', async () => {
  const s = new MemoryStore(100);
  const v = (n: number, x: number) => new Uint8Array(n).fill(x);
  await s.set('a', v(40, 1));
  await s.set('b', v(40, 2));
  assert.deepEqual(await s.get('a'), v(40, 1)); // a is now the most recently used
  await s.set('c', v(40, 3));
  assert.deepEqual(await s.has(['a', 'b', 'c']), [true, false, true]);
  assert.equal(s.bytes, 80);
  assert.equal(s.evictions, 1);
  await s.set('a', v(10, 4)); // replacing counts the new size only
  assert.equal(s.bytes, 50);
  await s.set('big', v(101, 5));
  assert.deepEqual(await s.has(['big', 'a', 'c']), [false, true, true]);
  await s.delete('a');
  assert.equal(s.bytes, 40);
  assert.equal(await s.get('a'), null);
});

describe('kivi serve --prefix-cache: the in-process prefix cache', () => {
  let m: KiviModel;
  let server: KiviServer;
  const complete = async (prompt: number[]) => {
    const r = await postJson(server, '/v1/completions', { model: MODEL_NAME, prompt, max_tokens: 12, temperature: 0 });
    assert.equal(r.status, 200, JSON.stringify(r.json));
    return r.json;
  };
  before(async () => {
    m = await bundledModel();
    server = await startServer({ kv: KV, prefixCacheBytes: 64 * 1024 ** 2, prefixBlock: B, budgetBytes: 256 * 1024 ** 2 });
  });
  after(() => server.close());

  test("a second turn restores the first turn's blocks and prefills only the rest; output equals the chunked prefill without a store", async () => {
    const ref1 = await m.complete(TURN1, { kv: KV, prefillChunk: B, maxTokens: 12 });
    const ref2 = await m.complete(TURN2, { kv: KV, prefillChunk: B, maxTokens: 12 });
    // The library's runs share the engine: count the server's prefill tokens from here.
    const prefilled0 = (await metrics(server)).get('kivi_prefill_tokens_total')!;
    const r1 = await complete(TURN1);
    assert.equal(r1.choices[0].text, ref1.text);
    assert.deepEqual(r1.usage.prompt_tokens_details, { cached_tokens: 0 });
    let x = await metrics(server);
    assert.equal(x.get('kivi_prefix_misses_total'), 1);
    assert.equal(x.get('kivi_prefix_hits_total'), 0);
    // Blocks at 64, 128, 192, 256 tokens (the writes finish off the request's path).
    for (let i = 0; i < 100 && (await metrics(server)).get('kivi_prefix_entries_stored_total') !== 4; i++) await new Promise((r) => setTimeout(r, 20));
    x = await metrics(server);
    assert.equal(x.get('kivi_prefix_entries_stored_total'), 4);
    assert.equal(x.get('kivi_prefix_tokens_stored_total'), 64 + 128 + 192 + 256);
    assert.equal(x.get('kivi_prefix_store_entries'), 4);
    assert.equal(x.get('kivi_prefix_store_bytes'), x.get('kivi_prefix_bytes_stored_total'));
    const r2 = await complete(TURN2);
    assert.equal(r2.choices[0].text, ref2.text);
    assert.deepEqual(r2.usage.prompt_tokens_details, { cached_tokens: 256 });
    x = await metrics(server);
    assert.equal(x.get('kivi_prefix_hits_total'), 1);
    assert.equal(x.get('kivi_prefix_tokens_reused_total'), 256);
    assert.equal(x.get('kivi_prefill_tokens_total')! - prefilled0, 300 + (350 - 256));
    assert.ok(x.get('kivi_prefix_bytes_fetched_total')! > 0);
    assert.equal(x.get('kivi_prefix_fetch_seconds_count'), 1);
    assert.equal(x.get('kivi_kv_bytes_allocated'), 0);
  });

  test("a corrupt entry, and a valid file under another prefix's key, are dropped and counted; the request prefills cold and stores the block again", async () => {
    const prefix = server.prefix!;
    const store = prefix.store;
    const { keys } = prefix.blocks(TURN2);
    const ref = await m.complete(TURN2, { kv: KV, prefillChunk: B, maxTokens: 12 });
    // The longest usable block of TURN2 (350 tokens) is the fifth, stored by the previous test.
    const good = (await store.get(keys[4]!))!;
    const flipped = good.slice();
    flipped[flipped.length - 7]! ^= 0x10;
    await store.set(keys[4]!, flipped);
    let r = await complete(TURN2);
    assert.equal(r.choices[0].text, ref.text);
    assert.deepEqual(r.usage.prompt_tokens_details, { cached_tokens: 0 });
    let x = await metrics(server);
    assert.equal(x.get('kivi_prefix_corrupt_dropped_total'), 1);
    // The same request stored the block again, correctly.
    for (let i = 0; i < 100 && !(await store.has([keys[4]!]))[0]; i++) await new Promise((res) => setTimeout(res, 20));
    assert.deepEqual(await store.get(keys[4]!), good);
    // Another block's valid file (256 tokens, other token hash) under the fifth block's key.
    await store.set(keys[4]!, (await store.get(keys[3]!))!);
    r = await complete(TURN2);
    assert.equal(r.choices[0].text, ref.text);
    x = await metrics(server);
    assert.equal(x.get('kivi_prefix_corrupt_dropped_total'), 2);
  });
});

/** A store whose every call hangs, or fails. */
function brokenStore(kind: 'hang' | 'fail'): PrefixStore & { calls: number } {
  const call = <T>(): Promise<T> => {
    store.calls++;
    return kind === 'hang' ? new Promise<T>(() => {}) : Promise.reject(new Error('connection reset'));
  };
  const store = {
    description: kind,
    up: true,
    calls: 0,
    has: () => call<boolean[]>(),
    get: () => call<Uint8Array | null>(),
    set: () => call<void>(),
    delete: () => call<void>(),
    close: async () => {},
  };
  return store;
}

test('a store that hangs or fails: lookups end within the timeout as misses, writes are bounded, errors are counted', async () => {
  const m = await bundledModel();
  for (const kind of ['hang', 'fail'] as const) {
    const store = brokenStore(kind);
    const pc = new PrefixCache({
      store,
      block: B,
      grids: [B],
      model: m.fingerprint,
      spec: parseKvSpec(KV),
      shape: m.dims,
      backend: m.backend.name,
      timeoutMs: 50,
      maxPendingBytes: 1,
    });
    const t0 = performance.now();
    const found = await pc.lookup(TURN1);
    assert.ok(performance.now() - t0 < 1000, `${kind}: lookup took ${performance.now() - t0} ms`);
    assert.equal(found.image, null);
    assert.equal(found.keys.length, 4);
    assert.equal(pc.misses, 1);
    assert.equal(pc.errors.get({ op: 'lookup', reason: kind === 'hang' ? 'timeout' : 'error' }), 1);
    // The request runs cold; its blocks' writes are over the pending bound (1 byte) and skipped.
    const r = await m.engine.add(TURN1, m.newCache(KV), { maxTokens: 2 }, { grids: [B], afterChunk: pc.afterChunk(found) });
    for await (const _ of r) {
      /* drain */
    }
    assert.equal(pc.writesSkipped, 4);
    assert.equal(pc.pending, 0);
    // Hashes in the keys are the token hashes cache files carry.
    assert.equal(found.hashes[1], await tokenHash(TURN1, 2 * B));
  }
});
