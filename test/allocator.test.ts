/** The WASM heap allocator: alignment, no overlap, reuse of freed blocks, coalescing, heap top returned. */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { ALIGN, Allocator } from '../src/kernels/wasm/allocator.js';

function heap(): { a: Allocator; grown: number[] } {
  const grown: number[] = [];
  const a = new Allocator(1000, (end) => grown.push(end));
  return { a, grown };
}

test('blocks are aligned, disjoint, and the heap grows only past its top', () => {
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 20000 }), fc.nat()), { maxLength: 200 }), (ops) => {
      const { a, grown } = heap();
      const live = new Map<number, number>();
      for (const [isAlloc, size, pick] of ops) {
        if (isAlloc || live.size === 0) {
          const p = a.alloc(size);
          assert.equal(p % ALIGN, 0);
          assert.ok(p >= 1000);
          for (const [q, n] of live) assert.ok(p + size <= q || q + n <= p, `block ${p}+${size} overlaps ${q}+${n}`);
          live.set(p, Math.max(size, 1));
          assert.ok(grown.length === 0 || grown[grown.length - 1]! >= p + size);
        } else {
          const keys = [...live.keys()];
          const p = keys[pick % keys.length]!;
          a.free(p);
          live.delete(p);
        }
      }
      for (const p of live.keys()) a.free(p);
      const s = a.stats();
      assert.equal(s.used, 0);
      assert.equal(s.blocks, 0);
      assert.equal(s.free, 0, 'every free block coalesced back into the heap top');
      assert.equal(s.top, 1024);
    }),
    { numRuns: 300 },
  );
});

test('a freed block is reused before the heap grows, and neighbours coalesce', () => {
  const { a } = heap();
  const p1 = a.alloc(4096);
  const p2 = a.alloc(4096);
  const p3 = a.alloc(64);
  const top = a.stats().top;
  a.free(p1);
  a.free(p2);
  assert.equal(a.stats().free, 8192, 'p1 and p2 merged');
  const p4 = a.alloc(8000); // fits only in the merged block
  assert.equal(p4, p1);
  assert.equal(a.stats().top, top);
  const p5 = a.alloc(64); // the 192-byte remainder after p4
  assert.equal(p5, p1 + 8000);
  a.free(p3);
  a.free(p4);
  a.free(p5);
  assert.deepEqual(a.stats(), { used: 0, top: 1024, free: 0, blocks: 0 });
});

test('lastDirty marks what may hold old data: fresh memory above the high-water mark is clean', () => {
  const { a } = heap();
  const p1 = a.alloc(1000);
  assert.equal(a.lastDirty, 0);
  const p2 = a.alloc(500);
  assert.equal(a.lastDirty, 0);
  a.free(p2); // the top comes back down to p2
  const p3 = a.alloc(2000); // reuses p2's 512 dirty bytes, then fresh memory
  assert.equal(p3, p2);
  assert.equal(a.lastDirty, 512);
  a.free(p3);
  a.free(p1);
  const p4 = a.alloc(64);
  assert.equal(a.lastDirty, 64, 'below the high-water mark: dirty');
  a.free(p4);
});

test('double free and foreign pointers are errors', () => {
  const { a } = heap();
  const p = a.alloc(100);
  a.free(p);
  assert.throws(() => a.free(p), /not an allocated block/);
  assert.throws(() => a.free(12345), /not an allocated block/);
  assert.throws(() => a.alloc(-1), /bad allocation size/);
});
