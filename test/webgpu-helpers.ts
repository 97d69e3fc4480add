/**
 * WebGPU in tests: SwiftShader (Debian's chromium package) through Dawn's Node bindings (the optional
 * `webgpu` package). Where either is missing the tests skip, saying why, except under CI=true, where
 * they must run: there a skip would hide a broken set-up, so they fail instead.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type TestContext, test } from 'node:test';
import { createBackend } from '../src/kernels/index.js';
import type { WebGpuBackend } from '../src/kernels/webgpu/backend.js';
import type { WebGpuOptions } from '../src/kernels/webgpu/device.js';
import { swiftshaderMissing, webgpuPackageMissing } from '../src/kernels/webgpu/node.js';
import { MODEL_DIR, tmpDir } from './helpers.js';

/** Why WebGPU on SwiftShader cannot run here, or null. */
export function webgpuMissing(): string | null {
  return webgpuPackageMissing() ?? swiftshaderMissing();
}

export const inCI = process.env.CI === 'true';

/** Skip (or, under CI=true, fail) a test when WebGPU on SwiftShader is unavailable; true when it may run. */
export function needWebgpu(t: TestContext): boolean {
  const why = webgpuMissing();
  if (!why) return true;
  if (inCI) throw new Error(`WebGPU tests cannot run under CI: ${why}`);
  t.skip(why);
  return false;
}

/** Register one test that reports why the file's tests did not run (or fails under CI). */
export function reportMissing(file: string): boolean {
  const why = webgpuMissing();
  if (!why) return false;
  test(`${file}: WebGPU on SwiftShader`, (t) => {
    needWebgpu(t);
  });
  return true;
}

/** A WebGPU back end on SwiftShader (its matmul one thread per output unless `serialMatmul: false`). */
export async function swiftshaderBackend(o: Omit<WebGpuOptions, 'swiftshader'> = {}): Promise<WebGpuBackend> {
  return (await createBackend({ backend: 'webgpu', webgpu: { ...o, swiftshader: true } })) as WebGpuBackend;
}

/** The environment that makes a child `kivi` process find SwiftShader by itself. */
export const SWIFTSHADER_ENV = { ...process.env, KIVI_WEBGPU_ADAPTER: 'swiftshader' };

/** A 2-layer model's config.json (for --random-weights: small enough for SwiftShader). */
export function tinyModel(): string {
  const dir = tmpDir('kivi-tiny-');
  const c = JSON.parse(fs.readFileSync(path.join(MODEL_DIR, 'config.json'), 'utf8')) as Record<string, unknown>;
  Object.assign(c, { num_hidden_layers: 2, hidden_size: 128, intermediate_size: 256, num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 512 });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(c));
  return dir;
}
