/**
 * bench throughput --backend webgpu on SwiftShader (tiny random-weight model): what each spec admits under
 * the KV budget, the batches swept, the cache pages held at once and the generated tokens — never times.
 */

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { cacheBytes } from '../src/cache/budget.js';
import { parseKvSpec } from '../src/cache/spec.js';
import { CLI, expectCliError, MODEL_DIR } from './helpers.js';
import { reportMissing, SWIFTSHADER_ENV, tinyModel } from './webgpu-helpers.js';

test('bench throughput: --kv-budget belongs to webgpu, --random-weights to the GPU study', () => {
  const dir = tinyModel();
  expectCliError(['bench', 'throughput', '--model', dir, '--backend', 'webgpu', '--random-weights', '1'], /needs --kv-budget/);
  expectCliError(['bench', 'throughput', '--model', dir, '--backend', 'ts', '--budget', '64MiB', '--random-weights', '1'], /runs on --backend webgpu/);
  expectCliError(['bench', 'throughput', '--model', MODEL_DIR, '--backend', 'ts'], /needs --budget/);
});

if (!reportMissing('bench-throughput-gpu')) {
  test('bench throughput --backend webgpu: admitted = floor(budget / peak pages), batches swept, pages held = batch × per sequence', () => {
    const dir = tinyModel();
    const dims = { numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 32 };
    const args = [
      'bench',
      'throughput',
      '--backend',
      'webgpu',
      '--model',
      dir,
      '--random-weights',
      '3',
      '--kv-budget',
      '200KiB',
      '--prompt',
      '12',
      '--gen',
      '4',
      '--join',
      '64',
      '--kv',
      'fp16,kivi2',
      '--json',
    ];
    const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: SWIFTSHADER_ENV, timeout: 300_000 });
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout) as {
      kv_budget: number;
      weights_bytes: number;
      specs: { kv: string; bytes_per_sequence: number; admitted: number }[];
      points: {
        kv: string;
        batch: number;
        generated_tokens: number;
        peak_kv_bytes: number;
        peak_allocated_bytes: number;
        peak_buffer_bytes: number;
        tokens_per_second: number;
      }[];
    };
    assert.equal(j.kv_budget, 200 * 1024);
    for (const s of j.specs) assert.equal(s.admitted, Math.floor(j.kv_budget / s.bytes_per_sequence), s.kv);
    const fp16 = j.specs.find((s) => s.kv === 'fp16')!;
    // Pages hold at least the cache's exact bytes at its peak (prompt + generated tokens).
    for (const s of j.specs) assert.ok(s.bytes_per_sequence >= cacheBytes(parseKvSpec(s.kv), dims, 16), s.kv);
    for (const s of j.specs) {
      const want = new Set<number>([fp16.admitted, s.admitted]);
      for (let b = 1; b <= s.admitted; b *= 2) want.add(b);
      assert.deepEqual(
        j.points.filter((p) => p.kv === s.kv).map((p) => p.batch),
        [...want].sort((a, b) => a - b),
        s.kv,
      );
    }
    for (const p of j.points) {
      const per = j.specs.find((s) => s.kv === p.kv)!.bytes_per_sequence;
      assert.equal(p.generated_tokens, p.batch * 4);
      // Every sequence joins at the first step and ends at the same one: their peaks coincide.
      assert.equal(p.peak_kv_bytes, p.batch * per, `${p.kv} × ${p.batch}`);
      assert.ok(p.peak_allocated_bytes >= j.weights_bytes + p.peak_kv_bytes, 'weights and pages at least');
      assert.ok(p.peak_buffer_bytes >= p.peak_allocated_bytes - p.peak_kv_bytes, 'buffers hold what is allocated');
      assert.ok(p.tokens_per_second > 0);
    }
  });
}
