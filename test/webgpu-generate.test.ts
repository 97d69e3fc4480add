/**
 * The WebGPU back end (SwiftShader) through the library and the engine: greedy ids equal the wasm back
 * end's, alone and batched with sequences that join the running batch at different steps. Short prompts
 * and a few dozen tokens: SwiftShader is ~100× slower than a GPU.
 */

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { KiviModel } from '../src/api.js';
import type { WebGpuBackend } from '../src/kernels/webgpu/backend.js';
import { golden, MODEL_DIR } from './helpers.js';
import { reportMissing } from './webgpu-helpers.js';

const G = golden();
const W = G.windows[0]!;
/*
 * fp16, and kivi2 with a 32-token residual (kivi2-r32: 2-bit keys and values in groups of 32): with
 * prompts of 34+ tokens its keys and values are flushed into packed codes within these runs, so greedy
 * decoding attends to codes on the GPU (the kivi2 preset's 128-token residual would hold them all).
 * Every token costs ~0.5 s of CPU on SwiftShader, so the runs are short.
 */
const SPECS = ['fp16', 'kivi2-r32'];

if (!reportMissing('webgpu-generate')) {
  let gpu: KiviModel;
  let wasm: KiviModel;
  before(async () => {
    gpu = await KiviModel.load(MODEL_DIR, { backend: 'webgpu', webgpu: { swiftshader: true } });
    wasm = await KiviModel.load(MODEL_DIR, { backend: 'wasm', threads: 1 });
  });
  after(() => {
    gpu?.dispose();
    wasm?.dispose();
  });

  test("webgpu greedy ids equal the wasm back end's (fp16, kivi2 with a 32-token residual)", { timeout: 600_000 }, async () => {
    assert.equal(gpu.backend.name, 'webgpu');
    assert.match(gpu.backend.description, /software adapter/);
    const prompt = W.slice(0, 34);
    for (const kv of SPECS) {
      const opts = { maxTokens: 16, temperature: 0, ignoreEos: true, kv };
      const ref = await wasm.complete(prompt, opts);
      const got = await gpu.complete(prompt, opts);
      assert.equal(got.ids.length, 16);
      assert.deepEqual(got.ids, ref.ids, `${kv}: webgpu vs wasm`);
      assert.equal(got.kvBytes, ref.kvBytes, `${kv}: KV bytes`);
    }
  });

  test('warmUp (webgpu): compiles every pipeline a first request runs, outside the engine, and leaves no pages', { timeout: 600_000 }, async () => {
    // A model of its own: pipelines are compiled per device.
    const m = await KiviModel.load(MODEL_DIR, { backend: 'webgpu', webgpu: { swiftshader: true } });
    try {
      const core = (m.backend as WebGpuBackend).core;
      await m.warmUp();
      const compiled = core.compiled;
      assert.ok(compiled >= 8, `${compiled} pipelines compiled`);
      assert.equal(m.transformer.pool.allocatedBytes, 0, 'the warm-up cache is freed');
      assert.equal(m.transformer.pool.peakBytes, 0, 'the pool peak is reset');
      assert.deepEqual([m.engine.steps, m.engine.prefilledTokens, m.engine.generatedTokens], [0, 0, 0]);
      // A first request, greedy and sampled: nothing left to compile.
      await m.complete(W.slice(0, 40), { maxTokens: 3, temperature: 0 });
      await m.complete(W.slice(0, 20), { maxTokens: 2, temperature: 0.8, seed: 1 });
      assert.equal(core.compiled, compiled, 'no pipeline compiled after the warm-up');
    } finally {
      m.dispose();
    }
  });

  test('webgpu batched through the engine (kivi2 with a 32-token residual): sequences joining at different steps give the wasm ids of each alone', {
    timeout: 600_000,
  }, async () => {
    const prompts = [W.slice(0, 34), W.slice(300, 320), W.slice(600, 612)];
    for (const kv of ['kivi2-r32']) {
      const opts = { maxTokens: 12, temperature: 0, ignoreEos: true, kv };
      const alone: number[][] = [];
      for (const p of prompts) alone.push((await wasm.complete(p, opts)).ids);
      // Sequence 0 starts alone; 1 joins after its 2nd token, 2 after its 5th: the batch changes size mid-run.
      const joined: Promise<{ ids: number[] }>[] = [];
      const first = gpu.generate(prompts[0]!, opts);
      let n = 0;
      let r = await first.next();
      while (!r.done) {
        n++;
        if (n === 2) joined.push(gpu.complete(prompts[1]!, opts));
        if (n === 5) joined.push(gpu.complete(prompts[2]!, opts));
        r = await first.next();
      }
      assert.equal(joined.length, 2, 'both later sequences joined while the first ran');
      const got = [r.value.ids, ...(await Promise.all(joined)).map((x) => x.ids)];
      got.forEach((ids, i) => {
        assert.deepEqual(ids, alone[i], `${kv}: sequence ${i} batched on webgpu vs alone on wasm`);
      });
    }
  });
}
