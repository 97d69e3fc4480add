/**
 * Choosing WebGPU: `--backend webgpu` without the optional `webgpu` package says in one line how to add
 * it; `auto` never picks a software adapter (the predicate on the adapters Dawn and Chromium report for
 * SwiftShader, and `auto` itself on SwiftShader).
 */

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { createBackend } from '../src/kernels/index.js';
import { isFallback } from '../src/kernels/webgpu/device.js';
import { gpuDeviceNodePresent } from '../src/kernels/webgpu/node.js';
import { MODEL_DIR, ROOT, tmpDir } from './helpers.js';
import { needWebgpu } from './webgpu-helpers.js';

test('--backend webgpu without the webgpu package: one line saying how to add it', () => {
  // A copy of the compiled CLI beside a node_modules that has every package but `webgpu`.
  const dir = tmpDir('kivi-nowebgpu-');
  fs.cpSync(path.join(ROOT, 'dist/src'), path.join(dir, 'dist/src'), { recursive: true });
  fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(dir, 'package.json'));
  fs.mkdirSync(path.join(dir, 'node_modules'));
  for (const e of fs.readdirSync(path.join(ROOT, 'node_modules'))) {
    if (e !== 'webgpu') fs.symlinkSync(path.join(ROOT, 'node_modules', e), path.join(dir, 'node_modules', e));
  }
  for (const args of [
    ['generate', '--model', MODEL_DIR, '--prompt', 'Hello', '--max-tokens', '2', '--backend', 'webgpu'],
    ['eval', 'nll', '--model', MODEL_DIR, '--windows', path.join(dir, 'none.json'), '--prefill', '2', '--backend', 'webgpu'],
  ]) {
    if (args[1] === 'nll') fs.writeFileSync(args[5]!, JSON.stringify([[1, 450, 3681, 310, 278]]));
    const r = spawnSync(process.execPath, [path.join(dir, 'dist/src/cli/main.js'), ...args], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 1, `${args[0]}: exit ${r.status}\n${r.stderr}`);
    assert.equal(r.stdout, '');
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, `one line expected, got:\n${r.stderr}`);
    assert.equal(lines[0], 'kivi: --backend webgpu: the optional package "webgpu" is not installed (npm install webgpu@0.6.2)');
  }
  // The same copy runs `auto` quietly on the CPU.
  const ok = spawnSync(
    process.execPath,
    [
      path.join(dir, 'dist/src/cli/main.js'),
      'generate',
      '--model',
      MODEL_DIR,
      '--prompt',
      'Hello',
      '--max-tokens',
      '2',
      '--ignore-eos',
      '--json',
      '--kv',
      'fp16',
    ],
    { encoding: 'utf8', timeout: 60_000 },
  );
  assert.equal(ok.status, 0, ok.stderr);
  assert.equal(ok.stderr, '');
  assert.equal((JSON.parse(ok.stdout) as { ids: number[] }).ids.length, 2);
});

test('auto looks for a GPU only where a GPU device node exists, and prints nothing where none does', (t) => {
  const dev = tmpDir('kivi-dev-');
  const nodes = (...files: string[]) => {
    fs.rmSync(dev, { recursive: true, force: true });
    for (const f of files) {
      fs.mkdirSync(path.dirname(path.join(dev, f)), { recursive: true });
      fs.writeFileSync(path.join(dev, f), '');
    }
    return gpuDeviceNodePresent(dev);
  };
  if (process.platform === 'linux') {
    assert.equal(nodes(), false);
    assert.equal(nodes('null', 'dri/by-path/x'), false);
    assert.equal(nodes('dri/renderD128'), true);
    assert.equal(nodes('nvidiactl', 'nvidia0'), true);
    assert.equal(nodes('dxg'), true);
  }
  // This machine, with the webgpu package installed: where it has no GPU, `auto` runs on the CPU without
  // a word on stderr (Mesa's software Vulkan driver, which CI's chromium brings, prints when woken).
  if (gpuDeviceNodePresent()) return t.skip('this machine has a GPU device node');
  const r = spawnSync(
    process.execPath,
    [path.join(ROOT, 'dist/src/cli/main.js'), 'generate', '--model', MODEL_DIR, '--prompt', 'Hello', '--max-tokens', '2', '--ignore-eos', '--json'],
    { encoding: 'utf8', timeout: 60_000 },
  );
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stderr, '');
  assert.equal((JSON.parse(r.stdout) as { ids: number[]; backend?: string }).ids.length, 2);
});

/** An adapter as WebGPU implementations describe it. */
const adapter = (info: Record<string, unknown>, extra: Record<string, unknown> = {}) => ({ info, ...extra }) as unknown as GPUAdapter;

test('isFallback: software adapters (as Dawn in Node and Chromium report SwiftShader, and others) are not GPUs', () => {
  // Dawn's Node bindings on SwiftShader (webgpu@0.6.2), and Chromium's --enable-unsafe-webgpu on a machine without a GPU.
  assert.equal(
    isFallback(
      adapter({
        vendor: 'google',
        architecture: 'swiftshader',
        device: 'swiftshader-device-subzero-',
        description: 'SwiftShader driver 5.0.0',
        isFallbackAdapter: true,
      }),
    ),
    true,
  );
  assert.equal(isFallback(adapter({ vendor: 'google', architecture: 'swiftshader', device: '', description: '', isFallbackAdapter: true })), true);
  // Named as software without the flag, or flagged without a name (older implementations: on the adapter).
  assert.equal(isFallback(adapter({ vendor: 'google', architecture: 'swiftshader' })), true);
  assert.equal(isFallback(adapter({ vendor: 'mesa', description: 'llvmpipe (LLVM 15.0.6, 256 bits)' })), true);
  assert.equal(isFallback(adapter({ vendor: 'microsoft', description: 'Microsoft Basic Render Driver' })), true);
  assert.equal(isFallback(adapter({ vendor: 'x', isFallbackAdapter: true })), true);
  assert.equal(isFallback(adapter({}, { isFallbackAdapter: true })), true);
  // Hardware.
  assert.equal(isFallback(adapter({ vendor: 'nvidia', architecture: 'hopper', description: 'NVIDIA: 580.159.04', isFallbackAdapter: false })), false);
  assert.equal(isFallback(adapter({ vendor: 'apple', architecture: 'metal-3' })), false);
  assert.equal(isFallback(adapter({ vendor: 'intel', architecture: 'gen-12lp', description: 'Intel(R) UHD Graphics 770' })), false);
  assert.equal(isFallback(adapter({})), false);
});

test('auto on a machine whose only WebGPU adapter is SwiftShader runs on the CPU; webgpu takes it', { timeout: 120_000 }, async (t) => {
  if (!needWebgpu(t)) return;
  // webgpu first: this process's WebGPU is then SwiftShader, with its Vulkan loader loaded, so auto's
  // probe below finds the loader, opens the GPU object and is offered the SwiftShader adapter.
  const gpu = await createBackend({ backend: 'webgpu', webgpu: { swiftshader: true } });
  try {
    assert.equal(gpu.name, 'webgpu');
    assert.match(gpu.description, /software adapter: for tests, not for speed/);
    const { findAdapter } = await import('../src/kernels/webgpu/device.js');
    assert.ok(isFallback((await findAdapter({}, false))!), 'the adapter auto is offered is SwiftShader');
    const auto = await createBackend({ backend: 'auto' });
    try {
      assert.notEqual(auto.name, 'webgpu');
    } finally {
      auto.dispose();
    }
  } finally {
    gpu.dispose();
  }
});
