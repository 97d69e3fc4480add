/**
 * The WebGPU back end's page tables (kernels/webgpu/pagetables.ts) and the page runs that caches give
 * a back end taking them (kernels/plan.ts): host logic only, no GPU. A decode step sends only the pages
 * added since the last step; a list that outgrows its region is sent again whole into a bigger one; a
 * reset list's region is reused; a plan over a long cache has a few segments, not one per page.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { residualPage } from '../src/cache/kivi.js';
import { createCache, parseKvSpec } from '../src/cache/spec.js';
import { endStep } from '../src/cache/types.js';
import { SEG_RUN, TASK_K0, TASK_KN } from '../src/kernels/layout.js';
import { PageList, StepPlan } from '../src/kernels/plan.js';
import { TsBackend } from '../src/kernels/ts/backend.js';
import { PageTables } from '../src/kernels/webgpu/pagetables.js';

/** A table space on the host: what flush() wrote where. */
function space(t: PageTables): { words: Map<number, number>; sent: () => number } {
  const words = new Map<number, number>();
  let n = 0;
  return {
    words,
    sent: () => {
      const before = n;
      t.flush((at, data) => {
        for (let i = 0; i < data.length; i++) words.set(at + i, data[i]!);
        n += data.length;
      });
      return n - before;
    },
  };
}

test('page tables: new pages only, a bigger region when outgrown, a reset region reused', () => {
  const t = new PageTables();
  const s = space(t);
  const a = new PageList();
  const b = new PageList();
  for (let i = 0; i < 10; i++) a.pages.push(1000 + i);
  const at = t.offset(a);
  assert.equal(s.sent(), 10);
  a.pages.push(2000);
  assert.equal(t.offset(a), at, 'same region while it has room');
  assert.equal(s.sent(), 1, 'only the added page is sent');
  assert.equal(t.offset(a), at);
  assert.equal(s.sent(), 0, 'nothing when nothing was added');
  // Outgrow the first region (64 pages): a region of 128, every page sent again.
  while (a.pages.length < 65) a.pages.push(3000 + a.pages.length);
  const at2 = t.offset(a);
  assert.notEqual(at2, at);
  assert.equal(s.sent(), 65);
  for (let i = 0; i < 65; i++) assert.equal(s.words.get(at2 + i), a.pages[i]);
  // b takes the freed region of 64; a reset releases a's, which the next list of that size reuses.
  b.pages.push(7);
  assert.equal(t.offset(b), at);
  assert.equal(s.sent(), 1);
  assert.equal(t.lists, 2);
  a.pages.length = 0;
  a.reset();
  assert.equal(t.lists, 1);
  const c = new PageList();
  for (let i = 0; i < 100; i++) c.pages.push(i + 1);
  assert.equal(t.offset(c), at2, "the reset list's region");
  assert.equal(s.sent(), 100);
  // A reset list starts over in a region of its own.
  a.pages.push(42);
  const at3 = t.offset(a);
  assert.notEqual(at3, at2);
  assert.equal(s.sent(), 1);
  assert.equal(s.words.get(at3), 42);
});

test('page runs: a long KIVI or dense cache plans a decode step in a few segments; runs need a back end that takes them', async () => {
  const pool = new TsBackend().createPagePool({ numLayers: 1, numHeads: 4, numKvHeads: 2, headDim: 64 });
  for (const spec of ['kivi2', 'fp16']) {
    const cache = createCache(parseKvSpec(spec), pool);
    const fill = new StepPlan('jobs');
    for (let t = 0; t < 8192; t += 1024) {
      fill.clear();
      fill.beginSubstep();
      cache.plan(fill, 0, 1024);
      fill.validate();
      endStep(fill, pool);
    }
    const counts: number[] = [];
    for (const runs of [false, true]) {
      const plan = new StepPlan();
      plan.pageRuns = runs;
      plan.beginSubstep();
      cache.plan(plan, 0, 1);
      plan.validate();
      let tokens = 0;
      const t = plan.tasks;
      for (let s = t[TASK_K0]!, e = s + t[TASK_KN]!; s < e; s++) tokens += plan.segment(s).n;
      assert.equal(tokens, 8193, `${spec}: every key once (runs ${runs})`);
      assert.equal(plan.segment(t[TASK_K0]!).kind & SEG_RUN ? 1 : 0, runs ? 1 : 0);
      counts.push(plan.nSegs);
      endStep(plan, pool);
      cache.free();
      if (!runs) {
        // Same state again for the run plan: refill.
        for (let k = 0; k < 8192; k += 1024) {
          fill.clear();
          fill.beginSubstep();
          cache.plan(fill, 0, 1024);
          fill.validate();
          endStep(fill, pool);
        }
      }
    }
    // With runs the count no longer grows with the cache: the quantized parts are one run each, and what
    // is left is the residual's pages (a KIVI residual lists its pages one by one: at most R / P + 1 each
    // for keys and values, pages of P = residualPage(R) slots) and the step's rows.
    const most = spec === 'fp16' ? 20 : 2 * (128 / residualPage(128) + 1) + 4;
    assert.ok(counts[0]! > 100 && counts[1]! <= most, `${spec}: ${counts[0]} segments per page, ${counts[1]} with runs (at most ${most})`);
  }
  const plan = new StepPlan();
  plan.beginSubstep();
  plan.task(0, 1);
  assert.throws(() => plan.keyRun(3, new PageList(), 0, 1, 1, 16), /without pageRuns/);
});
