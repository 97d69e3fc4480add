/**
 * bench generate --gpu-profile on SwiftShader (tiny random-weight model): the dispatches each kernel makes
 * per decode step, and that the kernel times add up within the GPU span they were stamped in — never
 * what the times are.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import type { GenerateBenchResult } from '../src/studies/bench/generate.js';
import type { GpuProfileResult } from '../src/studies/bench/gpu-profile.js';
import { CLI, expectCliError, MODEL_DIR } from './helpers.js';
import { reportMissing, SWIFTSHADER_ENV, tinyModel } from './webgpu-helpers.js';

test('bench generate --gpu-profile: only on webgpu', () => {
  const base = ['bench', 'generate', '--model', MODEL_DIR, '--prompt', '8', '--gen', '2', '--repeats', '1', '--kv', 'fp16'];
  expectCliError([...base, '--backend', 'ts', '--gpu-profile', '1'], /--gpu-profile .*needs --backend webgpu/);
  expectCliError([...base, '--backend', 'ts', '--gpu-profile', '0'], /--gpu-profile/);
  expectCliError([...base, '--backend', 'ts', '--fill', '16', '--gpu-profile', '1'], /--gpu-profile .*needs --backend webgpu/);
});

if (!reportMissing('bench-gpu-profile')) {
  test('bench generate --gpu-profile: no kernel compiled in a timed round; per step one attention and one cache-job dispatch a layer, one embed and one argmax; times within the span', () => {
    const layers = 2;
    const steps = 3;
    const args = ['bench', 'generate', '--backend', 'webgpu', '--model', tinyModel(), '--random-weights', '3', '--weights', 'native'];
    args.push('--prompt', '40', '--gen', String(steps), '--repeats', '1', '--kv', 'fp16,kivi:k=2,v=2,g=16,r=16', '--gpu-profile', '1,3', '--json');
    const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: SWIFTSHADER_ENV, timeout: 300_000 });
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout) as { results: GenerateBenchResult[]; gpu_profile: GpuProfileResult[] };
    // The untimed round compiled every kernel the timed one ran.
    for (const x of j.results) assert.deepEqual([x.kv, x.compiled_while_timed?.kernels], [x.kv, 0]);
    assert.deepEqual(
      j.gpu_profile.map((p) => [p.kv, p.batch, p.steps]),
      [
        ['fp16', 1, steps],
        ['fp16', 3, steps],
        ['kivi:k=2,v=2,g=16,r=16', 1, steps],
        ['kivi:k=2,v=2,g=16,r=16', 3, steps],
      ],
    );
    for (const p of j.gpu_profile) {
      const at = `${p.kv} × ${p.batch}`;
      const count = (prefix: string) => p.kernels.filter((k) => k.kernel.startsWith(prefix)).reduce((a, k) => a + k.dispatches_per_step, 0);
      // The batch's attention is one dispatch a layer (no merge at 40 tokens), its cache jobs one.
      assert.equal(count('attend'), layers, at);
      assert.equal(count('jobs'), layers, at);
      assert.equal(count('embed'), 1, at);
      assert.equal(count('argmax'), 1, at);
      assert.equal(count('merge'), 0, at);
      for (const k of p.kernels) assert.ok(k.us_per_step > 0, `${at}: ${k.kernel} took no time`);
      const sum = p.kernels.reduce((a, k) => a + k.us_per_step, 0);
      assert.ok(Math.abs(sum - p.busy_us_per_step) <= 1e-6 * sum, `${at}: kernels ${sum} µs, busy ${p.busy_us_per_step} µs`);
      assert.ok(p.busy_us_per_step <= p.span_us_per_step * 1.001, `${at}: busy ${p.busy_us_per_step} µs in a span of ${p.span_us_per_step} µs`);
      assert.ok(p.span_us_per_step <= p.wall_ms_per_step * 1e3 * 1.05, `${at}: span ${p.span_us_per_step} µs beyond the wall time`);
    }
  });

  test('bench generate --fill --gpu-profile: decode after caches filled with synthetic keys/values, profiled; past 128 tokens a step merges its attention splits', () => {
    const layers = 2;
    const args = ['bench', 'generate', '--backend', 'webgpu', '--model', tinyModel(), '--random-weights', '3', '--weights', 'native'];
    args.push('--fill', '300', '--gen', '2', '--repeats', '1', '--kv', 'kivi:k=2,v=2,g=16,r=16', '--gpu-profile', '2', '--json');
    const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...SWIFTSHADER_ENV, KIVI_WEBGPU_ATTN_ITEMS: '8' }, timeout: 300_000 });
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout) as { results: GenerateBenchResult[]; gpu_profile: GpuProfileResult[] };
    assert.deepEqual(
      j.results.map((x) => [x.kv, x.prompt_tokens, x.prefill_tokens_per_s]),
      [['kivi:k=2,v=2,g=16,r=16', 300, 0]],
    );
    assert.deepEqual(
      j.gpu_profile.map((p) => [p.kv, p.batch, p.steps]),
      [['kivi:k=2,v=2,g=16,r=16', 2, 2]],
    );
    const p = j.gpu_profile[0]!;
    const count = (prefix: string) => p.kernels.filter((k) => k.kernel.startsWith(prefix)).reduce((a, k) => a + k.dispatches_per_step, 0);
    assert.equal(count('attend'), layers);
    assert.equal(count('merge'), layers, 'split attention at 300 tokens, merged once a layer');
    assert.equal(count('jobs'), layers);
  });
}
