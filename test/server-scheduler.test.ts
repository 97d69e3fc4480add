/** KV-budget admission on the real engine: exact reservations, the bounded queue, cancellation, shutdown. */

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { KiviModel } from '../src/api.js';
import { cacheBytes, peakAllocatedBytes, peakCacheBytes } from '../src/cache/budget.js';
import { parseKvSpec } from '../src/cache/spec.js';
import type { Sequence } from '../src/engine/batch.js';
import { Scheduler } from '../src/server/scheduler.js';
import { KiviError } from '../src/util/errors.js';
import { bundledModel } from './helpers.js';

const KV = 'kivi:k=2,v=2,g=32,r=32';

function scheduler(m: KiviModel, kv: string, budgetBytes: number, maxQueue: number): Scheduler {
  return new Scheduler(m.engine, { spec: parseKvSpec(kv), pool: m.transformer.pool, budgetBytes, maxQueue, newCache: () => m.newCache(kv) });
}

async function finish(seq: Sequence) {
  const it = seq.stream();
  for (;;) {
    const r = await it.next();
    if (r.done) return r.value;
  }
}

const isStatus = (status: number) => (e: unknown) => e instanceof KiviError && e.status === status;

describe('scheduler: KV-budget admission', () => {
  test('reservations are exact page peaks, and the pages allocated never exceed the budget', async () => {
    const m = await bundledModel();
    const pool = m.transformer.pool;
    for (const kv of [KV, 'fp16']) {
      // Prompt/length pairs that cross KIVI key flushes (every 32 tokens) and peak on a flush tooth.
      const reqs: [number, number][] = [
        [20, 30],
        [33, 15],
        [5, 40],
        [63, 3],
      ];
      const spec = parseKvSpec(kv);
      const need = reqs.map(([p, n]) => peakAllocatedBytes(spec, pool, p + n - 1, p));
      const ids = (p: number, i: number) => Array.from({ length: p }, (_, j) => 1 + ((j * 37 + i * 11) % 8000));
      // Alone, each request's pages peak at exactly its reservation (pages freed within a step count until it ends).
      const big = scheduler(m, kv, 1 << 30, 8);
      for (const [i, [p, n]] of reqs.entries()) {
        assert.equal(big.reservation(p, n), need[i]);
        assert.equal(pool.allocatedBytes, 0);
        pool.resetPeak();
        await finish(await big.submit(ids(p, i), { maxTokens: n, ignoreEos: true }));
        assert.equal(pool.peakBytes, need[i], `${kv} request ${i}: page peak`);
      }
      big.close();
      // Room for the two smallest together, never three; submitted smallest first, so two run at once and
      // the rest wait in the queue.
      const order = need.map((_, i) => i).sort((a, b) => need[a]! - need[b]!);
      const budget = need[order[0]!]! + need[order[1]!]!;
      assert.ok(need[order[3]!]! <= budget, 'every request fits alone');
      const s = scheduler(m, kv, budget, 8);
      pool.resetPeak();
      const unhook = m.engine.onStep(() => assert.ok(s.reservedBytes <= budget && s.allocatedBytes() <= budget));
      const seqs = await Promise.all(order.map((i) => s.submit(ids(reqs[i]![0], i), { maxTokens: reqs[i]![1], ignoreEos: true })));
      const results = await Promise.all(seqs.map(finish));
      unhook();
      s.close();
      results.forEach((r, j) => {
        assert.equal(r.ids.length, reqs[order[j]!]![1]);
      });
      assert.ok(pool.peakBytes <= budget, `${kv}: pages peaked at ${pool.peakBytes} > ${budget}`);
      assert.equal(s.maxRunning, 2);
      assert.equal(s.usedBytes(), 0);
      assert.equal(s.reservedBytes, 0);
      assert.equal(pool.allocatedBytes, 0);
    }
    // KIVI's cached data peaks on a tooth (31 tokens, just before a key flush), not at its last length.
    const spec = parseKvSpec(KV);
    assert.equal(peakCacheBytes(spec, m.dims, 49, 20), cacheBytes(spec, m.dims, 31));
    assert.ok(cacheBytes(spec, m.dims, 31) > cacheBytes(spec, m.dims, 49));
  });

  test('FIFO queue: full budget → wait, full queue → 429, an ending sequence admits the next', async () => {
    const m = await bundledModel();
    const one = scheduler(m, KV, 1, 0).reservation(4, 6);
    const s = scheduler(m, KV, 2 * one, 1);
    const ids = (k: number) => [1, 100 + k, 200 + k, 300 + k];
    const a = await s.submit(ids(1), { maxTokens: 6, ignoreEos: true });
    const b = await s.submit(ids(2), { maxTokens: 6, ignoreEos: true });
    assert.equal(s.runningCount, 2);
    assert.equal(s.reservedBytes, 2 * one);
    let cAdmitted = false;
    const c = s.submit(ids(3), { maxTokens: 6, ignoreEos: true }).then((q) => {
      cAdmitted = true;
      // Admitted only once a or b has ended.
      assert.ok(a.done || b.done);
      return q;
    });
    assert.equal(s.queuedCount, 1);
    await assert.rejects(s.submit(ids(4), { maxTokens: 6 }), isStatus(429));
    assert.equal(s.rejected, 1);
    assert.equal(cAdmitted, false);
    const [ra, rb, rc] = await Promise.all([finish(a), finish(b), c.then(finish)]);
    // Batching and queueing change nothing: each equals the same request alone.
    for (const [r, k] of [
      [ra, 1],
      [rb, 2],
      [rc, 3],
    ] as const) {
      const solo = await m.complete(ids(k), { maxTokens: 6, ignoreEos: true, kv: KV });
      assert.deepEqual(r.ids, solo.ids);
    }
    assert.equal(s.maxRunning, 2);
    assert.equal(s.runningCount + s.queuedCount + s.reservedBytes + s.usedBytes(), 0);
    s.close();
  });

  test('a request that could never fit the budget is refused at once; invalid ones reserve nothing', async () => {
    const m = await bundledModel();
    const s = scheduler(m, KV, 1024 * 1024, 4);
    await assert.rejects(
      s.submit([1, 2, 3], { maxTokens: 1500 }),
      (e: unknown) => isStatus(400)(e) && /more than the server's whole budget/.test((e as Error).message),
    );
    await assert.rejects(s.submit([1, 2, 3], { maxTokens: 2047 }), KiviError);
    assert.equal(s.reservedBytes, 0);
    assert.equal(s.runningCount, 0);
    s.close();
  });

  test('abort: a waiting request leaves the queue; a running one frees its cache and lets the next in', async () => {
    const m = await bundledModel();
    const one = scheduler(m, KV, 1, 0).reservation(4, 200);
    const s = scheduler(m, KV, one, 4);
    const runAc = new AbortController();
    const a = await s.submit([1, 5, 6, 7], { maxTokens: 200, ignoreEos: true, signal: runAc.signal });
    const waitAc = new AbortController();
    const queued = s.submit([1, 8, 9, 10], { maxTokens: 200, signal: waitAc.signal });
    const next = s.submit([1, 11, 12, 13], { maxTokens: 200, ignoreEos: true });
    assert.equal(s.queuedCount, 2);
    waitAc.abort(new Error('gone'));
    await assert.rejects(queued, /gone/);
    assert.equal(s.queuedCount, 1);
    // Let a generate a few tokens, then cancel it: its bytes go at once and `next` starts.
    await new Promise<void>((resolve) => {
      const unhook = m.engine.onStep(() => {
        if (a.ids.length >= 3) {
          unhook();
          resolve();
        }
      });
    });
    assert.ok(s.usedBytes() > 0);
    runAc.abort();
    assert.equal(a.finishReason, 'abort');
    assert.equal(a.kvBytes(), 0);
    const b = await next;
    assert.equal(s.runningCount, 1);
    assert.equal(s.queuedCount, 0);
    b.cancel();
    assert.equal(s.usedBytes(), 0);
    assert.equal(s.reservedBytes, 0);
    s.close();
  });

  test('close(): waiting requests get 503, running ones are cancelled and their caches freed', async () => {
    const m = await bundledModel();
    const one = scheduler(m, KV, 1, 0).reservation(3, 100);
    const s = scheduler(m, KV, one, 4);
    const a = await s.submit([1, 2, 3], { maxTokens: 100, ignoreEos: true });
    const waiting = s.submit([1, 4, 5], { maxTokens: 100 });
    s.close();
    await assert.rejects(waiting, isStatus(503));
    assert.equal(a.finishReason, 'abort');
    assert.equal(s.usedBytes() + s.reservedBytes + s.runningCount + s.queuedCount, 0);
    await assert.rejects(s.submit([1, 2], { maxTokens: 1 }), isStatus(503));
  });
});
